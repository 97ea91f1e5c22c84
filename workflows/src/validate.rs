//! The workflows of a configuration, checked whole at load: every problem is
//! reported with the path of its field, and a definition that passes can
//! only fail at run time on a run's own values.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::Value;
use switchyard_runtime::config::check_id;
use switchyard_runtime::{Issues, ModelKind, Registry};

use crate::definition::{Action, RetrySpec, StepSpec, WorkflowSpec};
use crate::template::Templates;

/// The variables a template or condition may read.
const ROOTS: [&str; 3] = ["input", "steps", "run"];
/// An HTTP step's headers may also read secrets.
const HEADER_ROOTS: [&str; 4] = ["input", "steps", "run", "secrets"];

const MAX_STEPS: usize = 100;
/// A run's `max_cost_usd` at most: far past any one run, and well inside
/// what the budgets' millionths of a dollar count.
const MAX_COST_USD: f64 = 1e9;
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// One workflow version, checked, with its steps in an order that puts
/// each after the steps it needs.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub spec: WorkflowSpec,
    /// Indices into `spec.steps`.
    pub order: Vec<usize>,
    /// `input_schema`, compiled.
    input: Option<Arc<jsonschema::Validator>>,
    /// The chat model step whose output is the run's output unchanged:
    /// a streamed call relays its tokens as they are generated.
    pub answering: Option<String>,
}

/// A run's input that its workflow's `input_schema` refuses: each problem
/// with the JSON pointer of its place, the input's values masked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the input does not satisfy the workflow's input_schema: {}", .0.join("; "))]
pub struct InputError(pub Vec<String>);

/// Most problems one refusal lists.
const MAX_INPUT_ERRORS: usize = 20;

impl Workflow {
    pub fn step(&self, id: &str) -> Option<&StepSpec> {
        self.spec.steps.iter().find(|s| s.id == id)
    }

    /// Checks a run's input against `input_schema`; with none, the input
    /// must be a JSON object.
    pub fn check_input(&self, input: &Value) -> Result<(), InputError> {
        let Some(schema) = &self.input else {
            return match input.is_object() {
                true => Ok(()),
                false => Err(InputError(vec!["(root): must be a JSON object".into()])),
            };
        };
        let problems: Vec<String> = schema
            .iter_errors(input)
            .take(MAX_INPUT_ERRORS)
            .map(|e| {
                let at = e.instance_path().to_string();
                let at = if at.is_empty() { "(root)".into() } else { at };
                format!("{at}: {}", e.masked())
            })
            .collect();
        match problems.is_empty() {
            true => Ok(()),
            false => Err(InputError(problems)),
        }
    }
}

/// The step whose output is the run's output as it is (no `output:` and
/// the last step declared, or an `output:` of exactly `{{ steps.<id>.output
/// }}`), if it is a step on a chat model.
fn answering(spec: &WorkflowSpec, registry: &Registry) -> Option<String> {
    let id = match &spec.output {
        None => spec.steps.last()?.id.as_str(),
        Some(Value::String(template)) => template
            .trim()
            .strip_prefix("{{")?
            .strip_suffix("}}")?
            .trim()
            .strip_prefix("steps.")?
            .strip_suffix(".output")?,
        Some(_) => return None,
    };
    let step = spec.steps.iter().find(|s| s.id == id)?;
    let Ok(Action::Model(m)) = step.action() else {
        return None;
    };
    let chat = registry.kind_of(&m.name)? == ModelKind::Chat;
    chat.then(|| step.id.clone())
}

/// Every workflow of the configuration, by name and version.
#[derive(Debug, Clone, Default)]
pub struct Workflows {
    by_name: HashMap<String, BTreeMap<u32, Workflow>>,
}

impl Workflows {
    /// Checks `specs` against the model registry, reporting every problem.
    pub fn new(specs: &[WorkflowSpec], registry: &Registry, issues: &mut Issues) -> Workflows {
        let templates = Templates::default();
        let mut workflows = Workflows::default();
        let mut declared = std::collections::HashSet::new();
        for (i, spec) in specs.iter().enumerate() {
            let field = format!("workflows[{i}]");
            let check = Check {
                templates: &templates,
                registry,
                field: &field,
                ids: spec.steps.iter().map(|s| s.id.as_str()).collect(),
            };
            let before = issues.len();
            let order = check.workflow(spec, issues);
            let input = spec.input_schema.as_ref().and_then(|schema| {
                jsonschema::validator_for(schema)
                    .map_err(|e| {
                        let at = format!("{field}.input_schema");
                        issues.push(
                            &at,
                            schema.to_string(),
                            &format!("not a usable JSON Schema: {e}"),
                        );
                    })
                    .ok()
                    .map(Arc::new)
            });
            if !declared.insert((spec.name.as_str(), spec.version)) {
                issues.push(
                    &format!("{field}.version"),
                    spec.version,
                    &format!("workflow {:?} declares this version twice", spec.name),
                );
            } else if issues.len() == before {
                let workflow = Workflow {
                    spec: spec.clone(),
                    order,
                    input,
                    answering: answering(spec, registry),
                };
                let versions = workflows.by_name.entry(spec.name.clone()).or_default();
                versions.insert(spec.version, workflow);
            }
        }
        workflows
    }

    /// The version a new run of `name` takes: the highest.
    pub fn latest(&self, name: &str) -> Option<&Workflow> {
        self.by_name.get(name)?.values().next_back()
    }

    /// The version a run started with.
    pub fn get(&self, name: &str, version: u32) -> Option<&Workflow> {
        self.by_name.get(name)?.get(&version)
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Every task queue a worker step or compensation names.
    pub fn queues(&self) -> std::collections::BTreeSet<String> {
        let steps = self
            .by_name
            .values()
            .flat_map(|versions| versions.values())
            .flat_map(|w| w.spec.steps.iter());
        let mut queues = std::collections::BTreeSet::new();
        for step in steps {
            let compensation = step.compensate.as_ref().and_then(|c| c.worker.as_ref());
            for worker in step.worker.iter().chain(compensation) {
                queues.insert(worker.queue.clone());
            }
        }
        queues
    }
}

struct Check<'a> {
    templates: &'a Templates,
    registry: &'a Registry,
    field: &'a str,
    /// The workflow's step ids.
    ids: BTreeSet<&'a str>,
}

impl Check<'_> {
    fn workflow(&self, spec: &WorkflowSpec, issues: &mut Issues) -> Vec<usize> {
        let field = self.field;
        check_id(issues, &format!("{field}.name"), &spec.name);
        issues.check(
            spec.version >= 1,
            &format!("{field}.version"),
            spec.version,
            "must be at least 1",
        );
        if let Some(usd) = spec.max_cost_usd {
            issues.check(
                usd.is_finite() && usd > 0.0 && usd <= MAX_COST_USD,
                &format!("{field}.max_cost_usd"),
                usd,
                &format!("must be more than 0 and at most {MAX_COST_USD}"),
            );
        }
        issues.check(
            (1..=MAX_STEPS).contains(&spec.steps.len()),
            &format!("{field}.steps"),
            spec.steps.len(),
            &format!("declare 1 to {MAX_STEPS} steps"),
        );
        let mut index = HashMap::new();
        for (j, step) in spec.steps.iter().enumerate() {
            let at = format!("{field}.steps[{j}].id");
            issues.check(
                is_identifier(&step.id),
                &at,
                &step.id,
                "must be 1 to 64 of a-z A-Z 0-9 _, not starting with a digit (templates read it as steps.<id>)",
            );
            if index.insert(step.id.as_str(), j).is_some() {
                issues.push(&at, &step.id, "declared twice");
            }
        }
        let order = self.order(spec, &index, issues);
        let upstream = upstream(spec, &index, &order);
        for (j, step) in spec.steps.iter().enumerate() {
            self.step(step, &format!("{field}.steps[{j}]"), &upstream[j], issues);
        }
        if let Some(output) = &spec.output {
            self.reads(
                output,
                &format!("{field}.output"),
                &ROOTS,
                &self.ids,
                issues,
            );
        }
        order
    }

    /// The steps in an order that puts each after what it needs; every
    /// unknown or circular `needs` reported.
    fn order(
        &self,
        spec: &WorkflowSpec,
        index: &HashMap<&str, usize>,
        issues: &mut Issues,
    ) -> Vec<usize> {
        let mut waiting_on = vec![0usize; spec.steps.len()];
        let mut needed_by: Vec<Vec<usize>> = vec![Vec::new(); spec.steps.len()];
        for (j, step) in spec.steps.iter().enumerate() {
            for (k, need) in step.needs.iter().enumerate() {
                let at = format!("{}.steps[{j}].needs[{k}]", self.field);
                match index.get(need.as_str()) {
                    Some(&n) if n == j => issues.push(&at, need, "a step cannot need itself"),
                    Some(&n) => {
                        waiting_on[j] += 1;
                        needed_by[n].push(j);
                    }
                    None => issues.push(&at, need, "no step has this id"),
                }
            }
        }
        let mut ready: Vec<usize> = (0..spec.steps.len())
            .filter(|j| waiting_on[*j] == 0)
            .collect();
        let mut order = Vec::with_capacity(spec.steps.len());
        while let Some(j) = ready.pop() {
            order.push(j);
            for &k in &needed_by[j] {
                waiting_on[k] -= 1;
                if waiting_on[k] == 0 {
                    ready.push(k);
                }
            }
        }
        if order.len() < spec.steps.len() {
            let cycle: Vec<&str> = (0..spec.steps.len())
                .filter(|j| waiting_on[*j] > 0)
                .map(|j| spec.steps[j].id.as_str())
                .collect();
            issues.push(
                &format!("{}.steps", self.field),
                cycle,
                "these steps need each other in a cycle",
            );
        }
        order
    }

    fn step(&self, step: &StepSpec, at: &str, upstream: &BTreeSet<&str>, issues: &mut Issues) {
        self.retry(&step.retry, &format!("{at}.retry"), issues);
        if let Some(t) = step.timeout {
            issues.check(
                !t.is_zero(),
                &format!("{at}.timeout"),
                t,
                "must be positive",
            );
        }
        if let Some(when) = &step.when {
            let field = format!("{at}.when");
            match self.templates.condition_references(when, &field) {
                Ok(read) => self.known(&read, &field, &ROOTS, upstream, issues),
                Err(e) => issues.push(&field, when, &e.message),
            }
        }
        let action = match step.action() {
            Ok(action) => action,
            Err(n) => {
                issues.push(
                    at,
                    &step.id,
                    &format!("declares {n} of model, http, worker, transform: declare one"),
                );
                return;
            }
        };
        self.action(action, at, upstream, issues);
        let Some(compensate) = &step.compensate else {
            return;
        };
        let field = format!("{at}.compensate");
        if let Action::Transform(_) = action {
            issues.push(
                &field,
                &step.id,
                "a transform step has no effect to undo: it cannot have a compensation",
            );
            return;
        }
        self.retry(&compensate.retry, &format!("{field}.retry"), issues);
        match compensate.action() {
            // A compensation reads what the step it undoes answered.
            Ok(action) => {
                let mut with_own = upstream.clone();
                with_own.insert(step.id.as_str());
                self.action(action, &field, &with_own, issues);
            }
            Err(n) => issues.push(
                &field,
                &step.id,
                &format!("declares {n} of model, http, worker: declare one"),
            ),
        }
    }

    fn action(&self, action: Action<'_>, at: &str, upstream: &BTreeSet<&str>, issues: &mut Issues) {
        match action {
            Action::Model(m) => {
                issues.check(
                    self.registry.kind_of(&m.name).is_some(),
                    &format!("{at}.model.name"),
                    &m.name,
                    "no model of the registry has this name",
                );
                self.reads(
                    &m.input,
                    &format!("{at}.model.input"),
                    &ROOTS,
                    upstream,
                    issues,
                );
            }
            Action::Http(h) => {
                issues.check(
                    METHODS.contains(&h.method.as_str()),
                    &format!("{at}.http.method"),
                    &h.method,
                    "must be one of GET, POST, PUT, PATCH, DELETE",
                );
                issues.check(
                    h.url.starts_with("http://") || h.url.starts_with("https://"),
                    &format!("{at}.http.url"),
                    &h.url,
                    "must start with http:// or https://",
                );
                let url = Value::String(h.url.clone());
                self.reads(&url, &format!("{at}.http.url"), &ROOTS, upstream, issues);
                for (name, value) in &h.headers {
                    let value = Value::String(value.clone());
                    let field = format!("{at}.http.headers.{name}");
                    self.reads(&value, &field, &HEADER_ROOTS, upstream, issues);
                }
                if let Some(body) = &h.body {
                    self.reads(body, &format!("{at}.http.body"), &ROOTS, upstream, issues);
                }
            }
            Action::Worker(w) => {
                check_id(issues, &format!("{at}.worker.queue"), &w.queue);
                self.reads(
                    &w.input,
                    &format!("{at}.worker.input"),
                    &ROOTS,
                    upstream,
                    issues,
                );
            }
            Action::Transform(t) => {
                self.reads(t, &format!("{at}.transform"), &ROOTS, upstream, issues);
            }
        }
    }

    fn retry(&self, retry: &RetrySpec, at: &str, issues: &mut Issues) {
        issues.check(
            (1..=100).contains(&retry.max_attempts),
            &format!("{at}.max_attempts"),
            retry.max_attempts,
            "must be between 1 and 100",
        );
        issues.check(
            retry.backoff <= retry.max_backoff,
            &format!("{at}.backoff"),
            retry.backoff,
            "must not exceed max_backoff",
        );
    }

    /// Checks the templates of `tree` parse and read only what they may.
    fn reads(
        &self,
        tree: &Value,
        at: &str,
        roots: &[&str],
        upstream: &BTreeSet<&str>,
        issues: &mut Issues,
    ) {
        match self.templates.references(tree, at) {
            Ok(read) => self.known(&read, at, roots, upstream, issues),
            Err(e) => issues.push(&e.at, tree, &e.message),
        }
    }

    /// Checks each variable read is a root it may read, and each step read
    /// one that ends before the reader starts.
    fn known(
        &self,
        read: &BTreeSet<String>,
        at: &str,
        roots: &[&str],
        upstream: &BTreeSet<&str>,
        issues: &mut Issues,
    ) {
        for variable in read {
            let mut parts = variable.split('.');
            let root = parts.next().unwrap_or_default();
            if !roots.contains(&root) {
                issues.push(
                    at,
                    variable,
                    &format!(
                        "reads an unknown variable: only {} exist here",
                        roots.join(", ")
                    ),
                );
                continue;
            }
            if root != "steps" {
                continue;
            }
            match parts.next() {
                Some(step) if upstream.contains(step) => {}
                Some(step) if !self.ids.contains(step) => {
                    issues.push(at, variable, &format!("no step has the id {step:?}"));
                }
                Some(step) => issues.push(
                    at,
                    variable,
                    &format!(
                        "reads step {step:?}, which is not a step this one needs (directly or through others)"
                    ),
                ),
                None => issues.push(at, variable, "name the step: steps.<id>.output"),
            }
        }
    }
}

fn is_identifier(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && !id.starts_with(|c: char| c.is_ascii_digit())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// For each step, the steps that end before it starts: what it needs,
/// directly or through others.
fn upstream<'a>(
    spec: &'a WorkflowSpec,
    index: &HashMap<&str, usize>,
    order: &[usize],
) -> Vec<BTreeSet<&'a str>> {
    let mut up: Vec<BTreeSet<&str>> = vec![BTreeSet::new(); spec.steps.len()];
    for &j in order {
        let mut all = BTreeSet::new();
        for need in &spec.steps[j].needs {
            if let Some(&n) = index.get(need.as_str()) {
                all.insert(spec.steps[n].id.as_str());
                all.extend(up[n].iter().copied());
            }
        }
        up[j] = all;
    }
    up
}
