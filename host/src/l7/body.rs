//! Bodies as the proxy streams them: boxed, counted per backend, and holding
//! the backend's active-request mark until the last byte has passed.

use super::Direction;
use crate::upstream::{ActiveGuard, BackendStats};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The error of a body on either side of the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type on both sides of the proxy.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A body of known bytes.
pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed_unsync()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Counts data bytes into a backend's rx or tx, and drops `active` when the
/// body ends (or is dropped), so "active" means "response still streaming".
pub struct Counted<B> {
    inner: B,
    stats: Arc<BackendStats>,
    direction: Direction,
    active: Option<ActiveGuard>,
    /// The request's access-log entry, written when the body is dropped.
    log: Option<crate::access_log::Entry>,
}

impl<B> Counted<B> {
    /// Wrap a body.
    pub fn new(inner: B, stats: Arc<BackendStats>, direction: Direction, active: Option<ActiveGuard>) -> Self {
        Self { inner, stats, direction, active, log: None }
    }

    /// Count the bytes into `log` too, and write it when the body is done.
    pub fn with_log(mut self, log: Option<crate::access_log::Entry>) -> Self {
        self.log = log;
        self
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    match self.direction {
                        Direction::ToBackend => self.stats.add_tx(n),
                        Direction::FromBackend => self.stats.add_rx(n),
                    }
                    if let Some(log) = self.log.as_mut() {
                        log.bytes_out += n;
                    }
                }
            }
            Poll::Ready(_) => self.active = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
