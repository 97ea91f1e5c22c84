use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use switchyard_runtime::Issues;
use switchyard_runtime::config::check_id;

use crate::engine::on_demand::OnDemandConfig;
use crate::engine::openai::OpenAiConfig;
use crate::engine::simulated::SimulatedConfig;
use crate::engine::triton::TritonConfig;
use crate::process::ProcessConfig;

/// The `agent:` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Names this node in subjects, heartbeats and results.
    pub node_id: String,
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Heartbeat period when nothing changes.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Shortest gap between two heartbeats; a freed slot is reported at most this late.
    #[serde(default = "default_heartbeat_min_gap", with = "humantime_serde")]
    pub heartbeat_min_gap: Duration,
    /// How long an assignment may go without an acknowledgement before NATS
    /// redelivers it; running jobs extend it with progress acks.
    #[serde(default = "default_ack_wait", with = "humantime_serde")]
    pub ack_wait: Duration,
    /// On SIGTERM, how long running jobs may take to finish before the agent
    /// exits and leaves them to redelivery.
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub drain_timeout: Duration,
    pub engine: EngineConfig,
    /// Run the engine as a child process and restart it when it exits;
    /// without it the engine is run by someone else.
    #[serde(default)]
    pub process: Option<ProcessConfig>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9101))
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(1)
}
fn default_heartbeat_min_gap() -> Duration {
    Duration::from_millis(20)
}
fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_drain() -> Duration {
    Duration::from_secs(30)
}

/// Which engine the agent drives.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EngineConfig {
    Simulated(SimulatedConfig),
    /// vLLM's OpenAI-compatible server; its load is read from `/metrics`.
    Vllm(OpenAiConfig),
    /// Any other OpenAI-compatible server (TGI, SGLang, llama.cpp, …).
    Openai(OpenAiConfig),
    /// NVIDIA Triton over KServe v2 HTTP.
    Triton(TritonConfig),
    /// vLLM servers the agent starts per model when asked and stops when idle.
    VllmOnDemand(OnDemandConfig),
}

impl AgentConfig {
    pub fn validate(&self, issues: &mut Issues) {
        check_id(issues, "agent.node_id", &self.node_id);
        issues.check(
            self.ack_wait >= Duration::from_secs(1),
            "agent.ack_wait",
            self.ack_wait,
            "must be at least 1s",
        );
        issues.check(
            self.heartbeat_min_gap <= self.heartbeat_interval,
            "agent.heartbeat_min_gap",
            self.heartbeat_min_gap,
            "must not exceed agent.heartbeat_interval",
        );
        if let Some(process) = &self.process {
            process.validate(issues);
        }
        match &self.engine {
            EngineConfig::Simulated(sim) => sim.validate(issues),
            EngineConfig::Vllm(c) | EngineConfig::Openai(c) => c.validate(issues),
            EngineConfig::Triton(c) => c.validate(issues),
            EngineConfig::VllmOnDemand(c) => c.validate(issues),
        }
    }
}
