//! Latency through the durable path beside the bare pipeline at the same
//! rate: each message's time from its due time until its result is
//! published, open loop.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

use super::*;

/// The callers waiting for a result, by the key its message carries.
#[derive(Clone, Default)]
struct Waiters(Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>);

impl Waiters {
    /// Answers each waiter as a message on `subject` comes whose `key` is
    /// its own, for as long as `tasks` runs.
    async fn follow(
        client: &async_nats::Client,
        subject: &'static str,
        key: fn(&async_nats::Message) -> String,
        tasks: &mut JoinSet<()>,
    ) -> Waiters {
        let waiters = Waiters::default();
        let mut results = client.subscribe(subject).await.unwrap();
        client.flush().await.unwrap();
        let answering = waiters.clone();
        tasks.spawn(async move {
            while let Some(msg) = results.next().await {
                if let Some(waiter) = answering.0.lock().unwrap().remove(&key(&msg)) {
                    let _ = waiter.send(());
                }
            }
        });
        waiters
    }

    fn wait(&self, key: String) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.0.lock().unwrap().insert(key, tx);
        rx
    }
}

/// Publishes `payload` on `subject` under message id `id` (when some),
/// then waits for its result: whether it came.
async fn publish_and_wait(
    js: jetstream::Context,
    subject: &'static str,
    id: Option<String>,
    payload: Vec<u8>,
    result: oneshot::Receiver<()>,
) -> bool {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(id) = &id {
        headers.insert("Nats-Msg-Id", id.as_str());
    }
    let Ok(ack) = js
        .publish_with_headers(subject, headers, payload.into())
        .await
    else {
        return false;
    };
    ack.await.is_ok() && result.await.is_ok()
}

/// The bare pipeline's latency at each of `rates`, one measurement each.
pub(super) async fn bare(nats: &Nats, rates: &[f64], seconds: f64) -> Vec<Measured> {
    let js = jetstream::new(nats.client().await);
    bare_streams(&js).await;
    let mut tasks = JoinSet::new();
    for (from, to) in BARE_HOPS {
        let js = js.clone();
        tasks.spawn(async move { hop(&js, from, to, usize::MAX).await });
    }
    let key = |msg: &async_nats::Message| String::from_utf8_lossy(&msg.payload[..20]).into_owned();
    let waiters = Waiters::follow(&nats.client().await, "hop.RESULT", key, &mut tasks).await;
    let measured = at_rates(rates, seconds, |n| {
        let key = format!("{n:020}");
        let mut payload = key.clone().into_bytes();
        payload.resize(300, 7);
        publish_and_wait(js.clone(), "hop.H1", None, payload, waiters.wait(key))
    })
    .await;
    tasks.abort_all();
    measured
}

/// The durable path's latency at each of `rates`: a submission published
/// to `SUBMIT` until its result is published, one measurement each.
pub(super) async fn durable(rates: &[f64], seconds: f64) -> Vec<Measured> {
    durable_on(&durable_stack(), rates, seconds).await
}

/// The same, through `stack`.
pub(super) async fn durable_on(stack: &Stack, rates: &[f64], seconds: f64) -> Vec<Measured> {
    let client = stack.nats.client().await;
    let js = jetstream::new(client.clone());
    let mut tasks = JoinSet::new();
    let key = |msg: &async_nats::Message| {
        let subject = msg.subject.as_str();
        subject.rsplit('.').next().unwrap_or(subject).to_owned()
    };
    let waiters = Waiters::follow(&client, "sy.results.*", key, &mut tasks).await;
    let measured = at_rates(rates, seconds, |n| {
        let id = format!("latency-{n}");
        let result = waiters.wait(id.clone());
        // The id in the body too, where a reader of the wire finds it.
        let body = json!({"id": id, "model": TEXT_MODEL,
            "input": {"prompt": "bench", "max_tokens": 1}});
        publish_and_wait(
            js.clone(),
            "sy.submit.normal",
            Some(id),
            body.to_string().into_bytes(),
            result,
        )
    })
    .await;
    tasks.abort_all();
    measured
}

/// One open-loop measurement at each of `rates`, `send(n)` sending the
/// `n`th message of them all.
async fn at_rates<F, Fut>(rates: &[f64], seconds: f64, send: F) -> Vec<Measured>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let next = AtomicU64::new(0);
    let mut measured = Vec::new();
    for &rate in rates {
        measured
            .push(open_loop(rate, seconds, || send(next.fetch_add(1, Ordering::Relaxed))).await);
    }
    measured
}

/// A job's hops on the durable path: the process, and the subjects of the
/// message that starts the hop and of the one it ends with.
pub(super) const HOPS: [(&str, &str, &str); 3] = [
    ("broker: submission → queued job", "sy.submit", "sy.jobs"),
    // Its `assigned` event goes out just before, in the same breath.
    ("dispatcher: queued job → assignment", "sy.jobs", "sy.work"),
    ("node: assignment → result", "sy.work", "sy.results"),
];

/// The p50 and p99 of each of `HOPS` in ms, over the jobs sent at `rate`
/// for `seconds`: the time between the messages a subscriber to every
/// subject sees first for the job, so each hop holds the process's own
/// work and the server's delivery to it.
pub(super) async fn hops(rate: f64, seconds: f64) -> Vec<(f64, f64)> {
    let stack = durable_stack();
    let client = stack.nats.client().await;
    let wire = Wire::watch(&client, |msg| {
        let kind = msg.subject.splitn(3, '.').take(2).collect::<Vec<_>>();
        Some((job_named(msg)?, kind.join(".")))
    })
    .await;
    durable_on(&stack, &[rate], seconds).await;
    let seen = wire.seen();
    HOPS.iter()
        .map(|(_, from, to)| {
            let took: Vec<f64> = seen
                .iter()
                .filter(|((_, kind), _)| kind == from)
                .filter_map(|((job, _), start)| {
                    let end = seen.get(&(job.clone(), (*to).to_owned()))?;
                    Some(end.duration_since(*start).as_secs_f64() * 1000.0)
                })
                .collect();
            assert!(!took.is_empty(), "no job seen from {from} to {to}");
            p50_p99(took)
        })
        .collect()
}

/// When a subscriber to every subject first saw each job's messages of
/// each kind.
pub(super) struct Wire {
    seen: Arc<Mutex<HashMap<(String, String), Instant>>>,
    reading: tokio::task::JoinHandle<()>,
}

impl Wire {
    /// Watches `sy.>`, noting each message `name` gives a job and a kind.
    pub(super) async fn watch(
        client: &async_nats::Client,
        name: fn(&async_nats::Message) -> Option<(String, String)>,
    ) -> Wire {
        let mut wire = client.subscribe("sy.>").await.unwrap();
        client.flush().await.unwrap();
        let seen: Arc<Mutex<HashMap<(String, String), Instant>>> = Default::default();
        let noting = seen.clone();
        let reading = tokio::spawn(async move {
            while let Some(msg) = wire.next().await {
                let at = Instant::now();
                if let Some(key) = name(&msg) {
                    noting.lock().unwrap().entry(key).or_insert(at);
                }
            }
        });
        Wire { seen, reading }
    }

    /// Stops watching: what it saw.
    pub(super) fn seen(self) -> HashMap<(String, String), Instant> {
        self.reading.abort();
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// The p50 and p99 of `xs`.
pub(super) fn p50_p99(mut xs: Vec<f64>) -> (f64, f64) {
    xs.sort_by(f64::total_cmp);
    let at = |q: f64| xs[((xs.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// Prints a table of hops' p50s and p99s at each of `rates`: `runs[r][i]`
/// holds hop `i`'s of every run at `rates[r]`.
pub(super) fn print_hops(title: &str, hops: &[&str], rates: &[f64], runs: &[Vec<Vec<(f64, f64)>>]) {
    let heads: Vec<String> = rates
        .iter()
        .map(|r| format!(" p50 at {r}/s | p99 at {r}/s |"))
        .collect();
    println!(
        "\n| {title}, ms, median (min–max) |{}\n| --- |{}",
        heads.concat(),
        " --- | --- |".repeat(heads.len())
    );
    for (i, hop) in hops.iter().enumerate() {
        let cells: Vec<String> = runs
            .iter()
            .map(|runs| {
                let p50: Vec<f64> = runs.iter().map(|run| run[i].0).collect();
                let p99: Vec<f64> = runs.iter().map(|run| run[i].1).collect();
                format!(" {} | {} |", spread(&p50, 2), spread(&p99, 2))
            })
            .collect();
        println!("| {hop} |{}", cells.concat());
    }
}

/// The latency run's job a message on the wire is about: the last token of
/// an event's or a result's subject, or the id in a submission, a queued
/// job or an assignment (JSON or MessagePack, the id's text either way).
fn job_named(msg: &async_nats::Message) -> Option<String> {
    let subject = msg.subject.as_str();
    if subject.starts_with("sy.events.") || subject.starts_with("sy.results.") {
        return subject.rsplit('.').next().map(str::to_owned);
    }
    let text = String::from_utf8_lossy(&msg.payload);
    let at = text.find("latency-")?;
    Some(
        text[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect(),
    )
}
