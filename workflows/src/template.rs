//! Templates and conditions, in the Jinja2 language (MiniJinja): a step's
//! input is a JSON value whose strings are templates, and `when:` is a
//! Jinja2 expression.
//!
//! A string that is one `{{ expression }}` and nothing else takes the
//! expression's value, whatever its type (an object, a list, a number);
//! any other string renders to a string.

use std::collections::BTreeSet;

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// A template that cannot be read, or that failed on a run's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {message}")]
pub struct TemplateError {
    /// Where in the template tree: `input.messages[0].content`.
    pub at: String,
    pub message: String,
}

/// Most work one rendering may do: a loop in a template cannot hold the
/// engine.
const FUEL: u64 = 100_000;

/// The environment every template and condition of every workflow runs in.
pub struct Templates {
    env: Environment<'static>,
}

impl Default for Templates {
    fn default() -> Self {
        let mut env = Environment::new();
        // A missing field is an error to report, not an empty string to send.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        Templates { env }
    }
}

/// The expression of a string that is one `{{ expression }}`.
fn whole_expression(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    let plain = ["{{", "}}", "{%", "%}", "{#"]
        .iter()
        .all(|mark| !inner.contains(mark));
    plain.then_some(inner.trim())
}

fn child(at: &str, key: &str) -> String {
    match at {
        "" => key.to_owned(),
        _ => format!("{at}.{key}"),
    }
}

impl Templates {
    /// The variables (dotted paths, such as `steps.clean.output`) that every
    /// template in `tree` reads; `at` names the tree in errors.
    pub fn references(&self, tree: &Value, at: &str) -> Result<BTreeSet<String>, TemplateError> {
        let mut found = BTreeSet::new();
        self.collect(tree, at, &mut found)?;
        Ok(found)
    }

    fn collect(
        &self,
        tree: &Value,
        at: &str,
        found: &mut BTreeSet<String>,
    ) -> Result<(), TemplateError> {
        let error = |e: minijinja::Error| TemplateError {
            at: at.to_owned(),
            message: e.to_string(),
        };
        match tree {
            Value::String(s) => {
                let read = match whole_expression(s) {
                    Some(expr) => self
                        .env
                        .compile_expression(expr)
                        .map_err(error)?
                        .undeclared_variables(true),
                    None => self
                        .env
                        .template_from_str(s)
                        .map_err(error)?
                        .undeclared_variables(true),
                };
                found.extend(read);
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.collect(item, &format!("{at}[{i}]"), found)?;
                }
            }
            Value::Object(fields) => {
                for (key, item) in fields {
                    self.collect(item, &child(at, key), found)?;
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
        Ok(())
    }

    /// The variables a condition reads.
    pub fn condition_references(
        &self,
        expr: &str,
        at: &str,
    ) -> Result<BTreeSet<String>, TemplateError> {
        let compiled = self
            .env
            .compile_expression(expr)
            .map_err(|e| TemplateError {
                at: at.to_owned(),
                message: e.to_string(),
            })?;
        Ok(compiled.undeclared_variables(true).into_iter().collect())
    }

    /// `tree` with every template in it rendered against `context`.
    pub fn render(&self, tree: &Value, context: &Value, at: &str) -> Result<Value, TemplateError> {
        let ctx = minijinja::Value::from(minijinja::value::Serde(context));
        self.render_in(tree, &ctx, at)
    }

    fn render_in(
        &self,
        tree: &Value,
        ctx: &minijinja::Value,
        at: &str,
    ) -> Result<Value, TemplateError> {
        let error = |message: String| TemplateError {
            at: at.to_owned(),
            message,
        };
        Ok(match tree {
            Value::String(s) => match whole_expression(s) {
                Some(expr) => {
                    let value = self
                        .env
                        .compile_expression(expr)
                        .and_then(|e| e.eval(ctx))
                        .map_err(|e| error(e.to_string()))?;
                    serde_json::to_value(&value).map_err(|e| error(e.to_string()))?
                }
                None => Value::String(
                    self.env
                        .render_str(s, ctx)
                        .map_err(|e| error(e.to_string()))?,
                ),
            },
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.render_in(item, ctx, &format!("{at}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, item)| Ok((k.clone(), self.render_in(item, ctx, &child(at, k))?)))
                    .collect::<Result<_, TemplateError>>()?,
            ),
            other => other.clone(),
        })
    }

    /// Whether a condition holds for `context`, by Jinja2's truth.
    pub fn holds(&self, expr: &str, context: &Value, at: &str) -> Result<bool, TemplateError> {
        let ctx = minijinja::Value::from(minijinja::value::Serde(context));
        self.env
            .compile_expression(expr)
            .and_then(|e| e.eval(ctx))
            .map(|v| v.is_true())
            .map_err(|e| TemplateError {
                at: at.to_owned(),
                message: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_whole_expression_keeps_its_type_and_other_strings_render() {
        let t = Templates::default();
        let ctx = json!({"input": {"text": "  hi  ", "n": 3},
                         "steps": {"a": {"output": {"labels": ["x", "y"]}}}});
        let tree = json!({
            "labels": "{{ steps.a.output.labels }}",
            "n": " {{ input.n + 1 }} ",
            "prompt": "Say {{ input.text | trim }} {{ input.n }} times",
            "fixed": [1, true, null],
        });
        assert_eq!(
            t.render(&tree, &ctx, "input").unwrap(),
            json!({"labels": ["x", "y"], "n": 4, "prompt": "Say hi 3 times", "fixed": [1, true, null]})
        );
        let refs = t.references(&tree, "input").unwrap();
        assert!(refs.contains("steps.a.output.labels"), "{refs:?}");
        assert!(refs.contains("input.text"), "{refs:?}");
    }

    #[test]
    fn a_missing_field_fails_with_where_it_was_read() {
        let t = Templates::default();
        let ctx = json!({"input": {}});
        let e = t
            .render(
                &json!({"m": [{"content": "{{ input.text }} more"}]}),
                &ctx,
                "input",
            )
            .unwrap_err();
        assert_eq!(e.at, "input.m[0].content");
        assert!(e.message.contains("undefined"), "{e}");
    }

    #[test]
    fn a_template_that_does_not_parse_is_refused_with_its_place() {
        let t = Templates::default();
        let e = t
            .references(&json!({"a": "{{ input.text "}), "steps[0].model.input")
            .unwrap_err();
        assert_eq!(e.at, "steps[0].model.input.a");
        assert!(t.condition_references("input.x ==", "when").is_err());
    }

    #[test]
    fn conditions_follow_jinja_truth_and_a_runaway_loop_runs_out_of_fuel() {
        let t = Templates::default();
        let ctx = json!({"steps": {"c": {"output": {"label": "spam", "items": []}}}});
        assert!(
            t.holds("steps.c.output.label == 'spam'", &ctx, "when")
                .unwrap()
        );
        assert!(!t.holds("steps.c.output.items", &ctx, "when").unwrap());
        let e = t
            .render(
                &json!("{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}"),
                &ctx,
                "output",
            )
            .unwrap_err();
        assert!(e.message.contains("fuel"), "{e}");
    }
}
