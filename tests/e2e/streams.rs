//! Streamed tokens survive: they are stored in `TOKENS`, so a client that
//! reconnects to `GET /v1/jobs/{id}/events` with `Last-Event-ID` gets the
//! rest exactly once; and when the node running a streaming job dies, the
//! retry's tokens reach the client after a `restart` event, so the text it
//! holds at the end is the result's.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

/// One server-sent event: its id, name and data.
type Sse = (String, String, Value);

/// Reads `path`'s events, resuming after `last_id`, until `enough` says so
/// (then the connection is dropped, as a client that goes away drops it)
/// or the stream ends.
async fn read_events(
    stack: &Stack,
    path: &str,
    last_id: Option<&str>,
    enough: impl Fn(&[Sse]) -> bool,
) -> Vec<Sse> {
    let mut request = stack.http.get(stack.broker_url(path));
    if let Some(id) = last_id {
        request = request.header("last-event-id", id);
    }
    let mut response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let (mut text, mut events) = (String::new(), Vec::new());
    let read = async {
        while let Some(bytes) = response.chunk().await.unwrap() {
            text.push_str(std::str::from_utf8(&bytes).unwrap());
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                events.extend(sse_event(&block));
                if enough(&events) {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the stream ends with the job");
    events
}

fn tokens(events: &[Sse]) -> Vec<&Value> {
    events
        .iter()
        .filter(|(_, name, _)| name == "token")
        .map(|(_, _, data)| data)
        .collect()
}

fn text(tokens: &[&Value]) -> String {
    tokens
        .iter()
        .map(|t| t["delta"].as_str().unwrap())
        .collect()
}

const PROMPT: &str = "one two three four five";

/// A stack with agents `nodes` and one streamed job of 60 tokens on it;
/// the path of the job's events.
async fn streaming(options: StackOptions, nodes: &[&str]) -> (Stack, String) {
    let stack = Stack::running(options, nodes);
    let id = stack
        .submit_http(&json!({"model": TEXT_MODEL, "stream": true,
                             "input": {"prompt": PROMPT, "max_tokens": 60}}))
        .await;
    (stack, format!("/v1/jobs/{id}/events"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_reconnects_gets_the_rest_of_the_tokens_exactly_once() {
    let options = StackOptions {
        per_token_latency: "20ms",
        ..StackOptions::default()
    };
    let (stack, path) = streaming(options, &["node-a"]).await;

    // The client goes away after its 20th token.
    let first = read_events(&stack, &path, None, |e| tokens(e).len() == 20).await;
    let (last_id, _, last) = first.last().unwrap();
    assert_eq!(last["seq"], 19, "{first:?}");
    let resumed = read_events(&stack, &path, Some(last_id), |_| false).await;

    // Tokens 21 to 60 and the last chunk, each once, in order.
    let rest = tokens(&resumed);
    let seqs: Vec<u64> = rest.iter().map(|t| t["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (20..=60).collect::<Vec<_>>(), "{resumed:?}");
    assert_eq!(rest.last().unwrap()["finish_reason"], "length");
    let (end, status, outcome) = resumed.last().unwrap();
    assert_eq!((end.as_str(), status.as_str()), ("end", "succeeded"));
    let whole = expected_echo(PROMPT, 60);
    assert_eq!(outcome["result"]["choices"][0]["text"], whole.as_str());
    let streamed = format!("{}{}", text(&tokens(&first)), text(&rest));
    assert_eq!(streamed, whole, "the two connections hold the whole text");

    // A client that comes after the end still gets every token, then the
    // result.
    let late = read_events(&stack, &path, None, |_| false).await;
    assert_eq!(text(&tokens(&late)), whole);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_node_dies_mid_stream_the_retry_restarts_the_stream_and_the_text_ends_whole() {
    let options = StackOptions {
        per_token_latency: "40ms",
        agent_ack_wait: "2s",
        ..StackOptions::default()
    };
    let (mut stack, path) = streaming(options, &["node-a", "node-b"]).await;
    let at_30 = read_events(&stack, &path, None, |e| tokens(e).len() == 30).await;
    let (last_id, _, _) = at_30.last().unwrap();
    let node = at_30
        .iter()
        .find(|(_, name, _)| name == "assigned")
        .map(|(_, _, data)| data["node"].as_str().unwrap().to_owned())
        .expect("assigned before its tokens");
    stack.sigkill(&node);

    // The client reconnects and follows the job to its end.
    let after = read_events(&stack, &path, Some(last_id), |_| false).await;
    let (_, status, outcome) = after.last().unwrap();
    assert_eq!(status, "succeeded", "{after:?}");
    assert_eq!(outcome["attempt"], 2, "{outcome}");
    let names: Vec<&str> = after.iter().map(|(_, n, _)| n.as_str()).collect();
    let restart = names.iter().position(|n| *n == "restart");
    let restart = restart.unwrap_or_else(|| panic!("no restart event: {names:?}"));
    assert_eq!(after[restart].2, json!({"attempt": 2, "after_attempt": 1}));
    // Before it, nothing but what attempt 1 had left; after it, attempt
    // 2's tokens alone, from the first, which make the result's text.
    let (before, since) = after.split_at(restart);
    assert!(
        tokens(before).iter().all(|t| t["attempt"] == 1),
        "{before:?}"
    );
    let retried = tokens(since);
    assert!(retried.iter().all(|t| t["attempt"] == 2), "{since:?}");
    assert_eq!(retried[0]["seq"], 0);
    let whole = expected_echo(PROMPT, 60);
    assert_eq!(text(&retried), whole);
    assert_eq!(outcome["result"]["choices"][0]["text"], whole.as_str());
}

/// Reads an OpenAI stream's chunks (event id, data) until `enough` says
/// so (then the connection is dropped) or the stream ends; whether it
/// ended with `[DONE]`.
async fn read_chunks(
    request: reqwest::RequestBuilder,
    enough: impl Fn(&[(String, Value)]) -> bool,
) -> (Vec<(String, Value)>, bool) {
    let mut response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let (mut text, mut chunks) = (String::new(), Vec::new());
    let read = async {
        while let Some(bytes) = response.chunk().await.unwrap() {
            text.push_str(std::str::from_utf8(&bytes).unwrap());
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                let field = |name: &str| block.lines().find_map(|l| l.strip_prefix(name));
                match field("data: ") {
                    Some("[DONE]") => return true,
                    Some(data) => {
                        let id = field("id: ").unwrap_or_default().to_owned();
                        chunks.push((id, serde_json::from_str(data).unwrap()));
                    }
                    None => {}
                }
                if enough(&chunks) {
                    return false;
                }
            }
        }
        false
    };
    let done = tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the stream ends with the job");
    (chunks, done)
}

fn chunk_text(chunks: &[(String, Value)]) -> String {
    chunks
        .iter()
        .filter_map(|(_, c)| c["choices"][0]["text"].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_openai_stream_resumed_with_last_event_id_gets_the_rest_exactly_once() {
    let stack = Stack::new(StackOptions {
        per_token_latency: "50ms",
        ..StackOptions::default()
    });
    // The job of a stream whose client goes away lives 1 s for a resume.
    stack.rewrite_config("broker:\n", "broker:\n  stream_resume_grace: 1s\n");
    let mut stack = stack;
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_agent("node-a");
    let body = json!({"model": TEXT_MODEL, "prompt": PROMPT, "max_tokens": 60, "stream": true});
    let post = stack
        .http
        .post(stack.broker_url("/v1/completions"))
        .json(&body);

    // The client goes away after its 20th chunk, and comes back later
    // than the grace would allow had it not come back at all.
    let (first, done) = read_chunks(post, |c| c.len() == 20).await;
    assert!(!done);
    let (last_id, last) = first.last().unwrap();
    assert_eq!(last_id, "a1.s19", "{first:?}");
    let job = last["id"]
        .as_str()
        .unwrap()
        .strip_prefix("cmpl-")
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let get = stack
        .http
        .get(stack.broker_url(&format!("/v1/completions/cmpl-{job}/stream")))
        .header("last-event-id", last_id);
    let (rest, done) = read_chunks(get, |_| false).await;
    assert!(done, "the resumed stream ends as the first would have");

    // Chunks 21 to 60, each once, in order, then the final chunk.
    let ids: Vec<&str> = rest.iter().map(|(id, _)| id.as_str()).collect();
    let want: Vec<String> = (20..60).map(|s| format!("a1.s{s}")).collect();
    assert_eq!(ids[..ids.len() - 1], want, "{rest:?}");
    let (_, end) = rest.last().unwrap();
    assert_eq!(end["choices"][0]["finish_reason"], "length", "{end}");
    let whole = expected_echo(PROMPT, 60);
    let streamed = format!("{}{}", chunk_text(&first), chunk_text(&rest));
    assert_eq!(streamed, whole, "the two connections hold the whole text");
    let (_, record) = stack.get_job(&job).await;
    assert_eq!(
        record["status"], "succeeded",
        "kept for the resume: {record}"
    );

    // Not resumed, a stream's job is cancelled once the grace has passed.
    let post = stack
        .http
        .post(stack.broker_url("/v1/completions"))
        .json(&body);
    let (first, _) = read_chunks(post, |c| c.len() == 5).await;
    let abandoned = first[0].1["id"].as_str().unwrap()["cmpl-".len()..].to_owned();
    let ended = stack
        .wait_finished_as(
            std::slice::from_ref(&abandoned),
            &["succeeded", "failed", "cancelled"],
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(ended[&abandoned]["status"], "cancelled");
}
