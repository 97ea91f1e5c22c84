//! Rollouts: an alias's traffic moved from one version to another step by
//! step, each step held while guards compare the new version with the old,
//! and given back to the old one at once when a guard trips. Everything
//! here is pure: the controller (`drive.rs`) reads the figures and writes
//! what [`decide`] says.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_runtime::aliases::{AliasSpec, Target};
use switchyard_runtime::rollout_plan::{Guards, check_plan, default_every, default_steps};
use switchyard_store::ledger::Figures;

/// What an operator asks for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    /// The version the alias moves to.
    pub to: String,
    /// The new version's share at each step, in percent, rising to 100.
    #[serde(default = "default_steps")]
    pub steps: Vec<u32>,
    /// How long each step holds before the next.
    #[serde(with = "humantime_serde", default = "default_every")]
    pub every: Duration,
    pub guards: Guards,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Completed,
    RolledBack,
}

/// A rollout as the live registry keeps it: the latest per alias.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub alias: String,
    pub from: String,
    pub to: String,
    pub steps: Vec<u32>,
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    pub guards: Guards,
    pub status: Status,
    /// The step in force, an index into `steps`.
    pub step: usize,
    pub started_at_ms: i64,
    pub step_started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    /// Why it was rolled back: a guard's figures, or an operator.
    pub rolled_back_by: Option<Tripped>,
}

/// What sent a rollout back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tripped {
    /// `error_rate`, `p95_latency`, `cost`, or `operator`.
    pub guard: String,
    /// The guard's figure for each version (a rate, milliseconds, or
    /// micro-USD), and its limit.
    pub old: f64,
    pub new: f64,
    pub limit: f64,
    /// The ended jobs each figure is over.
    pub old_jobs: u64,
    pub new_jobs: u64,
}

/// What a rollout does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Hold,
    Advance,
    Complete,
    RollBack(Tripped),
}

/// Why a rollout cannot start.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RolloutError {
    #[error("{0}")]
    Invalid(String),
    #[error("alias {0:?} has a rollout running; roll it back or let it end first")]
    Running(String),
}

impl RolloutRequest {
    /// Checks the request against the alias it would move.
    pub fn start(self, alias: &mut AliasSpec, now_ms: i64) -> Result<Rollout, RolloutError> {
        let invalid = |m: String| Err(RolloutError::Invalid(m));
        check_plan(&self.steps, self.every, &self.guards).map_err(RolloutError::Invalid)?;
        let from = match alias.targets.as_slice() {
            [only] if only.weight == 100 => only.model.clone(),
            _ => {
                return invalid(format!(
                    "alias {:?} must send all its traffic to one version before a rollout",
                    alias.name
                ));
            }
        };
        if from == self.to {
            return invalid(format!("alias {:?} already serves {from:?}", alias.name));
        }
        let rollout = Rollout {
            alias: alias.name.clone(),
            from,
            to: self.to,
            steps: self.steps,
            every: self.every,
            guards: self.guards,
            status: Status::Running,
            step: 0,
            started_at_ms: now_ms,
            step_started_at_ms: now_ms,
            ended_at_ms: None,
            rolled_back_by: None,
        };
        alias.targets = rollout.targets();
        Ok(rollout)
    }
}

/// The first guard the new version's figures break, if each version has
/// its samples.
fn tripped(guards: &Guards, old: &Figures, new: &Figures) -> Option<Tripped> {
    if old.jobs < guards.min_samples || new.jobs < guards.min_samples {
        return None;
    }
    let trip = |guard: &str, old_v: f64, new_v: f64, limit: f64| Tripped {
        guard: guard.to_owned(),
        old: old_v,
        new: new_v,
        limit,
        old_jobs: old.jobs,
        new_jobs: new.jobs,
    };
    let rate = |f: &Figures| f.failed as f64 / f.jobs as f64;
    if let Some(most) = guards.max_error_rate_increase
        && rate(new) - rate(old) > most
    {
        return Some(trip("error_rate", rate(old), rate(new), most));
    }
    let p95 = |f: &Figures| f.p95_engine_ms.map(|ms| ms as f64);
    if let (Some(most), Some(o), Some(n)) = (guards.max_p95_latency_ratio, p95(old), p95(new))
        && n > o.max(1.0) * most
    {
        return Some(trip("p95_latency", o, n, most));
    }
    if let (Some(most), Some(o), Some(n)) = (
        guards.max_cost_ratio,
        old.mean_cost_micros,
        new.mean_cost_micros,
    ) && n > o * most
        && n > 0.0
    {
        return Some(trip("cost", o, n, most));
    }
    None
}

impl Rollout {
    /// The alias's targets at the step in force.
    pub fn targets(&self) -> Vec<Target> {
        let share = self.steps[self.step];
        vec![
            Target {
                model: self.from.clone(),
                weight: 100 - share,
            },
            Target {
                model: self.to.clone(),
                weight: share,
            },
        ]
    }

    /// Where the old version's figures start: a window before the rollout,
    /// so that a step that sends it nothing still has its baseline.
    pub fn baseline_since_ms(&self) -> i64 {
        self.started_at_ms - window_ms(&self.guards)
    }

    /// Where the new version's figures start: the window, within the
    /// rollout.
    pub fn window_since_ms(&self, now_ms: i64) -> i64 {
        self.started_at_ms.max(now_ms - window_ms(&self.guards))
    }

    /// Moves the rollout on by `verdict`; the alias's targets to use after.
    pub fn apply(&mut self, verdict: &Verdict, now_ms: i64) -> Vec<Target> {
        match verdict {
            Verdict::Hold => {}
            Verdict::Advance => {
                self.step += 1;
                self.step_started_at_ms = now_ms;
            }
            Verdict::Complete => {
                self.status = Status::Completed;
                self.ended_at_ms = Some(now_ms);
                return vec![Target {
                    model: self.to.clone(),
                    weight: 100,
                }];
            }
            Verdict::RollBack(tripped) => {
                self.status = Status::RolledBack;
                self.ended_at_ms = Some(now_ms);
                self.rolled_back_by = Some(tripped.clone());
                return vec![Target {
                    model: self.from.clone(),
                    weight: 100,
                }];
            }
        }
        self.targets()
    }
}

fn window_ms(guards: &Guards) -> i64 {
    i64::try_from(guards.window.as_millis()).unwrap_or(i64::MAX)
}

/// What a running rollout does next, from each version's figures: back at
/// once when a guard trips; on when its step has held for `every` and
/// both versions have their samples; otherwise it holds, so a step with
/// too little traffic to judge waits for more.
pub fn decide(r: &Rollout, old: &Figures, new: &Figures, now_ms: i64) -> Verdict {
    if let Some(tripped) = tripped(&r.guards, old, new) {
        return Verdict::RollBack(tripped);
    }
    let held = now_ms - r.step_started_at_ms >= i64::try_from(r.every.as_millis()).unwrap_or(0);
    let judged = old.jobs >= r.guards.min_samples && new.jobs >= r.guards.min_samples;
    match (held && judged, r.step + 1 == r.steps.len()) {
        (false, _) => Verdict::Hold,
        (true, false) => Verdict::Advance,
        (true, true) => Verdict::Complete,
    }
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
