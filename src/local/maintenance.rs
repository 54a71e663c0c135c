//! Keeps the SQLite file from growing without bound: idempotency records past their expiration and dead
//! letters past their retention are deleted, and the pages they held are given back to the file system
//! (incremental auto-vacuum). Deletes run in small chunks, each its own operation, so that deliveries
//! arriving meanwhile are committed between them instead of waiting for a long transaction.

use std::time::Duration;

use rusqlite::params;

use super::db::{Db, DbError};

/// Rows deleted per operation.
const CHUNK: i64 = 2_000;
/// Free pages given back to the file system per operation.
const VACUUM_PAGES: i64 = 2_000;

/// How long what the file keeps is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Dead letters older than this are deleted (the SQS dead-letter queue keeps 14 days too).
    pub dead_letters: Duration,
    /// How often the purge runs.
    pub interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            dead_letters: Duration::from_secs(14 * 24 * 3600),
            interval: Duration::from_secs(60),
        }
    }
}

/// What one purge removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub idempotency_records: u64,
    pub dead_letters: u64,
    /// Pages given back to the file system.
    pub pages: u64,
}

/// Deletes idempotency records whose expiration (Unix s) has passed and dead letters dead-lettered more
/// than `dead_letter_retention` before `now_ms`, then gives free pages back. An expired record is already
/// absent to a claim, so deleting it changes no outcome.
pub async fn purge(db: &Db, now_ms: i64, dead_letter_retention: Duration) -> Result<Purged, DbError> {
    let now_secs = now_ms.div_euclid(1000);
    let oldest_dead_letter = now_ms - dead_letter_retention.as_millis() as i64;
    let idempotency_records = delete_in_chunks(
        db,
        "DELETE FROM idempotency WHERE rowid IN
             (SELECT rowid FROM idempotency WHERE expiration < ?1 LIMIT ?2)",
        now_secs,
    )
    .await?;
    let dead_letters = delete_in_chunks(
        db,
        "DELETE FROM dead_letters WHERE seq IN
             (SELECT seq FROM dead_letters WHERE dead_lettered_at < ?1 LIMIT ?2)",
        oldest_dead_letter,
    )
    .await?;
    let mut purged = Purged {
        idempotency_records,
        dead_letters,
        pages: 0,
    };
    loop {
        let freed = db
            .call(|c| {
                let before: i64 = c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
                if before == 0 {
                    return Ok(0);
                }
                c.execute_batch(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES})"))?;
                let after: i64 = c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
                Ok((before - after).max(0))
            })
            .await?;
        purged.pages += freed as u64;
        if freed < VACUUM_PAGES {
            break;
        }
    }
    Ok(purged)
}

async fn delete_in_chunks(db: &Db, sql: &'static str, bound: i64) -> Result<u64, DbError> {
    let mut total = 0;
    loop {
        let deleted = db
            .call_single_write(move |c| Ok(c.prepare_cached(sql)?.execute(params![bound, CHUNK])?))
            .await?;
        total += deleted as u64;
        if (deleted as i64) < CHUNK {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn expired_records_and_old_dead_letters_are_deleted_and_their_pages_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("m.db")).unwrap();
        let now_ms = 10_000_000_000_i64;
        let day_ms = 86_400_000_i64;
        let padding = "x".repeat(400);
        db.call(move |c| {
            for i in 0..5_000 {
                // Half expired a second ago, half expiring in an hour.
                let expiration = now_ms / 1000 + if i % 2 == 0 { -1 } else { 3_600 };
                c.execute(
                    "INSERT INTO idempotency (pk, status, expiration, in_progress_expiration, payload_hash)
                     VALUES (?1, 'COMPLETED', ?2, 0, ?3)",
                    params![format!("app#notif_{i}"), expiration, padding],
                )?;
            }
            for (i, age_days) in [20, 15, 13, 1].into_iter().enumerate() {
                c.execute(
                    "INSERT INTO dead_letters (message_id, body, attributes, reason, receive_count, enqueued_at, dead_lettered_at)
                     VALUES (?1, '{}', '{}', 'r', 1, 0, ?2)",
                    params![format!("m{i}"), now_ms - age_days * day_ms],
                )?;
            }
            Ok(())
        })
        .await
        .unwrap();
        let pages = |db: &Db| {
            let db = db.clone();
            async move {
                db.call(|c| Ok(c.query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))?))
                    .await
                    .unwrap()
            }
        };
        let before = pages(&db).await;

        let purged = purge(&db, now_ms, Duration::from_secs(14 * 86_400))
            .await
            .unwrap();
        assert_eq!(purged.idempotency_records, 2_500);
        assert_eq!(purged.dead_letters, 2, "the 20- and 15-day-old ones");
        assert!(purged.pages > 0);
        let left: Vec<String> = db.column("SELECT pk FROM idempotency ORDER BY pk LIMIT 1").await;
        assert_eq!(left, ["app#notif_1"]);
        let dead: Vec<String> = db
            .column("SELECT message_id FROM dead_letters ORDER BY seq")
            .await;
        assert_eq!(dead, ["m2", "m3"]);
        let after = pages(&db).await;
        assert!(after < before, "{after} pages after the purge, {before} before");
        let again = purge(&db, now_ms, Duration::from_secs(14 * 86_400))
            .await
            .unwrap();
        assert_eq!(
            (again.idempotency_records, again.dead_letters),
            (0, 0),
            "nothing left to purge"
        );
    }
}
