use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use switchyard_runtime::Issues;

/// The `broker:` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// The API: every route a client calls.
    pub listen: SocketAddr,
    /// `/metrics`, `/healthz` and `/readyz`, apart from the API so that
    /// they are reachable only where the operator exposes this port.
    pub ops_listen: SocketAddr,
    /// `sqlite://path` (created if missing).
    pub database_url: String,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Largest file accepted by `POST /v1/files` (batch input); files are
    /// streamed to the object store, never held whole in memory.
    pub max_file_bytes: usize,
    /// All of one tenant's files (batch inputs and outputs) together; an
    /// upload past it is refused `413 file_quota_exceeded`.
    pub max_file_bytes_per_tenant: u64,
    /// Submissions handled at once from the NATS intake.
    pub intake_concurrency: usize,
    /// Most events or results written to the database in one transaction.
    pub projection_batch: usize,
    /// How often jobs recorded but never confirmed in the queue (a crash in
    /// between) are published again.
    #[serde(with = "humantime_serde")]
    pub outbox_interval: Duration,
    /// Age after which such a job counts as abandoned by its first publish.
    #[serde(with = "humantime_serde")]
    pub outbox_grace: Duration,
    /// How often jobs still waiting past their start deadline are looked for
    /// and ended `expired`.
    #[serde(with = "humantime_serde")]
    pub expiry_interval: Duration,
    /// How often running rollouts' guards are read and their steps moved.
    #[serde(with = "humantime_serde")]
    pub rollout_interval: Duration,
    /// `Retry-After` given with a 429 for a full queue.
    #[serde(with = "humantime_serde")]
    pub queue_full_retry_after: Duration,
    /// How long an `Idempotency-Key` returns the job it first made.
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// How long a call that waits for its job (the OpenAI-compatible
    /// endpoints, `Prefer: wait`) may wait before it is answered; the job
    /// goes on either way.
    #[serde(with = "humantime_serde")]
    pub sync_timeout: Duration,
    /// A streaming call whose client went away keeps its job this long,
    /// for the client to resume the stream (`GET /v1/chat/completions/{id}/stream`);
    /// not resumed by then, the job is cancelled.
    #[serde(with = "humantime_serde")]
    pub stream_resume_grace: Duration,
    /// How long a job's output is kept after it ended; then only its record
    /// (status, usage, times) stays. Webhook event records, once no longer
    /// pending, are kept as long.
    #[serde(with = "humantime_serde")]
    pub result_retention: Duration,
    /// On SIGTERM, readiness goes to 503 at once and calls in flight get
    /// this long to finish; then the intakes and background work stop,
    /// with as long again to do so. A second signal exits at once.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How long a client may take to send a request, and how many may be
    /// connected (`header_timeout`, `body_timeout`, `max_connections`).
    pub http: switchyard_runtime::http_server::HttpLimits,
    /// `GET /v1/jobs/{id}/events` streams open at once for one tenant's
    /// jobs; past it, `429`.
    pub max_event_streams_per_tenant: usize,
    pub webhooks: WebhookConfig,
    pub pii: crate::pii::PiiConfig,
    pub auth: AuthConfig,
    /// An MLflow tracking server whose registry aliases `follow:` aliases
    /// follow; none: nothing is followed.
    pub mlflow: Option<crate::models::mlflow::MlflowConfig>,
    /// A trace in the tracing UI the spans go to, `{trace_id}` standing for
    /// its id (`http://jaeger:16686/trace/{trace_id}`): the console links
    /// each job to it. None: no link.
    pub trace_link: Option<String>,
}

/// API keys. With neither `pepper` nor `pepper_file` authentication is
/// off: every caller is an admin and names its tenant (a development
/// set-up; the broker says so at start).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The server-side secret keys are hashed under; meant for
    /// `SWITCHYARD_BROKER__AUTH__PEPPER`, never the file.
    pub pepper: Option<String>,
    /// A file holding the pepper (a mounted secret).
    pub pepper_file: Option<std::path::PathBuf>,
    /// Wrong keys one client address, or one key id, may present in a
    /// minute; past them its wrong keys are answered 429 until the minute
    /// is over, so keys cannot be guessed. A valid key is always let in.
    pub max_failures_per_minute: u32,
    /// The header a trusted proxy or ingress in front writes the client's
    /// address into (`x-forwarded-for`, `x-real-ip`); its last entry, the
    /// one the proxy added, is the address guesses are counted against.
    /// Unset: the TCP peer. Set it only behind such a proxy, since a
    /// client reaching the broker directly could write any address.
    pub client_address_header: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            pepper: None,
            pepper_file: None,
            max_failures_per_minute: 20,
            client_address_header: None,
        }
    }
}

/// The shortest pepper taken: 32 bytes, as long as the HMAC's output.
const MIN_PEPPER: usize = 32;

/// Why the pepper could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PepperError {
    #[error("broker.auth.pepper_file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("the pepper must be at least {MIN_PEPPER} bytes")]
    Short,
    #[error("give broker.auth.pepper or broker.auth.pepper_file, not both")]
    Both,
}

impl AuthConfig {
    /// The pepper, or None when authentication is off.
    pub fn pepper(&self) -> Result<Option<Vec<u8>>, PepperError> {
        let text = match (&self.pepper, &self.pepper_file) {
            (Some(_), Some(_)) => return Err(PepperError::Both),
            (None, None) => return Ok(None),
            (Some(p), None) => p.clone(),
            (None, Some(path)) => {
                std::fs::read_to_string(path).map_err(|source| PepperError::File {
                    path: path.display().to_string(),
                    source,
                })?
            }
        };
        let pepper = text.trim().as_bytes().to_vec();
        if pepper.len() < MIN_PEPPER {
            return Err(PepperError::Short);
        }
        Ok(Some(pepper))
    }
}

/// The `broker.webhooks:` section: how job events reach receivers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// `whsec_` secrets that sign every delivery (a tenant may have its
    /// own); while several are listed each one signs, so that a receiver
    /// can move to a new secret without missing a delivery.
    pub secrets: Vec<String>,
    /// Receivers exempt from the address guard: CIDRs (`10.1.0.0/16`),
    /// addresses, or exact host names. Everything else must resolve to a
    /// public address.
    pub allow: Vec<String>,
    /// Wait before each retry after a failed attempt; when it runs out the
    /// delivery is given up. The default retries for 75 hours.
    #[serde(deserialize_with = "durations")]
    pub retry_schedule: Vec<Duration>,
    /// Longest one attempt may take, connection included.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts in flight at once, over all receivers.
    pub concurrency: usize,
    /// Attempts in flight at once for one tenant's receivers: a tenant
    /// whose receiver hangs holds at most these, and the others' events
    /// go out on the rest.
    pub tenant_concurrency: usize,
    /// An HTTP(S) proxy every delivery goes through. Unset (the default),
    /// none is used whatever `HTTPS_PROXY` says: the guard pins each
    /// delivery to the addresses it checked, and a proxy would resolve
    /// the name again. Set, the guard checks names and written addresses
    /// but the proxy chooses where to connect.
    pub proxy: Option<String>,
    /// How often due deliveries are looked for.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

fn durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let all: Vec<humantime_serde::Serde<Duration>> = Deserialize::deserialize(d)?;
    Ok(all.into_iter().map(|d| *d).collect())
}

impl Default for WebhookConfig {
    fn default() -> Self {
        let mins = |m: u64| Duration::from_secs(60 * m);
        Self {
            secrets: Vec::new(),
            allow: Vec::new(),
            retry_schedule: vec![
                Duration::from_secs(5),
                mins(5),
                mins(30),
                mins(120),
                mins(300),
                mins(600),
                mins(840),
                mins(1200),
                mins(1440),
            ],
            timeout: Duration::from_secs(15),
            concurrency: 32,
            tenant_concurrency: 8,
            proxy: None,
            poll_interval: Duration::from_millis(250),
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            ops_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            database_url: "sqlite://.data/switchyard.db".into(),
            max_body_bytes: 1024 * 1024,
            max_file_bytes: 512 * 1024 * 1024,
            max_file_bytes_per_tenant: 2 * 1024 * 1024 * 1024,
            intake_concurrency: 256,
            projection_batch: 512,
            outbox_interval: Duration::from_secs(5),
            outbox_grace: Duration::from_secs(10),
            expiry_interval: Duration::from_secs(1),
            rollout_interval: Duration::from_secs(5),
            queue_full_retry_after: Duration::from_secs(2),
            idempotency_window: Duration::from_secs(24 * 3600),
            sync_timeout: Duration::from_secs(600),
            stream_resume_grace: Duration::from_secs(5),
            result_retention: Duration::from_secs(24 * 3600),
            drain_timeout: Duration::from_secs(30),
            http: Default::default(),
            max_event_streams_per_tenant: 100,
            webhooks: WebhookConfig::default(),
            pii: crate::pii::PiiConfig::default(),
            auth: AuthConfig::default(),
            mlflow: None,
            trace_link: None,
        }
    }
}

impl BrokerConfig {
    pub fn validate(&self, issues: &mut Issues) {
        issues.check(
            self.database_url.starts_with("sqlite:")
                || switchyard_store::is_postgres(&self.database_url),
            "broker.database_url",
            "(hidden)",
            "must be a sqlite: or postgres:// URL",
        );
        issues.check(
            (1024..=64 * 1024 * 1024).contains(&self.max_body_bytes),
            "broker.max_body_bytes",
            self.max_body_bytes,
            "must be between 1 KiB and 64 MiB",
        );
        issues.check(
            (1024..=16 * 1024 * 1024 * 1024).contains(&self.max_file_bytes),
            "broker.max_file_bytes",
            self.max_file_bytes,
            "must be between 1 KiB and 16 GiB",
        );
        issues.check(
            (1..=10_000).contains(&self.intake_concurrency),
            "broker.intake_concurrency",
            self.intake_concurrency,
            "must be between 1 and 10000",
        );
        issues.check(
            (1..=10_000).contains(&self.projection_batch),
            "broker.projection_batch",
            self.projection_batch,
            "must be between 1 and 10000",
        );
        issues.check(
            !self.outbox_interval.is_zero(),
            "broker.outbox_interval",
            self.outbox_interval,
            "must be positive",
        );
        issues.check(
            !self.expiry_interval.is_zero(),
            "broker.expiry_interval",
            self.expiry_interval,
            "must be positive",
        );
        if let Some(mlflow) = &self.mlflow {
            issues.check(
                url::Url::parse(&mlflow.tracking_uri)
                    .is_ok_and(|u| matches!(u.scheme(), "http" | "https")),
                "broker.mlflow.tracking_uri",
                &mlflow.tracking_uri,
                "must be an http(s) URL",
            );
            issues.check(
                !mlflow.poll_interval.is_zero(),
                "broker.mlflow.poll_interval",
                mlflow.poll_interval,
                "must be positive",
            );
        }
        if let Some(link) = &self.trace_link {
            issues.check(
                link.contains("{trace_id}")
                    && url::Url::parse(link).is_ok_and(|u| matches!(u.scheme(), "http" | "https")),
                "broker.trace_link",
                link,
                "must be an http(s) URL with {trace_id} in it",
            );
        }
        issues.check(
            !self.rollout_interval.is_zero(),
            "broker.rollout_interval",
            self.rollout_interval,
            "must be positive",
        );
        issues.check(
            !self.result_retention.is_zero(),
            "broker.result_retention",
            self.result_retention,
            "must be positive",
        );
        if let Some(h) = &self.auth.client_address_header {
            issues.check(
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "broker.auth.client_address_header",
                h,
                "must be a header name",
            );
        }
        issues.check(
            !self.http.header_timeout.is_zero()
                && !self.http.body_timeout.is_zero()
                && self.http.max_connections > 0,
            "broker.http",
            self.http,
            "timeouts and max_connections must be positive",
        );
        issues.check(
            self.max_event_streams_per_tenant > 0,
            "broker.max_event_streams_per_tenant",
            self.max_event_streams_per_tenant,
            "must be positive",
        );
        if let Err(e) = self.auth.pepper() {
            issues.push("broker.auth", "(hidden)", &e.to_string());
        }
        if let Err(e) = switchyard_pii::Scanner::new(&self.pii.custom) {
            issues.push("broker.pii.custom", "", &e.to_string());
        }
        let w = &self.webhooks;
        for (i, secret) in w.secrets.iter().enumerate() {
            if let Err(e) = crate::webhooks::Secret::parse(secret) {
                issues.push(&format!("broker.webhooks.secrets[{i}]"), "(hidden)", &e);
            }
        }
        for entry in &w.allow {
            issues.check(
                crate::webhooks::AllowEntry::parse(entry).is_some(),
                "broker.webhooks.allow",
                entry,
                "must be a CIDR, an IP address or a host name",
            );
        }
        issues.check(
            !w.retry_schedule.is_empty(),
            "broker.webhooks.retry_schedule",
            "[]",
            "must list at least one wait",
        );
        issues.check(
            !w.timeout.is_zero() && (1..=1000).contains(&w.concurrency),
            "broker.webhooks",
            (w.timeout, w.concurrency),
            "timeout must be positive and concurrency between 1 and 1000",
        );
        issues.check(
            !w.poll_interval.is_zero(),
            "broker.webhooks.poll_interval",
            w.poll_interval,
            "must be positive",
        );
        issues.check(
            (1..=w.concurrency).contains(&w.tenant_concurrency),
            "broker.webhooks.tenant_concurrency",
            w.tenant_concurrency,
            "must be between 1 and broker.webhooks.concurrency",
        );
        if let Some(proxy) = &w.proxy {
            issues.check(
                reqwest::Proxy::all(proxy).is_ok(),
                "broker.webhooks.proxy",
                proxy,
                "must be a proxy URL",
            );
        }
    }
}
