//! Fault injection under steady load. Each scenario keeps jobs arriving on
//! a fixed schedule (open loop), breaks one part of the stack while they
//! run, and reports what the user relies on: jobs submitted, completed and
//! lost, results delivered twice, jobs billed twice, and the p99 time to
//! recovery of the jobs the fault caught in flight. Every scenario must
//! lose nothing and bill nothing twice.
//!
//! `SY_CHAOS_SCALE=10` runs the long form: ten times the jobs at the same
//! rates, with the faults at the same points of the load.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::proxy::FaultProxy;
use crate::common::*;
use async_nats::HeaderMap;
use async_nats::jetstream::Context;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::task::JoinSet;

/// How many times the short form's jobs to run.
fn scale() -> usize {
    std::env::var("SY_CHAOS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

fn body(prompt: &str) -> Value {
    json!({"model": TEXT_MODEL, "input": {"prompt": prompt, "max_tokens": 4}})
}

/// One fault: from when it struck to when the broken part was back.
#[derive(Clone, Copy)]
struct Fault {
    start: Instant,
    end: Instant,
}

/// Jobs sent on a fixed schedule, whatever the stack answers: each job has
/// its due time, and a job the stack refuses or misses is sent again with
/// the same id or key, alongside the ones due after it.
struct Load {
    /// Job id → when its first send began.
    sent: Arc<Mutex<HashMap<String, Instant>>>,
    /// Every HTTP answer (status, error code) and when it came; 0 for no answer.
    answers: Arc<Mutex<Vec<(Instant, u16, String)>>>,
    started: Instant,
    span: Duration,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn schedule<F>(total: usize, per_second: f64, send: F) -> Load
    where
        F: Fn(usize, Instant) -> tokio::task::JoinHandle<()> + Send + 'static,
    {
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut running = JoinSet::new();
            for i in 0..total {
                let due = started + Duration::from_secs_f64(i as f64 / per_second);
                tokio::time::sleep_until(due.into()).await;
                running.spawn(send(i, Instant::now()));
            }
            while let Some(done) = running.join_next().await {
                done.unwrap().unwrap();
            }
        });
        Load {
            sent: Arc::default(),
            answers: Arc::default(),
            started,
            span: Duration::from_secs_f64(total as f64 / per_second),
            task,
        }
    }

    /// Publishes to the durable intake; a publish without a PubAck is sent
    /// again with the same `Nats-Msg-Id`, which is the job's id.
    fn nats(js: Context, tag: &'static str, total: usize, per_second: f64) -> Load {
        let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let record = sent.clone();
        let mut load = Self::schedule(total, per_second, move |i, at| {
            let id = format!("{tag}-{i}");
            record.lock().unwrap().insert(id.clone(), at);
            tokio::spawn(publish_until_acked(js.clone(), id))
        });
        load.sent = sent;
        load
    }

    /// Posts to `/v1/jobs` with an idempotency key, again and again until
    /// it is accepted.
    fn http(stack: &Stack, tag: &'static str, total: usize, per_second: f64) -> Load {
        let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let answers: Arc<Mutex<Vec<(Instant, u16, String)>>> = Arc::default();
        let (record, heard) = (sent.clone(), answers.clone());
        let (http, url) = (stack.http.clone(), stack.broker_url("/v1/jobs"));
        let mut load = Self::schedule(total, per_second, move |i, at| {
            let (http, url) = (http.clone(), url.clone());
            let (record, heard) = (record.clone(), heard.clone());
            tokio::spawn(async move {
                let key = format!("{tag}-{i}");
                let id = post_until_accepted(&http, &url, &key, &heard).await;
                record.lock().unwrap().insert(id, at);
            })
        });
        load.sent = sent;
        load.answers = answers;
        load
    }

    /// When `fraction` of the schedule is due.
    async fn reach(&self, fraction: f64) {
        tokio::time::sleep_until((self.started + self.span.mul_f64(fraction)).into()).await;
    }

    /// Waits for every job to be sent and accepted.
    async fn finish(self) -> (HashMap<String, Instant>, Vec<(Instant, u16, String)>) {
        tokio::time::timeout(self.span + Duration::from_secs(180), self.task)
            .await
            .expect("every job accepted")
            .unwrap();
        let sent = self.sent.lock().unwrap().clone();
        let answers = self.answers.lock().unwrap().clone();
        (sent, answers)
    }
}

async fn publish_until_acked(js: Context, id: String) {
    let payload = body(&format!("chaos job {id}")).to_string();
    eventually(
        Duration::from_secs(120),
        Duration::from_millis(100),
        || async {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            let published = js
                .publish_with_headers("sy.submit.normal", headers, payload.clone().into())
                .await;
            match published {
                Ok(ack) => ack.await.map(drop).map_err(|e| format!("{id}: {e}")),
                Err(e) => Err(format!("{id}: {e}")),
            }
        },
    )
    .await;
}

async fn post_until_accepted(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    answers: &Mutex<Vec<(Instant, u16, String)>>,
) -> String {
    eventually(
        Duration::from_secs(120),
        Duration::from_millis(250),
        || async {
            let sent = http
                .post(url)
                .header("Idempotency-Key", key)
                // Catches a request held without an answer; how fast a
                // refusal comes is the benchmarks' to say, not this test's.
                .timeout(Duration::from_secs(30))
                .json(&body(key))
                .send()
                .await;
            let (status, answer) = match sent {
                Ok(r) => (
                    r.status().as_u16(),
                    r.json::<Value>().await.unwrap_or(Value::Null),
                ),
                Err(_) => (0, Value::Null),
            };
            let code = answer["error"]["code"].as_str().unwrap_or("").to_owned();
            answers.lock().unwrap().push((Instant::now(), status, code));
            match status {
                202 => Ok(answer["id"].as_str().unwrap().to_owned()),
                _ => Err(format!("{key} not accepted: {status} {answer}")),
            }
        },
    )
    .await
}

/// Ids of the stack's jobs, all of them or those with `status`.
async fn ids_of(stack: &Stack, status: Option<&str>) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut cursor = String::new();
    let filter = status.map(|s| format!("status={s}&")).unwrap_or_default();
    loop {
        let (_, page) = stack
            .get_json(&format!("/v1/jobs?{filter}limit=200{cursor}"))
            .await;
        for job in page["data"].as_array().expect("a page of jobs") {
            ids.insert(job["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return ids,
        }
    }
}

/// Charged lines in the usage ledger, all models and tenants.
async fn billed(stack: &Stack) -> u64 {
    let (_, usage) = stack.get_json("/v1/usage").await;
    usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["requests"].as_u64().unwrap())
        .sum()
}

/// What a scenario reports at its end.
#[derive(Debug)]
struct Report {
    scenario: &'static str,
    submitted: usize,
    completed: usize,
    lost: usize,
    /// Jobs the RESULTS stream holds more than one result for: what a
    /// client is delivered.
    delivered_twice: usize,
    /// Jobs whose plain subscribers of `sy.results.*` saw two different
    /// results: a stale attempt (its agent paused past its lease) finishing
    /// as its replacement did, its publish refused by the stream.
    published_twice: usize,
    /// Some of the jobs lost, with their records, to look into.
    lost_sample: Vec<Value>,
    /// Some of the jobs delivered twice, with their records, to look into.
    twice: Vec<Value>,
    billed: u64,
    billed_twice: u64,
    /// p99 of, for each job a fault caught in flight, the time from the
    /// fault to its result.
    recovery_p99: Duration,
    caught_in_flight: usize,
}

impl Report {
    async fn gather(
        stack: &Stack,
        scenario: &'static str,
        sent: &HashMap<String, Instant>,
        counter: &ResultCounter,
        faults: &[Fault],
    ) -> Report {
        let deadline = Instant::now() + Duration::from_secs(180);
        let done = loop {
            let done = ids_of(stack, Some("succeeded")).await;
            if sent.keys().all(|id| done.contains(id)) || Instant::now() > deadline {
                break done;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let completed = sent.keys().filter(|id| done.contains(*id)).count();
        // Usage is projected in batches after the results.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut charged = billed(stack).await;
        while charged < completed as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            charged = billed(stack).await;
        }
        // A late duplicate would come within a few ack waits.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let charged = billed(stack).await;
        let first = counter.first_seen();
        let mut recovery: Vec<Duration> = Vec::new();
        for (id, at) in sent {
            let Some(result) = first.get(id) else {
                continue;
            };
            if let Some(f) = faults.iter().find(|f| *at <= f.end && *result >= f.start) {
                recovery.push(result.duration_since(f.start));
            }
        }
        recovery.sort();
        let mut twice = Vec::new();
        let mut lost_sample = Vec::new();
        for id in sent.keys().filter(|id| !done.contains(*id)).take(3) {
            lost_sample.push(stack.get_job(id).await.1);
        }
        // Delivered is what the stream kept: a plain subscriber may also see
        // a stale attempt's result that the stream refused.
        let stored = counter.stored().await;
        let doubled: Vec<&String> = sent
            .keys()
            .filter(|id| stored.get(*id).is_some_and(|n| *n > 1))
            .collect();
        for id in doubled.iter().take(3) {
            twice.push(stack.get_job(id).await.1);
        }
        let different = counter.different_results();
        let report = Report {
            scenario,
            submitted: sent.len(),
            completed,
            lost: sent.len() - completed,
            delivered_twice: doubled.len(),
            published_twice: different.values().filter(|n| **n > 1).count(),
            twice,
            lost_sample,
            billed: charged,
            billed_twice: charged.saturating_sub(completed as u64),
            recovery_p99: recovery
                .get((recovery.len() * 99).div_ceil(100).saturating_sub(1))
                .copied()
                .unwrap_or_default(),
            caught_in_flight: recovery.len(),
        };
        println!(
            "CHAOS | {} | {} | {} | {} | {} ({} refused) | {} | {:.2} s ({} jobs in flight) |",
            report.scenario,
            report.submitted,
            report.completed,
            report.lost,
            report.delivered_twice,
            report.published_twice,
            report.billed_twice,
            report.recovery_p99.as_secs_f64(),
            report.caught_in_flight,
        );
        report
    }

    fn assert_clean(&self) {
        assert_eq!(self.lost, 0, "{self:?}: {:?}", self.lost_sample);
        assert_eq!(self.delivered_twice, 0, "{self:?}: {:?}", self.twice);
        assert_eq!(self.billed, self.completed as u64, "{self:?}");
    }
}

/// A kill (or stop) at `start` and the part back at `end`.
fn fault_since(start: Instant) -> Fault {
    Fault {
        start,
        end: Instant::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dispatcher_sigkilled_three_times_under_load() {
    let mut stack = Stack::running(StackOptions::default(), &["node-a", "node-b"]);
    let counter = ResultCounter::start(&stack.nats.client().await).await;
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let load = Load::nats(js, "dispatcher", 10_000 * scale(), 400.0);
    let mut faults = Vec::new();
    for quarter in 1..=3 {
        load.reach(f64::from(quarter) / 4.0).await;
        let start = Instant::now();
        stack.sigkill("dispatcher");
        stack.start_dispatcher();
        faults.push(fault_since(start));
    }
    let (sent, _) = load.finish().await;
    Report::gather(&stack, "dispatcher SIGKILL ×3", &sent, &counter, &faults)
        .await
        .assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_sigkilled_and_one_paused_past_its_ack_wait_under_load() {
    let mut stack = Stack::running(
        StackOptions {
            slots: 4,
            base_latency: "200ms",
            agent_ack_wait: "2s",
            ..StackOptions::default()
        },
        &["node-a", "node-b", "node-c"],
    );
    let counter = ResultCounter::start(&stack.nats.client().await).await;
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let load = Load::nats(js, "agents", 600 * scale(), 30.0);

    load.reach(0.25).await;
    stack.wait_running("node-a").await;
    let start = Instant::now();
    stack.sigkill("node-a");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.start_agent("node-a");
    let killed = fault_since(start);

    load.reach(0.5).await;
    stack.wait_running("node-b").await;
    let start = Instant::now();
    stack.proc("node-b").signal(Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(5)).await;
    stack.proc("node-b").signal(Signal::SIGCONT);
    let paused = fault_since(start);

    let (sent, _) = load.finish().await;
    let report = Report::gather(
        &stack,
        "agent SIGKILL, agent SIGSTOP 5 s",
        &sent,
        &counter,
        &[killed, paused],
    )
    .await;
    report.assert_clean();
    // The paused node's stale attempts were run out and thrown away.
    let fenced = stack
        .metric("node-b", "switchyard_agent_jobs_total{outcome=\"fenced\"}")
        .await;
    assert!(fenced >= 1.0, "node-b fenced nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_broker_sigkilled_while_answering_makes_one_job_per_idempotency_key() {
    let mut stack = Stack::running(StackOptions::default(), &["node-a"]);
    let counter = ResultCounter::start(&stack.nats.client().await).await;
    let load = Load::http(&stack, "broker", 1_500 * scale(), 100.0);
    let mut faults = Vec::new();
    for quarter in 1..=3 {
        load.reach(f64::from(quarter) / 4.0).await;
        let start = Instant::now();
        stack.sigkill("broker");
        stack.start_broker();
        faults.push(fault_since(start));
    }
    let (sent, answers) = load.finish().await;
    let cut_off = answers.iter().filter(|(_, status, _)| *status == 0).count();
    assert!(cut_off > 0, "no request was in flight when the broker died");
    Report::gather(&stack, "broker SIGKILL ×3", &sent, &counter, &faults)
        .await
        .assert_clean();
    // A retry of a request the broker had stored but not answered found
    // its job: the store holds one job per key.
    assert_eq!(ids_of(&stack, None).await.len(), sent.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stream_leader_of_a_three_node_nats_cluster_sigkilled_under_load() {
    let mut stack = Stack::running(
        StackOptions {
            nats_cluster: true,
            ..StackOptions::default()
        },
        &["node-a", "node-b"],
    );
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let leader = js
        .get_stream("JOBS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("the JOBS stream has a leader");
    let leader: usize = leader.trim_start_matches('n').parse().unwrap();
    // Results are counted through a server that stays up.
    let counter = ResultCounter::start(&stack.nats.client_of((leader + 1) % 3).await).await;
    let load = Load::nats(js, "cluster", 3_000 * scale(), 200.0);
    load.reach(0.33).await;
    let start = Instant::now();
    stack.nats.kill_server(leader);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.nats.resume_server(leader);
    let fault = fault_since(start);
    let (sent, _) = load.finish().await;
    let report = Report::gather(
        &stack,
        "NATS stream leader SIGKILL (3 nodes, R3)",
        &sent,
        &counter,
        &[fault],
    )
    .await;
    report.assert_clean();
}

/// A tmpfs of `size` mounted on a new directory, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount");
        assert!(out.status.success(), "mount a tmpfs: {out:?}");
        Tmpfs(dir)
    }

    /// Writes a file until the file system is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).and_then(|()| f.sync_all()).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// Jobs are refused with 503 while the store cannot write, never accepted
/// and lost, and accepted again once it can. A retry whose first try failed
/// after claiming its idempotency key, and could not release it, is told
/// `409 idempotency_conflict` (retry shortly) until the claim is taken over.
fn assert_degraded_clearly(answers: &[(Instant, u16, String)], outage: Fault) -> Duration {
    let odd: Vec<_> = answers
        .iter()
        .filter(|(_, status, code)| {
            *status != 202 && *status != 503 && !(*status == 409 && code == "idempotency_conflict")
        })
        .collect();
    assert!(
        odd.is_empty(),
        "answers other than 202, 503 or 409: {odd:?}"
    );
    let refused = answers
        .iter()
        .filter(|(at, status, _)| *status == 503 && *at >= outage.start)
        .count();
    assert!(refused > 0, "nothing was refused while the store was down");
    assert!(
        answers
            .iter()
            .filter(|(_, status, _)| *status == 503)
            .all(|(_, _, code)| code == "store_unavailable"),
        "a 503 without the store's error code"
    );
    let back = answers
        .iter()
        .filter(|(at, status, _)| *status == 202 && *at > outage.end)
        .map(|(at, _, _)| *at)
        .min()
        .expect("accepted again after the store came back");
    back.duration_since(outage.end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_under_the_sqlite_store_refuses_jobs_and_recovers() {
    let disk = Tmpfs::mount("8m");
    let mut stack = Stack::new(StackOptions::default());
    let url = stack.database_url.clone();
    stack.rewrite_config(
        &url,
        &format!("sqlite://{}", disk.0.path().join("jobs.db").display()),
    );
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_agent("node-a");
    let counter = ResultCounter::start(&stack.nats.client().await).await;
    let load = Load::http(&stack, "disk", 800 * scale(), 40.0);
    load.reach(0.3).await;
    let start = Instant::now();
    let filler = disk.fill();
    load.reach(0.6).await;
    std::fs::remove_file(&filler).unwrap();
    let full = fault_since(start);
    let (sent, answers) = load.finish().await;
    let back = assert_degraded_clearly(&answers, full);
    println!(
        "CHAOS | disk full: accepted again {:.2} s after space was freed",
        back.as_secs_f64()
    );
    Report::gather(&stack, "disk full under SQLite", &sent, &counter, &[full])
        .await
        .assert_clean();
}

/// A PostgreSQL server of the test's own, so that restarting it touches no
/// other test's database.
struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
}

/// Runs a PostgreSQL program as the `postgres` user (it refuses root).
fn as_postgres(program: &str) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args([
        "-u",
        "postgres",
        "--",
        &format!("/usr/lib/postgresql/15/bin/{program}"),
    ]);
    cmd
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

impl Postgres {
    fn start() -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        run(Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path()));
        run(as_postgres("initdb")
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(dir.path().join("data")));
        let pg = Postgres {
            dir,
            port: free_port(),
        };
        pg.resume();
        pg
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/switchyard", self.port)
    }

    fn pg_ctl(&self, action: &str) -> Command {
        let mut cmd = as_postgres("pg_ctl");
        cmd.args(["-w", "-m", "fast", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("postgres.log"))
            .arg("-o")
            .arg(format!(
                "-p {} -c listen_addresses=127.0.0.1 -k {}",
                self.port,
                self.dir.path().display()
            ))
            .arg(action);
        cmd
    }

    fn resume(&self) {
        run(&mut self.pg_ctl("start"));
    }

    /// A fast shutdown: clients are disconnected, and the server exits.
    fn stop(&self) {
        run(&mut self.pg_ctl("stop"));
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl("stop").output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgresql_restarted_under_load_refuses_jobs_and_recovers() {
    let pg = Postgres::start();
    let mut stack = Stack::new(StackOptions::default());
    let url = stack.database_url.clone();
    stack.rewrite_config(&url, &pg.url());
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_agent("node-a");
    let counter = ResultCounter::start(&stack.nats.client().await).await;
    let load = Load::http(&stack, "postgres", 800 * scale(), 40.0);
    load.reach(0.3).await;
    let start = Instant::now();
    pg.stop();
    tokio::time::sleep(Duration::from_secs(8)).await;
    pg.resume();
    let down = fault_since(start);
    let (sent, answers) = load.finish().await;
    let back = assert_degraded_clearly(&answers, down);
    println!(
        "CHAOS | PostgreSQL restart: accepted again {:.2} s after it was back",
        back.as_secs_f64()
    );
    Report::gather(&stack, "PostgreSQL restart", &sent, &counter, &[down])
        .await
        .assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_cut_off_from_nats_runs_no_job_twice_to_completion() {
    let mut stack = Stack::running(
        StackOptions {
            slots: 4,
            base_latency: "300ms",
            agent_ack_wait: "2s",
            ..StackOptions::default()
        },
        &["node-b"],
    );
    let proxy = FaultProxy::start(stack.nats.port).await;
    stack.start_agent_with(
        "node-a",
        &[(
            "SWITCHYARD_NATS__URL",
            format!("nats://127.0.0.1:{}", proxy.port),
        )],
    );
    let counter = ResultCounter::start(&stack.nats.client().await).await;
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let load = Load::nats(js, "partition", 600 * scale(), 20.0);
    load.reach(0.33).await;
    stack.wait_running("node-a").await;
    let start = Instant::now();
    proxy.cut();
    // Past the agent's ack wait and the dispatcher's node timeout.
    tokio::time::sleep(Duration::from_secs(6)).await;
    proxy.heal();
    let cut = fault_since(start);
    let (sent, _) = load.finish().await;
    Report::gather(
        &stack,
        "agent cut off from NATS for 6 s",
        &sent,
        &counter,
        &[cut],
    )
    .await
    .assert_clean();
}
