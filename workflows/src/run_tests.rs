//! Runs driven through the state machine, with the effects answered by hand
//! and the state rebuilt from the history at every turn, as an engine
//! restarted at that point would.

use figment::Figment;
use figment::providers::{Format, Yaml};
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_runtime::{Issues, ModelSpec, Registry};
use switchyard_schemas::Priority;

use crate::{
    Decision, RunEvent, RunHeader, RunState, RunStatus, StepErrorClass, StepStatus, Templates,
    Workflow, WorkflowSpec, Workflows, decide,
};

#[derive(Deserialize)]
struct File {
    models: Vec<ModelSpec>,
    workflows: Vec<WorkflowSpec>,
}

struct Run {
    workflow: Workflow,
    history: Vec<RunEvent>,
    templates: Templates,
    now: i64,
}

impl Run {
    fn new(steps: &str, input: Value) -> Run {
        let yaml =
            format!("models: [{{name: chat, kind: chat}}]\nworkflows:\n  - name: w\n{steps}");
        let file: File = Figment::from(Yaml::string(&yaml)).extract().expect("reads");
        let mut issues = Issues::default();
        let registry = Registry::new(&file.models, &mut issues);
        let workflows = Workflows::new(&file.workflows, &registry, &mut issues);
        assert!(issues.is_empty(), "{issues}");
        let workflow = workflows.latest("w").expect("loaded").clone();
        let run = RunHeader {
            id: "run-1".into(),
            workflow: "w".into(),
            version: 1,
            tenant: "acme".into(),
            priority: Priority::High,
            input,
            webhook: None,
            api_key: None,
            trace: None,
            stream: false,
        };
        Run {
            workflow,
            history: vec![RunEvent::Started { run, at_ms: 0 }],
            templates: Templates::default(),
            now: 1_000,
        }
    }

    /// The state as a restarted engine would rebuild it.
    fn state(&self) -> RunState {
        RunState::replay(&self.workflow, &self.history).expect("replays")
    }

    /// Carries out decisions until only effects are left, which it returns
    /// (their `started` events appended).
    fn turn(&mut self) -> Vec<Decision> {
        let mut effects = Vec::new();
        loop {
            let decisions = decide(&self.workflow, &self.state(), &self.templates, self.now);
            // Deciding again on the same history decides the same.
            assert_eq!(
                decisions,
                decide(&self.workflow, &self.state(), &self.templates, self.now)
            );
            let mut recorded = false;
            for d in decisions {
                match &d {
                    Decision::Record(e) => {
                        self.history.push(e.clone());
                        recorded = true;
                    }
                    Decision::Start {
                        step,
                        attempt,
                        input,
                    } => {
                        self.history.push(RunEvent::StepStarted {
                            step: step.clone(),
                            attempt: *attempt,
                            input: input.clone(),
                            at_ms: self.now,
                        });
                        effects.push(d);
                    }
                    Decision::Compensate {
                        step,
                        attempt,
                        input,
                    } => {
                        self.history.push(RunEvent::CompensationStarted {
                            step: step.clone(),
                            attempt: *attempt,
                            input: input.clone(),
                            at_ms: self.now,
                        });
                        effects.push(d);
                    }
                    // Asked again on every turn until they are answered.
                    Decision::Stop { .. } | Decision::WakeAt(_) if !recorded => effects.push(d),
                    Decision::Stop { .. } | Decision::WakeAt(_) => {}
                }
            }
            if !recorded {
                return effects;
            }
        }
    }

    fn succeed(&mut self, step: &str, output: Value) {
        let attempt = self.state().steps[step].attempt;
        self.history.push(RunEvent::StepSucceeded {
            step: step.into(),
            attempt,
            output,
            at_ms: self.now,
        });
    }

    fn fail(&mut self, step: &str, class: StepErrorClass) {
        let attempt = self.state().steps[step].attempt;
        self.history.push(RunEvent::StepFailed {
            step: step.into(),
            attempt,
            class,
            message: "it broke".into(),
            at_ms: self.now,
        });
    }

    /// The run's latest end.
    fn finished(&self) -> Option<(RunStatus, Option<Value>, Option<String>)> {
        self.history.iter().rev().find_map(|e| match e {
            RunEvent::Finished {
                status,
                output,
                error,
                ..
            } => Some((*status, output.clone(), error.clone())),
            _ => None,
        })
    }
}

/// The steps handed out (`compensations`: their compensations), with
/// their attempts and inputs.
fn handed_out(decisions: &[Decision], compensations: bool) -> Vec<(&str, u32, &Value)> {
    decisions
        .iter()
        .filter_map(|d| match (d, compensations) {
            (
                Decision::Start {
                    step,
                    attempt,
                    input,
                },
                false,
            )
            | (
                Decision::Compensate {
                    step,
                    attempt,
                    input,
                },
                true,
            ) => Some((step.as_str(), *attempt, input)),
            _ => None,
        })
        .collect()
}

fn started(decisions: &[Decision]) -> Vec<(&str, u32, &Value)> {
    handed_out(decisions, false)
}

fn compensations(decisions: &[Decision]) -> Vec<(&str, u32, &Value)> {
    handed_out(decisions, true)
}

#[test]
fn a_four_step_pipeline_hands_each_step_what_the_earlier_ones_answered() {
    let mut run = Run::new(
        "    steps:
      - {id: clean, transform: '{{ input.text | trim | lower }}'}
      - id: draft
        needs: [clean]
        model: {name: chat, input: {messages: [{role: user, content: 'Write about {{ steps.clean.output }}'}]}}
      - id: store
        needs: [draft]
        http: {url: 'https://api.example/docs/{{ run.id }}', body: {text: '{{ steps.draft.output.text }}'}}
      - id: polish
        needs: [store]
        model: {name: chat, input: {messages: [{role: user, content: 'Polish {{ steps.store.output.id }}'}]}}
    output: {doc: '{{ steps.store.output.id }}', text: '{{ steps.polish.output.text }}'}
",
        json!({"text": "  Rivers "}),
    );
    let first = run.turn();
    assert_eq!(
        started(&first),
        [(
            "draft",
            1,
            &json!({"model": "chat", "input": {"messages": [{"role": "user", "content": "Write about rivers"}]}})
        )]
    );
    assert_eq!(run.state().steps["clean"].output, Some(json!("rivers")));
    run.succeed("draft", json!({"text": "Rivers flow."}));
    let second = run.turn();
    assert_eq!(
        started(&second),
        [(
            "store",
            1,
            &json!({"method": "POST", "url": "https://api.example/docs/run-1", "body": {"text": "Rivers flow."}})
        )]
    );
    run.succeed("store", json!({"id": "doc-7"}));
    let third = run.turn();
    assert_eq!(started(&third)[0].0, "polish");
    run.succeed("polish", json!({"text": "Rivers flow, gently."}));
    assert!(run.turn().is_empty());
    assert_eq!(
        run.finished(),
        Some((
            RunStatus::Succeeded,
            Some(json!({"doc": "doc-7", "text": "Rivers flow, gently."})),
            None
        ))
    );
}

#[test]
fn independent_steps_start_together_and_a_false_when_skips_one() {
    let mut run = Run::new(
        "    steps:
      - {id: a, transform: '{{ input.n }}'}
      - {id: left, needs: [a], worker: {queue: q, input: '{{ steps.a.output }}'}}
      - {id: right, needs: [a], worker: {queue: q, input: 2}}
      - {id: extra, needs: [a], when: 'input.n > 5', worker: {queue: q, input: 3}}
      - {id: join, needs: [left, right, extra], transform: {extra_skipped: '{{ steps.extra.skipped }}', l: '{{ steps.left.output }}'}}
",
        json!({"n": 1}),
    );
    let both = run.turn();
    let mut names: Vec<&str> = started(&both).iter().map(|s| s.0).collect();
    names.sort();
    assert_eq!(names, ["left", "right"]);
    assert_eq!(run.state().steps["extra"].status, StepStatus::Skipped);
    run.succeed("right", json!("R"));
    assert!(run.turn().is_empty(), "join waits for left");
    run.succeed("left", json!("L"));
    run.turn();
    assert_eq!(
        run.finished().map(|f| f.1),
        Some(Some(json!({"extra_skipped": true, "l": "L"})))
    );
}

#[test]
fn a_transient_failure_is_retried_after_its_backoff_and_a_lasting_one_fails_the_run() {
    let mut run = Run::new(
        "    steps:
      - {id: call, http: {url: 'https://x'}, retry: {max_attempts: 3, backoff: 2s}}
",
        json!({}),
    );
    run.turn();
    run.fail("call", StepErrorClass::Unavailable);
    assert_eq!(
        run.turn(),
        [Decision::WakeAt(3_000)],
        "1 s + 2 s of backoff"
    );
    run.now = 3_000;
    assert_eq!(started(&run.turn())[0].1, 2);
    run.fail("call", StepErrorClass::Unavailable);
    assert_eq!(run.turn(), [Decision::WakeAt(7_000)], "the backoff doubles");
    run.now = 7_000;
    assert_eq!(started(&run.turn())[0].1, 3);
    run.fail("call", StepErrorClass::Unavailable);
    run.turn();
    let (status, _, error) = run.finished().expect("ended");
    assert_eq!(status, RunStatus::Failed);
    assert!(error.unwrap().contains("after 3 attempt(s): unavailable"));

    // A class the policy does not list is not retried.
    let mut run = Run::new(
        "    steps:
      - {id: call, http: {url: 'https://x'}}
",
        json!({}),
    );
    run.turn();
    run.fail("call", StepErrorClass::HttpStatus);
    run.turn();
    assert_eq!(run.finished().map(|f| f.0), Some(RunStatus::Failed));
}

#[test]
fn a_template_that_fails_on_the_run_s_values_fails_its_step_not_the_engine() {
    let mut run = Run::new(
        "    steps:
      - {id: a, model: {name: chat, input: {prompt: '{{ input.missing.deeper }}'}}}
",
        json!({}),
    );
    assert!(run.turn().is_empty());
    let state = run.state();
    let (class, message) = state.steps["a"].error.clone().expect("failed");
    assert_eq!(class, StepErrorClass::TemplateError);
    assert!(message.contains("steps.a.model.input.prompt"), "{message}");
    assert_eq!(run.finished().map(|f| f.0), Some(RunStatus::Failed));
}

const BOOKING: &str = "    steps:
      - id: hotel
        http: {url: 'https://hotel/book'}
        compensate: {http: {method: DELETE, url: 'https://hotel/book/{{ steps.hotel.output.id }}'}, retry: {max_attempts: 2, backoff: 1s}}
      - {id: note, needs: [hotel], transform: 'booked'}
      - id: flight
        needs: [note]
        http: {url: 'https://air/book'}
        compensate: {worker: {queue: refunds, input: '{{ steps.flight.output }}'}}
      - {id: pay, needs: [flight], http: {url: 'https://pay'}}
";

fn compensation_ends(run: &mut Run, step: &str, ok: bool) {
    let attempt = run.state().steps[step].compensation_attempt;
    run.history.push(match ok {
        true => RunEvent::CompensationSucceeded {
            step: step.into(),
            attempt,
            at_ms: run.now,
        },
        false => RunEvent::CompensationFailed {
            step: step.into(),
            attempt,
            class: StepErrorClass::Unavailable,
            message: "refused".into(),
            at_ms: run.now,
        },
    });
}

/// Books the hotel and the flight, then fails the payment for good.
fn failed_payment() -> Run {
    let mut run = Run::new(BOOKING, json!({}));
    run.turn();
    run.succeed("hotel", json!({"id": "h1"}));
    run.turn();
    run.succeed("flight", json!({"seat": "2A"}));
    run.turn();
    run.fail("pay", StepErrorClass::HttpStatus);
    run
}

#[test]
fn a_step_failing_for_good_undoes_the_earlier_ones_latest_first_each_once() {
    let mut run = failed_payment();
    let first = run.turn();
    assert_eq!(
        compensations(&first),
        [(
            "flight",
            1,
            &json!({"queue": "refunds", "input": {"seat": "2A"}})
        )]
    );
    assert!(run.turn().is_empty(), "one compensation at a time");
    compensation_ends(&mut run, "flight", true);
    let second = run.turn();
    assert_eq!(
        compensations(&second),
        [(
            "hotel",
            1,
            &json!({"method": "DELETE", "url": "https://hotel/book/h1", "body": null})
        )]
    );
    compensation_ends(&mut run, "hotel", true);
    assert!(run.turn().is_empty());
    let (status, _, error) = run.finished().expect("ended");
    assert_eq!(status, RunStatus::Failed);
    assert!(error.unwrap().contains("step \"pay\""));
    let state = run.state();
    assert_eq!(state.steps["hotel"].status, StepStatus::Compensated);
    assert_eq!(state.steps["flight"].status, StepStatus::Compensated);
    let handed_out = run
        .history
        .iter()
        .filter(|e| matches!(e, RunEvent::CompensationStarted { .. }))
        .count();
    assert_eq!(handed_out, 2);
}

#[test]
fn a_compensation_that_keeps_failing_is_retried_then_ends_the_run_for_an_operator() {
    let mut run = failed_payment();
    run.turn();
    compensation_ends(&mut run, "flight", true);
    run.turn();
    compensation_ends(&mut run, "hotel", false);
    assert_eq!(run.turn(), [Decision::WakeAt(2_000)]);
    run.now = 2_000;
    assert_eq!(compensations(&run.turn())[0].1, 2);
    compensation_ends(&mut run, "hotel", false);
    run.turn();
    let (status, _, error) = run.finished().expect("ended");
    assert_eq!(status, RunStatus::FailedCompensation);
    assert!(
        error
            .unwrap()
            .contains("compensation of step \"hotel\" failed after 2 attempt(s)"),
        "{:?}",
        run.finished()
    );
}

#[test]
fn a_replayed_run_runs_its_failed_compensation_again_with_fresh_attempts() {
    let mut run = failed_payment();
    run.turn();
    compensation_ends(&mut run, "flight", true);
    for attempt in 1..=2 {
        run.now = 10_000 * i64::from(attempt);
        run.turn();
        compensation_ends(&mut run, "hotel", false);
    }
    run.turn();
    assert_eq!(
        run.finished().map(|f| f.0),
        Some(RunStatus::FailedCompensation)
    );
    run.now = 50_000;
    run.history.push(RunEvent::Replayed { at_ms: run.now });
    // At once, numbered on from the attempts before, and only the one
    // that had failed: the flight's was undone already.
    assert_eq!(
        compensations(&run.turn()),
        [(
            "hotel",
            3,
            &json!({"method": "DELETE", "url": "https://hotel/book/h1", "body": null})
        )]
    );
    compensation_ends(&mut run, "hotel", false);
    // The policy's backoff and attempts count again from the replay.
    assert_eq!(run.turn(), [Decision::WakeAt(51_000)]);
    run.now = 51_000;
    assert_eq!(compensations(&run.turn())[0].1, 4);
    compensation_ends(&mut run, "hotel", true);
    run.turn();
    let (status, _, error) = run.finished().expect("ended again");
    assert_eq!(status, RunStatus::Failed);
    assert!(error.unwrap().contains("step \"pay\""));
    let state = run.state();
    assert_eq!(state.steps["hotel"].status, StepStatus::Compensated);
    let flight_undone = run
        .history
        .iter()
        .filter(|e| matches!(e, RunEvent::CompensationStarted { step, .. } if step == "flight"))
        .count();
    assert_eq!(flight_undone, 1);
}

#[test]
fn a_cancelled_run_stops_what_runs_and_undoes_what_finished_even_late() {
    let mut run = Run::new(BOOKING, json!({}));
    run.turn();
    run.history
        .push(RunEvent::CancelRequested { at_ms: run.now });
    assert_eq!(
        run.turn(),
        [Decision::Stop {
            step: "hotel".into(),
            attempt: 1
        }]
    );
    // The booking went through before the stop reached it.
    run.succeed("hotel", json!({"id": "h9"}));
    let undo = run.turn();
    assert_eq!(compensations(&undo)[0].0, "hotel");
    compensation_ends(&mut run, "hotel", true);
    run.turn();
    assert_eq!(run.finished().map(|f| f.0), Some(RunStatus::Cancelled));
    assert_eq!(run.state().steps["flight"].status, StepStatus::Pending);
}

#[test]
fn a_step_stopped_by_the_cancellation_does_not_fail_the_cancelled_run() {
    let mut run = Run::new(BOOKING, json!({}));
    run.turn();
    run.history
        .push(RunEvent::CancelRequested { at_ms: run.now });
    run.turn();
    // The stop answered: the attempt ended cancelled.
    run.fail("hotel", StepErrorClass::Cancelled);
    run.turn();
    let (status, _, error) = run.finished().expect("ended");
    assert_eq!((status, error), (RunStatus::Cancelled, None));
}

#[test]
fn a_model_step_whose_job_was_cancelled_elsewhere_fails_the_run() {
    let mut run = Run::new(BOOKING, json!({}));
    run.turn();
    run.fail("hotel", StepErrorClass::Cancelled);
    run.turn();
    let (status, _, error) = run.finished().expect("ended");
    assert_eq!(status, RunStatus::Failed);
    assert!(error.unwrap_or_default().contains("cancelled"));
}
