//! Receiving: a delivery's signature is verified on its raw bytes (`signature`), its envelope parsed
//! (`notification`), and it is stored on the queue (`queue`, the port) by the HTTP application (`intake`)
//! before it is acknowledged. `deliver` is the other side: posting a notification to a receiver as Intercom
//! does.

pub mod deliver;
pub mod intake;
pub mod notification;
pub mod queue;
pub mod signature;
