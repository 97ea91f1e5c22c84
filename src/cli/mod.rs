//! The commands that administer a running installation: keys and tenants
//! on the broker's store, dead letters and the live model registry through
//! the broker's admin API.

pub mod models;

use std::process::ExitCode;

use clap::Subcommand;
use switchyard_broker::BrokerConfig;
use switchyard_runtime::Tenants;

#[derive(Subcommand)]
pub enum KeyAction {
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
pub enum TenantAction {
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
pub enum DeadLetterAction {
    /// Prints the dead letters as JSON.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Queues the job again, with a fresh attempt budget.
    Replay { job_id: String },
}

/// A key or tenant command, run on the broker's store.
pub enum Access {
    Keys(KeyAction),
    Tenants(TenantAction),
}

/// Runs a key or tenant command on the broker's store and prints its answer.
pub fn access(command: Access, broker: &BrokerConfig, tenants: &Tenants) -> ExitCode {
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
            Access::Keys(action) => match action {
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
            Access::Tenants(action) => match action {
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
        };
        done.map(|body| (true, body)).map_err(|e| e.to_string())
    })
}

/// Runs a one-off command and prints its JSON answer: success when it
/// says so; an error on standard error.
pub fn print_answer(
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

/// The broker's admin API, as the configuration reaches it: at
/// `broker.listen`, with the key in `SWITCHYARD_API_KEY` when
/// authentication is on.
pub struct Api {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Api {
    pub fn new(broker: &BrokerConfig) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: format!("http://{}", broker.listen),
            key: std::env::var("SWITCHYARD_API_KEY").ok(),
        }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// Sends `request`: whether the broker said yes, and its JSON answer.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(bool, serde_json::Value), String> {
        let failed = |e: reqwest::Error| format!("broker at {}: {e}", self.base);
        let response = request.send().await.map_err(failed)?;
        let ok = response.status().is_success();
        let body: serde_json::Value = response.json().await.map_err(failed)?;
        Ok((ok, body))
    }
}

/// Lists or replays dead letters through the broker's API.
pub fn dead_letters(action: &DeadLetterAction, broker: &BrokerConfig) -> ExitCode {
    let api = Api::new(broker);
    let request = match action {
        DeadLetterAction::List { limit } => api.request(
            reqwest::Method::GET,
            &format!("/v1/admin/dead-letters?limit={limit}"),
        ),
        DeadLetterAction::Replay { job_id } => api.request(
            reqwest::Method::POST,
            &format!("/v1/admin/dead-letters/{job_id}/replay"),
        ),
    };
    print_answer(api.send(request))
}
