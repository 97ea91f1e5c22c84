//! `switchyard`: one binary, one subcommand per component, so that one image
//! or one install serves every role.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde::Deserialize;
use switchyard_broker::BrokerConfig;
use switchyard_dispatcher::DispatcherConfig;
use switchyard_gpu_agent::AgentConfig;
use switchyard_runtime::{
    Issues, ModelSpec, NatsConfig, Registry, TenantSpec, Tenants, config, shutdown, telemetry,
};
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
    /// Validates the configuration and exits.
    CheckConfig,
    /// Jobs that failed every attempt: list them, or replay one (through the
    /// broker at `broker.listen`).
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
}

#[derive(Subcommand)]
enum DeadLetterAction {
    /// Prints the dead letters as JSON.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Queues the job again, with a fresh attempt budget.
    Replay { job_id: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    nats: NatsConfig,
    #[serde(default)]
    models: Vec<ModelSpec>,
    #[serde(default)]
    tenants: Vec<TenantSpec>,
    #[serde(default)]
    broker: BrokerConfig,
    #[serde(default)]
    dispatcher: DispatcherConfig,
    agent: Option<AgentConfig>,
    #[serde(default)]
    log: LogConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogConfig {
    /// JSON lines instead of human-readable text.
    #[serde(default)]
    json: bool,
}

/// Validates the sections `command` needs, reporting every problem at once.
fn validate(
    file: &FileConfig,
    command: &Command,
) -> Result<(Registry, Tenants), config::ConfigError> {
    let mut issues = Issues::default();
    file.nats.validate(&mut issues);
    let registry = Registry::new(&file.models, &mut issues);
    let tenants = Tenants::new(&file.tenants, &mut issues);
    let check_agent = |issues: &mut Issues| match &file.agent {
        Some(agent) => agent.validate(&registry, issues),
        None => issues.push("agent", "missing", "the agent needs an agent: section"),
    };
    match command {
        Command::Broker => {
            file.broker.validate(&mut issues);
            switchyard_broker::check_tenants(&file.broker, &tenants, &mut issues);
        }
        Command::Dispatcher => file.dispatcher.validate(&mut issues),
        Command::Agent => check_agent(&mut issues),
        Command::DeadLetters { .. } => {}
        Command::CheckConfig => {
            file.broker.validate(&mut issues);
            switchyard_broker::check_tenants(&file.broker, &tenants, &mut issues);
            file.dispatcher.validate(&mut issues);
            if file.agent.is_some() {
                check_agent(&mut issues);
            }
        }
    }
    issues.into_result().map(|()| (registry, tenants))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Configuration is checked whole before anything starts or binds a port.
    let loaded = config::load::<FileConfig>(cli.config.as_deref())
        .and_then(|file| validate(&file, &cli.command).map(|valid| (file, valid)));
    let (file, (registry, tenants)) = match loaded {
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
    if let Command::DeadLetters { action } = &cli.command {
        return admin(action, &format!("http://{}", file.broker.listen));
    }
    telemetry::init_logs(file.log.json);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, file, registry, tenants)) {
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
) -> anyhow::Result<()> {
    let metrics = telemetry::init_metrics()?;
    let token = CancellationToken::new();
    let t = token.clone();
    match command {
        Command::Broker => shutdown::run_until_signal(
            token,
            switchyard_broker::run(file.broker, file.nats, registry, tenants, metrics, t),
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
            shutdown::run_until_signal(
                token,
                switchyard_gpu_agent::run(agent, file.nats, registry, metrics, t),
            )
            .await
            .context("gpu-agent")?
        }
        Command::CheckConfig | Command::DeadLetters { .. } => {}
    }
    Ok(())
}

/// Runs an admin command against the broker's HTTP API and prints its answer.
fn admin(action: &DeadLetterAction, broker: &str) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let http = reqwest::Client::new();
    let request = match action {
        DeadLetterAction::List { limit } => {
            http.get(format!("{broker}/v1/admin/dead-letters?limit={limit}"))
        }
        DeadLetterAction::Replay { job_id } => {
            http.post(format!("{broker}/v1/admin/dead-letters/{job_id}/replay"))
        }
    };
    let answer = runtime.block_on(async {
        let response = request.send().await?;
        let ok = response.status().is_success();
        let body: serde_json::Value = response.json().await?;
        Ok::<_, reqwest::Error>((ok, body))
    });
    match answer {
        Ok((ok, body)) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&body).unwrap_or_default()
            );
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: broker at {broker}: {e}");
            ExitCode::FAILURE
        }
    }
}
