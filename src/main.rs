//! `switchyard`: one binary, one subcommand per component, so that one image
//! or one install serves every role.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

mod cli;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use cli::models::ModelsAction;
use cli::{DeadLetterAction, KeyAction, TenantAction};
use serde::Deserialize;
use switchyard_broker::BrokerConfig;
use switchyard_dispatcher::DispatcherConfig;
use switchyard_gpu_agent::AgentConfig;
use switchyard_runtime::{
    AliasSpec, Issues, ModelSpec, NatsConfig, Registry, TenantSpec, Tenants, config, shutdown,
    telemetry,
};
use switchyard_workflows::engine::{self, EngineConfig};
use switchyard_workflows::{WorkflowSpec, Workflows};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(version, about = "Queue-based inference broker")]
struct Cli {
    /// YAML configuration; `SWITCHYARD_<SECTION>__<FIELD>` variables override it.
    #[arg(long, short, env = "SWITCHYARD_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// HTTP and NATS intake, job records, results.
    Broker,
    /// Assigns queued jobs to GPU nodes by priority and capacity.
    Dispatcher,
    /// Runs assignments on this node's engine.
    Agent,
    /// Drives workflow runs: their steps, retries and compensations.
    Workflows,
    /// Validates the configuration and exits.
    CheckConfig,
    /// Jobs that failed every attempt: list them, or replay one (through the
    /// broker at `broker.listen`, with an admin key from `SWITCHYARD_API_KEY`
    /// when authentication is on).
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// The live model registry through the broker (at `broker.listen`, with
    /// an admin key from `SWITCHYARD_API_KEY`): aliases and rollouts.
    Models {
        #[command(subcommand)]
        action: ModelsAction,
    },
    /// Makes the live aliases those of a YAML file (its `aliases:`),
    /// checked first, the difference printed.
    Apply {
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// Print the difference only.
        #[arg(long)]
        dry_run: bool,
    },
    /// API keys, on the broker's store directly (so the first admin key can
    /// be made): create, list, revoke.
    Keys {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Tenants beyond the configuration's, and limits that replace theirs.
    Tenants {
        #[command(subcommand)]
        action: TenantAction,
    },
}

impl Command {
    /// The component it runs, as traces name it.
    fn role(&self) -> &'static str {
        match self {
            Command::Broker => "broker",
            Command::Dispatcher => "dispatcher",
            Command::Agent => "agent",
            Command::Workflows => "workflows",
            _ => "cli",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    nats: NatsConfig,
    #[serde(default)]
    models: Vec<ModelSpec>,
    #[serde(default)]
    aliases: Vec<AliasSpec>,
    #[serde(default)]
    tenants: Vec<TenantSpec>,
    #[serde(default)]
    workflows: Vec<WorkflowSpec>,
    #[serde(default)]
    broker: BrokerConfig,
    #[serde(default)]
    dispatcher: DispatcherConfig,
    agent: Option<AgentConfig>,
    #[serde(default)]
    workflow_engine: EngineConfig,
    #[serde(default)]
    log: LogConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogConfig {
    /// JSON lines instead of human-readable text.
    #[serde(default)]
    json: bool,
    /// An OTLP/HTTP collector (`http://collector:4318`) to send traces to:
    /// one trace per job, across every component. Off when not given.
    #[serde(default)]
    otlp_endpoint: Option<String>,
}

/// Validates the sections `command` needs, reporting every problem at once.
fn validate(
    file: &FileConfig,
    command: &Command,
) -> Result<(Registry, Tenants, Workflows), config::ConfigError> {
    let mut issues = Issues::default();
    file.nats.validate(&mut issues);
    let registry =
        Registry::new(&file.models, &mut issues).with_aliases(&file.aliases, &mut issues);
    let tenants = Tenants::new(&file.tenants, &mut issues);
    // Definitions are checked by every role: a bad one is refused before
    // any component starts with it.
    let workflows = Workflows::new(&file.workflows, &registry, &mut issues);
    let check_agent = |issues: &mut Issues| match &file.agent {
        Some(agent) => agent.validate(issues),
        None => issues.push("agent", "missing", "the agent needs an agent: section"),
    };
    match command {
        Command::Broker => {
            file.broker.validate(&mut issues);
            switchyard_broker::check_tenants(&file.broker, &tenants, &mut issues);
        }
        Command::Dispatcher => file.dispatcher.validate(&mut issues),
        Command::Agent => check_agent(&mut issues),
        Command::Workflows => file.workflow_engine.validate(&mut issues),
        Command::DeadLetters { .. } | Command::Models { .. } | Command::Apply { .. } => {}
        Command::Keys { .. } | Command::Tenants { .. } => file.broker.validate(&mut issues),
        Command::CheckConfig => {
            file.broker.validate(&mut issues);
            switchyard_broker::check_tenants(&file.broker, &tenants, &mut issues);
            file.dispatcher.validate(&mut issues);
            file.workflow_engine.validate(&mut issues);
            if file.agent.is_some() {
                check_agent(&mut issues);
            }
        }
    }
    issues
        .into_result()
        .map(|()| (registry, tenants, workflows))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Configuration is checked whole before anything starts or binds a port.
    let loaded = config::load::<FileConfig>(cli.config.as_deref())
        .and_then(|file| validate(&file, &cli.command).map(|valid| (file, valid)));
    let (file, (registry, tenants, workflows)) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if matches!(cli.command, Command::CheckConfig) {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    match cli.command {
        Command::DeadLetters { action } => return cli::dead_letters(&action, &file.broker),
        Command::Models { action } => return cli::models::run(action, &file.broker),
        Command::Apply {
            file: path,
            dry_run,
        } => {
            return cli::models::apply(&path, dry_run, &file.broker);
        }
        Command::Keys { action } => {
            return cli::access(cli::Access::Keys(action), &file.broker, &tenants);
        }
        Command::Tenants { action } => {
            return cli::access(cli::Access::Tenants(action), &file.broker, &tenants);
        }
        _ => {}
    }
    let tracing = file
        .log
        .otlp_endpoint
        .clone()
        .map(|otlp_endpoint| telemetry::Tracing {
            otlp_endpoint,
            service: format!("switchyard-{}", cli.command.role()),
        });
    // Kept until the end: dropping it sends the last spans.
    let _export = match telemetry::init(file.log.json, tracing.as_ref()) {
        Ok(export) => export,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, file, registry, tenants, workflows)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    command: Command,
    file: FileConfig,
    registry: Registry,
    tenants: Tenants,
    workflows: Workflows,
) -> anyhow::Result<()> {
    let workflows = Arc::new(workflows);
    let metrics = telemetry::init_metrics()?;
    let token = CancellationToken::new();
    let t = token.clone();
    match command {
        Command::Broker => shutdown::run_until_signal(
            token,
            switchyard_broker::run(
                file.broker,
                file.nats,
                registry,
                tenants,
                workflows,
                metrics,
                t,
            ),
        )
        .await
        .context("broker")?,
        Command::Dispatcher => shutdown::run_until_signal(
            token,
            switchyard_dispatcher::run(file.dispatcher, file.nats, registry, tenants, metrics, t),
        )
        .await
        .context("dispatcher")?,
        Command::Agent => {
            let agent = file.agent.context("the agent needs an agent: section")?;
            // The dispatcher's settings for what it places on a node.
            let placing = switchyard_gpu_agent::Placing {
                prefetch_per_slot: file.dispatcher.prefetch_per_slot,
                aging_bound: file.dispatcher.aging_bound,
            };
            shutdown::run_until_signal(
                token,
                switchyard_gpu_agent::run(agent, placing, file.nats, registry, metrics, t),
            )
            .await
            .context("gpu-agent")?
        }
        Command::Workflows => shutdown::run_until_signal(
            token,
            engine::run(file.workflow_engine, file.nats, workflows, metrics, t),
        )
        .await
        .context("workflows")?,
        Command::CheckConfig
        | Command::DeadLetters { .. }
        | Command::Models { .. }
        | Command::Apply { .. }
        | Command::Keys { .. }
        | Command::Tenants { .. } => {}
    }
    Ok(())
}
