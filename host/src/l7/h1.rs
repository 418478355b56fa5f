//! weir's own HTTP/1.1 connection to a backend.
//!
//! The request head is written as the proxy has it, the response head is
//! parsed with `httparse` straight from the read buffer (header values are
//! slices of it, not copies), and bodies are framed both ways (length,
//! chunked, or to the end of the connection) and passed on as they arrive.
//! All of it runs in the task of the request that holds the connection:
//! no dispatcher, no channel between the request and its connection, no
//! channel for the response body. (Why not hyper's client connection:
//! ARCHITECTURE.md, Decisions.)

use super::body::{BoxError, ProxyBody};
use crate::l4::Prefixed;
use crate::tls::BackendStream;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most header fields a response head may have (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// Largest response head, or chunk-size line with trailers, accepted.
const MAX_HEAD: usize = 64 * 1024;
/// What a read makes room for at least...
const READ_SIZE: usize = 8 * 1024;
/// ...and at most: a connection's reads grow while they fill their room
/// (large bodies) and shrink back when they do not, as hyper's do.
const MAX_READ: usize = 256 * 1024;
/// Request body bytes queued for the socket before the body is read further.
const MAX_QUEUED: usize = 64 * 1024;

/// A connection to a backend, idle or carrying one request.
pub struct Conn {
    io: BackendStream,
    /// Bytes read and not yet consumed.
    rbuf: BytesMut,
    /// Bytes to write, in order: the head, then body data and its framing.
    out: VecDeque<Bytes>,
    queued: usize,
    sending: Sending,
    /// A write has put bytes on the connection since the request began.
    wrote: bool,
    /// Written bytes may sit in a TLS session's buffer.
    flush: bool,
    /// Where the last response head's fields were (kept for its capacity).
    spans: Vec<Span>,
    /// How much room the next read makes, between `READ_SIZE` and `MAX_READ`.
    read_size: usize,
}

/// The request body, as far as it has gone out.
enum Sending {
    /// All of it is queued (or there was none).
    Done,
    /// Data as is: the head has a `Content-Length`.
    Length(ProxyBody),
    /// Data in chunks: the head says `Transfer-Encoding: chunked`.
    Chunked(ProxyBody),
    /// Writing failed, or the client's body did: the connection is not kept.
    Failed,
}

/// Why a request got no response head.
pub enum RequestError {
    /// Nothing of it reached the connection: it may go out on another one.
    Unsent(Box<http::Request<ProxyBody>>, String),
    /// It failed after going out (or partly).
    Failed(String),
}

impl Conn {
    /// A new connection over `io`.
    pub fn new(io: BackendStream) -> Conn {
        Conn {
            io,
            rbuf: BytesMut::new(),
            out: VecDeque::new(),
            queued: 0,
            sending: Sending::Done,
            wrote: false,
            flush: false,
            spans: Vec::new(),
            read_size: READ_SIZE,
        }
    }

    /// Whether an idle connection can take a request: the backend has not
    /// closed it nor sent anything unasked.
    pub fn usable(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        Pin::new(&mut self.io).poll_read(cx, &mut buf).is_pending()
    }

    /// Send a request (its `uri` is the path to ask for) and wait for the
    /// response head; the response's body reads the rest from the
    /// connection, which it then holds.
    pub async fn request(mut self, req: http::Request<ProxyBody>) -> Result<Response<Body>, RequestError> {
        let (parts, body) = req.into_parts();
        let head_request = parts.method == Method::HEAD;
        let chunked = self.start(&parts, body.is_end_stream());
        // The body is read only once the head has started to go out, so
        // that a request of which nothing could be written comes back whole.
        let mut unsent = Some((parts, body));
        let mut write_error: Option<io::Error> = None;
        let head = std::future::poll_fn(|cx| {
            if unsent.is_some() {
                match self.poll_write(cx) {
                    Poll::Ready(Err(e)) if !self.wrote => return Poll::Ready(Err(e)),
                    Poll::Ready(Err(e)) => {
                        unsent = None;
                        self.sending = Sending::Failed;
                        write_error = Some(e);
                    }
                    Poll::Pending if !self.wrote => {}
                    _ => {
                        let (_, body) = unsent.take().expect("checked above");
                        self.sending = match (body.is_end_stream(), chunked) {
                            (true, _) => Sending::Done,
                            (false, true) => Sending::Chunked(body),
                            (false, false) => Sending::Length(body),
                        };
                    }
                }
            }
            if unsent.is_none() && write_error.is_none() {
                if let Poll::Ready(Err(e)) = self.poll_send(cx) {
                    self.sending = Sending::Failed;
                    write_error = Some(e);
                }
            }
            match ready!(self.poll_head(cx, head_request)) {
                Ok(head) => Poll::Ready(Ok(head)),
                Err(e) => Poll::Ready(Err(write_error.take().unwrap_or(e))),
            }
        })
        .await;
        match (head, unsent) {
            (Ok((resp, framing)), _) => Ok(resp.map(|()| Body { conn: Some(self), framing })),
            (Err(e), Some((parts, body))) => {
                Err(RequestError::Unsent(Box::new(http::Request::from_parts(parts, body)), e.to_string()))
            }
            (Err(e), None) => Err(RequestError::Failed(e.to_string())),
        }
    }

    /// Queue the head; whether the body goes chunked. A body goes as the
    /// head says (`Content-Length`, kept from the client), else chunked; a
    /// request without one says nothing of it unless its method usually
    /// has one.
    fn start(&mut self, parts: &http::request::Parts, no_body: bool) -> bool {
        let mut head = Vec::with_capacity(256);
        head.extend_from_slice(parts.method.as_str().as_bytes());
        head.push(b' ');
        match parts.uri.path_and_query() {
            Some(p) => head.extend_from_slice(p.as_str().as_bytes()),
            None => head.push(b'/'),
        }
        head.extend_from_slice(b" HTTP/1.1\r\n");
        write_fields(&mut head, &parts.headers);
        let has_length = parts.headers.contains_key(header::CONTENT_LENGTH);
        let chunked = !no_body && !has_length;
        if chunked {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n");
        } else if no_body && !has_length && matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
            head.extend_from_slice(b"content-length: 0\r\n");
        }
        head.extend_from_slice(b"\r\n");
        self.wrote = false;
        self.queue(Bytes::from(head));
        chunked
    }

    fn queue(&mut self, b: Bytes) {
        self.queued += b.len();
        self.out.push_back(b);
    }

    /// Whether the whole request has gone out.
    fn sent(&self) -> bool {
        matches!(self.sending, Sending::Done) && self.out.is_empty() && !self.flush
    }

    /// Read the request body into the queue and write the queue out, until
    /// both are done or must wait.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            while self.queued < MAX_QUEUED {
                let (body, chunked) = match &mut self.sending {
                    Sending::Length(b) => (b, false),
                    Sending::Chunked(b) => (b, true),
                    Sending::Done | Sending::Failed => break,
                };
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) if data.is_empty() => {}
                        Ok(data) if chunked => {
                            self.queue(Bytes::from(format!("{:x}\r\n", data.len())));
                            self.queue(data);
                            self.queue(Bytes::from_static(b"\r\n"));
                        }
                        Ok(data) => self.queue(data),
                        Err(frame) => {
                            if let (true, Ok(trailers)) = (chunked, frame.into_trailers()) {
                                self.sending = Sending::Done;
                                self.queue(Bytes::from(encode_trailers(&trailers)));
                            }
                        }
                    },
                    Poll::Ready(None) => {
                        if chunked {
                            self.queue(Bytes::from_static(b"0\r\n\r\n"));
                        }
                        self.sending = Sending::Done;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        self.sending = Sending::Failed;
                        return Poll::Ready(Err(io::Error::other(format!("client body: {e}"))));
                    }
                    Poll::Pending => break,
                }
            }
            if self.out.is_empty() {
                if self.flush {
                    ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                    self.flush = false;
                }
                return match self.sending {
                    Sending::Done => Poll::Ready(Ok(())),
                    Sending::Failed => Poll::Ready(Err(io::Error::other("request body failed"))),
                    _ => Poll::Pending,
                };
            }
            ready!(self.poll_write(cx))?;
        }
    }

    /// Write what is queued, as far as the socket takes it.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let mut slices = [io::IoSlice::new(&[]); 16];
            let n = self.out.iter().zip(slices.iter_mut()).map(|(b, s)| *s = io::IoSlice::new(b)).count();
            let written = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wrote = true;
            self.flush = true;
            self.queued -= written;
            let mut left = written;
            while left > 0 {
                let first = self.out.front_mut().expect("written bytes were queued");
                if first.len() <= left {
                    left -= first.len();
                    self.out.pop_front();
                } else {
                    let _ = first.split_to(left);
                    left = 0;
                }
            }
        }
        if self.flush {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.flush = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Read more into `rbuf`, with room for about `want` bytes (what the
    /// body still has: a large body is read in large reads); the number of
    /// bytes read (0 at the end).
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: u64) -> Poll<io::Result<usize>> {
        let want = usize::try_from(want).unwrap_or(usize::MAX).clamp(READ_SIZE, self.read_size);
        if self.rbuf.capacity() - self.rbuf.len() < want / 2 {
            self.rbuf.reserve(want);
        }
        let room = self.rbuf.capacity() - self.rbuf.len();
        let n = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf))?;
        if n == room {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        } else if n < self.read_size / 4 {
            self.read_size = (self.read_size / 2).max(READ_SIZE);
        }
        Poll::Ready(Ok(n))
    }

    /// Read until a final response head is whole (skipping `1xx` ones but
    /// `101`), and parse it.
    fn poll_head(&mut self, cx: &mut Context<'_>, head_request: bool) -> Poll<io::Result<(Response<()>, Framing)>> {
        loop {
            if !self.rbuf.is_empty() {
                if let Some(parsed) = parse_head(&mut self.rbuf, &mut self.spans, head_request)? {
                    return Poll::Ready(Ok(parsed));
                }
                if self.rbuf.len() >= MAX_HEAD {
                    return Poll::Ready(Err(invalid("response head too large")));
                }
            }
            let empty = self.rbuf.is_empty();
            if ready!(self.poll_fill(cx, u64::MAX))? == 0 {
                let why = if empty { "closed before a response" } else { "closed within the response head" };
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, why)));
            }
        }
    }
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

/// Header (or trailer) fields as they go on the wire, each `name: value` and CRLF.
fn write_fields(out: &mut Vec<u8>, fields: &HeaderMap) {
    for (name, value) in fields {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// The last chunk of a chunked body with its trailer fields.
fn encode_trailers(trailers: &HeaderMap) -> Vec<u8> {
    let mut out = b"0\r\n".to_vec();
    write_fields(&mut out, trailers);
    out.extend_from_slice(b"\r\n");
    out
}

/// Where a header name or value sits in the head.
#[derive(Clone, Copy)]
struct Span {
    name: (usize, usize),
    value: (usize, usize),
}

/// Parse a response head at the start of `buf`, taking it off `buf` when it
/// is whole; an informational one (not `101`) is dropped and the next
/// looked for.
/// `spans` is scratch space kept by the connection.
fn parse_head(
    buf: &mut BytesMut,
    spans: &mut Vec<Span>,
    head_request: bool,
) -> io::Result<Option<(Response<()>, Framing)>> {
    loop {
        spans.clear();
        let (len, status, version) = {
            // Left uninitialised: zeroing 100 fields would cost more than
            // parsing a usual head.
            let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut []);
            let parsed =
                httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut headers);
            let len = match parsed {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(e) => return Err(invalid(&format!("invalid response head: {e}"))),
            };
            let base = buf.as_ptr() as usize;
            let at = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
            spans.extend(resp.headers.iter().map(|h| Span { name: at(h.name.as_bytes()), value: at(h.value) }));
            let version = if resp.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
            (len, resp.code.unwrap_or(0), version)
        };
        let head = buf.split_to(len).freeze();
        let status = StatusCode::from_u16(status).map_err(|_| invalid("invalid status code"))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            continue;
        }
        let mut headers = HeaderMap::with_capacity(spans.len());
        for span in spans.iter() {
            let name = HeaderName::from_bytes(&head[span.name.0..span.name.0 + span.name.1])
                .map_err(|_| invalid("invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(span.value.0..span.value.0 + span.value.1))
                .map_err(|_| invalid("invalid header value"))?;
            headers.append(name, value);
        }
        let framing = framing(status, version, &mut headers, head_request)?;
        let mut resp = Response::new(());
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = headers;
        return Ok(Some((resp, framing)));
    }
}

/// How a response's body is delimited (RFC 9112, 6.3), and whether the
/// connection may carry another request after it.
fn framing(status: StatusCode, version: Version, headers: &mut HeaderMap, head_request: bool) -> io::Result<Framing> {
    let tokens = |name: header::HeaderName| {
        headers
            .get_all(name)
            .into_iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
    };
    let mut keep = if version == Version::HTTP_10 {
        tokens(header::CONNECTION).any(|t| t.eq_ignore_ascii_case("keep-alive"))
    } else {
        !tokens(header::CONNECTION).any(|t| t.eq_ignore_ascii_case("close"))
    };
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Framing { body: Delimit::Upgrade, keep: false });
    }
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing { body: Delimit::Length(0), keep });
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        let chunked = tokens(header::TRANSFER_ENCODING).next_back().is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        // A length beside a transfer coding is not to be trusted (RFC 9112,
        // 6.3): it is not passed on, and the connection is not kept.
        if headers.remove(header::CONTENT_LENGTH).is_some() {
            keep = false;
        }
        let body = if chunked { Delimit::Chunked(Chunk::Size) } else { Delimit::Eof };
        return Ok(Framing { body, keep: keep && chunked });
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for t in value.to_str().map_err(|_| invalid("invalid content-length"))?.split(',') {
            let n: u64 = t.trim().parse().map_err(|_| invalid("invalid content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid("conflicting content-length"));
            }
            length = Some(n);
        }
    }
    match length {
        Some(n) => Ok(Framing { body: Delimit::Length(n), keep }),
        None => Ok(Framing { body: Delimit::Eof, keep: false }),
    }
}

/// How a response body ends, and whether its connection may be kept.
pub struct Framing {
    body: Delimit,
    keep: bool,
}

enum Delimit {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// To the end of the connection.
    Eof,
    /// `101`: the connection now carries another protocol.
    Upgrade,
    /// Read to its end.
    Done,
}

/// Where a chunked body's reader is.
#[derive(Clone, Copy)]
enum Chunk {
    /// At a chunk-size line.
    Size,
    /// Within a chunk's data: this many bytes are left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
}

/// A response body, read from the connection as it is polled.
pub struct Body {
    conn: Option<Conn>,
    framing: Framing,
}

impl Body {
    /// The connection once the body has been read to its end, if it may
    /// carry another request: the request went out whole, the backend
    /// keeps it open, and nothing more was sent on it.
    pub fn reusable(&mut self) -> Option<Conn> {
        let reusable = matches!(self.framing.body, Delimit::Done | Delimit::Length(0))
            && self.framing.keep
            && self.conn.as_ref().is_some_and(|c| c.sent() && c.rbuf.is_empty());
        if reusable {
            self.conn.take()
        } else {
            None
        }
    }

    /// After a `101`: the connection, with what the backend already sent
    /// in the new protocol.
    pub fn take_upgraded(&mut self) -> Option<Prefixed<BackendStream>> {
        if !matches!(self.framing.body, Delimit::Upgrade) {
            return None;
        }
        let conn = self.conn.take()?;
        Some(Prefixed::new(conn.rbuf.freeze(), conn.io))
    }

    fn end(&mut self) {
        self.framing.body = Delimit::Done;
    }

    /// The next part of a chunked body from what has been read; `None`
    /// when more must be read first.
    fn chunked(&mut self, state: Chunk) -> io::Result<Option<Option<Frame<Bytes>>>> {
        let conn = self.conn.as_mut().expect("a body being read has its connection");
        let buf = &mut conn.rbuf;
        match state {
            Chunk::Size => {
                let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                    return if buf.len() > 4096 { Err(invalid("chunk-size line too long")) } else { Ok(None) };
                };
                let line = &buf[..end];
                let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                if digits == 0 || digits > 16 {
                    return Err(invalid("invalid chunk size"));
                }
                let size = u64::from_str_radix(std::str::from_utf8(&line[..digits]).expect("hex digits"), 16)
                    .map_err(|_| invalid("invalid chunk size"))?;
                let rest = &line[digits..];
                if !matches!(rest.first(), None | Some(b';' | b' ' | b'\t' | b'\r')) {
                    return Err(invalid("invalid chunk size"));
                }
                let _ = buf.split_to(end + 1);
                self.framing.body = Delimit::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
                Ok(Some(None))
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = (buf.len() as u64).min(left) as usize;
                let data = buf.split_to(take).freeze();
                let left = left - take as u64;
                self.framing.body = Delimit::Chunked(if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) });
                Ok(Some(Some(Frame::data(data))))
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(invalid("chunk data not followed by CRLF"));
                }
                let _ = buf.split_to(2);
                self.framing.body = Delimit::Chunked(Chunk::Size);
                Ok(Some(None))
            }
            Chunk::Trailers => {
                if buf.starts_with(b"\r\n") {
                    let _ = buf.split_to(2);
                    self.end();
                    return Ok(Some(None));
                }
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    return if buf.len() > MAX_HEAD { Err(invalid("trailers too large")) } else { Ok(None) };
                };
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut trailers = HeaderMap::new();
                if let Ok(httparse::Status::Complete((_, parsed))) =
                    httparse::parse_headers(&buf[..end + 4], &mut fields)
                {
                    for f in parsed {
                        if let (Ok(n), Ok(v)) =
                            (HeaderName::from_bytes(f.name.as_bytes()), HeaderValue::from_bytes(f.value))
                        {
                            trailers.append(n, v);
                        }
                    }
                } else {
                    return Err(invalid("invalid trailers"));
                }
                let _ = buf.split_to(end + 4);
                self.end();
                Ok(Some(Some(Frame::trailers(trailers))))
            }
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
        // The request body may still be going out (a response may come
        // before the request has ended).
        if !matches!(conn.sending, Sending::Done | Sending::Failed) || !conn.out.is_empty() {
            if let Poll::Ready(Err(_)) = conn.poll_send(cx) {
                conn.sending = Sending::Failed;
                this.framing.keep = false;
            }
        }
        loop {
            let conn = this.conn.as_mut().expect("checked above");
            match this.framing.body {
                Delimit::Done | Delimit::Upgrade | Delimit::Length(0) => {
                    this.end();
                    return Poll::Ready(None);
                }
                Delimit::Length(left) => {
                    if conn.rbuf.is_empty() && ready!(conn.poll_fill(cx, left))? == 0 {
                        return Poll::Ready(Some(Err("backend closed the connection within the body".into())));
                    }
                    let take = (conn.rbuf.len() as u64).min(left) as usize;
                    let data = conn.rbuf.split_to(take).freeze();
                    this.framing.body = Delimit::Length(left - take as u64);
                    if left == take as u64 {
                        this.end();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Delimit::Eof => {
                    if conn.rbuf.is_empty() && ready!(conn.poll_fill(cx, u64::MAX))? == 0 {
                        this.end();
                        return Poll::Ready(None);
                    }
                    let data = conn.rbuf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Delimit::Chunked(state) => match this.chunked(state)? {
                    Some(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                    Some(None) if matches!(this.framing.body, Delimit::Done) => return Poll::Ready(None),
                    Some(None) => {}
                    None => {
                        let want = if let Chunk::Data(left) = state { left } else { READ_SIZE as u64 };
                        let conn = this.conn.as_mut().expect("checked above");
                        if ready!(conn.poll_fill(cx, want))? == 0 {
                            return Poll::Ready(Some(Err("backend closed the connection within the body".into())));
                        }
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing.body, Delimit::Done | Delimit::Upgrade | Delimit::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing.body {
            Delimit::Length(n) => SizeHint::with_exact(n),
            Delimit::Done | Delimit::Upgrade => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

    /// Run a test's steps, failing it if they take longer than `LIMIT`.
    async fn bounded(steps: impl std::future::Future<Output = ()>) {
        tokio::time::timeout(LIMIT * 3, steps).await.expect("the test's steps take too long");
    }

    /// A connection to a backend the test plays by hand.
    async fn pair() -> (Conn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Conn::new(BackendStream::Plain(client)), server)
    }

    fn get(method: Method, body: ProxyBody) -> http::Request<ProxyBody> {
        let mut req = http::Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = "/p?q=1".parse().unwrap();
        req.headers_mut().insert(header::HOST, HeaderValue::from_static("b"));
        req
    }

    /// Read a request head (to its blank line) off the backend's side.
    async fn read_head(server: &mut TcpStream) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            assert_eq!(server.read(&mut b).await.unwrap(), 1, "request head cut short");
            head.push(b[0]);
        }
        String::from_utf8(head).unwrap()
    }

    /// The body's data and trailers, read frame by frame.
    async fn drain(body: &mut Body) -> (Vec<u8>, Option<HeaderMap>) {
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(frame) = tokio::time::timeout(LIMIT, body.frame()).await.unwrap() {
            match frame.unwrap().into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        (data, trailers)
    }

    /// Write `bytes` one at a time, so that every parser state sees a cut.
    async fn dribble(server: &mut TcpStream, bytes: &[u8]) {
        for b in bytes {
            server.write_all(&[*b]).await.unwrap();
            server.flush().await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_chunked_response_cut_anywhere_comes_whole_with_its_trailers_and_the_connection_is_kept() {
        bounded(async {
            let (conn, mut server) = pair().await;
            let backend = tokio::spawn(async move {
                let head = read_head(&mut server).await;
                let response = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n\
                    5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n";
                dribble(&mut server, response).await;
                (head, server)
            });
            let resp = conn.request(get(Method::GET, super::super::body::empty())).await.ok().unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["x-a"], "1");
            let mut body = resp.into_body();
            let (data, trailers) = drain(&mut body).await;
            assert_eq!(data, b"hello world");
            assert_eq!(trailers.unwrap()["x-sum"], "42");
            let (head, mut server) = backend.await.unwrap();
            assert_eq!(head, "GET /p?q=1 HTTP/1.1\r\nhost: b\r\n\r\n");
            // The same connection takes the next request.
            let conn = body.reusable().expect("read to its end: kept");
            let backend = tokio::spawn(async move {
                read_head(&mut server).await;
                server.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc").await.unwrap();
                server
            });
            let mut body = conn.request(get(Method::GET, super::super::body::empty())).await.ok().unwrap().into_body();
            assert_eq!(drain(&mut body).await.0, b"abc");
            assert!(body.reusable().is_some());
            backend.await.unwrap();
        })
        .await;
    }

    #[tokio::test]
    async fn informational_heads_are_skipped_and_bodyless_answers_keep_the_connection() {
        bounded(async {
            let (conn, mut server) = pair().await;
            let backend = tokio::spawn(async move {
                read_head(&mut server).await;
                dribble(&mut server, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nx-b: 2\r\n\r\n").await;
                // A HEAD's answer names a length but has no body.
                read_head(&mut server).await;
                server.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n").await.unwrap();
                read_head(&mut server).await;
                server.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
                server
            });
            let resp = conn.request(get(Method::GET, super::super::body::empty())).await.ok().unwrap();
            assert_eq!(
                (resp.status(), &resp.headers()["x-b"]),
                (StatusCode::NO_CONTENT, &HeaderValue::from_static("2"))
            );
            let mut body = resp.into_body();
            assert!(body.is_end_stream());
            let conn = body.reusable().expect("a 204 keeps its connection");
            let resp = conn.request(get(Method::HEAD, super::super::body::empty())).await.ok().unwrap();
            assert_eq!(resp.headers()["content-length"], "10");
            let mut body = resp.into_body();
            assert!(body.is_end_stream());
            let conn = body.reusable().expect("a HEAD's answer keeps its connection");
            let mut body = conn.request(get(Method::GET, super::super::body::empty())).await.ok().unwrap().into_body();
            assert_eq!(drain(&mut body).await.0, b"ok");
            backend.await.unwrap();
        })
        .await;
    }

    #[tokio::test]
    async fn a_body_without_length_ends_with_the_connection_which_is_not_kept() {
        bounded(async {
            let (conn, mut server) = pair().await;
            tokio::spawn(async move {
                read_head(&mut server).await;
                server.write_all(b"HTTP/1.0 200 OK\r\n\r\nto the ").await.unwrap();
                server.write_all(b"end").await.unwrap();
            });
            let resp = conn.request(get(Method::GET, super::super::body::empty())).await.ok().unwrap();
            assert_eq!(resp.version(), Version::HTTP_10);
            let mut body = resp.into_body();
            assert_eq!(drain(&mut body).await.0, b"to the end");
            assert!(body.reusable().is_none());
        })
        .await;
    }

    #[tokio::test]
    async fn request_bodies_go_chunked_or_as_their_length_says() {
        bounded(async {
            for with_length in [false, true] {
                let (conn, mut server) = pair().await;
                let backend = tokio::spawn(async move {
                    let head = read_head(&mut server).await;
                    let mut body = vec![0u8; if with_length { 8 } else { 23 }];
                    server.read_exact(&mut body).await.unwrap();
                    server.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
                    (head, String::from_utf8(body).unwrap(), server)
                });
                let frames = ["abc", "defgh"].map(|s| Ok::<_, BoxError>(Frame::data(Bytes::from_static(s.as_bytes()))));
                let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
                let mut req = get(Method::POST, BodyExt::boxed_unsync(body));
                if with_length {
                    req.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("8"));
                }
                let mut resp = conn.request(req).await.ok().unwrap().into_body();
                drain(&mut resp).await;
                let (head, body, _server) = backend.await.unwrap();
                if with_length {
                    assert!(head.contains("content-length: 8\r\n") && !head.contains("transfer-encoding"), "{head}");
                    assert_eq!(body, "abcdefgh");
                } else {
                    assert!(head.ends_with("transfer-encoding: chunked\r\n\r\n"), "{head}");
                    assert_eq!(body, "3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n");
                }
                assert!(resp.reusable().is_some(), "request and response whole: kept");
            }
        })
        .await;
    }

    #[tokio::test]
    async fn an_answer_before_the_request_body_ends_comes_back_and_the_connection_is_not_kept() {
        bounded(async {
            let (conn, mut server) = pair().await;
            tokio::spawn(async move {
                read_head(&mut server).await;
                server.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n").await.unwrap();
            });
            // A body that never ends.
            let body = http_body_util::StreamBody::new(futures::stream::pending::<Result<Frame<Bytes>, BoxError>>());
            let req = get(Method::POST, BodyExt::boxed_unsync(body));
            let resp = tokio::time::timeout(LIMIT, conn.request(req)).await.unwrap().ok().unwrap();
            assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
            assert!(resp.into_body().reusable().is_none());
        })
        .await;
    }

    #[tokio::test]
    async fn a_length_beside_chunked_is_dropped_and_the_connection_not_kept() {
        bounded(async {
            let (conn, mut server) = pair().await;
            tokio::spawn(async move {
                read_head(&mut server).await;
                let response = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n\
                    3\r\nabc\r\n0\r\n\r\n";
                server.write_all(response).await.unwrap();
                // Held open: the body ends by its chunks, not by a close.
                tokio::time::sleep(LIMIT).await;
            });
            let resp = conn.request(get(Method::GET, super::super::body::empty())).await.ok().unwrap();
            assert!(!resp.headers().contains_key(header::CONTENT_LENGTH));
            let mut body = resp.into_body();
            assert_eq!(drain(&mut body).await.0, b"abc");
            assert!(body.reusable().is_none());
        })
        .await;
    }

    #[tokio::test]
    async fn broken_heads_are_errors() {
        bounded(async {
            for answer in [
                &b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabc"[..],
                b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
                b"SSH-2.0-OpenSSH\r\n\r\n",
                b"HTTP/1.1 200 OK\r\ncontent-le",
            ] {
                let (conn, mut server) = pair().await;
                tokio::spawn(async move {
                    read_head(&mut server).await;
                    server.write_all(answer).await.unwrap();
                });
                match conn.request(get(Method::GET, super::super::body::empty())).await {
                    Err(RequestError::Failed(_)) => {}
                    Err(RequestError::Unsent(..)) => panic!("{answer:?}: the request was written"),
                    Ok(_) => panic!("{answer:?} was taken for a response"),
                }
            }
        })
        .await;
    }

    #[tokio::test]
    async fn after_101_the_connection_carries_what_the_backend_sent_next() {
        bounded(async {
            let (conn, mut server) = pair().await;
            tokio::spawn(async move {
                read_head(&mut server).await;
                server.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\nfirst").await.unwrap();
                let mut b = [0u8; 4];
                server.read_exact(&mut b).await.unwrap();
                server.write_all(&b).await.unwrap();
            });
            let resp = conn.request(get(Method::GET, super::super::body::empty())).await.ok().unwrap();
            assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
            let mut io = resp.into_body().take_upgraded().expect("101: upgraded");
            let mut first = [0u8; 5];
            io.read_exact(&mut first).await.unwrap();
            assert_eq!(&first, b"first");
            io.write_all(b"ping").await.unwrap();
            let mut echo = [0u8; 4];
            io.read_exact(&mut echo).await.unwrap();
            assert_eq!(&echo, b"ping");
        })
        .await;
    }
}
