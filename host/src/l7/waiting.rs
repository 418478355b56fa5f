//! New client connections waiting for their first byte.
//!
//! A new HTTP client connection often says nothing for a while: a browser's
//! preconnect, a client pool's spare connection, a slow or hostile client.
//! Until its first byte it needs no task, no timer of its own and no
//! registration with tokio's reactor, so it gets none: each listener keeps a
//! waiting room on every event loop, and a room holds its guests as bare
//! sockets in a slab, watched by a readiness poll of the room's own (mio,
//! epoll on Linux, with its one descriptor registered with the loop's
//! reactor) and timed by one delay queue. At its first byte a guest leaves
//! the room: its socket is registered with the loop's reactor and its
//! connection task ([`serve_active`]) spawned there. A guest silent for the
//! listener's `header_timeout` is told (`408` on plain HTTP) and closed.
//! Waiting this way, an idle connection costs a slab entry and a timer
//! entry (437–501 bytes measured, with what their growth leaves behind)
//! where a task of its own cost 766; nginx keeps one in about 526
//! (docs/benchmarks.md).

use super::{serve_active, HttpService, OpenConnection, REQUEST_TIMEOUT};
use crate::workers::Place;
use mio::unix::SourceFd;
use mio::{Events, Token};
use slab::Slab;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::time::{delay_queue, DelayQueue};

/// A listener's waiting rooms, one per event loop.
pub(super) struct Rooms {
    doors: Box<[mpsc::UnboundedSender<Arrival>]>,
}

/// A connection on its way into a room.
struct Arrival {
    guest: Guest,
    header_timeout: Duration,
}

/// A connection in a room.
struct Guest {
    socket: std::net::TcpStream,
    peer: SocketAddr,
    open: OpenConnection,
    place: Place,
    /// A plain HTTP listener tells a client it closes for silence why (408).
    plain: bool,
}

impl Rooms {
    /// Open a room on every event loop, each running until `stop` (a plain
    /// one: one that retires keeps its guests to their first byte or their
    /// timeout) or until the listener's accept loop is gone and the room is
    /// empty.
    pub(super) fn open(service: &Arc<HttpService>, stop: &CancellationToken, tracker: &TaskTracker) -> Rooms {
        let (doors, arrivals): (Vec<_>, Vec<_>) =
            (0..crate::workers::count()).map(|_| mpsc::unbounded_channel()).unzip();
        let mut arrivals = arrivals.into_iter();
        crate::workers::spawn_on_each(|_| {
            let arrivals = arrivals.next().expect("one room per loop");
            tracker.track_future(run(service.clone(), arrivals, stop.clone(), tracker.clone()))
        });
        Rooms { doors: doors.into() }
    }

    /// Seat a new connection in the room of the loop it runs on.
    pub(super) fn admit(
        &self,
        service: &HttpService,
        socket: std::net::TcpStream,
        peer: SocketAddr,
        open: OpenConnection,
        place: Place,
    ) {
        let (header_timeout, plain) = {
            let routes = service.routes.load();
            (routes.settings.header_timeout, routes.tls.is_none() && routes.proxy_accept.is_none())
        };
        let door = &self.doors[place.index() % self.doors.len()];
        let guest = Guest { socket, peer, open, place, plain };
        // A room that has closed (its listener stopping) drops the
        // connection, which closes it.
        drop(door.send(Arrival { guest, header_timeout }));
    }
}

/// One room: runs on its loop until stopped, or until no more connections
/// can come and none waits.
async fn run(
    service: Arc<HttpService>,
    mut arrivals: mpsc::UnboundedReceiver<Arrival>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let enter = |guest: Guest| enter(&service, &stop, &tracker, guest);
    // SAFETY: the `AsyncFd` owns the poll, whose descriptor stays open and
    // the same for as long as the `AsyncFd` lives.
    let poll = mio::Poll::new().and_then(|p| {
        unsafe { AsyncFd::register_with_interest(p, tokio::io::Interest::READABLE) }.map_err(std::io::Error::from)
    });
    let broken = match poll {
        Ok(poll) => match seat(&service, &mut arrivals, &stop, poll, &enter).await {
            Ok(()) => return,
            Err(e) => e,
        },
        Err(e) => e,
    };
    // Without its poll a room cannot wait: its guests and every later
    // connection are served at once (hyper's header timeout still holds).
    tracing::error!(listener = %service.name, "waiting room: {broken}; new connections are served at once");
    while let Some(Arrival { guest, .. }) = arrivals.recv().await {
        enter(guest);
    }
}

/// Seat guests until the room closes (`Ok`), or until its poll fails: then
/// its guests are let in and the error returned.
async fn seat(
    service: &HttpService,
    arrivals: &mut mpsc::UnboundedReceiver<Arrival>,
    stop: &CancellationToken,
    mut poll: AsyncFd<mio::Poll>,
    enter: &impl Fn(Guest),
) -> std::io::Result<()> {
    let mut events = Events::with_capacity(256);
    let mut guests: Slab<(Guest, delay_queue::Key)> = Slab::new();
    let mut timers: DelayQueue<usize> = DelayQueue::new();
    let (mut open, mut stopping, mut broken) = (true, false, None);
    while open || !guests.is_empty() {
        tokio::select! {
            _ = stop.cancelled(), if !stopping => {
                // A connection accepted just before a successor took over
                // is still this process's to answer: only a plain stop
                // closes the room (and its guests' connections) at once.
                if !service.retiring.load(Relaxed) {
                    return Ok(());
                }
                stopping = true;
            }
            arrival = arrivals.recv(), if open => {
                let Some(Arrival { guest, header_timeout }) = arrival else {
                    open = false;
                    continue;
                };
                let key = guests.vacant_key();
                let fd = guest.socket.as_raw_fd();
                match poll.get_ref().registry().register(&mut SourceFd(&fd), Token(key), mio::Interest::READABLE) {
                    Ok(()) => {
                        let timer = timers.insert(key, header_timeout);
                        guests.insert((guest, timer));
                    }
                    Err(e) => {
                        tracing::debug!(listener = %service.name, "waiting room: {e}; served at once");
                        enter(guest);
                    }
                }
            }
            ready = poll.readable_mut() => {
                let polled = ready.and_then(|mut ready| {
                    ready.get_inner_mut().poll(&mut events, Some(Duration::ZERO))?;
                    // Fewer events than room for them: none is left, until
                    // the next readiness (which tokio keeps if it came
                    // meanwhile).
                    if events.iter().count() < events.capacity() {
                        ready.clear_ready();
                    }
                    Ok(())
                });
                match polled {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        broken = Some(e);
                        break;
                    }
                }
                for event in &events {
                    let key = event.token().0;
                    let Some((guest, _)) = guests.get(key) else { continue };
                    // Readiness may come with no byte there: keep waiting.
                    let peeked = guest.socket.peek(&mut [0u8; 1]);
                    if matches!(&peeked, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
                        continue;
                    }
                    let (guest, timer) = guests.remove(key);
                    timers.remove(&timer);
                    let fd = guest.socket.as_raw_fd();
                    let _ = poll.get_ref().registry().deregister(&mut SourceFd(&fd));
                    match peeked {
                        Ok(0) => {}
                        Ok(_) => enter(guest),
                        Err(e) => tracing::debug!(listener = %service.name, peer = %guest.peer, "connection: {e}"),
                    }
                }
            }
            Some(expired) = std::future::poll_fn(|cx| timers.poll_expired(cx)), if !timers.is_empty() => {
                // Closing the socket takes it out of the room's poll too.
                let (guest, _) = guests.remove(expired.into_inner());
                if guest.plain {
                    let _ = std::io::Write::write(&mut &guest.socket, REQUEST_TIMEOUT);
                }
                tracing::debug!(listener = %service.name, peer = %guest.peer, "no request within header_timeout");
            }
        }
    }
    let Some(broken) = broken else { return Ok(()) };
    drop(poll);
    for (_, (guest, _)) in guests {
        enter(guest);
    }
    Err(broken)
}

/// A guest's first byte is there: serve its connection on its loop.
fn enter(service: &Arc<HttpService>, stop: &CancellationToken, tracker: &TaskTracker, guest: Guest) {
    let Guest { socket, peer, open, place, .. } = guest;
    match place.register(socket) {
        Ok(stream) => {
            place.spawn(tracker.track_future(serve_active(service.clone(), stream, peer, open, stop.clone())))
        }
        Err(e) => tracing::warn!(listener = %service.name, %peer, "accepted connection dropped: {e}"),
    }
}
