//! Rollouts: an alias's traffic moved from one version to another step by
//! step, each step held while guards compare the new version with the old,
//! and given back to the old one at once when a guard trips. Everything
//! here is pure: the controller (`drive.rs`) reads the figures and writes
//! what [`decide`] says.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_runtime::aliases::{AliasSpec, Target};
use switchyard_store::ledger::Figures;

/// The steps a rollout takes when none are given: a canary, then halves.
const DEFAULT_STEPS: [u32; 4] = [5, 25, 50, 100];
const MAX_STEPS: usize = 20;

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
    #[serde(with = "humantime_serde", default = "ten_minutes")]
    pub every: Duration,
    pub guards: Guards,
}

fn default_steps() -> Vec<u32> {
    DEFAULT_STEPS.to_vec()
}

fn ten_minutes() -> Duration {
    Duration::from_secs(600)
}

fn five_minutes() -> Duration {
    Duration::from_secs(300)
}

/// What must hold for a rollout to go on: the new version compared with the
/// old over `window`, once each has `min_samples` ended jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guards {
    /// Ended jobs each version needs before any guard decides.
    pub min_samples: u64,
    /// How far back the new version's jobs count.
    #[serde(with = "humantime_serde", default = "five_minutes")]
    pub window: Duration,
    /// The most the new version's error rate may exceed the old's by
    /// (0.05: five points).
    #[serde(default)]
    pub max_error_rate_increase: Option<f64>,
    /// The most the new version's p95 engine time may be, as a multiple of
    /// the old's.
    #[serde(default)]
    pub max_p95_latency_ratio: Option<f64>,
    /// The most the new version's mean cost per job may be, as a multiple
    /// of the old's.
    #[serde(default)]
    pub max_cost_ratio: Option<f64>,
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
        let rising = self.steps.windows(2).all(|w| w[0] < w[1]);
        if self.steps.is_empty()
            || self.steps.len() > MAX_STEPS
            || !rising
            || self.steps.first() == Some(&0)
            || self.steps.last() != Some(&100)
        {
            return invalid(format!(
                "steps must rise from 1 to 100 in at most {MAX_STEPS} steps"
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(7 * 86_400)).contains(&self.every) {
            return invalid("every must be between 1 s and 7 days".into());
        }
        self.guards.check().map_err(RolloutError::Invalid)?;
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

impl Guards {
    fn check(&self) -> Result<(), String> {
        if self.min_samples == 0 {
            return Err("guards.min_samples must be at least 1".into());
        }
        if self.window < Duration::from_secs(1) {
            return Err("guards.window must be at least 1 s".into());
        }
        let ratios = [self.max_p95_latency_ratio, self.max_cost_ratio];
        if ratios
            .into_iter()
            .flatten()
            .any(|r| !(r.is_finite() && r > 0.0))
        {
            return Err("guards' ratios must be positive".into());
        }
        if self
            .max_error_rate_increase
            .is_some_and(|d| !(0.0..=1.0).contains(&d))
        {
            return Err("guards.max_error_rate_increase must be between 0 and 1".into());
        }
        Ok(())
    }

    /// The first guard the new version's figures break, if each version
    /// has its samples.
    fn tripped(&self, old: &Figures, new: &Figures) -> Option<Tripped> {
        if old.jobs < self.min_samples || new.jobs < self.min_samples {
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
        if let Some(most) = self.max_error_rate_increase
            && rate(new) - rate(old) > most
        {
            return Some(trip("error_rate", rate(old), rate(new), most));
        }
        let p95 = |f: &Figures| f.p95_engine_ms.map(|ms| ms as f64);
        if let (Some(most), Some(o), Some(n)) = (self.max_p95_latency_ratio, p95(old), p95(new))
            && n > o.max(1.0) * most
        {
            return Some(trip("p95_latency", o, n, most));
        }
        if let (Some(most), Some(o), Some(n)) = (
            self.max_cost_ratio,
            old.mean_cost_micros,
            new.mean_cost_micros,
        ) && n > o * most
            && n > 0.0
        {
            return Some(trip("cost", o, n, most));
        }
        None
    }
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
    if let Some(tripped) = r.guards.tripped(old, new) {
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
