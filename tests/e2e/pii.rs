//! Personal data is masked or refused at admission, by the model's and the
//! tenant's policy, before anything stores it: the simulated engine echoes
//! its prompt, so its output shows what reached the GPU.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

const MODELS: &str = "
  - name: tiny-masked
    kind: completion
    pii: mask
  - name: tiny-guarded
    kind: completion
    pii: block";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn personal_data_is_masked_or_refused_before_it_is_stored() {
    let mut stack = Stack::new(StackOptions {
        extra_models: MODELS,
        tenants: "[{name: strict, pii: block}]",
        broker_extra: "  pii:
    custom: [{name: employee_id, pattern: 'EMP-[0-9]{6}'}]",
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_simulated_agent(
        "node-a",
        &format!("{TEXT_MODEL}, tiny-masked, tiny-guarded"),
    );
    let prompt = "mail kim@example.com call 010-1234-5678 card 4111-1111-1111-1111 at 1732233445566 EMP-004217";
    let submit = |model: &str, tenant: &str| {
        let body = json!({"model": model, "tenant": tenant, "input": {"prompt": prompt, "max_tokens": 9},
                          "metadata": {"note": "from kim@example.com"}});
        let request = stack.http.post(stack.broker_url("/v1/jobs")).json(&body);
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };

    let (status, masked) = submit("tiny-masked", "default").await;
    assert_eq!(status, 202, "{masked}");
    let id = masked["id"].as_str().unwrap().to_owned();
    let done = stack
        .wait_finished(std::slice::from_ref(&id), Duration::from_secs(20))
        .await;
    assert_eq!(
        done[&id]["result"]["choices"][0]["text"],
        "mail [EMAIL] call [PHONE] card [CARD] at 1732233445566 [EMPLOYEE_ID]",
        "the engine saw only placeholders; the timestamp is not a card"
    );
    assert_eq!(done[&id]["metadata"]["note"], "from [EMAIL]");
    // Its input, as the console shows it: masked as stored.
    let (_, input) = stack.get_json(&format!("/v1/jobs/{id}/input")).await;
    assert_eq!(
        input["input"]["prompt"],
        "mail [EMAIL] call [PHONE] card [CARD] at 1732233445566 [EMPLOYEE_ID]",
        "{input}"
    );
    // Not even the job store holds the raw text.
    let stored = stack.stored_bytes();
    assert!(!stored.is_empty());
    let text = String::from_utf8_lossy(&stored);
    assert!(!text.contains("kim@example.com"), "raw e-mail stored");
    assert!(!text.contains("4111-1111-1111-1111"), "raw card stored");

    let (status, refused) = submit("tiny-guarded", "default").await;
    assert_eq!(status, 422);
    assert_eq!(refused["error"]["code"], "pii_detected");
    let message = refused["error"]["message"].as_str().unwrap();
    for kind in ["email", "phone", "card", "employee_id"] {
        assert!(message.contains(kind), "{message}");
    }
    assert!(
        !message.contains("kim@"),
        "the refusal repeats no data: {message}"
    );

    // A strict tenant refuses even where the model only masks; a model
    // without a policy passes text as it is.
    let (status, strict) = submit("tiny-masked", "strict").await;
    assert_eq!(
        (status, &strict["error"]["code"]),
        (422, &json!("pii_detected"))
    );
    let (status, _) = submit(TEXT_MODEL, "default").await;
    assert_eq!(status, 202);

    let metrics = stack.metrics_text("broker").await;
    assert!(
        metrics
            .contains("switchyard_broker_pii_entities_total{type=\"email\",action=\"masked\"} 2"),
        "{metrics}"
    );
}
