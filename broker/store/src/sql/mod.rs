//! The job store on SQL: an SQLite file (the embedded default) or a
//! PostgreSQL database, through sqlx's `Any` driver with one set of queries
//! written in the SQL both speak (`$n` parameters, `CASE` for `MAX`, times as
//! integers). SQLite runs in WAL mode with `synchronous = NORMAL`, which
//! survives a crash of the process (not of the machine); the queue itself
//! lives in JetStream, and the records can be rebuilt from its streams.
//! Several brokers share one PostgreSQL database.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::MigrateDatabase;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Any, Executor, Row};
use switchyard_schemas::Usage;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::{JobRecord, Status, StoreError};

mod access;
mod batches;
mod idempotency;
mod jobs;
mod ledger;
mod outbox;
mod projection;
mod quotas;
mod rows;
mod runs;
mod summary;
#[cfg(test)]
mod tests;

pub struct SqlStore {
    pool: AnyPool,
    /// On SQLite, whose turn it is to write; PostgreSQL locks rows, and
    /// writers there need no turns.
    turns: Option<Turns>,
}

/// SQLite lets one connection write at a time and has the others sleep and
/// try again (1, 2, 5 … 100 ms); at a thousand jobs a second those sleeps
/// held admission and the projections for milliseconds. Waiting here
/// instead, a writer goes on as soon as the one before it commits, and a
/// write a request waits on goes ahead of those nobody waits on.
struct Turns {
    /// The turn itself: writers have it in the order they asked.
    turn: Arc<Mutex<()>>,
    /// Where background writers wait to ask, one at a time: a request's
    /// write finds at most one of them ahead of it, however many there are.
    behind: Mutex<()>,
}

/// Who waits on a write, which decides its place in the line for a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writer {
    /// A request waits on it: admission's records, rate limits, keys.
    Request,
    /// Nothing waits on it but a stream it follows or a sweep: the
    /// projections, the marks, the outbox, the ledger.
    Background,
}

/// A writer's turn, held until its transaction ends.
pub(crate) type Turn = Option<OwnedMutexGuard<()>>;

/// An integer column as the narrower type a record holds.
pub(crate) fn int<T: TryFrom<i64>>(row: &AnyRow, column: &str) -> Result<T, sqlx::Error> {
    narrow(column, row.try_get(column)?)
}

pub(crate) fn opt_int<T: TryFrom<i64>>(
    row: &AnyRow,
    column: &str,
) -> Result<Option<T>, sqlx::Error> {
    let value: Option<i64> = row.try_get(column)?;
    value.map(|v| narrow(column, v)).transpose()
}

fn narrow<T: TryFrom<i64>>(column: &str, value: i64) -> Result<T, sqlx::Error> {
    T::try_from(value).map_err(|_| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: format!("{value} is out of range").into(),
    })
}

/// A 0/1 column (flags are integers in both databases).
pub(crate) fn flag(row: &AnyRow, column: &str) -> Result<bool, sqlx::Error> {
    Ok(row.try_get::<i64, _>(column)? != 0)
}

/// What a list of jobs or runs is filtered by: columns that must equal a
/// value (`by`: each with its value, or none), the creation time, and the
/// page's start (after the previous page's last row).
pub(crate) struct Page<'a> {
    pub by: &'a [(&'static str, Option<&'a str>)],
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub after: Option<&'a (i64, String)>,
    pub limit: u32,
}

/// A parameter of a statement built to its filters.
enum Arg<'a> {
    Text(&'a str),
    Int(i64),
}

/// The rows of `table` that `page` names, newest first. The statement holds
/// only the filters given: `$1 IS NULL OR column = $1` would keep both
/// databases from reading a column's index, and a list filtered to a small
/// tenant would walk every row.
pub(crate) async fn page(
    pool: &AnyPool,
    table: &'static str,
    page: Page<'_>,
) -> Result<Vec<AnyRow>, sqlx::Error> {
    let mut args: Vec<Arg<'_>> = Vec::new();
    let mut sql = format!("SELECT * FROM {table} WHERE 1 = 1");
    let mut param = |arg| {
        args.push(arg);
        format!("${}", args.len())
    };
    for (column, value) in page.by {
        if let Some(value) = value {
            sql += &format!(" AND {column} = {}", param(Arg::Text(value)));
        }
    }
    if let Some(since) = page.since_ms {
        sql += &format!(" AND created_at >= {}", param(Arg::Int(since)));
    }
    if let Some(until) = page.until_ms {
        sql += &format!(" AND created_at < {}", param(Arg::Int(until)));
    }
    if let Some((ms, id)) = page.after {
        let ms = param(Arg::Int(*ms));
        sql += &format!(" AND (created_at, id) < ({ms}, {})", param(Arg::Text(id)));
    }
    let limit = param(Arg::Int(i64::from(page.limit)));
    sql += &format!(" ORDER BY created_at DESC, id DESC LIMIT {limit}");
    let mut query = sqlx::query(&sql);
    for arg in args {
        query = match arg {
            Arg::Text(value) => query.bind(value),
            Arg::Int(value) => query.bind(value),
        };
    }
    query.fetch_all(pool).await
}

/// Whether a database URL names PostgreSQL (else SQLite).
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl SqlStore {
    /// Opens (creating if needed) the database and applies migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        if is_postgres(url) {
            // Brokers starting together may race to make it: whoever
            // loses finds it there.
            if !Any::database_exists(url).await? && Any::create_database(url).await.is_err() {
                Any::database_exists(url).await?;
            }
            let pool = AnyPoolOptions::new()
                .max_connections(16)
                // With the server down, a request waits this long for a
                // connection and is then refused (503), not held for 30 s.
                .acquire_timeout(Duration::from_secs(3))
                .connect(url)
                .await?;
            sqlx::migrate!("../../migrations/postgres")
                .run(&pool)
                .await?;
            return Ok(Self { pool, turns: None });
        }
        let options = SqliteConnectOptions::from_str(url)?;
        if let Some(dir) = options
            .get_filename()
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let url = match url.contains('?') {
            true => url.to_owned(),
            false => format!("{url}?mode=rwc"),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            // sqlx pings each connection as it comes back to the pool, and
            // a SQLite connection cannot die while it waits there: a ping
            // before each use too would cost a third of a lone read for
            // nothing.
            .test_before_acquire(false)
            // A transaction that failed as the disk filled can come back
            // still open, holding SQLite's write lock for ever; rolling
            // back on release frees it (an error just means none was open).
            .after_release(|conn, _| {
                Box::pin(async move {
                    let _ = conn.execute("ROLLBACK").await;
                    Ok(true)
                })
            })
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
                         PRAGMA busy_timeout = 10000;",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        sqlx::migrate!("../../migrations/sqlite").run(&pool).await?;
        Ok(Self {
            pool,
            turns: Some(Turns {
                turn: Arc::new(Mutex::new(())),
                behind: Mutex::new(()),
            }),
        })
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// This process's turn to write, for `writer`: hold it across every
    /// statement that writes, and never ask for it again while holding it.
    pub(crate) async fn turn(&self, writer: Writer) -> Turn {
        let turns = self.turns.as_ref()?;
        let _line = match writer {
            Writer::Request => None,
            Writer::Background => Some(turns.behind.lock().await),
        };
        Some(turns.turn.clone().lock_owned().await)
    }

    /// A transaction that writes, with its turn.
    pub(crate) async fn begin_write(
        &self,
        writer: Writer,
    ) -> Result<(sqlx::Transaction<'static, Any>, Turn), StoreError> {
        let turn = self.turn(writer).await;
        Ok((self.pool.begin().await?, turn))
    }
}

/// `n` numbered parameters from `$first` on, for an `IN (...)` list.
pub(crate) fn params(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The columns [`record`] reads.
pub(crate) const RECORD: &str = "id, status, metadata, output, error_code, error_message, \
    prompt_tokens, completion_tokens, output_expired, tokens_estimate, model, alias, trace_id, \
    tenant, priority, source, attempt, node, created_at, enqueued_at, assigned_at, started_at, \
    finished_at";

pub(crate) fn record(row: &AnyRow) -> Result<JobRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let corrupt = crate::corrupt(id.clone());
    let status: String = row.try_get("status")?;
    let metadata: String = row.try_get("metadata")?;
    let output: Option<String> = row.try_get("output")?;
    let code: Option<String> = row.try_get("error_code")?;
    let message: Option<String> = row.try_get("error_message")?;
    let prompt: Option<u32> = opt_int(row, "prompt_tokens")?;
    let completion: Option<u32> = opt_int(row, "completion_tokens")?;
    Ok(JobRecord {
        status: Status::parse(&status).ok_or_else(|| corrupt(format!("status {status:?}")))?,
        metadata: serde_json::from_str(&metadata).map_err(|e| corrupt(e.to_string()))?,
        output: output
            .map(|o| serde_json::from_str(&o))
            .transpose()
            .map_err(|e| corrupt(e.to_string()))?,
        error: code.zip(message),
        output_expired: flag(row, "output_expired")?,
        tokens_estimate: opt_int(row, "tokens_estimate")?,
        usage: prompt.zip(completion).map(|(p, c)| Usage {
            prompt_tokens: p,
            completion_tokens: c,
        }),
        model: row.try_get("model")?,
        alias: row.try_get("alias")?,
        trace_id: row.try_get("trace_id")?,
        tenant: row.try_get("tenant")?,
        priority: row.try_get("priority")?,
        source: row.try_get("source")?,
        attempt: int(row, "attempt")?,
        node: row.try_get("node")?,
        created_at_ms: row.try_get("created_at")?,
        enqueued_at_ms: row.try_get("enqueued_at")?,
        assigned_at_ms: row.try_get("assigned_at")?,
        started_at_ms: row.try_get("started_at")?,
        finished_at_ms: row.try_get("finished_at")?,
        id,
    })
}
