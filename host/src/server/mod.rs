//! The running proxy built from a config: [`Prepared`] loads every plugin
//! instance and builds the pools; [`ServerCore`] binds the listeners, serves
//! them and applies reloads whole or not at all; [`Snapshot`] is what runs
//! now, as the admin API, the metrics and the tests read it.

mod core;
mod prepare;
mod snapshot;

pub use self::core::{bind, ServerCore};
pub use prepare::Prepared;
pub use snapshot::{ListenerInfo, ReloadSummary, Snapshot};
