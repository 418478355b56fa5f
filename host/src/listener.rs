//! Per-listener counters: connections (UDP: sessions) open and accepted,
//! on HTTP listeners the responses sent by status class and the time to
//! each response head, on UDP listeners the datagrams dropped; and the
//! admission of TCP connections under the listener's, the process's and
//! the per-client caps. Both belong to the listener, so they survive
//! reloads that keep it.

use crate::histogram::Histogram;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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

/// Who may open a connection now: the listener's cap on open connections,
/// the process-wide one, and the cap per client address. The accept loop
/// waits for room before it accepts, so connections beyond a cap wait in
/// the listen backlog until one closes (HAProxy's `maxconn`); a client at
/// its own cap is refused right after the accept.
pub struct ConnectionCaps {
    /// The listener's own cap.
    own: Cap,
    /// `runtime.max_connections`, shared by every TCP-family listener.
    process: Arc<Cap>,
    /// Open connections allowed per client address (0: no cap).
    per_client: AtomicUsize,
    clients: Mutex<HashMap<IpAddr, usize>>,
    /// Written to a refused client before the close (a plain HTTP listener's 429).
    refusal: &'static [u8],
    refused: AtomicU64,
    paused: AtomicU64,
    /// The server's load shedding, asked at each accept.
    pub overload: Arc<crate::overload::Overload>,
    /// Written to a client shed at accept before the close (a plain HTTP
    /// listener's 503).
    shed_refusal: &'static [u8],
}

/// A cap on open connections: a listener's own, or the process-wide one.
#[derive(Default)]
pub struct Cap {
    /// 0: no cap.
    max: AtomicUsize,
    open: AtomicUsize,
    /// Notified when a connection closes at the cap, or the cap changes.
    freed: Notify,
}

impl Cap {
    /// Set the cap (`None` or 0: none); a raised cap lets waiting
    /// connections in at once.
    pub fn set(&self, max: Option<u64>) {
        self.max.store(max.unwrap_or(0) as usize, Relaxed);
        self.freed.notify_waiters();
    }

    /// The cap (`None`: none).
    pub fn max(&self) -> Option<u64> {
        Some(self.max.load(Relaxed) as u64).filter(|&m| m != 0)
    }

    /// Connections open now under this cap.
    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    fn has_room(&self) -> bool {
        let max = self.max.load(Relaxed);
        max == 0 || self.open.load(Relaxed) < max
    }

    fn try_reserve(&self) -> bool {
        let max = self.max.load(Relaxed);
        self.open.fetch_update(Relaxed, Relaxed, |n| (max == 0 || n < max).then_some(n + 1)).is_ok()
    }

    fn release(&self) {
        let max = self.max.load(Relaxed);
        if self.open.fetch_sub(1, Relaxed) >= max && max != 0 {
            self.freed.notify_waiters();
        }
    }
}

/// Room for one connection, held until it closes.
pub struct Ticket {
    caps: Arc<ConnectionCaps>,
    client: Option<IpAddr>,
}

impl std::fmt::Debug for ConnectionCaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (max, open) = (self.own.max(), self.own.open());
        f.debug_struct("ConnectionCaps").field("max", &max).field("open", &open).finish_non_exhaustive()
    }
}

impl ConnectionCaps {
    /// A listener's caps under the process-wide cap `process` and the
    /// server's `overload`; `refusal` is written to a client refused at its
    /// own cap, `shed_refusal` to one shed when overloaded.
    pub fn new(
        process: Arc<Cap>,
        overload: Arc<crate::overload::Overload>,
        refusal: &'static [u8],
        shed_refusal: &'static [u8],
    ) -> Arc<Self> {
        Arc::new(Self {
            overload,
            shed_refusal,
            own: Cap::default(),
            process,
            per_client: AtomicUsize::new(0),
            clients: Mutex::default(),
            refusal,
            refused: AtomicU64::new(0),
            paused: AtomicU64::new(0),
        })
    }

    /// Set the caps (`None` or 0: none); a raised cap lets waiting
    /// connections in at once.
    pub fn set(&self, max: Option<u64>, per_client: Option<u64>) {
        self.per_client.store(per_client.unwrap_or(0) as usize, Relaxed);
        self.own.set(max);
    }

    /// The listener's cap (`None`: none).
    pub fn max(&self) -> Option<u64> {
        self.own.max()
    }

    /// The cap per client address (`None`: none).
    pub fn max_per_client(&self) -> Option<u64> {
        Some(self.per_client.load(Relaxed) as u64).filter(|&m| m != 0)
    }

    /// Connections refused because their client was at its cap.
    pub fn refused(&self) -> u64 {
        self.refused.load(Relaxed)
    }

    /// Times the accept loop paused at the listener's or the process's cap.
    pub fn paused(&self) -> u64 {
        self.paused.load(Relaxed)
    }

    /// What a refused client is told before the close.
    pub fn refusal(&self) -> &'static [u8] {
        self.refusal
    }

    /// What a client shed at accept is told before the close.
    pub fn shed_refusal(&self) -> &'static [u8] {
        self.shed_refusal
    }

    /// Wait until the listener and the process have room for one more
    /// connection (counted as a pause when it has to wait); false once
    /// `stop` is cancelled. Nothing is reserved: a listener waiting in
    /// `accept` must not hold room the others could use.
    pub async fn room(&self, stop: &CancellationToken) -> bool {
        let mut counted = false;
        self.wait_for(stop, || {
            let room = self.own.has_room() && self.process.has_room();
            if !room && !counted {
                counted = true;
                self.paused.fetch_add(1, Relaxed);
            }
            room.then_some(())
        })
        .await
        .is_some()
    }

    /// Take room for a connection just accepted. The listener's own room
    /// is this accept loop's alone; the process's may have been taken by
    /// another listener since [`Self::room`], and is waited for then.
    pub async fn admit(self: &Arc<Self>, stop: &CancellationToken) -> Option<Ticket> {
        self.wait_for(stop, || {
            // Only this listener's accept loop takes room on it: check, then add.
            (self.own.has_room() && self.process.try_reserve()).then(|| {
                self.own.open.fetch_add(1, Relaxed);
                Ticket { caps: self.clone(), client: None }
            })
        })
        .await
    }

    /// `f()` as soon as it gives something, re-tried whenever a connection
    /// closes at a cap or a cap changes.
    async fn wait_for<T>(&self, stop: &CancellationToken, mut f: impl FnMut() -> Option<T>) -> Option<T> {
        loop {
            let (mut own, mut process) =
                (std::pin::pin!(self.own.freed.notified()), std::pin::pin!(self.process.freed.notified()));
            own.as_mut().enable();
            process.as_mut().enable();
            if let Some(got) = f() {
                return Some(got);
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = own => {}
                _ = process => {}
            }
        }
    }
}

impl Ticket {
    /// The connection is `client`'s: refused (the room given back) when
    /// that client is at its cap.
    pub fn for_client(mut self, client: IpAddr) -> Option<Ticket> {
        let cap = self.caps.per_client.load(Relaxed);
        if cap == 0 {
            return Some(self);
        }
        let mut clients = self.caps.clients.lock();
        let n = clients.entry(client).or_default();
        if *n >= cap {
            drop(clients);
            self.caps.refused.fetch_add(1, Relaxed);
            return None;
        }
        *n += 1;
        drop(clients);
        self.client = Some(client);
        Some(self)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(client) = self.client {
            let mut clients = self.caps.clients.lock();
            if let Some(n) = clients.get_mut(&client) {
                *n -= 1;
                if *n == 0 {
                    clients.remove(&client);
                }
            }
        }
        self.caps.own.release();
        self.caps.process.release();
    }
}
