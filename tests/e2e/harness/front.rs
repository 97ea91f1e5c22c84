//! Where a call through the OpenAI front spends its time: between the
//! request's due time and its answer, when a subscriber to every subject
//! first saw the call's job queued, assigned and answered.

use super::pipeline::{Wire, p50_p99};
use super::*;
use async_nats::header::NATS_MESSAGE_ID;

/// A call's hops through the front.
pub(super) const FRONT_HOPS: [&str; 4] = [
    "broker: request due → queued job",
    "dispatcher: queued job → assignment",
    "node: assignment → result, the engine's call in it",
    "broker: result → answer received",
];

/// A call: when it was due and answered, and its job.
struct Timed {
    due: Instant,
    answered: Instant,
    job: String,
}

/// The p50 and p99 of each of `FRONT_HOPS` in ms, over the calls `front`
/// takes at `rate` for `seconds` through `stack`.
pub(super) async fn front_hops(
    stack: &Stack,
    http: &reqwest::Client,
    front: &Path,
    rate: f64,
    seconds: f64,
) -> Vec<(f64, f64)> {
    let wire = Wire::watch(&stack.nats.client().await, |msg| {
        let kind = msg.subject.split('.').nth(1)?;
        let job = match kind {
            "results" => msg.subject.rsplit('.').next()?,
            // The queued job's message id is the job's; the assignment's,
            // the job's and its attempt's.
            "jobs" | "work" => {
                let id = msg.headers.as_ref()?.get(NATS_MESSAGE_ID)?.as_str();
                id.split(':').next()?
            }
            _ => return None,
        };
        Some((job.to_owned(), kind.to_owned()))
    })
    .await;
    let timed: Arc<Mutex<Vec<Timed>>> = Default::default();
    let mut due_times = due((rate * seconds).round() as usize, rate);
    let mut running = JoinSet::new();
    while let Some(due) = due_times.recv().await {
        let request = front.request(http);
        let timed = timed.clone();
        running.spawn(async move {
            let response = request.send().await.unwrap();
            assert!(response.status().is_success(), "{}", response.status());
            let job = response.headers()["x-switchyard-job-id"]
                .to_str()
                .unwrap()
                .to_owned();
            response.bytes().await.unwrap();
            timed.lock().unwrap().push(Timed {
                due,
                answered: Instant::now(),
                job,
            });
        });
    }
    while running.join_next().await.is_some() {}
    let seen = wire.seen();
    let at = |job: &str, kind: &str| seen.get(&(job.to_owned(), kind.to_owned())).copied();
    let mut took: [Vec<f64>; 4] = Default::default();
    for call in timed.lock().unwrap().iter() {
        // The wire's copy of the last results may come after their answers.
        let (Some(queued), Some(work), Some(result)) = (
            at(&call.job, "jobs"),
            at(&call.job, "work"),
            at(&call.job, "results"),
        ) else {
            continue;
        };
        let points = [call.due, queued, work, result, call.answered];
        for (hop, pair) in took.iter_mut().zip(points.windows(2)) {
            hop.push(pair[1].saturating_duration_since(pair[0]).as_secs_f64() * 1000.0);
        }
    }
    assert!(!took[0].is_empty(), "no call seen on the wire");
    took.into_iter().map(p50_p99).collect()
}
