//! Tenant budgets. A job reserves the most it can cost at admission — the
//! store checks and reserves in one conditional update, so concurrent
//! submissions (on one broker or several sharing a database) cannot
//! overrun the limit — and its result settles the reservation: the real
//! cost of a success is spent, a failure, cancellation or expiry refunds.

use std::collections::HashMap;

use switchyard_runtime::{Budget, BudgetPeriod, Registry, Tenants};
use switchyard_schemas::{Job, JobInput};
use time::OffsetDateTime;

use switchyard_store::quotas::Reservation;
use switchyard_store::{JobRecord, Status};

/// Budgets by tenant.
#[derive(Debug, Default)]
pub struct Budgets {
    limits: HashMap<String, Budget>,
}

/// The start (Unix ms, UTC) of the period `now_ms` falls in.
pub fn period_start(period: BudgetPeriod, now_ms: i64) -> i64 {
    const DAY: i64 = 86_400_000;
    let day = now_ms.div_euclid(DAY) * DAY;
    match period {
        BudgetPeriod::Day => day,
        BudgetPeriod::Month => OffsetDateTime::from_unix_timestamp(day / 1000)
            .ok()
            .and_then(|t| t.replace_day(1).ok())
            .map_or(day, |t| t.unix_timestamp() * 1000),
    }
}

/// Tokens a chat template may add around each message (role markers and
/// separators): more than the templates in use add.
const TEMPLATE_TOKENS_PER_MESSAGE: usize = 16;

/// The most tokens a job's prompt can be: no tokenizer makes a token of
/// less than one byte of text (byte-level BPE, or sentencepiece with byte
/// fallback), so its bytes, plus what a chat template adds. A Korean,
/// Chinese or Japanese character is three bytes and at most three tokens.
fn prompt_tokens_at_most(input: &JobInput) -> u32 {
    let template = match input {
        JobInput::Chat(c) => c.messages.len() * TEMPLATE_TOKENS_PER_MESSAGE,
        _ => 0,
    };
    u32::try_from(input.text_bytes() + template).unwrap_or(u32::MAX)
}

/// The most a job can cost, which its budget reserves: its prompt at most
/// as many tokens as it has bytes, all of its `max_tokens`, and engine
/// time for all of its timeout. Concurrent jobs then never spend past a
/// budget: what they may spend is reserved before they run.
pub fn estimate(registry: &Registry, job: &Job) -> i64 {
    registry
        .get(&job.model)
        .and_then(|m| m.price)
        .map_or(0, |p| {
            p.cost_micros(
                prompt_tokens_at_most(&job.input),
                job.input.max_tokens().unwrap_or(0),
                job.timeout_ms.unwrap_or(0),
                false,
            )
        })
}

/// What a finished job cost, by its model's price: nothing unless it
/// succeeded.
pub fn job_cost(registry: &Registry, job: &JobRecord) -> i64 {
    let (Status::Succeeded, Some(usage)) = (job.status, job.usage) else {
        return 0;
    };
    let engine_ms = job
        .finished_at_ms
        .zip(job.started_at_ms)
        .map_or(0, |(f, s)| u64::try_from(f - s).unwrap_or(0));
    registry
        .get(&job.model)
        .and_then(|m| m.price)
        .map_or(0, |p| {
            p.cost_micros(
                usage.prompt_tokens,
                usage.completion_tokens,
                engine_ms,
                false,
            )
        })
}

impl Budgets {
    /// Whether any tenant has a budget.
    pub fn any(&self) -> bool {
        !self.limits.is_empty()
    }

    pub fn new(tenants: &Tenants) -> Budgets {
        Budgets {
            limits: tenants
                .iter()
                .filter_map(|t| Some((t.name.clone(), t.budget?)))
                .collect(),
        }
    }

    /// The reservation of `micros` a job of `tenant` needs, if the tenant
    /// has a budget; a job of workflow run `run` draws on the run's own
    /// first (and `run`'s own reservation is made with it).
    pub fn reservation(
        &self,
        tenant: &str,
        micros: i64,
        now_ms: i64,
        run: Option<&str>,
    ) -> Option<Reservation> {
        let budget = self.limits.get(tenant)?;
        Some(Reservation {
            tenant: tenant.to_owned(),
            period_start_ms: period_start(budget.period, now_ms),
            micros,
            limit_micros: (budget.usd * 1e6).round() as i64,
            run: run.map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_start_at_utc_midnight_and_the_first_of_the_month() {
        // 2026-11-22T13:45:00Z
        let now = 1_795_355_100_000;
        assert_eq!(period_start(BudgetPeriod::Day, now), 1_795_305_600_000);
        // 2026-11-01T00:00:00Z
        assert_eq!(period_start(BudgetPeriod::Month, now), 1_793_491_200_000);
    }
}
