//! Test harness: a private `nats-server` per test (free port, temporary store,
//! killed on drop) and the real `switchyard` binary for each component.

mod failure;
mod grants;
pub mod proxy;
mod servers;
pub use servers::Server;
mod store;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;

/// A port free now, below the kernel's ephemeral range (32768 and up on
/// Linux), so that no outgoing connection (to NATS, PostgreSQL, an engine)
/// takes it before the process it is meant for binds it. Tests in one
/// binary take turns from one counter; binaries start apart by process id.
/// Each port comes with the three after it free too, which Triton takes
/// for gRPC and metrics.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id() * 97 % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    const BLOCK: u32 = 4;
    for _ in 0..SPAN / BLOCK {
        let first = LOW + NEXT.fetch_add(BLOCK, Ordering::SeqCst) % SPAN;
        let port = u16::try_from(first).expect("port");
        let free = (0..BLOCK as u16).all(|i| TcpListener::bind(("127.0.0.1", port + i)).is_ok());
        if free {
            return port;
        }
    }
    panic!("no free port below the ephemeral range")
}

/// Read when the test runs, not when it is built: a cached build may come
/// from a checkout at another path.
pub fn repo_root() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
}

/// The nats-server to test against: `$NATS_SERVER_BIN`, the one the
/// project scripts install under `.tools/`, or the one on PATH.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return p.into();
    }
    let local = repo_root().join(".tools/venv/bin/nats-server");
    if local.exists() {
        return local;
    }
    "nats-server".into()
}

/// The project's Python (with nats-py), installed by the scripts.
pub fn python_bin() -> PathBuf {
    repo_root().join(".tools/venv/bin/python")
}

/// Runs `tests/sdk/<script>` with `args`; what it printed, as JSON.
pub fn sdk_script(script: &str, args: &[String]) -> serde_json::Value {
    python_script(&format!("sdk/{script}"), args)
}

/// Runs `tests/<script>` with `args`, which must succeed; what it printed,
/// as JSON.
pub fn python_script(script: &str, args: &[String]) -> serde_json::Value {
    let out = Command::new(python_bin())
        .arg(repo_root().join("tests").join(script))
        .args(args)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{script}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from the script")
}

/// Polls `probe` until it gives `Ok`, every `every`; past `timeout` the
/// test fails with what it last gave instead (its `Err`). Every test that
/// waits for something to become so waits with this.
pub async fn eventually<T, F, Fut>(timeout: Duration, every: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "still not so after {timeout:?}: {seen}"
            ),
        }
        tokio::time::sleep(every).await;
    }
}

/// `Ok(())` when `done`, else what was seen instead.
pub fn so(done: bool, seen: impl FnOnce() -> String) -> Result<(), String> {
    match done {
        true => Ok(()),
        false => Err(seen()),
    }
}

/// The blocking form of [`eventually`], for waits outside async code.
fn wait_until<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A listen address (setting `var`) on a port the system picks: the
/// process reports it. For what need not keep its address across a
/// restart: the broker and NATS keep theirs (a reserved port below the
/// ephemeral range, which no outgoing connection can take meanwhile).
pub fn any_port(var: &'static str) -> (&'static str, String) {
    (var, "127.0.0.1:0".to_owned())
}

/// A child process that is killed when dropped.
pub struct Proc {
    child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn signal(&mut self, sig: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        let _ = kill(pid, sig);
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.signal(Signal::SIGTERM);
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let name = self.name.clone();
        wait_until(&format!("{name} to exit"), timeout, || self.exited())
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port a component said it listens on (`listening on
/// 127.0.0.1:<port>`), once its log says so.
fn reported_port(log: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains("listening on "))?;
    let at = line.rfind("127.0.0.1:")? + "127.0.0.1:".len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Proc {
    let log = log_dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).expect("log file");
    let err = file.try_clone().expect("log file");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Proc {
        child,
        name: name.to_owned(),
        log,
    }
}

/// A private JetStream server, or a cluster of them on loopback ports.
pub struct Nats {
    servers: Vec<NatsNode>,
    /// The first server's client port.
    pub port: u16,
    /// Started with `deploy/nats/accounts.conf`: clients need a user.
    accounts: bool,
}

/// One nats-server of a `Nats`.
struct NatsNode {
    proc: Proc,
    port: u16,
    store: TempDir,
    /// A cluster member's configuration file; a lone server takes flags.
    conf: Option<PathBuf>,
}

/// The passwords `deploy/nats/accounts.conf` reads from the environment.
pub const NATS_USERS: [(&str, &str, &str); 7] = [
    ("broker", "BROKER_NATS_PASSWORD", "broker-secret"),
    ("workflows", "WORKFLOWS_NATS_PASSWORD", "workflows-secret"),
    ("worker", "WORKER_NATS_PASSWORD", "worker-secret"),
    (
        "dispatcher",
        "DISPATCHER_NATS_PASSWORD",
        "dispatcher-secret",
    ),
    (
        "agent-node-a",
        "AGENT_NODE_A_NATS_PASSWORD",
        "node-a-secret",
    ),
    ("acme", "ACME_NATS_PASSWORD", "acme-secret"),
    ("globex", "GLOBEX_NATS_PASSWORD", "globex-secret"),
];

/// The password of one of `NATS_USERS`.
fn password_of(user: &str) -> &'static str {
    NATS_USERS
        .iter()
        .find(|(name, _, _)| *name == user)
        .map(|(_, _, password)| *password)
        .expect("a user of deploy/nats/accounts.conf")
}

impl Nats {
    /// The first server's process id.
    pub fn pid(&self) -> u32 {
        self.servers[0].proc.child.id()
    }

    pub fn start() -> Nats {
        Self::start_as(false)
    }

    /// A server with the accounts of `deploy/nats/accounts.conf`.
    pub fn start_with_accounts() -> Nats {
        Self::start_as(true)
    }

    fn start_as(accounts: bool) -> Nats {
        let store = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let proc = Self::spawn(port, store.path(), None, accounts);
        Nats {
            servers: vec![NatsNode {
                proc,
                port,
                store,
                conf: None,
            }],
            port,
            accounts,
        }
    }

    /// `n` servers in one cluster, each syncing every write to disk before
    /// it acknowledges (`sync_interval: always`), as production runs.
    pub fn start_cluster(n: usize) -> Nats {
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route, _)| format!("nats://127.0.0.1:{route}"))
            .collect();
        let servers = ports
            .iter()
            .enumerate()
            .map(|(i, (port, route, monitor))| {
                let store = tempfile::tempdir().expect("tempdir");
                let conf = store.path().join("nats.conf");
                let text = format!(
                    r#"server_name: n{i}
listen: 127.0.0.1:{port}
http: 127.0.0.1:{monitor}
jetstream {{ store_dir: "{dir}", sync_interval: always }}
cluster {{ name: sy, listen: 127.0.0.1:{route}, routes: [{routes}] }}
"#,
                    dir = store.path().join("js").display(),
                    routes = routes.join(", "),
                );
                std::fs::write(&conf, text).expect("nats.conf");
                let proc = Self::spawn(*port, store.path(), Some(&conf), false);
                NatsNode {
                    proc,
                    port: *port,
                    store,
                    conf: Some(conf),
                }
            })
            .collect();
        // Streams can be made once the cluster has elected its leaders.
        for (_, _, monitor) in &ports {
            wait_until(
                "the NATS cluster to be healthy",
                Duration::from_secs(30),
                || answers_ok(*monitor, "/healthz").then_some(()),
            );
        }
        Nats {
            servers,
            port: ports[0].0,
            accounts: false,
        }
    }

    fn spawn(port: u16, store: &Path, conf: Option<&Path>, accounts: bool) -> Proc {
        let mut cmd = Command::new(nats_server_bin());
        if let Some(conf) = conf {
            cmd.arg("-c").arg(conf);
        } else {
            if accounts {
                cmd.arg("-c")
                    .arg(repo_root().join("deploy/nats/accounts.conf"));
                for (_, var, password) in NATS_USERS {
                    cmd.env(var, password);
                }
            }
            cmd.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(store);
        }
        let proc = spawn(&format!("nats-server-{port}"), cmd, store);
        wait_until("nats-server to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        proc
    }

    /// The URL the components use: the broker's user's, when the server
    /// has accounts (each other component is given its own when it
    /// starts); every member's, for a cluster.
    pub fn url(&self) -> String {
        match self.accounts {
            true => self.url_as("broker"),
            false => self
                .servers
                .iter()
                .map(|s| format!("nats://127.0.0.1:{}", s.port))
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// The URL of component `subcommand`'s own user when the server has
    /// accounts: a node's agent is `agent-<node>`.
    fn url_of_component(&self, subcommand: &str, name: &str) -> Option<String> {
        let user = match subcommand {
            "agent" => format!("agent-{name}"),
            other => other.to_owned(),
        };
        self.accounts.then(|| self.url_as(&user))
    }

    /// The URL of one of `NATS_USERS`.
    pub fn url_as(&self, user: &str) -> String {
        let password = password_of(user);
        format!("nats://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// Stops every server (SIGTERM, clean shutdown).
    pub fn stop(&mut self) {
        for s in &mut self.servers {
            s.proc.terminate(Duration::from_secs(20));
        }
    }

    /// Starts stopped servers again on the same ports and stores.
    pub fn resume(&mut self) {
        for i in 0..self.servers.len() {
            self.resume_server(i);
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.resume();
    }

    /// Kills server `i` with SIGKILL.
    pub fn kill_server(&mut self, i: usize) {
        self.servers[i].proc.kill();
    }

    /// Starts server `i` again on its port and store.
    pub fn resume_server(&mut self, i: usize) {
        let s = &mut self.servers[i];
        s.proc = Self::spawn(s.port, s.store.path(), s.conf.as_deref(), self.accounts);
    }

    pub async fn client(&self) -> async_nats::Client {
        match self.accounts {
            true => self.client_as("broker").await,
            false => {
                let servers: Vec<async_nats::ServerAddr> = self
                    .url()
                    .split(',')
                    .map(|u| u.parse().expect("a server URL"))
                    .collect();
                async_nats::connect(servers).await.expect("nats connect")
            }
        }
    }

    /// A client of server `i`, the one it connects to first.
    pub async fn client_of(&self, i: usize) -> async_nats::Client {
        async_nats::connect(format!("nats://127.0.0.1:{}", self.servers[i].port))
            .await
            .expect("nats connect")
    }

    /// A client as one of `NATS_USERS`.
    pub async fn client_as(&self, user: &str) -> async_nats::Client {
        async_nats::ConnectOptions::with_user_and_password(user.into(), password_of(user).into())
            .connect(format!("127.0.0.1:{}", self.port))
            .await
            .expect("nats connect")
    }
}

/// Knobs of a test stack; everything else uses the defaults a user gets.
#[derive(Clone)]
pub struct StackOptions {
    pub slots: u32,
    pub base_latency: &'static str,
    pub per_token_latency: &'static str,
    pub agent_ack_wait: &'static str,
    pub max_queued: u32,
    /// YAML list of simulated-engine faults for every agent.
    pub faults: &'static str,
    pub duplicate_window: &'static str,
    pub aging_bound: &'static str,
    /// YAML list of tenants and their weights.
    pub tenants: &'static str,
    /// More entries for the model registry (YAML list items, indented by two).
    pub extra_models: &'static str,
    pub placement: &'static str,
    pub prefetch_per_slot: u32,
    /// More settings of the `broker:` section (YAML, indented by two).
    pub broker_extra: &'static str,
    /// NATS with the accounts of `deploy/nats/accounts.conf`.
    pub nats_accounts: bool,
    /// Three NATS servers in a cluster, and streams with three replicas.
    pub nats_cluster: bool,
    /// YAML list of workflow definitions.
    pub workflows: &'static str,
    /// YAML list of model aliases.
    pub aliases: &'static str,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            slots: 16,
            base_latency: "2ms",
            per_token_latency: "0ms",
            agent_ack_wait: "30s",
            max_queued: 100_000,
            faults: "[]",
            duplicate_window: "10m",
            aging_bound: "60s",
            tenants: "[]",
            extra_models: "",
            placement: "least_loaded",
            prefetch_per_slot: 1,
            broker_extra: "",
            nats_accounts: false,
            nats_cluster: false,
            workflows: "[]",
            aliases: "[]",
        }
    }
}

/// The `engine:` block of an agent driving the simulated engine.
fn simulated_engine(opts: &StackOptions, faults: &str) -> String {
    format!(
        r#"
    kind: simulated
    models: [{CHAT_MODEL}, {TEXT_MODEL}]
    slots: {slots}
    base_latency: {base}
    per_token_latency: {per_token}
    faults: {faults}"#,
        slots = opts.slots,
        base = opts.base_latency,
        per_token = opts.per_token_latency,
    )
}

/// Where a stack's job store lives: a SQLite file in its folder, or, with
/// `SY_TEST_POSTGRES` set to a server's URL, a database of its own
/// on that server (the broker makes it).
fn database_url(dir: &Path) -> String {
    match std::env::var("SY_TEST_POSTGRES") {
        Ok(server) => format!(
            "{}/sy_{}",
            server.trim_end_matches('/'),
            uuid::Uuid::now_v7().simple()
        ),
        Err(_) => format!("sqlite://{}", dir.join("jobs.db").display()),
    }
}

fn config_yaml(
    opts: &StackOptions,
    nats_url: &str,
    broker_port: u16,
    database_url: &str,
    engine: &str,
) -> String {
    format!(
        r#"
nats:
  url: {nats_url}
  max_queued_per_queue: {max_queued}
  replicas: {replicas}
  duplicate_window: {duplicate_window}
models:
  - name: {CHAT_MODEL}
    kind: chat
    max_tokens: 64
    default_max_tokens: 8
    max_input_bytes: 4096
  - name: {TEXT_MODEL}
    kind: completion
    max_tokens: 64
    default_max_tokens: 8
{extra_models}
aliases: {aliases}
tenants: {tenants}
workflows: {workflows}
workflow_engine:
  lease: 3s
  allow: [127.0.0.1/32]
broker:
  listen: 127.0.0.1:{broker_port}
  database_url: {database_url}
  max_body_bytes: 65536
  outbox_interval: 1s
  outbox_grace: 2s
{broker_extra}
dispatcher:
  node_timeout: 3s
  retry_backoff: 50ms
  retry_backoff_max: 200ms
  aging_bound: {aging_bound}
  placement: {placement}
  prefetch_per_slot: {prefetch}
agent:
  node_id: unset
  heartbeat_interval: 500ms
  ack_wait: {ack_wait}
  drain_timeout: 10s
  engine: {engine}
"#,
        ack_wait = opts.agent_ack_wait,
        extra_models = opts.extra_models,
        max_queued = opts.max_queued,
        duplicate_window = opts.duplicate_window,
        aging_bound = opts.aging_bound,
        tenants = opts.tenants,
        workflows = opts.workflows,
        aliases = opts.aliases,
        placement = opts.placement,
        prefetch = opts.prefetch_per_slot,
        broker_extra = opts.broker_extra,
        replicas = if opts.nats_cluster { 3 } else { 1 },
    )
}

/// NATS plus any of broker, dispatcher and agents, from one config file.
pub struct Stack {
    pub nats: Nats,
    pub dir: TempDir,
    config: PathBuf,
    opts: StackOptions,
    pub broker_port: u16,
    pub database_url: String,
    procs: HashMap<String, (Proc, u16)>,
    pub http: reqwest::Client,
}

pub const CHAT_MODEL: &str = "tiny-chat";
pub const TEXT_MODEL: &str = "tiny-text";

impl Stack {
    pub fn new(opts: StackOptions) -> Stack {
        failure::remember_panics();
        let nats = match (opts.nats_accounts, opts.nats_cluster) {
            (true, _) => Nats::start_with_accounts(),
            (false, true) => Nats::start_cluster(3),
            (false, false) => Nats::start(),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let broker_port = free_port();
        let config = dir.path().join("switchyard.yaml");
        let engine = simulated_engine(&opts, opts.faults);
        let database_url = database_url(dir.path());
        let yaml = config_yaml(&opts, &nats.url(), broker_port, &database_url, &engine);
        std::fs::write(&config, yaml).expect("config");
        Stack {
            nats,
            dir,
            config,
            opts,
            broker_port,
            database_url,
            procs: HashMap::new(),
            http: reqwest::Client::new(),
        }
    }

    /// A whole stack: broker, dispatcher and one agent per name.
    pub fn running(opts: StackOptions, agents: &[&str]) -> Stack {
        let mut stack = Stack::new(opts);
        stack.start_broker();
        stack.start_dispatcher();
        for node in agents {
            stack.start_agent(node);
        }
        stack
    }

    /// Starts `switchyard <subcommand>` as `name` and waits until it is
    /// ready; its port. With `port` 0 (its `env` setting its listen address
    /// to port 0) it binds a port the system picks and reports it.
    pub fn launch(
        &mut self,
        name: &str,
        subcommand: &str,
        port: u16,
        env: &[(&str, String)],
    ) -> u16 {
        let config = self.config.clone();
        self.launch_with(name, &config, subcommand, (port, is_ready), env)
    }

    fn launch_with(
        &mut self,
        name: &str,
        config: &Path,
        subcommand: &str,
        (port, up): (u16, fn(u16) -> bool),
        env: &[(&str, String)],
    ) -> u16 {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.arg("--config").arg(config).arg(subcommand);
        if let Some(url) = self.nats.url_of_component(subcommand, name) {
            cmd.env("SWITCHYARD_NATS__URL", url);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proc = spawn(name, cmd, self.dir.path());
        let port = wait_until(&format!("{name} to be up"), Duration::from_secs(30), || {
            if let Some(status) = proc.exited() {
                let log = std::fs::read_to_string(&proc.log).unwrap_or_default();
                panic!("{name} exited with {status}:\n{log}");
            }
            let port = match port {
                0 => reported_port(&proc.log)?,
                port => port,
            };
            up(port).then_some(port)
        });
        self.procs.insert(name.to_owned(), (proc, port));
        port
    }

    /// Replaces text in the configuration file, for values known only once
    /// the stack exists (a receiver's port); processes started afterwards
    /// read the new file.
    pub fn rewrite_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        assert!(text.contains(from), "{from} is not in the configuration");
        std::fs::write(&self.config, text.replace(from, to)).expect("config");
    }

    /// The broker, on the stack's broker port: clients hold its address,
    /// and a broker restarted in a test comes back on it.
    pub fn start_broker(&mut self) {
        self.launch_broker("broker", &[]);
    }

    /// Starts a broker as `name` with more settings in `env`; its ops port
    /// (probes and metrics), which the system picks. Its API is on the
    /// stack's broker port unless `env` says otherwise.
    pub fn launch_broker(&mut self, name: &str, env: &[(&str, String)]) -> u16 {
        let mut env = env.to_vec();
        env.push(any_port("SWITCHYARD_BROKER__OPS_LISTEN"));
        self.launch(name, "broker", 0, &env)
    }

    pub fn start_dispatcher(&mut self) {
        self.start_dispatcher_with(&[]);
    }

    /// The dispatcher with more settings in `env`.
    pub fn start_dispatcher_with(&mut self, env: &[(&str, String)]) {
        let mut env = env.to_vec();
        env.push(any_port("SWITCHYARD_DISPATCHER__LISTEN"));
        self.launch("dispatcher", "dispatcher", 0, &env);
    }

    /// A workflow engine, as `name`, with more settings in `env`.
    pub fn start_workflows(&mut self, name: &str, env: &[(&str, String)]) {
        let mut env = env.to_vec();
        env.push(any_port("SWITCHYARD_WORKFLOW_ENGINE__LISTEN"));
        self.launch(name, "workflows", 0, &env);
    }

    /// An agent whose engine has its own fault rules (a YAML list).
    pub fn start_faulty_agent(&mut self, node: &str, faults: &str) {
        let engine = simulated_engine(&self.opts, faults);
        self.start_agent_on(node, &engine);
    }

    /// An agent with its own `engine:` block (YAML, indented by four; lines
    /// after it indented by two are more of the agent's settings).
    pub fn start_agent_on(&mut self, node: &str, engine: &str) {
        self.agent_on(node, engine, is_ready);
    }

    /// Starts agent `node` without waiting for its engine to serve: its
    /// process answers, its readiness is its engine's.
    pub fn start_agent_unready(&mut self, node: &str, engine: &str) {
        self.agent_on(node, engine, |port| answers_ok(port, "/healthz"));
    }

    fn agent_on(&mut self, node: &str, engine: &str, up: fn(u16) -> bool) {
        let yaml = config_yaml(
            &self.opts,
            &self.nats.url(),
            self.broker_port,
            &self.database_url,
            engine,
        );
        let path = self.dir.path().join(format!("{node}.yaml"));
        std::fs::write(&path, yaml).expect("config");
        self.launch_with(
            node,
            &path,
            "agent",
            (0, up),
            &[
                ("SWITCHYARD_AGENT__NODE_ID", node.to_owned()),
                any_port("SWITCHYARD_AGENT__LISTEN"),
            ],
        );
    }

    /// A fast simulated agent serving `models` (a YAML list's items).
    pub fn start_simulated_agent(&mut self, node: &str, models: &str) {
        let engine = format!(
            "
    kind: simulated
    models: [{models}]
    slots: 4
    base_latency: 1ms
    per_token_latency: 0ms"
        );
        self.start_agent_on(node, &engine);
    }

    pub fn start_agent(&mut self, node: &str) {
        self.start_agent_with(node, &[]);
    }

    /// An agent with more configuration overrides, such as its engine's
    /// `SWITCHYARD_AGENT__ENGINE__SLOTS`.
    pub fn start_agent_with(&mut self, node: &str, overrides: &[(&str, String)]) {
        let mut env = vec![
            ("SWITCHYARD_AGENT__NODE_ID", node.to_owned()),
            any_port("SWITCHYARD_AGENT__LISTEN"),
        ];
        env.extend_from_slice(overrides);
        self.launch(node, "agent", 0, &env);
    }

    pub fn proc(&mut self, name: &str) -> &mut Proc {
        &mut self.procs.get_mut(name).expect("started").0
    }

    /// Removes the process from the stack after killing it with SIGKILL.
    pub fn sigkill(&mut self, name: &str) {
        if let Some((mut p, _)) = self.procs.remove(name) {
            p.kill();
        }
    }

    /// A component's process id; `nats-server` names the (first) server.
    pub fn pid_of(&self, name: &str) -> u32 {
        match name {
            "nats-server" => self.nats.pid(),
            name => self.procs[name].0.child.id(),
        }
    }

    /// The configuration file every component of the stack reads.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn port_of(&self, name: &str) -> u16 {
        self.procs.get(name).expect("started").1
    }

    pub fn log_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Everything the job store holds, as bytes to search: the SQLite
    /// files, or a dump of the PostgreSQL database.
    pub fn stored_bytes(&self) -> Vec<u8> {
        if self.database_url.starts_with("postgres") {
            let out = Command::new("pg_dump")
                .args(["--data-only", &self.database_url])
                .output()
                .expect("pg_dump");
            assert!(out.status.success(), "pg_dump: {out:?}");
            return out.stdout;
        }
        let mut bytes = Vec::new();
        for file in ["jobs.db", "jobs.db-wal"] {
            bytes.extend(std::fs::read(self.dir.path().join(file)).unwrap_or_default());
        }
        bytes
    }

    /// Runs `switchyard <args>` with this stack's configuration.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.cli_env(args, &[])
    }

    /// Runs `switchyard <args>` with this stack's configuration and `env`.
    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("run switchyard")
    }

    /// The Prometheus text a component serves.
    pub async fn metrics_text(&self, name: &str) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.port_of(name));
        let r = self.http.get(url).send().await.expect("GET /metrics");
        r.text().await.expect("metrics body")
    }

    /// The sum of a component's samples whose line starts with `metric`
    /// (a name, or a name with labels); 0 when there are none.
    pub async fn metric(&self, name: &str, metric: &str) -> f64 {
        let text = self.metrics_text(name).await;
        text.lines()
            .filter(|l| l.starts_with(metric))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The status `GET /readyz` answers on a component's ops port.
    pub async fn readyz(&self, name: &str) -> u16 {
        let url = format!("http://127.0.0.1:{}/readyz", self.port_of(name));
        self.http.get(url).send().await.unwrap().status().as_u16()
    }

    /// Waits until agent `node` runs at least one job.
    pub async fn wait_running(&self, node: &str) {
        // Real engines on a shared CPU can be slow to take a request: three
        // vLLM servers warming up on two cores took over a minute once.
        let running = "switchyard_agent_running_jobs";
        self.wait_metric(node, running, Duration::from_secs(180), |n| n >= 1.0)
            .await;
    }

    /// Waits until `metric` of component `name` reads a value `ok` takes.
    pub async fn wait_metric(
        &self,
        name: &str,
        metric: &str,
        timeout: Duration,
        ok: impl Fn(f64) -> bool,
    ) {
        eventually(timeout, Duration::from_millis(20), || async {
            let value = self.metric(name, metric).await;
            so(ok(value), || format!("{name}'s {metric} reads {value}"))
        })
        .await;
    }

    pub fn broker_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.broker_port)
    }

    /// Submits over HTTP and returns the job id (expects 202).
    pub async fn submit_http(&self, body: &Value) -> String {
        let r = self
            .http
            .post(self.broker_url("/v1/jobs"))
            .json(body)
            .send()
            .await
            .expect("POST /v1/jobs");
        assert_eq!(r.status(), 202, "submit: {:?}", r.text().await);
        let v: Value = r.json().await.expect("json");
        v["id"].as_str().expect("id").to_owned()
    }

    /// `POST /v1/jobs/{id}/cancel`; the status it answered.
    pub async fn cancel_job(&self, id: &str) -> u16 {
        self.http
            .post(self.broker_url(&format!("/v1/jobs/{id}/cancel")))
            .send()
            .await
            .expect("POST cancel")
            .status()
            .as_u16()
    }

    pub async fn get_job(&self, id: &str) -> (u16, Value) {
        self.get_json(&format!("/v1/jobs/{id}")).await
    }

    /// `GET` on the broker: the body as text, whatever the status.
    pub async fn get_text(&self, path: &str) -> String {
        self.http
            .get(self.broker_url(path))
            .send()
            .await
            .expect("GET")
            .text()
            .await
            .expect("a body")
    }

    /// `GET` on the broker: the status and the JSON body (null if none).
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.broker_url(path))
            .send()
            .await
            .expect("GET");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls until every job has a final status; returns their records.
    pub async fn wait_finished(&self, ids: &[String], timeout: Duration) -> HashMap<String, Value> {
        self.wait_finished_as(ids, &["succeeded", "failed"], timeout)
            .await
    }

    /// Polls until every job has one of `finals` as its status.
    pub async fn wait_finished_as(
        &self,
        ids: &[String],
        finals: &[&str],
        timeout: Duration,
    ) -> HashMap<String, Value> {
        use futures::StreamExt;
        let done = std::sync::Mutex::new(HashMap::new());
        eventually(timeout, Duration::from_millis(100), || async {
            let pending: Vec<String> = {
                let done = done.lock().unwrap();
                ids.iter()
                    .filter(|id| !done.contains_key(*id))
                    .cloned()
                    .collect()
            };
            let polled: Vec<(String, (u16, Value))> = futures::stream::iter(&pending)
                .map(|id| async move { (id.clone(), self.get_job(id).await) })
                .buffer_unordered(32)
                .collect()
                .await;
            let mut still = Vec::new();
            let mut done = done.lock().unwrap();
            for (id, (_, v)) in polled {
                if v["status"].as_str().is_some_and(|s| finals.contains(&s)) {
                    done.insert(id, v);
                } else {
                    still.push(v);
                }
            }
            so(still.is_empty(), || {
                format!(
                    "{} of {} jobs not finished; first: {}",
                    still.len(),
                    ids.len(),
                    still[0]
                )
            })
        })
        .await;
        done.into_inner().unwrap()
    }
}

impl Drop for Stack {
    /// On a failing test, the components' logs are what explains it.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for name in self.procs.keys() {
                let log = self.log_of(name);
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- {name} (last lines) ----");
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
            if let Some(message) = failure::last_panic() {
                eprintln!("---- the test failed (said again after the logs) ----\n{message}");
            }
        }
    }
}

/// What the simulated engine answers for a chat job: the prompt's words
/// repeated, in order, up to `max_tokens` words.
pub fn expected_echo(prompt: &str, max_tokens: usize) -> String {
    let words: Vec<&str> = prompt.split_whitespace().collect();
    words
        .iter()
        .cycle()
        .take(max_tokens)
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Counts, per job id, the results published on `sy.results.*` as a plain
/// subscriber sees them: a publish the `RESULTS` stream refused (a stale
/// attempt's, as the docs describe) among them. `stored` tells what the
/// stream kept, which is what a user is delivered.
pub struct ResultCounter {
    js: async_nats::jetstream::Context,
    counts: std::sync::Arc<std::sync::Mutex<HashMap<String, u32>>>,
    first: std::sync::Arc<std::sync::Mutex<HashMap<String, Instant>>>,
    /// Per job, a hash of each different result payload seen.
    payloads: std::sync::Arc<std::sync::Mutex<HashMap<String, std::collections::HashSet<u64>>>>,
    order: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ResultCounter {
    pub async fn start(client: &async_nats::Client) -> ResultCounter {
        use futures::StreamExt;
        let mut sub = client.subscribe("sy.results.*").await.expect("subscribe");
        client.flush().await.expect("flush");
        let counts = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let first = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
        let payloads = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
        let (c, o, f, p) = (
            counts.clone(),
            order.clone(),
            first.clone(),
            payloads.clone(),
        );
        let task = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let id = msg
                    .subject
                    .as_str()
                    .trim_start_matches("sy.results.")
                    .to_owned();
                *c.lock().expect("lock").entry(id.clone()).or_insert(0) += 1;
                f.lock()
                    .expect("lock")
                    .entry(id.clone())
                    .or_insert_with(Instant::now);
                let hash = {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    msg.payload.hash(&mut h);
                    h.finish()
                };
                p.lock()
                    .expect("lock")
                    .entry(id.clone())
                    .or_insert_with(std::collections::HashSet::new)
                    .insert(hash);
                o.lock().expect("lock").push(id);
            }
        });
        ResultCounter {
            js: async_nats::jetstream::new(client.clone()),
            counts,
            first,
            payloads,
            order,
            task,
        }
    }

    /// Job ids in the order their results arrived.
    pub fn order(&self) -> Vec<String> {
        self.order.lock().expect("lock").clone()
    }

    pub fn snapshot(&self) -> HashMap<String, u32> {
        self.counts.lock().expect("lock").clone()
    }

    /// How many different results each job had: a result published again
    /// (the same bytes, after a lost acknowledgement) counts once.
    pub fn different_results(&self) -> HashMap<String, usize> {
        self.payloads
            .lock()
            .expect("lock")
            .iter()
            .map(|(id, set)| (id.clone(), set.len()))
            .collect()
    }

    /// How many results the `RESULTS` stream holds for each job with any.
    pub async fn stored(&self) -> HashMap<String, usize> {
        use futures::TryStreamExt;
        self.js
            .get_stream(switchyard_schemas::subjects::RESULTS_STREAM)
            .await
            .expect("the RESULTS stream")
            .info_with_subjects("sy.results.*")
            .await
            .expect("the RESULTS stream's subjects")
            .map_ok(|(subject, n)| (subject.trim_start_matches("sy.results.").to_owned(), n))
            .try_collect()
            .await
            .expect("the RESULTS stream's subjects")
    }

    /// When each job's first result arrived.
    pub fn first_seen(&self) -> HashMap<String, Instant> {
        self.first.lock().expect("lock").clone()
    }
}

impl Drop for ResultCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Publishes `n` messages to JetStream with 256 awaiting their PubAck at
/// once; `message(i)` gives the i-th one's subject, message id and payload.
pub async fn publish_acked<F>(js: &async_nats::jetstream::Context, n: usize, message: F)
where
    F: Fn(usize) -> (String, Option<String>, Vec<u8>),
{
    use futures::StreamExt;
    futures::stream::iter(0..n)
        .map(|i| {
            let (subject, id, payload) = message(i);
            let js = js.clone();
            async move {
                let mut headers = async_nats::HeaderMap::new();
                if let Some(id) = id {
                    headers.insert("Nats-Msg-Id", id.as_str());
                }
                js.publish_with_headers(subject, headers, payload.into())
                    .await
                    .expect("publish")
                    .await
                    .expect("puback");
            }
        })
        .buffer_unordered(256)
        .collect::<Vec<()>>()
        .await;
}

/// A process's resident memory, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    memory_kib(pid, "VmRSS:")
}

/// A process's peak resident memory, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    memory_kib(pid, "VmHWM:")
}

fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Whether `GET /readyz` on `port` answers 200 (blocking, for start-up waits).
pub fn is_ready(port: u16) -> bool {
    answers_ok(port, "/readyz")
}

/// Whether `GET path` on `port` answers 200 (blocking).
fn answers_ok(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

/// Seconds into the day of an RFC 3339 time `…THH:MM:SS[.fff]Z`.
pub fn seconds_of(at: &str) -> f64 {
    let time = at.split('T').nth(1).unwrap().trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next().unwrap().parse().unwrap();
    let m: f64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    h * 3600.0 + m * 60.0 + s
}

/// Most of `jobs` that were on a node at once: from assignment to end.
pub fn most_at_once(jobs: &[&Value]) -> usize {
    let mut edges: Vec<(f64, i32)> = Vec::new();
    for job in jobs {
        let at = |status: &str| {
            job["transitions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["status"] == status)
                .map(|t| seconds_of(t["at"].as_str().unwrap()))
                .unwrap()
        };
        edges.push((at("assigned"), 1));
        edges.push((at("succeeded"), -1));
    }
    // An end and a start at the same instant: the end first.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    usize::try_from(most).unwrap()
}

/// Server-sent events as (id, event, data) in order, read to the end.
pub async fn sse(
    stack: &Stack,
    path: &str,
    last_event_id: Option<&str>,
) -> Vec<(String, String, Value)> {
    let mut request = stack.http.get(stack.broker_url(path));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let text = tokio::time::timeout(Duration::from_secs(20), async {
        request.send().await.unwrap().text().await.unwrap()
    })
    .await
    .expect("the stream ends with the job");
    text.split("\n\n").filter_map(sse_event).collect()
}

/// One server-sent event's id, name and data, if the block holds data.
pub fn sse_event(block: &str) -> Option<(String, String, Value)> {
    let field = |name: &str| {
        block
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    block.contains("data:").then(|| {
        let data = serde_json::from_str(&field("data:")).unwrap();
        (field("id:"), field("event:"), data)
    })
}
