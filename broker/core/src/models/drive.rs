//! The rollout controller: every broker runs one. Each tick it reads the
//! figures of every running rollout's versions from the job store and
//! writes what `rollout::decide` says; the registry's compare-and-set makes
//! one broker's move the only one, and the others see it through the
//! watch.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use switchyard_store::ledger::Figures;
use switchyard_store::{Ledger, StoreError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::rollout::{self, Rollout, Status, Verdict};
use super::{LiveRegistry, ModelsError};
use switchyard_schemas::now_ms;

/// Drives the running rollouts every `every`, until shutdown.
pub async fn run(
    live: LiveRegistry,
    ledger: Arc<dyn Ledger>,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(e) = tick(&live, ledger.as_ref()).await {
            warn!(error = %e, "cannot drive the rollouts; trying again");
        }
    }
}

async fn tick(live: &LiveRegistry, ledger: &dyn Ledger) -> Result<(), ModelsError> {
    let (_, doc) = live.read().await?;
    for r in doc.rollouts.iter().filter(|r| r.status == Status::Running) {
        let now = now_ms();
        let Standing { old, new } = standing(ledger, r, now).await?;
        let verdict = rollout::decide(r, &old, &new, now);
        if verdict == Verdict::Hold {
            continue;
        }
        // Applied to the rollout as it was read: if another broker has
        // moved it since, that move stands and this one is dropped.
        let moved = live
            .change(None, |doc| {
                if doc.rollouts.iter().all(|c| c != r) {
                    return Ok(None);
                }
                let mut moved = r.clone();
                doc.alias_mut(&r.alias)?.targets = moved.apply(&verdict, now);
                doc.keep(moved.clone());
                Ok(Some(moved))
            })
            .await?;
        if let Some((revision, moved)) = moved {
            report(live, revision, &moved, &verdict).await;
        }
    }
    Ok(())
}

/// How a rollout's two versions fare, over what its guards compare.
#[derive(Debug, Serialize)]
pub struct Standing {
    /// The old version's, from the baseline before the rollout.
    pub old: Figures,
    /// The new version's, over the guards' window within the rollout.
    pub new: Figures,
}

/// The figures the guards judge `r` by now: what the controller decides on
/// and what an operator watching the rollout sees.
pub async fn standing(ledger: &dyn Ledger, r: &Rollout, now: i64) -> Result<Standing, StoreError> {
    Ok(Standing {
        old: ledger
            .version_figures(&r.from, &r.alias, r.baseline_since_ms())
            .await?,
        new: ledger
            .version_figures(&r.to, &r.alias, r.window_since_ms(now))
            .await?,
    })
}

async fn report(live: &LiveRegistry, revision: u64, r: &Rollout, verdict: &Verdict) {
    let event = match verdict {
        Verdict::Hold => return,
        Verdict::Advance => "advanced",
        Verdict::Complete => "completed",
        Verdict::RollBack(t) => {
            warn!(alias = %r.alias, from = %r.from, to = %r.to, guard = %t.guard,
                old = t.old, new = t.new, limit = t.limit, revision,
                "rollout rolled back: the old version has all traffic again");
            "rolled_back"
        }
    };
    info!(alias = %r.alias, to = %r.to, share = r.steps[r.step], event, revision, "rollout moved");
    live.announce(event, revision, r).await;
}
