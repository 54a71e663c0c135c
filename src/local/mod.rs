//! Local adapters: the queue, dead-letter queue and idempotency store in one SQLite file, and the
//! `serve` runner that puts the intake and the worker together on one machine.

pub mod db;
pub mod maintenance;
pub mod queue;
pub mod server;
pub mod store;

pub use db::{Db, DbError};
pub use maintenance::{purge, Purged, Retention};
pub use queue::{DeadLetter, QueueStats, SqliteQueue};
pub use store::SqliteStore;
