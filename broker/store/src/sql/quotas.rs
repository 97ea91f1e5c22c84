//! Limits, places and budgets: each a conditional update in one
//! transaction, so brokers sharing a database enforce one limit.

use async_trait::async_trait;
use sqlx::{Any, Row, Transaction};

use super::{SqlStore, Writer};
use crate::StoreError;
use crate::quotas::{
    Quotas, Reservation, Settlement, Take, TokenRates, key_holder, run_reservation,
};

#[async_trait]
impl Quotas for SqlStore {
    async fn take(
        &self,
        takes: &[Take],
        now_us: i64,
    ) -> Result<Option<(&'static str, i64)>, StoreError> {
        let (mut tx, _turn) = self.begin_write(Writer::Request).await?;
        for t in takes {
            // GCRA: a request may come when the theoretical arrival time is
            // at most the tolerance ahead; it moves that time on by its cost.
            let taken = sqlx::query(
                "INSERT INTO rate_limits (key, tat) VALUES ($1, $2 + $3)
                 ON CONFLICT (key) DO UPDATE SET tat = CASE WHEN rate_limits.tat > $2 THEN rate_limits.tat ELSE $2 END + $3
                    WHERE rate_limits.tat <= $2 + $4",
            )
            .bind(&t.key)
            .bind(now_us)
            .bind(t.cost_us)
            .bind(t.tolerance_us)
            .execute(&mut *tx)
            .await?;
            if taken.rows_affected() == 0 {
                let tat: i64 = sqlx::query_scalar("SELECT tat FROM rate_limits WHERE key = $1")
                    .bind(&t.key)
                    .fetch_one(&mut *tx)
                    .await?;
                tx.rollback().await?;
                return Ok(Some((t.limit, (tat - now_us - t.tolerance_us).max(1))));
            }
        }
        tx.commit().await?;
        Ok(None)
    }

    async fn correct_limits(
        &self,
        used: &[(String, u32)],
        rates: &TokenRates,
    ) -> Result<(), StoreError> {
        let (mut tx, _turn) = self.begin_write(Writer::Background).await?;
        for (id, tokens) in used {
            let Some(row) = sqlx::query(
                "SELECT tenant, api_key, tokens_estimate FROM jobs
                 WHERE id = $1 AND tokens_estimate IS NOT NULL",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            else {
                continue;
            };
            // Cleared in the same transaction: a result seen again moves
            // nothing.
            sqlx::query("UPDATE jobs SET tokens_estimate = NULL WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let tenant: String = row.try_get("tenant")?;
            let key: Option<String> = row.try_get("api_key")?;
            let estimate: i64 = row.try_get("tokens_estimate")?;
            let holders = std::iter::once(tenant).chain(key.as_deref().map(key_holder));
            for rate in holders.filter_map(|h| rates.get(&h)) {
                sqlx::query("UPDATE rate_limits SET tat = tat + $2 WHERE key = $1")
                    .bind(&rate.limit_key)
                    .bind(rate.us_per_token * (i64::from(*tokens) - estimate))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn settle(&self, jobs: &[Settlement]) -> Result<(), StoreError> {
        let (mut tx, _turn) = self.begin_write(Writer::Background).await?;
        for Settlement {
            job_id: id,
            cost_micros: spent,
        } in jobs
        {
            let freed: Vec<String> =
                sqlx::query_scalar("DELETE FROM place_holders WHERE job_id = $1 RETURNING holder")
                    .bind(id)
                    .fetch_all(&mut *tx)
                    .await?;
            for holder in freed {
                sqlx::query("UPDATE places SET used = used - 1 WHERE holder = $1")
                    .bind(holder)
                    .execute(&mut *tx)
                    .await?;
            }
            release(&mut tx, id, *spent).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn reserve_run(&self, r: &Reservation) -> Result<Option<i64>, StoreError> {
        let Some(run) = &r.run else {
            return Ok(None);
        };
        let (mut tx, _turn) = self.begin_write(Writer::Request).await?;
        let tenant_wide = Reservation {
            run: None,
            ..r.clone()
        };
        let left = reserve(&mut tx, &run_reservation(run), &tenant_wide).await?;
        match left {
            None => tx.commit().await?,
            Some(_) => tx.rollback().await?,
        }
        Ok(left)
    }
}

/// Ends the reservation held under `key` (a job's id, or a run's
/// `run:<id>`): `spent` of it is spent and the rest given back. Nothing
/// when it holds none.
pub(super) async fn release(
    tx: &mut Transaction<'_, Any>,
    key: &str,
    spent: i64,
) -> Result<(), StoreError> {
    let Some(held) = sqlx::query(
        "DELETE FROM reservations WHERE job_id = $1 RETURNING tenant, period_start, micros",
    )
    .bind(key)
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(());
    };
    sqlx::query(
        "UPDATE budgets SET reserved_micros = reserved_micros - $3,
            spent_micros = spent_micros + $4
         WHERE tenant = $1 AND period_start = $2",
    )
    .bind(held.try_get::<String, _>("tenant")?)
    .bind(held.try_get::<i64, _>("period_start")?)
    .bind(held.try_get::<i64, _>("micros")?)
    .bind(spent)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Gives a job one place of each holder's most for jobs not yet ended;
/// the index of a holder whose places are all held, if one is. A job
/// keeps the places it holds. The caller rolls back on a full one.
pub(super) async fn take_places(
    tx: &mut Transaction<'_, Any>,
    job_id: &str,
    holders: &[(String, u32)],
) -> Result<Option<usize>, StoreError> {
    for (i, (holder, max)) in holders.iter().enumerate() {
        let new = sqlx::query(
            "INSERT INTO place_holders (job_id, holder) VALUES ($1, $2)
                 ON CONFLICT (job_id, holder) DO NOTHING",
        )
        .bind(job_id)
        .bind(holder)
        .execute(&mut **tx)
        .await?;
        if new.rows_affected() == 0 {
            continue;
        }
        let taken = sqlx::query(
            "INSERT INTO places (holder, used) VALUES ($1, 1)
                 ON CONFLICT (holder) DO UPDATE SET used = places.used + 1 WHERE places.used < $2",
        )
        .bind(holder)
        .bind(i64::from(*max))
        .execute(&mut **tx)
        .await?;
        if taken.rows_affected() == 0 || *max == 0 {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

/// Reserves `r.micros` of a tenant's budget for a job unless reserved plus
/// spent would pass the limit; a job that holds a reservation keeps it.
/// A job of a workflow run draws from the run's reservation instead while
/// that has room for it. `None` when reserved; otherwise what is left, and
/// the caller rolls back.
pub(super) async fn reserve(
    tx: &mut Transaction<'_, Any>,
    job_id: &str,
    r: &Reservation,
) -> Result<Option<i64>, StoreError> {
    // Writes first, so the transaction holds the write lock throughout.
    let new = sqlx::query(
        "INSERT INTO reservations (job_id, tenant, period_start, micros)
             VALUES ($1, $2, $3, $4) ON CONFLICT (job_id) DO NOTHING",
    )
    .bind(job_id)
    .bind(&r.tenant)
    .bind(r.period_start_ms)
    .bind(r.micros)
    .execute(&mut **tx)
    .await?;
    if new.rows_affected() == 0 {
        return Ok(None);
    }
    if let Some(run) = &r.run
        && draw(tx, job_id, &run_reservation(run), r).await?
    {
        return Ok(None);
    }
    sqlx::query(
        "INSERT INTO budgets (tenant, period_start) VALUES ($1, $2)
             ON CONFLICT (tenant, period_start) DO NOTHING",
    )
    .bind(&r.tenant)
    .bind(r.period_start_ms)
    .execute(&mut **tx)
    .await?;
    let reserved = sqlx::query(
        "UPDATE budgets SET reserved_micros = reserved_micros + $3
             WHERE tenant = $1 AND period_start = $2
               AND reserved_micros + spent_micros + $3 <= $4",
    )
    .bind(&r.tenant)
    .bind(r.period_start_ms)
    .bind(r.micros)
    .bind(r.limit_micros)
    .execute(&mut **tx)
    .await?;
    if reserved.rows_affected() == 1 {
        return Ok(None);
    }
    let left: i64 = sqlx::query_scalar(
        "SELECT $3 - reserved_micros - spent_micros FROM budgets
             WHERE tenant = $1 AND period_start = $2",
    )
    .bind(&r.tenant)
    .bind(r.period_start_ms)
    .bind(r.limit_micros)
    .fetch_one(&mut **tx)
    .await?;
    Ok(Some(left.max(0)))
}

/// Moves a job's reservation out of its run's, if the run holds one with
/// room for it: the budget's total stays, and the job's is counted in the
/// run's period. False otherwise: the job reserves from the budget as any
/// job does.
async fn draw(
    tx: &mut Transaction<'_, Any>,
    job_id: &str,
    run_key: &str,
    r: &Reservation,
) -> Result<bool, StoreError> {
    let drawn: Option<i64> = sqlx::query_scalar(
        "UPDATE reservations SET micros = micros - $3
         WHERE job_id = $1 AND tenant = $2 AND micros >= $3
         RETURNING period_start",
    )
    .bind(run_key)
    .bind(&r.tenant)
    .bind(r.micros)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(period_start) = drawn else {
        return Ok(false);
    };
    sqlx::query("UPDATE reservations SET period_start = $2 WHERE job_id = $1")
        .bind(job_id)
        .bind(period_start)
        .execute(&mut **tx)
        .await?;
    Ok(true)
}
