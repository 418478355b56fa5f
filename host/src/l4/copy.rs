//! Bidirectional copy between client and backend: small messages through a
//! buffer, bulk streams by `splice(2)` through a pipe on Linux (the bytes
//! never enter user space), a buffered copy elsewhere.
//! Each direction ends on EOF by shutting down the other side's write half,
//! so half-closed connections keep flowing the other way.

use crate::upstream::BackendStats;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

/// Copy both ways until both sides are done, an error occurs, or neither side
/// moves a byte for `idle`. Counts bytes into `stats` (tx: to the backend).
pub async fn proxy(
    mut client: TcpStream,
    mut backend: TcpStream,
    stats: &BackendStats,
    idle: Duration,
) -> io::Result<()> {
    let last = AtomicU64::new(crate::clock::now_nanos());
    let (client_r, client_w) = client.split();
    let (backend_r, backend_w) = backend.split();
    let up = one_way(client_r, backend_w, &last, |n| stats.add_tx(n));
    let down = one_way(backend_r, client_w, &last, |n| stats.add_rx(n));
    tokio::select! {
        r = async { tokio::try_join!(up, down) } => r.map(|_| ()),
        _ = idle_watch(&last, idle) => Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")),
    }
}

async fn idle_watch(last: &AtomicU64, idle: Duration) {
    loop {
        let since = crate::clock::now_nanos().saturating_sub(last.load(Ordering::Relaxed));
        let since = Duration::from_nanos(since);
        if since >= idle {
            return;
        }
        tokio::time::sleep(idle - since).await;
    }
}

fn touch(last: &AtomicU64) {
    last.store(crate::clock::now_nanos(), Ordering::Relaxed);
}

fn shutdown_write(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).shutdown(Shutdown::Write);
}

/// One direction: small messages through a user-space buffer (a read and a
/// write, as nginx stream and HAProxy do them); once a read fills the buffer
/// the stream is bulk, and it moves by `splice(2)` from then on (HAProxy's
/// `splice-auto`): splicing a few bytes costs more than copying them. The
/// buffer is taken at the first byte, so a silent connection holds none.
/// Elsewhere the buffered copy carries everything.
///
/// Reads and writes go through tokio's `AsyncRead`/`AsyncWrite` of the
/// stream's halves, not `readable()` and `try_read`: those take a read that
/// came back short as the sign the socket is drained (true with epoll's
/// edge-triggered events, which report the next byte to arrive), so a
/// message costs one `recvfrom`, not a second one that says `EAGAIN`.
async fn one_way(
    mut src: ReadHalf<'_>,
    mut dst: WriteHalf<'_>,
    last: &AtomicU64,
    count: impl Fn(u64),
) -> io::Result<()> {
    const BUF: usize = 16 << 10;
    let mut buf = Vec::new();
    loop {
        if buf.is_empty() {
            src.as_ref().readable().await?;
            buf = vec![0u8; BUF];
        }
        let n = src.read(&mut buf).await?;
        if n == 0 {
            shutdown_write(dst.as_ref());
            return Ok(());
        }
        touch(last);
        count(n as u64);
        let mut off = 0;
        while off < n {
            match dst.write(&buf[off..n]).await? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                w => off += w,
            }
            touch(last);
        }
        #[cfg(target_os = "linux")]
        if n == BUF {
            drop(buf);
            return splice_rest(src.as_ref(), dst.as_ref(), last, count).await;
        }
    }
}

/// The rest of a bulk direction, through a pipe: the bytes never enter user
/// space.
#[cfg(target_os = "linux")]
async fn splice_rest(src: &TcpStream, dst: &TcpStream, last: &AtomicU64, count: impl Fn(u64)) -> io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use tokio::io::Interest;

    const CHUNK: usize = 1 << 16;

    fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
        // SAFETY: plain syscall on fds owned by the caller; null offsets.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by us alone.
    let (pipe_r, pipe_w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let (src_fd, dst_fd) = (src.as_raw_fd(), dst.as_raw_fd());

    loop {
        let mut in_pipe = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || splice(src_fd, pipe_w.as_raw_fd(), CHUNK)) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if in_pipe == 0 {
            shutdown_write(dst);
            return Ok(());
        }
        touch(last);
        count(in_pipe as u64);
        while in_pipe > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || splice(pipe_r.as_raw_fd(), dst_fd, in_pipe)) {
                Ok(n) => {
                    in_pipe -= n;
                    touch(last);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// A byte stream of any kind: a TLS session or a socket.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A stream that first yields bytes already read from it (a passthrough
/// ClientHello; what a backend sent after its `101` head).
pub struct Prefixed<S> {
    first: bytes::Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, whose reads give `first` first.
    pub fn new(first: bytes::Bytes, inner: S) -> Self {
        Self { first, inner }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.first.is_empty() {
            let n = self.first.len().min(buf.remaining());
            let first = self.first.split_to(n);
            buf.put_slice(&first);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// [`proxy`] for streams that are not both plain sockets (one side speaks
/// TLS): a buffered copy each way, with the same half-close, idle timeout and
/// byte counts.
pub async fn proxy_io(
    client: Box<dyn Io>,
    backend: Box<dyn Io>,
    stats: &BackendStats,
    idle: Duration,
) -> io::Result<()> {
    let last = AtomicU64::new(crate::clock::now_nanos());
    let (client_r, client_w) = tokio::io::split(client);
    let (backend_r, backend_w) = tokio::io::split(backend);
    let up = copy_io(client_r, backend_w, &last, |n| stats.add_tx(n));
    let down = copy_io(backend_r, client_w, &last, |n| stats.add_rx(n));
    tokio::select! {
        r = async { tokio::try_join!(up, down) } => r.map(|_| ()),
        _ = idle_watch(&last, idle) => Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")),
    }
}

async fn copy_io(
    mut src: impl tokio::io::AsyncRead + Unpin,
    mut dst: impl tokio::io::AsyncWrite + Unpin,
    last: &AtomicU64,
    count: impl Fn(u64),
) -> io::Result<()> {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match src.read(&mut buf).await {
            Ok(n) => n,
            // A TLS peer that closes its socket without close_notify.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            let _ = dst.shutdown().await;
            return Ok(());
        }
        touch(last);
        count(n as u64);
        dst.write_all(&buf[..n]).await?;
        dst.flush().await?;
        touch(last);
    }
}
