//! Processing: the worker takes stored notifications off the queue, claims each id once (`idempotency`),
//! routes it by topic (`router`) to the handlers (`handler` is the port, `handlers` the built-in ones, over
//! the typed `models`; `mirror` keeps the newest version of every object and decides which notifications
//! are stale), and ends each in an outcome; what fails for good lands in the dead letters, which
//! `dlq` lists and redrives.

pub mod dead_letters;
pub mod handler;
pub mod handlers;
pub mod idempotency;
pub mod mirror;
pub mod models;
pub mod router;
pub mod worker;
