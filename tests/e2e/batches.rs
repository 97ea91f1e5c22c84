//! Batches end to end: OpenAI's Files and Batch APIs driven by the official
//! `openai` SDK, unmodified; cancelling a batch; and files larger than any
//! request body streamed through without being held in memory.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

fn chat_line(custom_id: &str, content: &str) -> String {
    json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
           "body": {"model": CHAT_MODEL, "messages": [{"role": "user", "content": content}],
                    "max_tokens": 3}})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_openai_sdk_runs_a_batch_with_its_output_and_errors() {
    let stack = Stack::running(StackOptions::default(), &["node-a"]);
    let input = stack.dir.path().join("input.jsonl");
    let mut f = std::fs::File::create(&input).unwrap();
    for i in 0..40 {
        writeln!(
            f,
            "{}",
            chat_line(&format!("req-{i}"), &format!("word{i} two three"))
        )
        .unwrap();
    }
    // Four lines that cannot run, each for its own reason.
    writeln!(f, "{{not json").unwrap();
    writeln!(
        f,
        "{}",
        chat_line("wrong-url", "x").replace("/v1/chat/completions", "/v1/embeddings")
    )
    .unwrap();
    writeln!(
        f,
        "{}",
        chat_line("no-model", "x").replace(CHAT_MODEL, "no-such-model")
    )
    .unwrap();
    writeln!(
        f,
        "{}",
        chat_line("too-long", "x").replace("\"max_tokens\":3", "\"max_tokens\":100000")
    )
    .unwrap();
    drop(f);

    let seen = sdk_script(
        "openai_batch.py",
        &[stack.broker_url("/v1"), input.display().to_string()],
    );
    assert_eq!(seen["status"], "completed", "{seen}");
    assert_eq!(
        seen["counts"],
        json!({"total": 44, "completed": 40, "failed": 4})
    );
    assert_eq!(seen["metadata"], json!({"run": "sdk-test"}));
    assert_eq!(seen["listed"][0], seen["id"]);

    let output = seen["output"].as_array().unwrap();
    assert_eq!(output.len(), 40);
    let by_id: HashMap<&str, &Value> = output
        .iter()
        .map(|o| (o["custom_id"].as_str().unwrap(), o))
        .collect();
    for i in 0..40 {
        let o = by_id[format!("req-{i}").as_str()];
        assert_eq!(o["response"]["status_code"], 200);
        assert_eq!(
            o["response"]["body"]["choices"][0]["message"]["content"],
            json!(expected_echo(&format!("word{i} two three"), 3)),
            "{o}"
        );
        // Every request ran as a job at batch priority, named in the output.
        let job = o["response"]["request_id"].as_str().unwrap();
        let (_, record) = stack.get_job(job).await;
        assert_eq!(record["priority"], "batch");
        assert_eq!(record["metadata"]["custom_id"], json!(format!("req-{i}")));
    }

    let errors: HashMap<&str, &str> = seen["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["custom_id"].as_str().unwrap(),
                e["error"]["code"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        HashMap::from([
            ("", "invalid_json"),
            ("wrong-url", "invalid_url"),
            ("no-model", "unknown_model"),
            ("too-long", "invalid_request"),
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_batch_stops_and_keeps_what_finished() {
    // One slot, 100 ms a job: the batch is far from done when it is cancelled.
    let stack = Stack::running(
        StackOptions {
            slots: 1,
            base_latency: "100ms",
            ..StackOptions::default()
        },
        &["node-a"],
    );
    let lines: Vec<String> = (0..50)
        .map(|i| chat_line(&format!("r{i}"), "a b"))
        .collect();
    let file = upload(&stack, lines.join("\n").into_bytes()).await;
    assert_eq!(file.0, 200, "{}", file.1);
    let batch = post(
        &stack,
        "/v1/batches",
        json!({"input_file_id": file.1["id"], "endpoint": "/v1/chat/completions",
               "completion_window": "24h"}),
    )
    .await;
    let id = batch["id"].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            let (_, b) = stack.get_json(&format!("/v1/batches/{id}")).await;
            so(
                b["request_counts"]["completed"].as_u64().unwrap() >= 3,
                || b.to_string(),
            )
        },
    )
    .await;
    let cancelling = post(&stack, &format!("/v1/batches/{id}/cancel"), json!({})).await;
    assert_eq!(cancelling["status"], "cancelling");
    let done = eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let (_, b) = stack.get_json(&format!("/v1/batches/{id}")).await;
            match b["status"] == "cancelled" {
                true => Ok(b),
                false => Err(b.to_string()),
            }
        },
    )
    .await;
    let counts = &done["request_counts"];
    let completed = counts["completed"].as_u64().unwrap();
    assert!((3..50).contains(&completed), "{done}");
    assert_eq!(
        counts["total"].as_u64().unwrap(),
        completed + counts["failed"].as_u64().unwrap()
    );
    let output = content(&stack, done["output_file_id"].as_str().unwrap()).await;
    assert_eq!(output.lines().count() as u64, completed);
    let errors = content(&stack, done["error_file_id"].as_str().unwrap()).await;
    assert!(
        errors.lines().all(|l| l.contains("\"cancelled\"")),
        "{errors}"
    );
    let again = stack
        .http
        .post(stack.broker_url(&format!("/v1/batches/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_file_streams_through_without_being_held_in_memory() {
    let stack = Stack::running(StackOptions::default(), &[]);
    let broker_pid = stack.pid_of("broker");
    // 96 MiB, well over the 64 KiB request body limit of the test stack.
    let line = format!("{}\n", chat_line("big", &"x ".repeat(500)));
    let copies = 96 * 1024 * 1024 / line.len();
    let body = line.repeat(copies).into_bytes();
    let size = body.len();
    let digest = body
        .iter()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(*b)));
    let before = peak_rss_kib(broker_pid);
    let (status, file) = upload(&stack, body).await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["bytes"], json!(size));
    let back = stack
        .http
        .get(stack.broker_url(&format!(
            "/v1/files/{}/content",
            file["id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(back.len(), size);
    let back_digest = back
        .iter()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(*b)));
    assert_eq!(back_digest, digest);
    let grown_mib = (peak_rss_kib(broker_pid) - before) / 1024;
    println!(
        "broker peak RSS grew {grown_mib} MiB for a {} MiB file up and down",
        size >> 20
    );
    assert!(grown_mib < 24, "the broker held the file: +{grown_mib} MiB");
}

async fn upload(stack: &Stack, content: Vec<u8>) -> (u16, Value) {
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(content).file_name("input.jsonl"),
        );
    let r = stack
        .http
        .post(stack.broker_url("/v1/files"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn post(stack: &Stack, path: &str, body: Value) -> Value {
    let r = stack
        .http
        .post(stack.broker_url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

async fn content(stack: &Stack, file: &str) -> String {
    let (status, _) = stack.get_json(&format!("/v1/files/{file}")).await;
    assert_eq!(status, 200);
    stack.get_text(&format!("/v1/files/{file}/content")).await
}
