//! A plugin's WASI stdout and stderr. What a Python or JavaScript runtime
//! prints there (an uncaught exception's traceback, a `print` while
//! debugging) is kept, its last 4 KiB, and goes to weir's log: after each
//! call at `info`, and with the error of a call that traps. (Rust plugins
//! built for `wasm32-unknown-unknown` have no stdio; the SDK sends their
//! panic messages through the `log` import instead.)

use bytes::Bytes;
use parking_lot::Mutex;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes kept of what a plugin printed since it was last read.
const KEEP: usize = 4096;

/// What an instance printed, shared by its stdout and stderr.
#[derive(Clone, Default)]
pub(crate) struct Output {
    text: Arc<Mutex<Vec<u8>>>,
    /// Something was written since the last [`Output::take`]: read without
    /// the lock on every call.
    written: Arc<AtomicBool>,
}

impl Output {
    fn push(&self, bytes: &[u8]) {
        let mut text = self.text.lock();
        text.extend_from_slice(bytes);
        if text.len() > KEEP {
            let cut = text.len() - KEEP;
            text.drain(..cut);
        }
        self.written.store(true, Ordering::Release);
    }

    /// What was printed since the last call, if anything (lossy UTF-8,
    /// trailing whitespace trimmed).
    pub(crate) fn take(&self) -> Option<String> {
        // A load first: the common case (nothing printed) writes nothing.
        if !self.written.load(Ordering::Relaxed) || !self.written.swap(false, Ordering::Acquire) {
            return None;
        }
        let text = std::mem::take(&mut *self.text.lock());
        let text = String::from_utf8_lossy(&text).trim_end().to_string();
        (!text.is_empty()).then_some(text)
    }
}

impl OutputStream for Output {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(KEEP)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Output {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Output {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for Output {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Output {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
    // Written in the call's own thread: no task, no runtime needed.
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_bytes_are_kept_and_taken_once() {
        let out = Output::default();
        assert_eq!(out.take(), None);
        out.push(b"Traceback (most recent call last):\n  boom\n");
        assert_eq!(out.take().as_deref(), Some("Traceback (most recent call last):\n  boom"));
        assert_eq!(out.take(), None);
        out.push(&vec![b'x'; KEEP + 10]);
        out.push(b"end");
        let kept = out.take().unwrap();
        assert_eq!((kept.len(), kept.ends_with("xend")), (KEEP, true));
    }
}
