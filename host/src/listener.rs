//! Per-listener counters: connections (UDP: sessions) open and accepted,
//! on HTTP listeners the responses sent by status class and the time to
//! each response head, on UDP listeners the datagrams dropped. They
//! belong to the listener, so they survive reloads that keep it.

use crate::histogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// A listener's counters.
#[derive(Debug, Default)]
pub struct ListenerStats {
    active: AtomicU64,
    total: AtomicU64,
    responses: [AtomicU64; 5],
    dropped: AtomicU64,
    /// HTTP: time from request head to response head (errors weir answers
    /// itself included).
    pub response_time: Histogram,
}

impl ListenerStats {
    /// A connection was accepted; the guard counts it open until dropped.
    pub fn accepted(self: &Arc<Self>) -> ConnectionGuard {
        self.total.fetch_add(1, Relaxed);
        self.active.fetch_add(1, Relaxed);
        ConnectionGuard(self.clone())
    }

    /// Connections open now.
    pub fn active(&self) -> u64 {
        self.active.load(Relaxed)
    }

    /// Connections accepted so far.
    pub fn total(&self) -> u64 {
        self.total.load(Relaxed)
    }

    /// UDP: count a datagram dropped (session cap, denied, no backend, queue full).
    pub fn drop_datagram(&self) {
        self.dropped.fetch_add(1, Relaxed);
    }

    /// UDP: datagrams dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Count an HTTP response sent to a client.
    pub fn record_status(&self, status: u16) {
        if let Some(c) = self.responses.get((status / 100).wrapping_sub(1) as usize) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// HTTP responses with status `class`xx (1 to 5).
    pub fn responses(&self, class: u16) -> u64 {
        self.responses.get((class as usize).wrapping_sub(1)).map_or(0, |c| c.load(Relaxed))
    }
}

/// Counts a connection open until dropped.
pub struct ConnectionGuard(Arc<ListenerStats>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}
