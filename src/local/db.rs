//! One SQLite file for the local queue and idempotency store. A single thread owns the connection; async
//! callers send it operations and await the result. Operations that arrive together are committed in one
//! transaction, and one failing does not undo the others: each runs inside its own savepoint, or, when it
//! writes with a single statement, relies on SQLite undoing that statement ([`Db::call_single_write`]).
//! No caller hears back before the commit.
//!
//! Commits are written to the WAL without waiting for the disk; the thread then syncs the WAL itself
//! (`fdatasync`) when the group holds an operation that must be on disk before its caller hears back
//! ([`Durability::Synced`]: a delivery the intake answers 200 for, a completion, a dead letter the worker
//! or a command writes), and answers those callers after the sync. A [`Durability::Deferred`] operation
//! (a receive, a claim, an acknowledgement, a mirror write, the journal) is answered after its commit
//! alone: the WAL is replayed in order after a crash, so it is on disk as soon as any later synced commit
//! is, and at the latest [`MAX_DEFERRED`] after its commit. What a power loss can take is a suffix of
//! deferred commits, each of which the queue's redelivery and the idempotency claim repeat (a message a
//! receive moved to the dead letters after its last receive is moved again at the next).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use rusqlite::Connection;
use tokio::sync::oneshot;

/// Operations committed together at most.
const GROUP_LIMIT: usize = 512;

/// How long a deferred commit may wait for a synced one before the thread syncs the WAL for it.
pub const MAX_DEFERRED: std::time::Duration = std::time::Duration::from_millis(100);

/// When a caller hears back about its operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// After the commit and the WAL's sync: on disk, and so is every commit before it.
    Synced,
    /// After the commit: visible to every later operation, on disk with the next synced commit, or
    /// [`MAX_DEFERRED`] after the commit at the latest.
    Deferred,
}

/// The queue is two tables. `payloads` holds what was received, written once and never updated; `queue`
/// holds one small row per message still to be settled, which receives, retries and acknowledgements
/// rewrite. A receive therefore rewrites a few bytes per message instead of the page that holds its body,
/// and payloads are deleted in ranges once no queue row precedes them (see `SqliteQueue`), which frees
/// whole pages instead of rewriting them. No index besides the rowids: receives scan `queue` in `seq`
/// order, and a receipt names its row's `seq`.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS payloads (
    seq         INTEGER PRIMARY KEY,
    message_id  TEXT    NOT NULL,
    body        BLOB    NOT NULL,
    attributes  TEXT    NOT NULL,
    enqueued_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS queue (
    seq           INTEGER PRIMARY KEY,
    visible_at    INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt       TEXT,
    last_error    TEXT
);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id       TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    attributes       TEXT    NOT NULL,
    reason           TEXT    NOT NULL,
    receive_count    INTEGER NOT NULL,
    enqueued_at      INTEGER NOT NULL,
    dead_lettered_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    pk                     TEXT PRIMARY KEY,
    status                 TEXT    NOT NULL,
    expiration             INTEGER NOT NULL,
    in_progress_expiration INTEGER NOT NULL,
    lease_token            TEXT,
    payload_hash           TEXT,
    claimed_at             INTEGER,
    completed_at           INTEGER
);
CREATE TABLE IF NOT EXISTS mirror (
    type            TEXT    NOT NULL,
    id              TEXT    NOT NULL,
    app_id          TEXT    NOT NULL,
    version_ms      INTEGER NOT NULL,
    tiebreak_ms     INTEGER NOT NULL,
    deleted         INTEGER NOT NULL,
    truncated       INTEGER NOT NULL,
    notification_id TEXT    NOT NULL,
    item            BLOB,
    UNIQUE (type, id, app_id)
);
CREATE INDEX IF NOT EXISTS mirror_by_version ON mirror (type, version_ms);
CREATE TABLE IF NOT EXISTS watermarks (
    key      TEXT PRIMARY KEY,
    until_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS mirror_counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    seq               INTEGER PRIMARY KEY,
    received_at_ms    INTEGER NOT NULL,
    source            TEXT    NOT NULL,
    status            INTEGER,
    outcome           TEXT    NOT NULL,
    reason            TEXT,
    notification_id   TEXT,
    topic             TEXT,
    app_id            TEXT,
    delivery_attempts INTEGER,
    receives          INTEGER,
    handlers          TEXT,
    duration_ms       REAL,
    settled_at_ms     INTEGER,
    headers           TEXT    NOT NULL,
    body              BLOB,
    summary           TEXT,
    replay_of         INTEGER
);
CREATE INDEX IF NOT EXISTS idempotency_by_expiration ON idempotency (expiration);
CREATE INDEX IF NOT EXISTS dead_letters_by_time ON dead_letters (dead_lettered_at);
";

/// `PRAGMA auto_vacuum` for INCREMENTAL: pages freed by purges are given back to the file system by
/// `PRAGMA incremental_vacuum` instead of staying in the file.
const INCREMENTAL_VACUUM: i64 = 2;

/// Bytes the WAL file is truncated to after a checkpoint.
const WAL_SIZE_LIMIT: i64 = 32 * 1024 * 1024;

/// Creates the database file readable and writable by its owner only (it holds customers' messages).
/// SQLite gives the `-wal` and `-shm` files it creates the database file's permissions. An existing
/// file keeps its permissions; one that others can read is reported.
fn create_private(path: &Path) -> Result<(), DbError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if let Ok(meta) = std::fs::metadata(path) {
                    let mode = meta.permissions().mode() & 0o777;
                    if mode & 0o077 != 0 {
                        tracing::warn!(
                            path = %path.display(),
                            mode = format!("{mode:o}"),
                            "the database file can be read by other users; it holds customers' messages (chmod 600 it)"
                        );
                    }
                }
            }
            Err(e) => {
                return Err(DbError::Sqlite(format!("cannot create {}: {e}", path.display())));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Why a database operation failed. Only a closed database is not worth retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    #[error("sqlite: {0}")]
    Sqlite(String),
    #[error("the database is closed")]
    Closed,
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::Sqlite(e.to_string())
    }
}

trait Pending: Send {
    /// Runs the operation on the open transaction, recording its own result.
    fn run(&mut self, conn: &Connection);
    fn durability(&self) -> Durability;
    /// Reports the result, or the commit's failure.
    fn finish(self: Box<Self>, commit: Result<(), DbError>);
}

struct Op<T, F> {
    f: Option<F>,
    /// Whether the operation runs inside its own savepoint (see [`Db::call_single_write`]).
    savepoint: bool,
    durability: Durability,
    result: Option<Result<T, DbError>>,
    reply: Option<oneshot::Sender<Result<T, DbError>>>,
}

impl<T, F> Pending for Op<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) {
        let f = self.f.take().expect("an operation runs once");
        if !self.savepoint {
            self.result = Some(f(conn));
            return;
        }
        let result = match run_cached(conn, "SAVEPOINT op") {
            Err(e) => Err(e.into()),
            Ok(()) => {
                let result = f(conn);
                let end = if result.is_ok() {
                    run_cached(conn, "RELEASE op")
                } else {
                    run_cached(conn, "ROLLBACK TO op").and_then(|()| run_cached(conn, "RELEASE op"))
                };
                match end {
                    Ok(()) => result,
                    Err(e) => Err(e.into()),
                }
            }
        };
        self.result = Some(result);
    }

    fn durability(&self) -> Durability {
        self.durability
    }

    fn finish(mut self: Box<Self>, commit: Result<(), DbError>) {
        let result = match commit {
            Ok(()) => self.result.take().unwrap_or(Err(DbError::Closed)),
            Err(e) => Err(e),
        };
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(result);
        }
    }
}

/// A handle to the database thread. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    jobs: mpsc::Sender<Box<dyn Pending>>,
    path: PathBuf,
    /// Syncs of the WAL made by the database thread.
    syncs: Arc<AtomicU64>,
    #[cfg(test)]
    fail_next: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

impl Db {
    /// Opens (creating if needed) the database file in WAL mode and starts its thread.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DbError> {
        let path = path.as_ref().to_path_buf();
        create_private(&path)?;
        let mut conn = Connection::open(&path)?;
        // Set before the first table is created; a file made by an earlier version is converted once.
        let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
        let auto_vacuum: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
        if auto_vacuum != INCREMENTAL_VACUUM {
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
            if tables > 0 {
                tracing::info!(path = %path.display(), "converting the database to incremental vacuum (once; it rewrites the file)");
                conn.execute_batch("VACUUM")?;
            }
        }
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            // The thread's syncs, and commits that do not block readers, need the write-ahead log.
            return Err(DbError::Sqlite(format!(
                "{} cannot use a write-ahead log (journal mode stays {mode}); put it on a local file system",
                path.display()
            )));
        }
        // The WAL is truncated to this size after a checkpoint, so that a burst does not leave it large.
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        // Commits do not sync: the database thread syncs the WAL itself, for the operations that need it
        // (see the module's documentation). Checkpoints still sync the WAL before and the file after.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Pages kept in memory (in KiB when negative): the queue's hot pages, so that a receive or an
        // acknowledgement does not read them back from the file.
        conn.pragma_update(None, "cache_size", -16_384)?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.set_prepared_statement_cache_capacity(64);
        // Plans that do not depend on bound values: otherwise a range on a bound parameter (the receive's
        // `seq > ?`) makes SQLite prepare the statement again for every new value.
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        conn.execute_batch(SCHEMA)?;
        migrate_single_table_queue(&mut conn)?;
        let (jobs, queue) = mpsc::channel::<Box<dyn Pending>>();
        let wal = Wal::open(&conn)?;
        let syncs = wal.syncs.clone();
        #[cfg(test)]
        let fail_next = wal.fail_next.clone();
        thread::Builder::new()
            .name("sqlite".into())
            .spawn(move || serve(conn, queue, wal))
            .map_err(|e| DbError::Sqlite(format!("cannot start the database thread: {e}")))?;
        Ok(Self {
            jobs,
            path,
            syncs,
            #[cfg(test)]
            fail_next,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many times the database thread has synced the WAL.
    pub fn wal_syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Resolves once every commit made so far is on disk, deferred ones included.
    pub async fn sync(&self) -> Result<(), DbError> {
        self.call_single_write(|_| Ok(())).await
    }

    /// Runs `f` in the database thread, inside a transaction; resolves after the commit and the WAL's
    /// sync ([`Durability::Synced`]). `f` runs in its own savepoint: when it fails, whatever it wrote is
    /// undone and the other operations of the group are kept.
    pub async fn call<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        self.submit(f, true, Durability::Synced).await
    }

    /// As [`Db::call`], without the savepoint, for an operation that writes with one statement at most
    /// and fails only when that statement does (or before it runs): SQLite undoes a failed statement on
    /// its own. Also for one whose earlier statements leave nothing harmful behind when a later one
    /// fails (`send`: a payload without its queue row is deleted with the next range of settled
    /// payloads). A savepoint copies every page the operation touches, which the queue's hot operations
    /// (send, acknowledge, claim, complete) cannot afford (bench/RESULTS.md has the profile).
    pub async fn call_single_write<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        self.submit(f, false, Durability::Synced).await
    }

    /// As [`Db::call`], resolving after the commit, before the WAL's sync ([`Durability::Deferred`]): for
    /// an operation that a crash may undo, because what it records is repeated when it is lost.
    pub async fn call_deferred<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        self.submit(f, true, Durability::Deferred).await
    }

    /// As [`Db::call_single_write`], resolving after the commit, before the WAL's sync
    /// ([`Durability::Deferred`]).
    pub async fn call_single_write_deferred<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        self.submit(f, false, Durability::Deferred).await
    }

    async fn submit<T, F>(&self, f: F, savepoint: bool, durability: Durability) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op = Op {
            f: Some(f),
            savepoint,
            durability,
            result: None,
            reply: Some(reply),
        };
        self.jobs.send(Box::new(op)).map_err(|_| DbError::Closed)?;
        answer.await.map_err(|_| DbError::Closed)?
    }
}

#[cfg(test)]
impl Db {
    /// The first column of every row `sql` returns.
    pub(crate) async fn column<T>(&self, sql: &'static str) -> Vec<T>
    where
        T: rusqlite::types::FromSql + Send + 'static,
    {
        self.call(move |c| {
            let mut statement = c.prepare(sql)?;
            let values = statement.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
            Ok(values)
        })
        .await
        .expect("a test query")
    }
}

/// Files written by earlier versions keep the queue in one table, `messages`, with the payload and the
/// delivery state in each row. Its rows move to `payloads` and `queue` (same `seq`, state kept: a message
/// received before the upgrade stays hidden until its visibility timeout) in one transaction.
fn migrate_single_table_queue(conn: &mut Connection) -> Result<(), DbError> {
    let failed = |e: rusqlite::Error| {
        DbError::Sqlite(format!(
            "cannot move the queue of an earlier version to the current tables: {e}"
        ))
    };
    // Checked inside the write transaction: another process opening the file at the same time waits,
    // then finds the move done.
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(failed)?;
    let exists: bool = tx
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'messages'",
            [],
            |r| r.get(0),
        )
        .map_err(failed)?;
    if exists {
        tx.execute_batch(
            "INSERT INTO payloads (seq, message_id, body, attributes, enqueued_at)
                 SELECT seq, message_id, body, attributes, enqueued_at FROM messages;
             INSERT INTO queue (seq, visible_at, receive_count, receipt, last_error)
                 SELECT seq, visible_at, receive_count, receipt, last_error FROM messages;
             DROP TABLE messages;",
        )
        .map_err(failed)?;
    }
    tx.commit().map_err(failed)
}

/// Runs one statement without parameters, prepared once per connection.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// A new id for a message or a receipt: a UUID whose leading bits are the time, so that ids made one
/// after another land next to each other in their index instead of on a random page.
pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The WAL file, synced by the database thread after the commits that need it. Named as SQLite names
/// it: after the database's path as SQLite resolved it (a symbolic link followed). SQLite keeps the file,
/// and its inode (a checkpoint rewrites it from the start or truncates it), while a connection is open.
struct Wal {
    path: PathBuf,
    file: std::fs::File,
    syncs: Arc<AtomicU64>,
    /// Set by a test: the next sync fails.
    #[cfg(test)]
    fail_next: Arc<std::sync::atomic::AtomicBool>,
}

impl Wal {
    /// The WAL of `conn`'s database, which SQLite has created by the time the connection is in WAL mode
    /// and has read the schema.
    fn open(conn: &Connection) -> Result<Self, DbError> {
        let database = conn
            .path()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| DbError::Sqlite("the database has no file, so no write-ahead log".into()))?;
        let path = PathBuf::from(format!("{database}-wal"));
        let file = std::fs::File::open(&path).map_err(|e| {
            DbError::Sqlite(format!("cannot open the write-ahead log {}: {e}", path.display()))
        })?;
        Ok(Self {
            path,
            file,
            syncs: Arc::default(),
            #[cfg(test)]
            fail_next: Arc::default(),
        })
    }

    fn sync(&mut self) -> Result<(), DbError> {
        #[cfg(test)]
        if self.fail_next.swap(false, Ordering::Relaxed) {
            return Err(DbError::Sqlite(format!(
                "cannot sync the write-ahead log {}: a test's failure",
                self.path.display()
            )));
        }
        self.file.sync_data().map_err(|e| {
            DbError::Sqlite(format!(
                "cannot sync the write-ahead log {}: {e}",
                self.path.display()
            ))
        })?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Commits a group of operations and answers their callers: deferred ones after the commit, synced ones
/// after the WAL's sync as well (see the module's documentation).
///
/// After a failed sync nothing more is done: Linux reports a write-back error once and may drop the
/// pages it could not write, so later commits would build on frames that are not on disk, and a later
/// sync would succeed without them. Every operation is refused from then on, and a restart recovers
/// from what the disk holds.
fn serve(conn: Connection, queue: mpsc::Receiver<Box<dyn Pending>>, mut wal: Wal) {
    let mut broken: Option<DbError> = None;
    let fail = |error: DbError, broken: &mut Option<DbError>| {
        tracing::error!(%error, "the database refuses every operation from now on; restart once the disk is healthy");
        *broken = Some(DbError::Sqlite(format!(
            "{error}; nothing is written after a failed sync (restart once the disk is healthy)"
        )));
    };
    // When the oldest commit not yet synced was made.
    let mut unsynced: Option<std::time::Instant> = None;
    loop {
        let first = match unsynced {
            None => match queue.recv() {
                Ok(op) => op,
                Err(_) => return,
            },
            Some(since) => match queue.recv_timeout(MAX_DEFERRED.saturating_sub(since.elapsed())) {
                Ok(op) => op,
                Err(timeout_or_closed) => {
                    if let Err(error) = wal.sync() {
                        fail(error, &mut broken);
                    }
                    unsynced = None;
                    if timeout_or_closed == mpsc::RecvTimeoutError::Disconnected {
                        return;
                    }
                    continue;
                }
            },
        };
        let mut group = vec![first];
        while group.len() < GROUP_LIMIT {
            match queue.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        if let Some(error) = &broken {
            for op in group {
                op.finish(Err(error.clone()));
            }
            continue;
        }
        let changes = conn.total_changes();
        let commit = match run_cached(&conn, "BEGIN IMMEDIATE") {
            Err(e) => Err(DbError::from(e)),
            Ok(()) => {
                for op in group.iter_mut() {
                    op.run(&conn);
                }
                run_cached(&conn, "COMMIT").map_err(|e| {
                    let _ = conn.execute_batch("ROLLBACK");
                    DbError::from(e)
                })
            }
        };
        if commit.is_ok() && conn.total_changes() != changes && unsynced.is_none() {
            unsynced = Some(std::time::Instant::now());
        }
        let (synced, deferred): (Vec<_>, Vec<_>) = group
            .into_iter()
            .partition(|op| op.durability() == Durability::Synced);
        for op in deferred {
            op.finish(commit.clone());
        }
        let due = unsynced.is_some_and(|since| !synced.is_empty() || since.elapsed() >= MAX_DEFERRED);
        let synced_commit = if due {
            unsynced = None;
            match wal.sync() {
                Ok(()) => commit,
                Err(error) => {
                    fail(error.clone(), &mut broken);
                    Err(error)
                }
            }
        } else {
            commit
        };
        for op in synced {
            op.finish(synced_commit.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database in a temporary folder, set up by `sql`.
    async fn open_with(sql: &'static str) -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("t.db")).unwrap();
        db.call(move |c| Ok(c.execute_batch(sql)?)).await.unwrap();
        (dir, db)
    }

    #[tokio::test]
    async fn operations_commit_and_failures_roll_back_alone() {
        let (_dir, db) = open_with("CREATE TABLE t (v INTEGER UNIQUE)").await;
        let ok = (0..50).map(|i| {
            let db = db.clone();
            async move {
                db.call(move |c| Ok(c.execute("INSERT INTO t VALUES (?1)", [i])?))
                    .await
            }
        });
        let bad = db.call(|c| {
            c.execute("INSERT INTO t VALUES (1000)", [])?;
            Err::<(), _>(DbError::Sqlite("refused".into()))
        });
        let (results, bad) = tokio::join!(futures::future::join_all(ok), bad);
        assert!(results.iter().all(|r| r.is_ok()));
        assert_eq!(bad, Err(DbError::Sqlite("refused".into())));
        let count: i64 = db
            .call(|c| Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(
            count, 50,
            "the failed operation's insert was rolled back, the others kept"
        );
        let mode: String = db
            .call(|c| Ok(c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn a_synced_write_is_answered_after_a_sync_and_a_deferred_one_is_synced_soon_after_alone() {
        let (_dir, db) = open_with("CREATE TABLE t (v INTEGER)").await;
        let insert = |v: i64| move |c: &Connection| Ok(c.execute("INSERT INTO t VALUES (?1)", [v])?);

        let before = db.wal_syncs();
        db.call_single_write(insert(1)).await.unwrap();
        assert_eq!(
            db.wal_syncs(),
            before + 1,
            "a synced write waits for its own sync"
        );

        // Nothing was written since: reading needs no sync.
        let before = db.wal_syncs();
        let count: Vec<i64> = db.column("SELECT count(*) FROM t").await;
        assert_eq!((count, db.wal_syncs()), (vec![1], before));

        // Deferred writes are answered at their commit; the WAL is synced for them within MAX_DEFERRED
        // of the first, though nothing else comes.
        let before = db.wal_syncs();
        let started = std::time::Instant::now();
        for v in 2..=11 {
            db.call_single_write_deferred(insert(v)).await.unwrap();
        }
        // Each was answered without a sync of its own (one could only come from a wait of MAX_DEFERRED
        // between two of them).
        assert!(db.wal_syncs() - before < 10, "{} syncs", db.wal_syncs() - before);
        let deadline = started + MAX_DEFERRED * 20;
        while db.wal_syncs() == before && std::time::Instant::now() < deadline {
            tokio::time::sleep(MAX_DEFERRED / 10).await;
        }
        assert!(
            db.wal_syncs() > before,
            "the deferred writes were not synced within {:?}",
            MAX_DEFERRED * 20
        );
        let values: Vec<i64> = db.column("SELECT v FROM t ORDER BY v").await;
        assert_eq!(values, (1..=11).collect::<Vec<i64>>());

        // Once synced, the thread waits without syncing again.
        let settled = db.wal_syncs();
        tokio::time::sleep(MAX_DEFERRED * 3).await;
        assert_eq!(db.wal_syncs(), settled);
    }

    #[tokio::test]
    async fn a_deferred_write_that_fails_is_undone_and_a_synced_one_sent_beside_it_commits() {
        let (_dir, db) = open_with("CREATE TABLE t (v INTEGER UNIQUE); INSERT INTO t VALUES (7)").await;
        let deferred = (0..10).map(|i| {
            let db = db.clone();
            async move {
                db.call_deferred(move |c| {
                    c.execute("INSERT INTO t VALUES (?1)", [100 + i])?;
                    // 7 is taken: this operation's own insert above is undone with it.
                    if i == 3 {
                        c.execute("INSERT INTO t VALUES (7)", [])?;
                    }
                    Ok(())
                })
                .await
            }
        });
        let synced = db.call_single_write(|c| Ok(c.execute("INSERT INTO t VALUES (8)", [])?));
        let (results, synced) = tokio::join!(futures::future::join_all(deferred), synced);
        for (i, result) in results.iter().enumerate() {
            assert_eq!(result.is_ok(), i != 3, "deferred write {i}: {result:?}");
        }
        assert_eq!(synced, Ok(1));
        let values: Vec<i64> = db.column("SELECT v FROM t ORDER BY v").await;
        let expected: Vec<i64> = [7, 8]
            .into_iter()
            .chain((0..10).filter(|&i| i != 3).map(|i| 100 + i))
            .collect();
        assert_eq!(values, expected);
    }

    #[tokio::test]
    async fn after_a_failed_sync_every_operation_is_refused() {
        let (_dir, db) = open_with("CREATE TABLE t (v INTEGER)").await;
        let insert = |v: i64| move |c: &Connection| Ok(c.execute("INSERT INTO t VALUES (?1)", [v])?);
        db.call_single_write(insert(1)).await.unwrap();

        db.fail_next.store(true, Ordering::Relaxed);
        let failed = db.call_single_write(insert(2)).await.unwrap_err().to_string();
        assert!(failed.contains("cannot sync the write-ahead log"), "{failed}");
        for refused in [
            db.call_single_write_deferred(insert(3)).await,
            db.call_single_write(insert(4)).await,
            db.call(|c| Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))? as usize))
                .await,
        ] {
            let refused = refused.unwrap_err().to_string();
            assert!(
                refused.contains("nothing is written after a failed sync"),
                "{refused}"
            );
        }
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_database_opened_through_a_symbolic_link_syncs_the_log_beside_its_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("data/real.db"), dir.path().join("link.db")).unwrap();
        let db = Db::open(dir.path().join("link.db")).unwrap();
        db.call_single_write(|c| Ok(c.execute_batch("CREATE TABLE t (v); INSERT INTO t VALUES (1)")?))
            .await
            .unwrap();
        assert!(dir.path().join("data/real.db-wal").exists());
        assert!(!dir.path().join("link.db-wal").exists());
        let before = db.wal_syncs();
        db.call_single_write(|c| Ok(c.execute("INSERT INTO t VALUES (2)", [])?))
            .await
            .unwrap();
        assert_eq!(db.wal_syncs(), before + 1);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_database_and_its_wal_and_shm_files_are_private_to_the_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private.db");
        let db = Db::open(&path).unwrap();
        db.call(|c| Ok(c.execute_batch("CREATE TABLE t (v); INSERT INTO t VALUES (1)")?))
            .await
            .unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let file = format!("{}{suffix}", path.display());
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{file} has mode {mode:o}");
        }
        let vacuum: Vec<i64> = db.column("PRAGMA auto_vacuum").await;
        assert_eq!(vacuum, [INCREMENTAL_VACUUM]);
    }

    #[tokio::test]
    async fn a_file_of_an_earlier_version_is_converted_to_incremental_vacuum_with_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch("CREATE TABLE kept (v); INSERT INTO kept VALUES (42)")
                .unwrap();
        }
        let db = Db::open(&path).unwrap();
        assert_eq!(db.column::<i64>("PRAGMA auto_vacuum").await, [INCREMENTAL_VACUUM]);
        assert_eq!(db.column::<i64>("SELECT v FROM kept").await, [42]);
    }

    #[tokio::test]
    async fn a_failed_single_write_leaves_nothing_and_the_group_commits() {
        let (_dir, db) = open_with("CREATE TABLE t (v INTEGER UNIQUE); INSERT INTO t VALUES (7)").await;
        let writes = (0..20).map(|i| {
            let db = db.clone();
            async move {
                db.call_single_write(move |c| {
                    // 7 is taken: the one statement inserting it fails as a whole, 100 included.
                    let sql = if i == 7 {
                        "INSERT INTO t SELECT 100 UNION ALL SELECT ?1"
                    } else {
                        "INSERT INTO t VALUES (?1 + 1000)"
                    };
                    Ok(c.execute(sql, [i])?)
                })
                .await
            }
        });
        let results = futures::future::join_all(writes).await;
        for (i, result) in results.iter().enumerate() {
            assert_eq!(result.is_ok(), i != 7, "write {i}: {result:?}");
        }
        let values: Vec<i64> = db.column("SELECT v FROM t ORDER BY v").await;
        let expected: Vec<i64> = std::iter::once(7)
            .chain((0..20).filter(|&i| i != 7).map(|i| i + 1000))
            .collect();
        assert_eq!(
            values, expected,
            "the failed statement's first row (100) was undone"
        );
    }
}
