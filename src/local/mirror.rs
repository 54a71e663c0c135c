//! The SQLite adapter of the [`Mirror`] port, in `serve`'s file: one row per object in `mirror`, written
//! by one upsert whose `WHERE` refuses anything not newer than the stored version, so concurrent
//! workers converge on the newest version whatever the order. Items are stored LZ4-compressed (this
//! store's [`ItemCodec`]: ten times faster to make than gzip, and a file is not billed by the KB);
//! `mirror_counters` keeps the count of stale deliveries refused.
//!
//! To read it directly: `sqlite3 FILE "SELECT type, id, app_id, version_ms, deleted FROM mirror"` (the
//! `item` column is compressed: use `intercom-webhooks mirror get` for the JSON).

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, Row};

use super::db::{Db, DbError};
use crate::processing::mirror::{
    decode_item, Applied, ItemCodec, Mirror, MirrorEntry, MirrorError, MirrorKey, MirrorStats, MirrorWrite,
    Version,
};

/// The counter of refused stale writes in `mirror_counters`.
const STALE_REFUSED: &str = "stale_refused";

const COLUMNS: &str = "type, id, app_id, version_ms, tiebreak_ms, deleted, truncated, notification_id, item";

#[derive(Clone, Debug)]
pub struct SqliteMirror {
    db: Db,
}

impl SqliteMirror {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

fn unavailable(e: DbError) -> MirrorError {
    MirrorError::Unavailable(e.to_string())
}

/// A row as read, before its item is decoded (outside the database thread).
struct Stored {
    key: MirrorKey,
    version: Version,
    deleted: bool,
    truncated: bool,
    notification_id: String,
    item: Option<Vec<u8>>,
}

impl Stored {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            key: MirrorKey {
                kind: r.get(0)?,
                id: r.get(1)?,
                app_id: r.get(2)?,
            },
            version: Version {
                at_ms: r.get(3)?,
                tiebreak_ms: r.get(4)?,
            },
            deleted: r.get(5)?,
            truncated: r.get(6)?,
            notification_id: r.get(7)?,
            item: r.get(8)?,
        })
    }

    fn entry(self) -> Result<MirrorEntry, MirrorError> {
        let item = match &self.item {
            Some(bytes) => decode_item(&self.key, bytes)?,
            None => serde_json::Value::Null,
        };
        Ok(MirrorEntry {
            key: self.key,
            version: self.version,
            deleted: self.deleted,
            truncated: self.truncated,
            notification_id: self.notification_id,
            item,
        })
    }
}

#[async_trait]
impl Mirror for SqliteMirror {
    fn codec(&self) -> ItemCodec {
        ItemCodec::Lz4
    }

    async fn apply(&self, write: &MirrorWrite) -> Result<Applied, MirrorError> {
        let write = write.clone();
        // One write statement on each path (the upsert, or the counter after a refusal): no savepoint.
        self.db
            .call_single_write_deferred(move |c| {
                let written = c
                    .prepare_cached(
                        "INSERT INTO mirror (type, id, app_id, version_ms, tiebreak_ms, deleted, truncated, notification_id, item)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                         ON CONFLICT (type, id, app_id) DO UPDATE SET
                             version_ms = excluded.version_ms, tiebreak_ms = excluded.tiebreak_ms,
                             deleted = excluded.deleted, truncated = excluded.truncated,
                             notification_id = excluded.notification_id, item = excluded.item
                         WHERE (excluded.version_ms, excluded.tiebreak_ms) > (mirror.version_ms, mirror.tiebreak_ms)",
                    )?
                    .execute(params![
                        write.key.kind,
                        write.key.id,
                        write.key.app_id,
                        write.version.at_ms,
                        write.version.tiebreak_ms,
                        write.deleted,
                        write.truncated,
                        write.notification_id,
                        write.item,
                    ])?;
                if written == 1 {
                    return Ok(Applied::Written);
                }
                let stored: Option<(i64, i64)> = c
                    .prepare_cached(
                        "SELECT version_ms, tiebreak_ms FROM mirror WHERE type = ?1 AND id = ?2 AND app_id = ?3",
                    )?
                    .query_row(params![write.key.kind, write.key.id, write.key.app_id], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()?;
                let stored = stored.map(|(at_ms, tiebreak_ms)| Version { at_ms, tiebreak_ms });
                if stored == Some(write.version) {
                    return Ok(Applied::Unchanged);
                }
                c.prepare_cached(
                    "INSERT INTO mirror_counters (name, value) VALUES (?1, 1)
                     ON CONFLICT (name) DO UPDATE SET value = value + 1",
                )?
                .execute([STALE_REFUSED])?;
                Ok(Applied::Stale)
            })
            .await
            .map_err(unavailable)
    }

    async fn get(&self, kind: &str, id: &str) -> Result<Vec<MirrorEntry>, MirrorError> {
        let (kind, id) = (kind.to_owned(), id.to_owned());
        let rows = self
            .db
            .call(move |c| {
                let mut statement = c.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM mirror WHERE type = ?1 AND id = ?2 ORDER BY app_id"
                ))?;
                let rows = statement.query_map(params![kind, id], Stored::read)?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
            .map_err(unavailable)?;
        rows.into_iter().map(Stored::entry).collect()
    }

    async fn list(
        &self,
        kind: &str,
        since_ms: Option<i64>,
        limit: usize,
    ) -> Result<Vec<MirrorEntry>, MirrorError> {
        let kind = kind.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .db
            .call(move |c| {
                let mut statement = c.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM mirror WHERE type = ?1 AND version_ms >= ?2
                     ORDER BY version_ms DESC, tiebreak_ms DESC LIMIT ?3"
                ))?;
                let rows =
                    statement.query_map(params![kind, since_ms.unwrap_or(i64::MIN), limit], Stored::read)?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
            .map_err(unavailable)?;
        rows.into_iter().map(Stored::entry).collect()
    }

    async fn stats(&self) -> Result<MirrorStats, MirrorError> {
        self.db
            .call(|c| {
                let mut stats = MirrorStats::default();
                let mut statement =
                    c.prepare_cached("SELECT type, COUNT(*), SUM(deleted) FROM mirror GROUP BY type")?;
                let rows = statement.query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                })?;
                for row in rows {
                    let (kind, objects, tombstones) = row?;
                    let entry = stats.types.entry(kind).or_default();
                    entry.objects = objects as u64;
                    entry.tombstones = tombstones as u64;
                }
                stats.stale_refused = c
                    .prepare_cached("SELECT value FROM mirror_counters WHERE name = ?1")?
                    .query_row([STALE_REFUSED], |r| r.get::<_, i64>(0))
                    .optional()?
                    .unwrap_or(0) as u64;
                Ok(stats)
            })
            .await
            .map_err(unavailable)
    }
}
