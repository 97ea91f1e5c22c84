//! The streams projected into job records a batch at a time: a batch's
//! events, its results and their ledger lines are each written in a few
//! multi-row statements, not one per job.

use std::collections::HashSet;

use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, Row, Transaction};
use switchyard_schemas::{EventKind, JobEvent, JobResult, Outcome};

use super::rows::{Marks, statements};
use super::{RECORD, record};
use crate::ledger::Charge;
use crate::{JobRecord, Status, StoreError};

/// The statuses a record keeps once it has one.
const FINAL: &str = "('succeeded', 'failed', 'expired', 'timed_out', 'cancelled')";

/// Whether an event is ahead of the job's recorded (attempt, stage).
fn ahead(attempt: &str, stage: &str) -> String {
    format!(
        "(attempt < {attempt} OR (attempt = {attempt} AND (CASE status \
         WHEN 'queued' THEN 0 WHEN 'assigned' THEN 1 WHEN 'running' THEN 2 ELSE 3 END) < {stage}))"
    )
}

/// Moves each job's record forward by its events. Progress is ordered by
/// (attempt, stage): a job only moves forward, a retry starts the next
/// attempt at `queued`, and a late event of an earlier attempt changes
/// nothing but a timestamp it was missing. Returns the jobs whose records
/// were written.
pub(super) async fn events(
    tx: &mut Transaction<'_, Any>,
    events: &[JobEvent],
) -> Result<HashSet<String>, sqlx::Error> {
    let mut written = HashSet::new();
    let known: Vec<&JobEvent> = events
        .iter()
        .filter(|e| !matches!(e.kind, EventKind::Unknown))
        .collect();
    for rows in statements(&known, |e| e.job_id.as_str()) {
        // Columns: attempt, stage, status, node, assigned_at, started_at, id.
        let ahead = ahead("v.column1", "v.column2");
        let sql = format!(
            "UPDATE jobs SET
                status = CASE WHEN {ahead} THEN v.column3 ELSE status END,
                node = CASE WHEN {ahead} THEN v.column4 ELSE node END,
                assigned_at = CASE WHEN attempt < v.column1 THEN v.column5
                    WHEN attempt = v.column1 THEN COALESCE(assigned_at, v.column5) ELSE assigned_at END,
                started_at = CASE WHEN attempt < v.column1 THEN v.column6
                    WHEN attempt = v.column1 THEN COALESCE(started_at, v.column6) ELSE started_at END,
                attempt = CASE WHEN attempt > v.column1 THEN attempt ELSE v.column1 END
             FROM (VALUES {}) AS v
             WHERE jobs.id = v.column7 AND jobs.status NOT IN {FINAL}
             RETURNING id",
            Marks::of(tx).values(
                rows.len(),
                &["BIGINT", "BIGINT", "TEXT", "TEXT", "BIGINT", "BIGINT", "TEXT"]
            )
        );
        let mut query = sqlx::query(&sql);
        for e in rows {
            let (attempt, stage, status, node, assigned_at, started_at) = match &e.kind {
                EventKind::Assigned { node } => {
                    (e.attempt, 1, "assigned", Some(node), Some(e.at_ms), None)
                }
                EventKind::Running { node } => {
                    (e.attempt, 2, "running", Some(node), None, Some(e.at_ms))
                }
                EventKind::Retrying { .. } | EventKind::Requeued { .. } | EventKind::Unknown => {
                    (e.attempt + 1, 0, "queued", None, None, None)
                }
            };
            query = query
                .bind(i64::from(attempt))
                .bind(stage)
                .bind(status)
                .bind(node)
                .bind(assigned_at)
                .bind(started_at)
                .bind(&e.job_id);
        }
        for row in query.fetch_all(&mut **tx).await? {
            written.insert(row.try_get("id")?);
        }
    }
    Ok(written)
}

/// Of the jobs `ids`, those with no record at all, given the ones just
/// `written`: a job is queued while its record is written, so what its
/// streams say of it can come first. One read, and only when some job was
/// not written (a record that had ended is not).
pub(super) async fn unrecorded<'a>(
    tx: &mut Transaction<'_, Any>,
    ids: impl Iterator<Item = &'a str>,
    written: &HashSet<String>,
) -> Result<HashSet<String>, sqlx::Error> {
    let rest: HashSet<&str> = ids.filter(|id| !written.contains(*id)).collect();
    if rest.is_empty() {
        return Ok(HashSet::new());
    }
    let rest: Vec<&str> = rest.into_iter().collect();
    let found = recorded(tx, &rest).await?;
    Ok(rest
        .into_iter()
        .filter(|id| !found.contains(*id))
        .map(str::to_owned)
        .collect())
}

/// Of the jobs `ids`, those recorded, whoever their tenant.
pub(super) async fn recorded(
    conn: &mut AnyConnection,
    ids: &[&str],
) -> Result<HashSet<String>, sqlx::Error> {
    let mut found = HashSet::new();
    for ids in ids.chunks(MAX_IDS) {
        let sql = format!(
            "SELECT id FROM jobs WHERE id IN ({})",
            super::params(1, ids.len())
        );
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut *conn).await? {
            found.insert(row.try_get("id")?);
        }
    }
    Ok(found)
}

/// Ids looked up in one read at most.
const MAX_IDS: usize = 500;

/// Records each job's result. The first final result wins, whatever its
/// attempt: results come from the RESULTS stream, which keeps one per job,
/// so the record and the stream agree by construction. (A result of
/// attempt 1 may be projected after attempt 2 was queued; it is still the
/// job's.) Returns the records of the jobs `wanted` names as written, read
/// back by the write itself; a job whose record had already ended is not
/// written, so not among them. Also returns every job whose record was
/// written.
pub(super) async fn results(
    tx: &mut Transaction<'_, Any>,
    results: &[JobResult],
    wanted: &(dyn for<'w> Fn(&'w str) -> bool + Sync),
) -> Result<(Vec<JobRecord>, HashSet<String>), StoreError> {
    let (answered, rest): (Vec<&JobResult>, Vec<&JobResult>) =
        results.iter().partition(|r| wanted(&r.job_id));
    let mut records = Vec::new();
    let mut written = HashSet::new();
    for (results, whole) in [(answered, true), (rest, false)] {
        for rows in statements(&results, |r| r.job_id.as_str()) {
            for row in write_results(tx, &rows, whole).await? {
                match whole {
                    true => records.push(record(&row)?),
                    false => {
                        written.insert(row.try_get("id")?);
                    }
                }
            }
        }
    }
    written.extend(records.iter().map(|r| r.id.clone()));
    Ok((records, written))
}

/// One statement of [`results`]: the records written, whole when `whole`,
/// else their ids.
async fn write_results(
    tx: &mut Transaction<'_, Any>,
    rows: &[&&JobResult],
    whole: bool,
) -> Result<Vec<AnyRow>, sqlx::Error> {
    // Columns: status, output, error_code, error_message, prompt_tokens,
    // completion_tokens, finished_at, node, attempt, id, assigned_at,
    // started_at.
    let sql = format!(
        "UPDATE jobs SET status = v.column1, output = v.column2, error_code = v.column3,
            error_message = v.column4, prompt_tokens = v.column5,
            completion_tokens = v.column6, finished_at = v.column7,
            node = COALESCE(v.column8, node),
            assigned_at = CASE WHEN attempt <> v.column9 THEN v.column11
                ELSE COALESCE(assigned_at, v.column11) END,
            started_at = CASE WHEN attempt <> v.column9 THEN v.column12
                ELSE COALESCE(started_at, v.column12) END,
            attempt = v.column9
         FROM (VALUES {}) AS v
         WHERE jobs.id = v.column10 AND jobs.status NOT IN {FINAL} RETURNING {}",
        Marks::of(tx).values(
            rows.len(),
            &[
                "TEXT", "TEXT", "TEXT", "TEXT", "BIGINT", "BIGINT", "BIGINT", "TEXT", "BIGINT",
                "TEXT", "BIGINT", "BIGINT",
            ]
        ),
        match whole {
            true => RECORD,
            false => "id",
        }
    );
    let mut query = sqlx::query(&sql);
    for r in rows {
        let (output, error, usage) = match &r.outcome {
            Outcome::Succeeded { output, usage } => (Some(output.to_string()), None, Some(*usage)),
            Outcome::Failed { error } => (
                None,
                Some((error.class.code(), error.message.as_str())),
                None,
            ),
        };
        query = query
            .bind(Status::of(&r.outcome).as_str())
            .bind(output)
            .bind(error.map(|e| e.0))
            .bind(error.map(|e| e.1))
            .bind(usage.map(|u| i64::from(u.prompt_tokens)))
            .bind(usage.map(|u| i64::from(u.completion_tokens)))
            .bind(r.finished_at_ms)
            .bind(&r.node)
            .bind(i64::from(r.attempt))
            .bind(&r.job_id)
            .bind(r.assigned_at_ms)
            .bind(r.started_at_ms);
    }
    query.fetch_all(&mut **tx).await
}

/// Writes each charge once per (job, attempt), but those of the jobs
/// `unrecorded`: the indices of those not written before.
pub(super) async fn charges(
    tx: &mut Transaction<'_, Any>,
    charges: &[Charge],
    unrecorded: &HashSet<String>,
) -> Result<Vec<usize>, StoreError> {
    let mut new = Vec::new();
    let indexed: Vec<(usize, &Charge)> = charges
        .iter()
        .enumerate()
        .filter(|(_, c)| !unrecorded.contains(&c.usage.job_id))
        .collect();
    for rows in statements(&indexed, |(_, c)| c.usage.job_id.as_str()) {
        let sql = format!(
            "INSERT INTO usage (job_id, attempt, node, model, prompt_tokens, completion_tokens,
                engine_ms, at, cost_micros, cache_hit)
             VALUES {}
             ON CONFLICT (job_id, attempt) DO NOTHING
             RETURNING job_id, attempt",
            Marks::of(tx).values(
                rows.len(),
                &[
                    "TEXT", "BIGINT", "TEXT", "TEXT", "BIGINT", "BIGINT", "BIGINT", "BIGINT",
                    "BIGINT", "BIGINT",
                ]
            )
        );
        let mut query = sqlx::query(&sql);
        for (_, c) in &rows {
            let u = &c.usage;
            query = query
                .bind(&u.job_id)
                .bind(i64::from(u.attempt))
                .bind(&u.node)
                .bind(&u.model)
                .bind(i64::from(u.usage.prompt_tokens))
                .bind(i64::from(u.usage.completion_tokens))
                .bind(i64::try_from(u.engine_ms).unwrap_or(i64::MAX))
                .bind(u.at_ms)
                .bind(c.cost_micros)
                .bind(i64::from(c.cache_hit));
        }
        for row in query.fetch_all(&mut **tx).await? {
            let job: String = row.try_get("job_id")?;
            let attempt: i64 = row.try_get("attempt")?;
            // A statement holds a job once, so the pair names one charge.
            new.extend(rows.iter().find_map(|(i, c)| {
                (c.usage.job_id == job && i64::from(c.usage.attempt) == attempt).then_some(*i)
            }));
        }
    }
    new.sort_unstable();
    Ok(new)
}
