//! Local adapters: the queue, dead-letter queue, idempotency store and mirror in one SQLite file, and the
//! `serve` runner that puts the intake and the worker together on one machine.

mod background;
mod codec;
mod connections;
pub mod db;
pub mod dead_letters;
pub mod inspector;
pub mod maintenance;
pub mod mirror;
mod poller;
pub mod queue;
pub mod server;
pub mod store;

pub use db::{Db, DbError};
pub use dead_letters::DeadLetterRow;
pub use maintenance::{purge, Purged, Retention};
pub use mirror::SqliteMirror;
pub use queue::{QueueStats, SqliteQueue};
pub use store::SqliteStore;
