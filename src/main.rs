//! `switchyard`: one binary, one subcommand per component, so that one image
//! or one install serves every role.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
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

#[derive(Subcommand)]
enum KeyAction {
    /// Makes a key and prints it once, with its token in `key`.
    Create {
        /// admin, operator, submitter or reader.
        #[arg(long)]
        role: String,
        /// The key's tenant (submitter and reader keys).
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value = "")]
        name: String,
        /// Lifetime, such as 90d; none when not given.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
        /// The key's own requests per minute.
        #[arg(long)]
        requests_per_minute: Option<u32>,
        /// The key's own tokens per minute.
        #[arg(long)]
        tokens_per_minute: Option<u32>,
    },
    /// Prints the keys (never their secrets).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revokes a key on every broker that shares the store.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum TenantAction {
    /// Makes a tenant.
    Create { name: String },
    /// Prints every tenant with the limits in force.
    List,
    /// Sets a tenant's limits; with none given, it goes back to the
    /// configuration's.
    SetLimits {
        name: String,
        #[arg(long)]
        requests_per_minute: Option<u32>,
        #[arg(long)]
        tokens_per_minute: Option<u32>,
        #[arg(long)]
        max_queued_jobs: Option<u32>,
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
        Command::Workflows => file.workflow_engine.validate(&mut issues),
        Command::DeadLetters { .. } => {}
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
    if let Command::DeadLetters { action } = &cli.command {
        return admin(action, &format!("http://{}", file.broker.listen));
    }
    if matches!(cli.command, Command::Keys { .. } | Command::Tenants { .. }) {
        return access(cli.command, &file.broker, &tenants);
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
            shutdown::run_until_signal(
                token,
                switchyard_gpu_agent::run(agent, file.nats, registry, metrics, t),
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
        | Command::Keys { .. }
        | Command::Tenants { .. } => {}
    }
    Ok(())
}

/// Runs a key or tenant command on the broker's store and prints its answer.
fn access(command: Command, broker: &BrokerConfig, tenants: &Tenants) -> ExitCode {
    use switchyard_broker::admin;
    use switchyard_broker::auth::{KeySpec, Role};
    use switchyard_runtime::RateLimits;
    print_answer(async {
        let auth = switchyard_broker::open_auth(broker, tenants)
            .await
            .map_err(|e| e.to_string())?;
        let limits = |requests_per_minute, tokens_per_minute, max_queued_jobs| {
            let l = RateLimits {
                requests_per_minute,
                tokens_per_minute,
                max_queued_jobs,
                ..RateLimits::default()
            };
            (l != RateLimits::default()).then_some(l)
        };
        let done = match command {
            Command::Keys { action } => match action {
                KeyAction::Create {
                    role,
                    tenant,
                    name,
                    expires_in,
                    requests_per_minute,
                    tokens_per_minute,
                } => {
                    let role = Role::parse(&role)
                        .ok_or("role must be admin, operator, submitter or reader")?;
                    let expires_at_ms = expires_in.map(|d| {
                        switchyard_schemas::now_ms()
                            + i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
                    });
                    let spec = KeySpec {
                        tenant,
                        role,
                        name,
                        limits: limits(requests_per_minute, tokens_per_minute, None),
                        expires_at_ms,
                    };
                    admin::mint(&auth, spec).await
                }
                KeyAction::List { tenant } => admin::keys(&auth, tenant.as_deref())
                    .await
                    .map(serde_json::Value::from),
                KeyAction::Revoke { id } => admin::revoke(&auth, &id).await,
            },
            Command::Tenants { action } => match action {
                TenantAction::Create { name } => admin::create(&auth, &name, None).await,
                TenantAction::List => admin::tenants(&auth, tenants)
                    .await
                    .map(serde_json::Value::from),
                TenantAction::SetLimits {
                    name,
                    requests_per_minute,
                    tokens_per_minute,
                    max_queued_jobs,
                } => {
                    let l = limits(requests_per_minute, tokens_per_minute, max_queued_jobs);
                    admin::limit(&auth, &name, l)
                        .await
                        .map(|()| serde_json::json!({"name": name, "limits": l}))
                }
            },
            _ => return Err("not a key or tenant command".to_owned()),
        };
        done.map(|body| (true, body)).map_err(|e| e.to_string())
    })
}

/// Runs a one-off command and prints its JSON answer: success when it
/// says so; an error on standard error.
fn print_answer(
    command: impl std::future::Future<Output = Result<(bool, serde_json::Value), String>>,
) -> ExitCode {
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
    match runtime.block_on(command) {
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
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs an admin command against the broker's HTTP API and prints its answer.
fn admin(action: &DeadLetterAction, broker: &str) -> ExitCode {
    let http = reqwest::Client::new();
    let key = std::env::var("SWITCHYARD_API_KEY").ok();
    let request = match action {
        DeadLetterAction::List { limit } => {
            http.get(format!("{broker}/v1/admin/dead-letters?limit={limit}"))
        }
        DeadLetterAction::Replay { job_id } => {
            http.post(format!("{broker}/v1/admin/dead-letters/{job_id}/replay"))
        }
    };
    let request = match key {
        Some(key) => request.bearer_auth(key),
        None => request,
    };
    print_answer(async {
        let failed = |e: reqwest::Error| format!("broker at {broker}: {e}");
        let response = request.send().await.map_err(failed)?;
        let ok = response.status().is_success();
        let body: serde_json::Value = response.json().await.map_err(failed)?;
        Ok((ok, body))
    })
}
