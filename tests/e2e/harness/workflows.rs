//! What a workflow adds to the jobs it runs: one caller's latency for a
//! single job, a run of one model step and a run of three chained model
//! steps (the engine's own cost per step is what the three-step run takes
//! beyond three single jobs, per step), and the most runs a second many
//! callers get beside the most single jobs, all on the simulated engine at
//! 0 ms.

use super::*;

const BENCH_WORKFLOWS: &str = r#"
  - name: one
    steps:
      - id: a
        model: {name: tiny-text, input: {prompt: "{{ input.text }}", max_tokens: 2}}
  - name: three
    steps:
      - id: a
        model: {name: tiny-text, input: {prompt: "{{ input.text }}", max_tokens: 2}}
      - id: b
        needs: [a]
        model: {name: tiny-text, input: {prompt: "{{ steps.a.output.choices[0].text }}", max_tokens: 2}}
      - id: c
        needs: [b]
        model: {name: tiny-text, input: {prompt: "{{ steps.b.output.choices[0].text }}", max_tokens: 2}}
"#;

fn workflow_stack() -> Stack {
    let mut stack = Stack::new(StackOptions {
        workflows: BENCH_WORKFLOWS,
        base_latency: "0ms",
        slots: 256,
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_agent("node-a");
    stack.start_workflows("wf1", &[]);
    stack
}

/// One request, true when it was answered with what it asked for.
type Sent = std::pin::Pin<Box<dyn Future<Output = bool> + Send>>;

/// A job or a run, sent with `Prefer: wait` and answered ended.
fn call(stack: &Stack, what: &str) -> impl Fn() -> Sent + Clone + Send + 'static {
    let http = stack.http.clone();
    let (url, body) = match what {
        "job" => (
            stack.broker_url("/v1/jobs"),
            json!({"model": TEXT_MODEL, "input": {"prompt": "bench", "max_tokens": 2}}),
        ),
        workflow => (
            stack.broker_url(&format!("/v1/workflows/{workflow}/runs")),
            json!({"input": {"text": "bench"}}),
        ),
    };
    move || {
        let request = http
            .post(&url)
            .header("prefer", "wait=30")
            .json(&body)
            .send();
        Box::pin(async move {
            match request.await {
                Ok(r) => r.status() == 200,
                Err(_) => false,
            }
        })
    }
}

/// One caller, one call at a time: the median latency in ms.
async fn sequential(send: impl Fn() -> Sent, n: usize) -> f64 {
    let mut ms = Vec::with_capacity(n);
    for _ in 0..n {
        let begun = Instant::now();
        assert!(send().await, "a call failed");
        ms.push(begun.elapsed().as_secs_f64() * 1000.0);
    }
    median(ms)
}

pub(super) async fn workflows(form: &Form) {
    let stack = workflow_stack();
    let n = (form.jobs / 20).max(20);
    let clients = 32;
    let (mut job, mut one, mut three, mut per_step) = (vec![], vec![], vec![], vec![]);
    let (mut jobs_s, mut runs_s) = (vec![], vec![]);
    // Warm both paths before measuring.
    sequential(call(&stack, "job"), 5).await;
    sequential(call(&stack, "three"), 5).await;
    for _ in 0..form.runs {
        let j = sequential(call(&stack, "job"), n).await;
        let o = sequential(call(&stack, "one"), n).await;
        let t = sequential(call(&stack, "three"), n).await;
        job.push(j);
        one.push(o);
        three.push(t);
        per_step.push((t - 3.0 * j) / 3.0);
        jobs_s.push(saturate(clients, form.seconds, call(&stack, "job")).await);
        runs_s.push(saturate(clients, form.seconds, call(&stack, "one")).await);
    }
    println!(
        "\n## Workflows: one caller, `Prefer: wait` (median ms of {n} calls; median of {} runs, range)",
        form.runs
    );
    println!("| call | latency, ms |\n| --- | --- |");
    println!("| a single job (`POST /v1/jobs`) | {} |", spread(&job, 2));
    println!("| a run of one model step | {} |", spread(&one, 2));
    println!(
        "| a run of three chained model steps | {} |",
        spread(&three, 2)
    );
    println!(
        "| the engine's own cost per model step | {} |",
        spread(&per_step, 2)
    );
    println!(
        "\n## Workflows at saturation ({clients} callers, {} s)",
        form.seconds
    );
    println!("| what | per second |\n| --- | --- |");
    println!("| single jobs | {} |", spread(&jobs_s, 0));
    println!("| runs of one model step | {} |", spread(&runs_s, 0));
}
