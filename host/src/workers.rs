//! The data plane's event loops.
//!
//! With one worker, weir is one event loop on one thread: everything runs on
//! the process's current-thread runtime. With N > 1, the process's own
//! runtime on the main thread runs the control plane (accept loops, admin
//! API, health checks, discovery, reloads, UDP) and N worker threads each
//! run a current-thread runtime of their own. An accepted TCP connection is
//! handed to the worker with the fewest connections and lives there to its
//! end: its requests, their backend connections and their plugin calls all
//! run on that thread, with no work stealing and no cross-thread wakeup on
//! the hot path, as nginx's, HAProxy's and Envoy's workers run. State a
//! worker reuses across connections (idle backend connections) is kept per
//! worker, indexed by [`index`]; what must be exact across workers (a
//! pool's pick sequence, active counts) stays in shared atomics.

use crate::listener::{ConnectionCaps, Ticket};
use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

static LOOPS: OnceLock<Loops> = OnceLock::new();

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

struct Loops {
    handles: Box<[Handle]>,
    /// Connections running on each loop.
    connections: Box<[AtomicUsize]>,
}

/// How many loops `workers` asks for: `None` is one per core.
pub fn wanted(workers: Option<usize>) -> usize {
    workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1)
}

/// Start `n` (> 1) worker loops, once per process; they run until it exits.
pub fn start(n: usize) -> std::io::Result<()> {
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        handles.push(runtime.handle().clone());
        std::thread::Builder::new().name(format!("weir-worker-{i}")).spawn(move || {
            INDEX.set(i);
            runtime.block_on(std::future::pending::<()>());
        })?;
    }
    let loops = Loops { handles: handles.into(), connections: (0..n).map(|_| AtomicUsize::new(0)).collect() };
    LOOPS.set(loops).map_err(|_| std::io::Error::other("worker loops started twice"))
}

/// Run `task(i)` on every loop that serves connections, called for loop 0,
/// 1, ... in turn (this runtime's, as loop 0, when there are no worker
/// loops).
pub fn spawn_on_each<F, Fut>(mut task: F)
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    match LOOPS.get() {
        Some(loops) => loops.handles.iter().enumerate().for_each(|(i, h)| drop(h.spawn(task(i)))),
        None => drop(tokio::spawn(task(0))),
    }
}

/// How many loops serve connections: the number of shards of per-worker state.
pub fn count() -> usize {
    LOOPS.get().map_or(1, |l| l.handles.len())
}

/// Client connections running on each worker loop (none with one loop).
pub fn connections() -> Vec<usize> {
    LOOPS.get().map_or_else(Vec::new, |l| l.connections.iter().map(|c| c.load(Relaxed)).collect())
}

/// The loop the calling thread runs (0 outside worker threads).
pub fn index() -> usize {
    INDEX.get()
}

/// Accept connections on `listener` until `stop` is cancelled, as far as
/// `caps` let them in; each runs `serve` on a worker loop (on this
/// runtime when there are none), tracked by `tracker`, and holds its
/// [`Ticket`] for as long as it stays open. `name` is the listener's, for
/// the log.
pub async fn accept<F, Fut>(
    listener: TcpListener,
    name: &str,
    caps: Arc<ConnectionCaps>,
    stop: CancellationToken,
    tracker: TaskTracker,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, Ticket) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    // The connection's future is made here, from the registered socket,
    // and spawned as it is: a future keeps a slot for everything it
    // captures for its whole life, so wrapping the making in an `async`
    // block kept the socket, the peer and the ticket twice, and awaiting
    // the task inside another block kept the whole of it twice (an idle
    // connection cost 1 888 bytes with two workers instead of 840).
    hand_off(listener, name, caps, stop, move |socket, peer, ticket, place| {
        let stream = place.register(socket)?;
        place.spawn(tracker.track_future(serve(stream, peer, ticket)));
        Ok(())
    })
    .await
}

/// Accept as [`accept`] does, and give `take` each admitted connection,
/// not yet registered with any reactor, with the loop it is to run on.
pub async fn hand_off<F>(
    listener: TcpListener,
    name: &str,
    caps: Arc<ConnectionCaps>,
    stop: CancellationToken,
    mut take: F,
) where
    F: FnMut(std::net::TcpStream, SocketAddr, Ticket, Place) -> std::io::Result<()>,
{
    let acceptor = match Acceptor::new(listener) {
        Ok(a) => a,
        Err(e) => return tracing::error!(listener = %name, "cannot accept connections: {e}"),
    };
    loop {
        if !caps.room(&stop).await {
            break;
        }
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = acceptor.accept() => a,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(listener = %name, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if let Some(reason) = caps.overload.refusing_connection() {
            caps.overload.shed(reason);
            refuse(socket, caps.shed_refusal());
            tracing::debug!(listener = %name, %peer, reason = reason.name(), "shed: overloaded");
            continue;
        }
        let Some(ticket) = caps.admit(&stop).await else { break };
        let Some(ticket) = ticket.for_client(peer.ip()) else {
            refuse(socket, caps.refusal());
            tracing::debug!(listener = %name, %peer, "refused: the client is at max_connections_per_client");
            continue;
        };
        if let Err(e) = take(socket, peer, ticket, Place::choose()) {
            tracing::warn!(listener = %name, "accepted connection dropped: {e}");
        }
    }
}

/// A listening socket, registered with the runtime of its accept loop.
/// Accepted sockets are not: each is registered with the reactor of the
/// loop that serves it, when it needs one ([`Place::register`]).
struct Acceptor(tokio::io::unix::AsyncFd<std::net::TcpListener>);

impl Acceptor {
    fn new(listener: TcpListener) -> std::io::Result<Self> {
        let listener = listener.into_std()?;
        // SAFETY: the `AsyncFd` owns the listener, whose descriptor stays
        // open and the same for as long as the `AsyncFd` lives.
        let registered = unsafe { tokio::io::unix::AsyncFd::register(listener) };
        Ok(Acceptor(registered.map_err(std::io::Error::from)?))
    }

    async fn accept(&self) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
        loop {
            let mut ready = self.0.readable().await?;
            match accept_nonblocking(self.0.get_ref()) {
                Ok(accepted) => return Ok(accepted),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => ready.clear_ready(),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Accept a connection as a non-blocking socket: on Linux `accept4` with
/// `SOCK_NONBLOCK`, one syscall per connection where `accept` and
/// `set_nonblocking` take two (tokio's own accept does the same).
fn accept_nonblocking(listener: &std::net::TcpListener) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    #[cfg(target_os = "linux")]
    {
        use rustix::net::SocketFlags;
        let (fd, peer) = rustix::net::acceptfrom_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)?;
        let peer = peer.and_then(|a| SocketAddr::try_from(a).ok());
        let peer = peer.ok_or_else(|| std::io::Error::other("accepted a connection without an IP address"))?;
        Ok((std::net::TcpStream::from(fd), peer))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let (socket, peer) = listener.accept()?;
        socket.set_nonblocking(true)?;
        Ok((socket, peer))
    }
}

/// Tell a refused client why (best effort: never waits), then close.
fn refuse(mut socket: std::net::TcpStream, why: &[u8]) {
    if !why.is_empty() {
        drop(std::io::Write::write(&mut socket, why));
    }
}

/// The loop a connection runs on, counted there until it ends (with one
/// loop, the runtime of the accept loop, and nothing is counted).
pub struct Place {
    running: Running,
}

impl Place {
    /// The loop with the fewest connections.
    fn choose() -> Place {
        let Some(loops) = LOOPS.get() else { return Place { running: Running(None) } };
        let counts = loops.connections.iter().map(|c| c.load(Relaxed));
        let i = counts.enumerate().min_by_key(|&(_, c)| c).map_or(0, |(i, _)| i);
        loops.connections[i].fetch_add(1, Relaxed);
        Place { running: Running(Some(i)) }
    }

    /// The loop's index, as [`index`] tells on it.
    pub fn index(&self) -> usize {
        self.running.0.unwrap_or(0)
    }

    /// The loop's runtime, when it is a worker loop (else the caller's).
    fn handle(&self) -> Option<&'static Handle> {
        Some(&LOOPS.get()?.handles[self.running.0?])
    }

    /// `socket`, registered with the loop's reactor. Registering from
    /// another thread is safe: the reactor's registry is shared, and an
    /// edge-triggered registration of a socket that is readable already
    /// reports it at once.
    pub fn register(&self, socket: std::net::TcpStream) -> std::io::Result<TcpStream> {
        let _entered = self.handle().map(Handle::enter);
        TcpStream::from_std(socket)
    }

    /// Run `task` on the loop; the connection counts there until it ends.
    pub fn spawn<Fut>(self, task: Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        use futures::FutureExt;
        let handle = self.handle();
        let Place { running } = self;
        let task = task.map(move |()| drop(running));
        match handle {
            Some(h) => drop(h.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }
}

/// Counts a connection on its worker loop until it ends.
struct Running(Option<usize>);

impl Drop for Running {
    fn drop(&mut self) {
        if let (Some(loops), Some(i)) = (LOOPS.get(), self.0) {
            loops.connections[i].fetch_sub(1, Relaxed);
        }
    }
}
