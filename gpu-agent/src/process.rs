//! The engine's process, when the agent runs it: started in its own process
//! group, restarted with backoff whenever it exits, and stopped (SIGTERM,
//! then SIGKILL) once the agent has drained.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Deserialize;
use switchyard_runtime::Issues;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics as m;

/// The `agent.process` section: how to run the engine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// Program and arguments, such as `[vllm, serve, /models/llama, --port, "8000"]`.
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Wait before the first restart; doubles with each quick exit, up to
    /// `restart_backoff_max`.
    #[serde(default = "default_backoff", with = "humantime_serde")]
    pub restart_backoff: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub restart_backoff_max: Duration,
    /// After SIGTERM, how long the engine may take to exit before SIGKILL.
    #[serde(default = "default_stop_timeout", with = "humantime_serde")]
    pub stop_timeout: Duration,
}

fn default_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(60)
}
fn default_stop_timeout() -> Duration {
    Duration::from_secs(30)
}

impl ProcessConfig {
    pub fn validate(&self, issues: &mut Issues) {
        issues.check(
            self.command.first().is_some_and(|p| !p.is_empty()),
            "agent.process.command",
            format!("{:?}", self.command),
            "name the program to run",
        );
        issues.check(
            !self.restart_backoff.is_zero() && self.restart_backoff <= self.restart_backoff_max,
            "agent.process.restart_backoff",
            self.restart_backoff,
            "must be positive and at most restart_backoff_max",
        );
    }
}

/// Runs the engine until `stop`, restarting it whenever it exits. Each exit
/// sets `exited`, so the agent proves the engine with a real request before
/// it takes work again.
pub async fn supervise(cfg: ProcessConfig, exited: Arc<AtomicBool>, stop: CancellationToken) {
    let mut backoff = cfg.restart_backoff;
    loop {
        let started = Instant::now();
        match spawn(&cfg.command, &cfg.env, cfg.cwd.as_deref()) {
            Ok(mut child) => {
                let pid = child.id();
                info!(?pid, command = ?cfg.command, "engine started");
                tokio::select! {
                    status = child.wait() => {
                        exited.store(true, Ordering::SeqCst);
                        metrics::counter!(m::ENGINE_EXITS).increment(1);
                        warn!(?pid, ?status, restart_in = ?backoff, "engine exited");
                    }
                    () = stop.cancelled() => {
                        terminate(&mut child, cfg.stop_timeout).await;
                        return;
                    }
                }
            }
            Err(e) => {
                exited.store(true, Ordering::SeqCst);
                metrics::counter!(m::ENGINE_EXITS).increment(1);
                warn!(command = ?cfg.command, error = %e, restart_in = ?backoff, "engine cannot start");
            }
        }
        // An engine that ran for a while before it died starts over at the
        // shortest wait; one that dies at once waits longer each time.
        if started.elapsed() > cfg.restart_backoff_max {
            backoff = cfg.restart_backoff;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(cfg.restart_backoff_max);
    }
}

/// Starts `command` in its own process group.
pub(crate) fn spawn(
    command: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&Path>,
) -> std::io::Result<Child> {
    let Some((program, args)) = command.split_first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no command to run",
        ));
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(env)
        .stdin(std::process::Stdio::null())
        // Its own group: stopping it reaches the processes it starts too.
        .process_group(0)
        // Should the agent itself die first, the engine is not left behind.
        .kill_on_drop(true);
    if let Some(dir) = cwd {
        command.current_dir(dir);
    }
    command.spawn()
}

/// Sends `signal` to the group `child` leads; false once it has been reaped.
pub(crate) fn signal_group(child: &Child, signal: Signal) -> bool {
    let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
        return false;
    };
    let _ = killpg(Pid::from_raw(pid), signal);
    true
}

/// SIGTERM to the engine's group, SIGKILL after `grace`.
pub(crate) async fn terminate(child: &mut Child, grace: Duration) {
    let pid = child.id();
    if !signal_group(child, Signal::SIGTERM) {
        return;
    }
    info!(?pid, "stopping the engine");
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        warn!(?pid, "engine did not stop in time; killed");
        signal_group(child, Signal::SIGKILL);
        let _ = child.wait().await;
    }
}
