use figment::Figment;
use figment::providers::{Format, Yaml};
use serde::Deserialize;
use switchyard_runtime::{Issues, ModelSpec, Registry};

use crate::{Action, StepErrorClass, WorkflowSpec, Workflows};

#[derive(Deserialize)]
struct File {
    models: Vec<ModelSpec>,
    workflows: Vec<WorkflowSpec>,
}

const MODELS: &str = "
models:
  - name: tiny-chat
    kind: chat
";

/// The workflows of `yaml`, and every problem found, one per line.
fn load(yaml: &str) -> (Workflows, String) {
    let file: File = Figment::from(Yaml::string(&format!("{MODELS}{yaml}")))
        .extract()
        .expect("the YAML reads");
    let mut issues = Issues::default();
    let registry = Registry::new(&file.models, &mut issues);
    let workflows = Workflows::new(&file.workflows, &registry, &mut issues);
    (workflows, issues.to_string())
}

#[test]
fn a_pipeline_of_every_kind_of_step_loads_in_an_order_that_follows_needs() {
    let (workflows, issues) = load(
        "
workflows:
  - name: summarize
    version: 2
    input_schema: {type: object, required: [text]}
    steps:
      - id: publish
        needs: [summary, review]
        http:
          url: https://example.com/posts
          headers: {Authorization: 'Bearer {{ secrets.posts_token }}'}
          body: {text: '{{ steps.summary.output.choices[0].message.content }}'}
        compensate:
          http: {method: DELETE, url: 'https://example.com/posts/{{ steps.publish.output.id }}'}
      - id: clean
        transform: '{{ input.text | trim }}'
      - id: summary
        needs: [clean]
        model:
          name: tiny-chat
          input: {messages: [{role: user, content: 'Summarize: {{ steps.clean.output }}'}]}
        retry: {max_attempts: 5, backoff: 2s, on: [unavailable, job_failed]}
        timeout: 1m
      - id: review
        needs: [clean]
        when: \"input.review is defined and input.review\"
        worker: {queue: reviews, input: {text: '{{ steps.clean.output }}'}}
    output: {summary: '{{ steps.summary.output }}', posted: '{{ steps.publish.output }}'}
",
    );
    assert_eq!(issues, "");
    let w = workflows.latest("summarize").expect("loaded");
    assert_eq!(w.spec.version, 2);
    let ids: Vec<&str> = w
        .order
        .iter()
        .map(|&j| w.spec.steps[j].id.as_str())
        .collect();
    let at = |id: &str| ids.iter().position(|s| *s == id).unwrap();
    assert_eq!(at("clean"), 0, "{ids:?}");
    assert!(
        at("summary") < at("publish") && at("review") < at("publish"),
        "{ids:?}"
    );
    let summary = &w.spec.steps[2];
    assert!(matches!(summary.action(), Ok(Action::Model(m)) if m.name == "tiny-chat"));
    assert_eq!(summary.retry.max_attempts, 5);
    assert_eq!(
        summary.retry.on,
        [StepErrorClass::Unavailable, StepErrorClass::JobFailed]
    );
    // Backoff doubles from the second attempt on, up to its bound.
    assert_eq!(summary.retry.backoff_before(2).as_secs(), 2);
    assert_eq!(summary.retry.backoff_before(4).as_secs(), 8);
    assert_eq!(summary.retry.backoff_before(30).as_secs(), 60);
    // A step that does not say is retried on the transient classes only.
    assert!(
        !w.spec.steps[3]
            .retry
            .on
            .contains(&StepErrorClass::HttpStatus)
    );
}

#[test]
fn a_new_run_takes_the_highest_version_and_a_running_one_keeps_its_own() {
    let step = "steps: [{id: a, transform: '{{ input }}'}]";
    let (workflows, issues) = load(&format!(
        "
workflows:
  - {{name: w, version: 3, {step}}}
  - {{name: w, version: 1, {step}}}
"
    ));
    assert_eq!(issues, "");
    assert_eq!(workflows.latest("w").unwrap().spec.version, 3);
    assert_eq!(workflows.get("w", 1).unwrap().spec.version, 1);
    assert!(workflows.get("w", 2).is_none());
    assert!(workflows.latest("v").is_none());
}

#[test]
fn every_invalid_definition_is_refused_with_the_path_of_its_field() {
    let cases = [
        (
            "steps: [{id: a, needs: [b], transform: 1}, {id: b, needs: [a], transform: 2}]",
            "workflows[0].steps = [\"a\", \"b\"]: these steps need each other in a cycle",
        ),
        (
            "steps: [{id: a, needs: [nope], transform: 1}]",
            "workflows[0].steps[0].needs[0] = \"nope\": no step has this id",
        ),
        (
            "steps: [{id: a, model: {name: gpt-9, input: {}}}]",
            "workflows[0].steps[0].model.name = \"gpt-9\": no model of the registry has this name",
        ),
        (
            "steps: [{id: a, transform: '{{ steps.b.output }}'}, {id: b, transform: 1}]",
            "reads step \"b\", which is not a step this one needs",
        ),
        (
            "steps: [{id: a, transform: '{{ steps.zz.output }}'}]",
            "workflows[0].steps[0].transform = \"steps.zz.output\": no step has the id \"zz\"",
        ),
        (
            "steps: [{id: a, transform: '{{ env.HOME }}'}]",
            "reads an unknown variable: only input, steps, run exist here",
        ),
        (
            "steps: [{id: a, when: 'input.x ==', transform: 1}]",
            "workflows[0].steps[0].when = \"input.x ==\"",
        ),
        (
            "steps: [{id: a, transform: {deep: ['{{ input.x'] }}]",
            "workflows[0].steps[0].transform.deep[0] = ",
        ),
        (
            "steps: [{id: a, transform: 1, compensate: {http: {url: 'https://x'}}}]",
            "a transform step has no effect to undo",
        ),
        (
            "steps: [{id: a, transform: 1, model: {name: tiny-chat, input: {}}}]",
            "declares 2 of model, http, worker, transform: declare one",
        ),
        (
            "steps: [{id: a, http: {url: 'ftp://x'}}]",
            "workflows[0].steps[0].http.url = \"ftp://x\": must start with http:// or https://",
        ),
        (
            "steps: [{id: a, http: {url: 'https://x', headers: {K: '{{ secret.k }}'}}}]",
            "workflows[0].steps[0].http.headers.K = \"secret.k\": reads an unknown variable",
        ),
        (
            "steps: [{id: a-b, transform: 1}]",
            "workflows[0].steps[0].id = \"a-b\": must be 1 to 64 of a-z A-Z 0-9 _",
        ),
        (
            "steps: [{id: a, transform: 1, retry: {max_attempts: 0}}]",
            "workflows[0].steps[0].retry.max_attempts = 0",
        ),
        (
            "steps: [{id: a, worker: {queue: 'a.b'}}]",
            "workflows[0].steps[0].worker.queue = \"a.b\"",
        ),
        (
            "steps: []",
            "workflows[0].steps = 0: declare 1 to 100 steps",
        ),
        (
            "max_cost_usd: 0, steps: [{id: a, transform: 1}]",
            "workflows[0].max_cost_usd = 0.0: must be more than 0",
        ),
    ];
    for (steps, want) in cases {
        let (workflows, issues) = load(&format!("workflows:\n  - {{name: w, {steps}}}\n"));
        assert!(
            issues.contains(want),
            "{steps}\nwant: {want}\ngot: {issues}"
        );
        assert!(workflows.latest("w").is_none(), "{steps}: loaded anyway");
    }
}

#[test]
fn a_version_declared_twice_is_refused() {
    let (_, issues) = load(
        "
workflows:
  - {name: w, steps: [{id: a, transform: 1}]}
  - {name: w, steps: [{id: a, transform: 2}]}
",
    );
    assert!(
        issues.contains("workflows[1].version = 1: workflow \"w\" declares this version twice"),
        "{issues}"
    );
}

#[test]
fn a_compensation_reads_the_step_it_undoes() {
    let (_, issues) = load(
        "
workflows:
  - name: w
    steps:
      - id: book
        http: {url: 'https://hotel/bookings'}
        compensate:
          http: {method: DELETE, url: 'https://hotel/bookings/{{ steps.book.output.id }}'}
      - id: pay
        needs: [book]
        http: {url: 'https://pay', body: {booking: '{{ steps.book.output.id }}'}}
        compensate:
          worker: {queue: refunds, input: {of: '{{ steps.pay.output }}', b: '{{ steps.book.output }}'}}
",
    );
    assert_eq!(issues, "");
}

#[test]
fn a_run_s_input_is_held_to_its_schema_without_echoing_its_values() {
    let (workflows, issues) = load(
        "
workflows:
  - name: w
    input_schema:
      type: object
      required: [text]
      properties: {text: {type: string, maxLength: 5}, n: {type: integer}}
    steps: [{id: a, transform: '{{ input.text }}'}]
  - name: free
    steps: [{id: a, transform: 1}]
",
    );
    assert_eq!(issues, "");
    let w = workflows.latest("w").unwrap();
    assert_eq!(
        w.check_input(&serde_json::json!({"text": "hi", "n": 2})),
        Ok(())
    );
    let refused = w
        .check_input(&serde_json::json!({"text": "secret-value", "n": "two"}))
        .unwrap_err();
    let text = refused.to_string();
    assert_eq!(refused.0.len(), 2, "{text}");
    assert!(text.contains("/text: "), "{text}");
    assert!(text.contains("/n: "), "{text}");
    assert!(!text.contains("secret-value"), "{text}");
    let missing = w.check_input(&serde_json::json!({})).unwrap_err();
    assert!(missing.0[0].starts_with("(root): "), "{missing}");
    // With no schema, any object.
    let free = workflows.latest("free").unwrap();
    assert_eq!(free.check_input(&serde_json::json!({"x": 1})), Ok(()));
    assert!(free.check_input(&serde_json::json!([1])).is_err());
}

#[test]
fn a_schema_that_cannot_be_used_or_would_be_fetched_is_refused_at_load() {
    for schema in [
        "{type: 12}",
        "{$ref: 'https://schemas.example.com/input.json'}",
        "{$ref: 'file:///etc/passwd'}",
    ] {
        let (workflows, issues) = load(&format!(
            "workflows:\n  - {{name: w, input_schema: {schema}, steps: [{{id: a, transform: 1}}]}}\n"
        ));
        assert!(
            issues.contains("workflows[0].input_schema = ")
                && issues.contains("not a usable JSON Schema"),
            "{schema}: {issues}"
        );
        assert!(workflows.latest("w").is_none());
    }
}

#[test]
fn the_answering_step_is_a_chat_step_whose_output_is_the_run_s_unchanged() {
    let (workflows, issues) = load(
        "
workflows:
  - name: last
    steps:
      - {id: clean, transform: '{{ input.text }}'}
      - {id: ask, needs: [clean], model: {name: tiny-chat, input: {messages: []}}}
  - name: named
    output: '{{ steps.ask.output }}'
    steps:
      - {id: ask, model: {name: tiny-chat, input: {messages: []}}}
      - {id: log, needs: [ask], http: {url: 'https://example.com/log'}}
  - name: reshaped
    output: '{{ steps.ask.output.choices[0].message.content | upper }}'
    steps:
      - {id: ask, model: {name: tiny-chat, input: {messages: []}}}
  - name: post_processed
    steps:
      - {id: ask, model: {name: tiny-chat, input: {messages: []}}}
      - {id: tidy, needs: [ask], transform: '{{ steps.ask.output }}'}
",
    );
    assert_eq!(issues, "");
    let answering = |name: &str| workflows.latest(name).unwrap().answering.clone();
    assert_eq!(answering("last").as_deref(), Some("ask"));
    assert_eq!(answering("named").as_deref(), Some("ask"));
    // Its tokens would not add up to the answer.
    assert_eq!(answering("reshaped"), None);
    assert_eq!(answering("post_processed"), None);
}
