//! Faults put into a stack's job store from outside, as a failing disk or
//! a database refusing writes would make them.

use super::Stack;
use std::collections::HashMap;

use sqlx::{Connection, Row};

/// Where a job's placement stands in the store.
pub struct Placement {
    pub submitted_ms: i64,
    pub assigned_ms: i64,
    pub attempt: i64,
}

impl Stack {
    /// Makes every insert into `table` fail (a trigger that raises), so
    /// that a write the broker makes mid-way through fails as it would on
    /// a database in trouble.
    pub async fn refuse_inserts(&self, table: &str) {
        let postgres = self.database_url.starts_with("postgres");
        let statements = match postgres {
            true => vec![
                "CREATE OR REPLACE FUNCTION sy_refuse() RETURNS trigger AS $$
                 BEGIN RAISE EXCEPTION 'refused by the test'; END $$ LANGUAGE plpgsql"
                    .to_owned(),
                format!(
                    "CREATE TRIGGER sy_refuse BEFORE INSERT ON {table}
                     FOR EACH ROW EXECUTE FUNCTION sy_refuse()"
                ),
            ],
            false => vec![format!(
                "CREATE TRIGGER sy_refuse BEFORE INSERT ON {table}
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )],
        };
        self.execute(&statements).await;
    }

    /// Undoes [`Stack::refuse_inserts`].
    pub async fn allow_inserts(&self, table: &str) {
        let drop = match self.database_url.starts_with("postgres") {
            true => format!("DROP TRIGGER sy_refuse ON {table}"),
            false => "DROP TRIGGER sy_refuse".to_owned(),
        };
        self.execute(&[drop]).await;
    }

    /// Each job's submission, its latest assignment (milliseconds since
    /// the epoch) and its attempt, as the store has them.
    pub async fn placements(&self, ids: &[String]) -> HashMap<String, Placement> {
        sqlx::any::install_default_drivers();
        let mut db = sqlx::AnyConnection::connect(&self.database_url)
            .await
            .expect("the stack's database");
        let listed: Vec<String> = ids.iter().map(|id| format!("'{id}'")).collect();
        let rows = sqlx::query(&format!(
            "SELECT id, created_at, assigned_at, attempt FROM jobs WHERE id IN ({})",
            listed.join(", ")
        ))
        .fetch_all(&mut db)
        .await
        .expect("jobs");
        db.close().await.expect("close");
        rows.iter()
            .map(|row| {
                let placement = Placement {
                    submitted_ms: row.get(1),
                    assigned_ms: row.get(2),
                    attempt: row.get(3),
                };
                (row.get(0), placement)
            })
            .collect()
    }

    async fn execute(&self, statements: &[String]) {
        sqlx::any::install_default_drivers();
        let mut db = sqlx::AnyConnection::connect(&self.database_url)
            .await
            .expect("the stack's database");
        for s in statements {
            sqlx::query(s).execute(&mut db).await.expect(s);
        }
        db.close().await.expect("close");
    }

    /// `POST` of `body` as JSON on the broker: the status and the JSON body
    /// (null if none).
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(self.broker_url(path))
            .json(body)
            .send()
            .await
            .expect("POST");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }
}
