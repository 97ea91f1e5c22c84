//! Faults put into a stack's job store from outside, as a failing disk or
//! a database refusing writes would make them.

use super::Stack;
use sqlx::Connection;

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
