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

/// Accept connections on `listener` until `stop` is cancelled; each runs
/// `serve` on a worker loop (on this runtime when there are none), tracked
/// by `tracker`. `name` is the listener's, for the log.
pub async fn accept<F, Fut>(listener: TcpListener, name: &str, stop: CancellationToken, tracker: TaskTracker, serve: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(loops) = LOOPS.get() else {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => drop(tracker.spawn(serve(stream, peer))),
                Err(e) => backoff(name, e).await,
            }
        }
        return;
    };
    // The socket is registered with the reactor of the loop that serves it,
    // so accept without registering it here.
    let registered = listener.into_std().and_then(|l| {
        // SAFETY: the `AsyncFd` owns the listener, whose descriptor stays
        // open and the same for as long as the `AsyncFd` lives.
        unsafe { tokio::io::unix::AsyncFd::register(l) }.map_err(std::io::Error::from)
    });
    let listener = match registered {
        Ok(l) => l,
        Err(e) => return tracing::error!(listener = %name, "cannot hand connections to workers: {e}"),
    };
    let serve = Arc::new(serve);
    loop {
        let mut ready = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.readable() => match r {
                Ok(r) => r,
                Err(e) => { backoff(name, e).await; continue; }
            },
        };
        let (socket, peer) = match listener.get_ref().accept() {
            Ok(a) => a,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                ready.clear_ready();
                continue;
            }
            Err(e) => {
                backoff(name, e).await;
                continue;
            }
        };
        if let Err(e) = socket.set_nonblocking(true) {
            tracing::warn!(listener = %name, "accepted connection dropped: {e}");
            continue;
        }
        let i = loops.least_busy();
        loops.connections[i].fetch_add(1, Relaxed);
        let serve = serve.clone();
        let name = name.to_owned();
        loops.handles[i].spawn(tracker.track_future(async move {
            let _running = Running(i);
            match TcpStream::from_std(socket) {
                Ok(stream) => serve(stream, peer).await,
                Err(e) => tracing::warn!(listener = %name, "accepted connection dropped: {e}"),
            }
        }));
    }
}

/// EMFILE and friends: back off instead of spinning.
async fn backoff(name: &str, e: std::io::Error) {
    tracing::warn!(listener = %name, "accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

impl Loops {
    fn least_busy(&self) -> usize {
        let counts = self.connections.iter().map(|c| c.load(Relaxed));
        counts.enumerate().min_by_key(|&(_, c)| c).map_or(0, |(i, _)| i)
    }
}

/// Counts a connection on its loop until it ends.
struct Running(usize);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(loops) = LOOPS.get() {
            loops.connections[self.0].fetch_sub(1, Relaxed);
        }
    }
}
