//! The UDP proxy: virtual sessions keyed by the client's address. The first
//! datagram from an address opens a session, which runs the access phase
//! and the balance phase once and gets a connected socket of its own to the
//! backend; later datagrams from that address go to the same backend, and
//! the backend's replies go back to the client from the listener's socket.
//! A session ends after `udp_idle_timeout` without a datagram either way,
//! after `udp_max_responses` replies, or when its listener closes; after
//! `udp_max_requests` datagrams it takes no more, and the next datagram from
//! that client opens a new session.

use crate::access_log::Line;
use crate::pipeline::Admission;
use crate::plugin::bindings::types;
use crate::plugin::PluginInstance;
use crate::upstream::{Backend, Pool};
use arc_swap::ArcSwap;
use bytes::Bytes;
use parking_lot::Mutex;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Largest datagram relayed either way (a UDP payload cannot be longer).
pub const MAX_DATAGRAM: usize = 65_535;

/// Datagrams from a client waiting for their session (while it is set up,
/// or while its backend socket is busy); more are dropped.
const QUEUE: usize = 32;

thread_local! {
    /// One receive buffer per worker thread for backend replies, so an idle
    /// session holds no buffer of its own.
    static REPLY: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_DATAGRAM + 1]);
}

/// What a UDP listener does with its datagrams.
pub struct UdpService {
    /// Listener name.
    pub name: Arc<str>,
    /// Listener id as plugins see it (`connection.listener`).
    pub listener_id: u32,
    /// Bound address.
    pub local: SocketAddr,
    /// What to do with new sessions; a reload swaps it, and each session
    /// keeps the version it started with.
    pub routes: ArcSwap<UdpRoutes>,
    /// Session counters (`active`, `total`) and dropped datagrams.
    pub stats: Arc<crate::listener::ListenerStats>,
}

/// The part of a UDP listener a reload may change.
pub struct UdpRoutes {
    /// Where sessions go.
    pub pool: Arc<Pool>,
    /// Access filters, in order (`check-connection` once per session).
    pub access: Vec<Arc<PluginInstance>>,
    /// Session limits.
    pub settings: UdpSettings,
    /// Access-log fields, when the log is on (one line per session).
    pub access_log: Option<Arc<[crate::access_log::Field]>>,
}

/// A UDP listener's session limits.
#[derive(Debug, Clone, Copy)]
pub struct UdpSettings {
    /// A session without a datagram either way for this long ends.
    pub idle_timeout: Duration,
    /// Datagrams a session forwards to its backend (0: unlimited).
    pub max_requests: u64,
    /// Replies after which a session ends (0: unlimited).
    pub max_responses: u64,
    /// Sessions open at once on the listener.
    pub max_sessions: u64,
}

/// A session as the listener's receive loop knows it.
struct Handle {
    /// Tells this session from a later one of the same client.
    id: u64,
    /// Datagrams to forward.
    queue: mpsc::Sender<Bytes>,
    /// Datagrams handed to the session so far.
    sent: u64,
    /// The session's `max_requests` (0: unlimited).
    max_requests: u64,
}

/// Sessions taking datagrams, by client address.
type Table = Mutex<HashMap<SocketAddr, Handle>>;

/// Removes a session from the table when it ends (unless a newer session
/// of the same client took its place).
struct Leave {
    table: Arc<Table>,
    peer: SocketAddr,
    id: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let mut table = self.table.lock();
        if table.get(&self.peer).is_some_and(|h| h.id == self.id) {
            table.remove(&self.peer);
        }
    }
}

/// How a session ended, for the debug log and the access log.
#[derive(Debug)]
enum End {
    Idle,
    Responses,
    Closed,
    Refused,
    Failed(std::io::Error),
}

impl UdpService {
    fn connection(&self, peer: SocketAddr) -> types::Connection {
        crate::plugin::bindings::connection_record(peer, self.local, self.listener_id, types::Protocol::Udp)
    }

    /// The balance phase, with a connected socket to the backend as each
    /// attempt: another backend is tried when the socket cannot be set up
    /// (an address that does not resolve, no local port).
    async fn connect(
        &self,
        routes: &UdpRoutes,
        conn: &types::Connection,
        peer: SocketAddr,
    ) -> Option<(UdpSocket, Arc<Backend>)> {
        let pool = &routes.pool;
        let hash_key = crate::pipeline::connection_hash_key(pool, peer, None);
        let attempt = |backend: Arc<Backend>| async move { connect_udp(&backend.address).await };
        crate::pipeline::connect(pool, conn, hash_key.as_deref(), attempt).await
    }

    /// Hand a client's datagram to its session, opening one if it has none.
    fn dispatch(self: &Arc<Self>, ctx: &Context, peer: SocketAddr, datagram: Bytes, next_id: &mut u64) {
        let mut table = ctx.table.lock();
        let datagram = match table.get_mut(&peer) {
            None => datagram,
            Some(h) => match h.queue.try_send(datagram) {
                Ok(()) => {
                    h.sent += 1;
                    if h.max_requests != 0 && h.sent >= h.max_requests {
                        // The session takes no more; it still relays replies.
                        table.remove(&peer);
                    }
                    return;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.stats.drop_datagram();
                    return;
                }
                // The session is ending: this datagram opens the next one.
                Err(mpsc::error::TrySendError::Closed(d)) => {
                    table.remove(&peer);
                    d
                }
            },
        };
        let routes = self.routes.load_full();
        let settings = routes.settings;
        if self.stats.active() >= settings.max_sessions {
            self.stats.drop_datagram();
            tracing::debug!(listener = %self.name, %peer, max = settings.max_sessions, "session limit reached; datagram dropped");
            return;
        }
        let (queue, rx) = mpsc::channel(QUEUE);
        // A fresh channel has room.
        let _ = queue.try_send(datagram);
        let id = *next_id;
        *next_id += 1;
        if settings.max_requests != 1 {
            table.insert(peer, Handle { id, queue, sent: 1, max_requests: settings.max_requests });
        }
        drop(table);
        let session = Session {
            service: self.clone(),
            routes,
            socket: ctx.socket.clone(),
            peer,
            rx,
            _open: self.stats.accepted(),
            _leave: Leave { table: ctx.table.clone(), peer, id },
        };
        ctx.tracker.spawn(session.run(ctx.stop.clone()));
    }
}

/// What every session of a listener shares.
struct Context {
    socket: Arc<UdpSocket>,
    table: Arc<Table>,
    tracker: TaskTracker,
    stop: CancellationToken,
}

/// One client's session.
struct Session {
    service: Arc<UdpService>,
    routes: Arc<UdpRoutes>,
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
    rx: mpsc::Receiver<Bytes>,
    _open: crate::listener::ConnectionGuard,
    _leave: Leave,
}

impl Session {
    async fn run(mut self, stop: CancellationToken) {
        let (service, routes, peer) = (self.service.clone(), self.routes.clone(), self.peer);
        let mut log = Line::new(routes.access_log.as_ref(), &service.name, peer);
        log.set(|e| e.pool = routes.pool.name.clone());
        if let Err(why) = self.serve(&routes, &mut log, &stop).await {
            log.error(why);
        }
        // Datagrams still queued (all of them, when the session was
        // refused) go nowhere; from now on the client's next datagram
        // finds the queue closed and opens a new session.
        self.rx.close();
        while self.rx.try_recv().is_ok() {
            service.stats.drop_datagram();
        }
    }

    /// A session's phases in order: access, balance and connect, then the
    /// relay both ways.
    async fn serve(&mut self, routes: &UdpRoutes, log: &mut Line, stop: &CancellationToken) -> Result<(), String> {
        let (service, peer) = (self.service.clone(), self.peer);
        let conn = service.connection(peer);
        if !Admission::check(&service.name, &routes.access, &conn, peer).admitted() {
            return Err("denied".into());
        }
        let (upstream, backend) = service.connect(routes, &conn, peer).await.ok_or("no backend reachable")?;
        log.set(|e| e.backend = backend.address.clone());
        let _active = backend.stats.open_connection();
        let end = self.relay(&upstream, &backend, log, stop).await;
        tracing::debug!(listener = %service.name, %peer, backend = %backend.address, "session ended: {end:?}");
        match end {
            End::Idle | End::Responses | End::Closed => Ok(()),
            End::Refused => {
                backend.stats.record_connect_failure();
                routes.pool.report_failure(&backend);
                Err("backend refused".into())
            }
            End::Failed(err) => Err(err.to_string()),
        }
    }

    /// Move datagrams both ways until the session ends.
    async fn relay(
        &mut self,
        upstream: &UdpSocket,
        backend: &Arc<Backend>,
        log: &mut Line,
        stop: &CancellationToken,
    ) -> End {
        let settings = self.routes.settings;
        let stats = &backend.stats;
        let idle = tokio::time::sleep(settings.idle_timeout);
        tokio::pin!(idle);
        let mut taking = true;
        let mut responses = 0u64;
        let mut first_sent: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return End::Closed,
                _ = &mut idle => return End::Idle,
                datagram = self.rx.recv(), if taking => {
                    let Some(datagram) = datagram else {
                        // `max_requests` reached (or the listener stopped):
                        // only replies from now on.
                        taking = false;
                        continue;
                    };
                    match upstream.send(&datagram).await {
                        Ok(n) => {
                            stats.add_tx(n as u64);
                            first_sent.get_or_insert_with(Instant::now);
                        }
                        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return End::Refused,
                        Err(e) => {
                            self.service.stats.drop_datagram();
                            tracing::debug!(listener = %self.service.name, backend = %backend.address, "send failed: {e}");
                        }
                    }
                    idle.as_mut().reset(tokio::time::Instant::now() + settings.idle_timeout);
                }
                // ERROR too: an ICMP "port unreachable" sets the socket's
                // error without making it readable.
                ready = upstream.ready(Interest::READABLE | Interest::ERROR) => {
                    let ready = match ready {
                        Ok(r) => r,
                        Err(e) => return End::Failed(e),
                    };
                    if ready.is_error() {
                        match upstream.take_error() {
                            Ok(Some(e)) if e.kind() == ErrorKind::ConnectionRefused => return End::Refused,
                            Ok(Some(e)) | Err(e) => return End::Failed(e),
                            // Nothing pending: clear the stale readiness.
                            Ok(None) => {
                                let _ = upstream.try_io(Interest::ERROR, || Err::<(), _>(ErrorKind::WouldBlock.into()));
                            }
                        }
                    }
                    if !ready.is_readable() {
                        continue;
                    }
                    let reply = REPLY.with_borrow_mut(|buf| match upstream.try_recv(buf) {
                        Ok(n) => {
                            let n = n.min(MAX_DATAGRAM);
                            // Most replies leave at once; one that finds the
                            // listener's socket busy is copied and awaited.
                            match self.socket.try_send_to(&buf[..n], self.peer) {
                                Err(e) if e.kind() == ErrorKind::WouldBlock => Ok((n, Some(Bytes::copy_from_slice(&buf[..n])))),
                                Err(e) => {
                                    tracing::debug!(listener = %self.service.name, peer = %self.peer, "reply not sent: {e}");
                                    Ok((n, None))
                                }
                                Ok(_) => Ok((n, None)),
                            }
                        }
                        Err(e) => Err(e),
                    });
                    let n = match reply {
                        Ok((n, None)) => n,
                        Ok((n, Some(pending))) => {
                            if let Err(e) = self.socket.send_to(&pending, self.peer).await {
                                tracing::debug!(listener = %self.service.name, peer = %self.peer, "reply not sent: {e}");
                            }
                            n
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return End::Refused,
                        Err(e) => return End::Failed(e),
                    };
                    stats.add_rx(n as u64);
                    log.set(|e| e.bytes_out += n as u64);
                    if responses == 0 {
                        // A session's latency: first datagram out to first reply.
                        if let Some(t) = first_sent {
                            stats.record_latency(t.elapsed());
                        }
                        self.routes.pool.report_success(backend);
                    }
                    responses += 1;
                    if settings.max_responses != 0 && responses >= settings.max_responses {
                        return End::Responses;
                    }
                    idle.as_mut().reset(tokio::time::Instant::now() + settings.idle_timeout);
                }
            }
        }
    }
}

/// A UDP socket connected to `address` (`ip:port`, or `host:port` resolved).
async fn connect_udp(address: &str) -> std::io::Result<UdpSocket> {
    let addr = match address.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => tokio::net::lookup_host(address)
            .await?
            .next()
            .ok_or_else(|| std::io::Error::new(ErrorKind::NotFound, format!("`{address}` has no address")))?,
    };
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(addr).await?;
    Ok(socket)
}

/// Bind a UDP listener socket (no `SO_REUSEADDR`: on Linux it would let two
/// UDP sockets share the address).
pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Receive datagrams until `stop` is cancelled, then end every session;
/// sessions run on `tracker`.
pub async fn serve(socket: UdpSocket, service: Arc<UdpService>, stop: CancellationToken, tracker: TaskTracker) {
    let ctx = Context { socket: Arc::new(socket), table: Arc::default(), tracker, stop };
    // One byte more than the largest datagram, so a longer one (impossible
    // over IP, but not to be trusted) is seen as truncated, not relayed cut.
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut next_id = 0u64;
    loop {
        let received = tokio::select! {
            _ = ctx.stop.cancelled() => break,
            r = ctx.socket.recv_from(&mut buf) => r,
        };
        match received {
            Ok((n, _)) if n > MAX_DATAGRAM => service.stats.drop_datagram(),
            Ok((n, peer)) => service.dispatch(&ctx, peer, Bytes::copy_from_slice(&buf[..n]), &mut next_id),
            // An ICMP error for an earlier reply to some client: not this socket's failure.
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset) => {}
            Err(e) => {
                tracing::warn!(listener = %service.name, "receive failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    // Sessions see the same token and end; the table goes with them.
}
