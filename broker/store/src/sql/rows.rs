//! Multi-row statements: a batch written in a few statements rather than
//! one per row. On SQLite every statement crosses to the driver's thread
//! and back, which costs about as much as the statement itself.

use std::collections::HashSet;

use sqlx::AnyConnection;

/// The most rows one statement writes: well under both databases' limits
/// on parameters (SQLite's 32,766, PostgreSQL's 65,535).
const MOST_ROWS: usize = 256;

/// `items` as the rows of successive statements: a job at most once in
/// each (an `UPDATE ... FROM` matches a record with one row, chosen by
/// neither database in a defined way), a job's items in the batch's order,
/// and each statement a power of two long, so that a connection prepares
/// and keeps few distinct statements.
pub(super) fn statements<'a, T>(items: &'a [T], job: impl Fn(&'a T) -> &'a str) -> Vec<Vec<&'a T>> {
    let mut rounds: Vec<(HashSet<&str>, Vec<&T>)> = Vec::new();
    for item in items {
        let id = job(item);
        match rounds.iter_mut().find(|(ids, _)| !ids.contains(id)) {
            Some((ids, rows)) => {
                ids.insert(id);
                rows.push(item);
            }
            None => rounds.push((HashSet::from([id]), vec![item])),
        }
    }
    let mut statements = Vec::new();
    for (_, mut rows) in rounds {
        while !rows.is_empty() {
            let n = 1 << rows.len().min(MOST_ROWS).ilog2();
            let rest = rows.split_off(n);
            statements.push(std::mem::replace(&mut rows, rest));
        }
    }
    statements
}

/// How the database behind a connection marks a statement's parameters.
/// sqlx reads each numbered SQLite parameter's name back, and SQLite finds
/// a name by a walk along the statement's list of names: binding a
/// statement of many numbered parameters takes time in the square of their
/// number. Anonymous ones (`?`, bound in order) have no names to walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Marks {
    /// `$1`, `$2`, ... (PostgreSQL).
    Numbered,
    /// `?` (SQLite).
    Anonymous,
}

impl Marks {
    pub(super) fn of(conn: &AnyConnection) -> Self {
        match conn.backend_name() {
            "SQLite" => Marks::Anonymous,
            _ => Marks::Numbered,
        }
    }

    /// `rows` rows of parameters for a `VALUES` list. Numbered ones are
    /// cast to their column's type so that PostgreSQL knows the type of a
    /// `VALUES` column whatever its rows hold.
    pub(super) fn values(self, rows: usize, types: &[&str]) -> String {
        let mut n = 0;
        let mut row = |_| {
            let cells: Vec<String> = types
                .iter()
                .map(|t| {
                    n += 1;
                    match self {
                        Marks::Numbered => format!("CAST(${n} AS {t})"),
                        Marks::Anonymous => "?".to_owned(),
                    }
                })
                .collect();
            format!("({})", cells.join(", "))
        };
        (0..rows).map(&mut row).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_appears_once_in_a_statement_and_its_items_keep_their_order() {
        let items = ["a1", "b1", "a2", "c1", "a3", "b2"];
        let statements = statements(&items, |s| &s[..1]);
        let flat: Vec<Vec<&str>> = statements
            .iter()
            .map(|rows| rows.iter().map(|s| **s).collect())
            .collect();
        // Rounds [a1 b1 c1] [a2 b2] [a3], each cut to powers of two.
        assert_eq!(
            flat,
            vec![vec!["a1", "b1"], vec!["c1"], vec!["a2", "b2"], vec!["a3"]]
        );
    }

    #[test]
    fn statements_are_powers_of_two_up_to_the_most_rows() {
        let items: Vec<String> = (0..MOST_ROWS * 2 + 7).map(|i| i.to_string()).collect();
        let lens: Vec<usize> = statements(&items, String::as_str)
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(lens, vec![MOST_ROWS, MOST_ROWS, 4, 2, 1]);
    }

    #[test]
    fn numbered_values_are_cast_and_anonymous_ones_are_not() {
        assert_eq!(
            Marks::Numbered.values(2, &["BIGINT", "TEXT"]),
            "(CAST($1 AS BIGINT), CAST($2 AS TEXT)), (CAST($3 AS BIGINT), CAST($4 AS TEXT))"
        );
        assert_eq!(
            Marks::Anonymous.values(2, &["BIGINT", "TEXT"]),
            "(?, ?), (?, ?)"
        );
    }
}
