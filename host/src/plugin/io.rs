//! The `io` imports of background phases (health checks, discovery): HTTP,
//! TCP and UDP probes, DNS, file reads and program runs, each checked
//! against the grants of the plugin instance before anything is done.
//!
//! These run on blocking threads (background calls are made from
//! `spawn_blocking`), so plain blocking I/O with timeouts is used. Every
//! timeout is clamped to the time left in the current call.

use super::bindings::health::weir::plugin::io;
use super::bindings::types::Error;
use super::grants::CallScope;
use super::state::PluginState;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Largest HTTP body, file or program output handed to a plugin.
const MAX_READ: u64 = 16 << 20;

fn denied(what: impl std::fmt::Display) -> Error {
    Error::Other(format!("denied: {what} is not granted to this plugin instance"))
}

fn failed(what: impl std::fmt::Display) -> Error {
    Error::Other(what.to_string())
}

/// A URL a plugin asks for, parsed and normalized (`.` and `..` segments,
/// their percent-encoded forms, host case, default ports) as it will be
/// sent: grants are checked against what goes on the wire.
pub fn parse_http_url(url: &str) -> Option<url::Url> {
    let parsed = url::Url::parse(url).ok()?;
    (parsed.scheme() == "http").then_some(parsed)
}

/// Whether `url` lies under the granted `prefix`: same scheme, host and
/// port, and a path under the prefix's path, whole segments only (`/api`
/// grants `/api` and `/api/x`, not `/apix`; a prefix with no path grants
/// the whole authority).
pub fn url_under(url: &url::Url, prefix: &str) -> bool {
    let Some(granted) = parse_http_url(prefix) else { return false };
    if url.scheme() != granted.scheme()
        || url.host_str() != granted.host_str()
        || url.port_or_known_default() != granted.port_or_known_default()
    {
        return false;
    }
    let (path, root) = (url.path(), granted.path());
    (root.ends_with('/') && path.starts_with(root))
        || path == root
        || path.strip_prefix(root).is_some_and(|rest| rest.starts_with('/'))
}

/// `host:port` of a URL, as pool addresses are written.
fn url_authority(url: &url::Url) -> Option<String> {
    Some(format!("{}:{}", url.host_str()?, url.port_or_known_default()?))
}

impl PluginState {
    fn scope(&self) -> Result<&CallScope, Error> {
        self.io.as_ref().ok_or_else(|| failed("I/O is only available to health checks and discovery"))
    }

    /// The timeout for one operation: what the plugin asked (0: no
    /// preference), never past the call's deadline.
    fn io_timeout(&self, asked_ms: u32) -> Result<Duration, Error> {
        let left = self.scope()?.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(failed("timed out: the call's time is up"));
        }
        Ok(match asked_ms {
            0 => left,
            ms => Duration::from_millis(ms as u64).min(left),
        })
    }

    fn is_target(&self, address: &str) -> bool {
        self.io.as_ref().and_then(|s| s.target.as_deref()) == Some(address)
    }

    /// The bytes a connection to `address` starts with: a PROXY `LOCAL`
    /// header when it is the checked backend of a pool that sends PROXY.
    fn prefix(&self, address: &str) -> Vec<u8> {
        match self.io.as_ref().and_then(|s| s.proxy) {
            Some(v) if self.is_target(address) => crate::proxy_protocol::encode_local(v),
            _ => Vec::new(),
        }
    }
}

fn resolve(address: &str) -> Result<SocketAddr, Error> {
    address
        .to_socket_addrs()
        .map_err(|e| failed(format!("cannot resolve {address}: {e}")))?
        .next()
        .ok_or_else(|| failed(format!("{address} resolves to nothing")))
}

impl PluginState {
    /// Run one I/O operation: refused with `denial` when the grants do not
    /// cover it, else run with its timeout clamped to the call's deadline.
    fn guarded<T>(
        &self,
        denial: Option<String>,
        timeout_ms: u32,
        op: impl FnOnce(Duration) -> Result<T, Error>,
    ) -> wasmtime::Result<Result<T, Error>> {
        if let Some(what) = denial {
            return Ok(Err(denied(what)));
        }
        Ok(self.io_timeout(timeout_ms).and_then(op))
    }

    /// `None` when `address` is in `granted` or is the backend being
    /// checked; else what is denied.
    fn reach(&self, granted: &[String], address: &str, what: &str) -> Option<String> {
        (!granted.iter().any(|g| g == address) && !self.is_target(address)).then(|| format!("{what} to {address}"))
    }
}

impl io::Host for PluginState {
    fn http_request(
        &mut self,
        method: String,
        url: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<io::HttpResponse, Error>> {
        let Some(parsed) = parse_http_url(&url) else {
            return Ok(Err(failed(format!("bad URL {url}: an absolute http:// URL is needed"))));
        };
        let authority = url_authority(&parsed);
        let allowed = self.grants.http.iter().any(|p| url_under(&parsed, p))
            || authority.as_deref().is_some_and(|a| self.is_target(a));
        let denial = (!allowed).then(|| format!("URL {parsed}"));
        let prefix = authority.map(|a| self.prefix(&a)).unwrap_or_default();
        self.guarded(denial, timeout_ms, |t| http_request(&method, parsed.as_str(), headers, body, &prefix, t))
    }

    fn tcp_probe(
        &mut self,
        address: String,
        send: Vec<u8>,
        read_max: u32,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, Error>> {
        let denial = self.reach(&self.grants.tcp, &address, "TCP");
        let prefix = self.prefix(&address);
        self.guarded(denial, timeout_ms, |t| tcp_probe(&address, &prefix, &send, read_max, t))
    }

    fn tls_probe(
        &mut self,
        address: String,
        tls: io::TlsOptions,
        send: Vec<u8>,
        read_max: u32,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, Error>> {
        let denial = self.reach(&self.grants.tcp, &address, "TCP");
        let prefix = self.prefix(&address);
        self.guarded(denial, timeout_ms, |t| tls::probe(&address, &tls, &prefix, &send, read_max, t))
    }

    fn udp_probe(
        &mut self,
        address: String,
        send: Vec<u8>,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, Error>> {
        let denial = self.reach(&self.grants.udp, &address, "UDP");
        self.guarded(denial, timeout_ms, |t| udp_probe(&address, &send, t))
    }

    fn dns_lookup_ip(&mut self, name: String, timeout_ms: u32) -> wasmtime::Result<Result<Vec<String>, Error>> {
        let Some(server) = self.grants.dns else {
            return Ok(Err(denied("DNS (no `dns` server)")));
        };
        self.guarded(None, timeout_ms, |t| dns::lookup_ip(server, &name, t))
    }

    fn dns_lookup_srv(&mut self, name: String, timeout_ms: u32) -> wasmtime::Result<Result<Vec<io::SrvRecord>, Error>> {
        let Some(server) = self.grants.dns else {
            return Ok(Err(denied("DNS (no `dns` server)")));
        };
        self.guarded(None, timeout_ms, |t| dns::lookup_srv(server, &name, t))
    }

    fn read_file(&mut self, path: String) -> wasmtime::Result<Result<Vec<u8>, Error>> {
        if let Err(e) = self.scope() {
            return Ok(Err(e));
        }
        Ok(read_granted_file(&self.grants.files, Path::new(&path)))
    }

    fn exec(
        &mut self,
        program: String,
        args: Vec<String>,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<io::ExecOutput, Error>> {
        let allowed = self.grants.exec.iter().any(|p| p == Path::new(&program));
        let denial = (!allowed).then(|| format!("program {program}"));
        self.guarded(denial, timeout_ms, |t| run(&program, &args, t))
    }
}

fn http_request(
    method: &str,
    url: &str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    prefix: &[u8],
    timeout: Duration,
) -> Result<io::HttpResponse, Error> {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .proxy(None)
        .max_redirects(0)
        .build();
    let agent = if prefix.is_empty() {
        ureq::Agent::new_with_config(config)
    } else {
        use ureq::unversioned::{resolver::DefaultResolver, transport::Connector, transport::TcpConnector};
        let connector = ().chain(TcpConnector::default()).chain(Prefix(prefix.to_vec()));
        ureq::Agent::with_parts(config, connector, DefaultResolver::default())
    };
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let request = request.body(body).map_err(|e| failed(format!("bad request: {e}")))?;
    let mut response = agent.run(request).map_err(|e| failed(format!("{method} {url}: {e}")))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_READ)
        .read_to_vec()
        .map_err(|e| failed(format!("{method} {url}: reading the body: {e}")))?;
    Ok(io::HttpResponse { status, headers, body })
}

/// A ureq connector that sends `prefix` on each new connection before the
/// request (a PROXY header).
#[derive(Debug)]
struct Prefix(Vec<u8>);

impl<In: ureq::unversioned::transport::Transport> ureq::unversioned::transport::Connector<In> for Prefix {
    type Out = In;

    fn connect(
        &self,
        details: &ureq::unversioned::transport::ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<In>, ureq::Error> {
        let Some(mut transport) = chained else { return Ok(None) };
        let out = transport.buffers().output();
        if out.len() < self.0.len() {
            return Err(ureq::Error::Io(std::io::Error::other("output buffer smaller than the PROXY header")));
        }
        out[..self.0.len()].copy_from_slice(&self.0);
        let timeout = ureq::unversioned::transport::NextTimeout {
            after: details.config.timeouts().global.unwrap_or(Duration::from_secs(5)).into(),
            reason: ureq::Timeout::Global,
            per_read: None,
            per_write: None,
        };
        transport.transmit_output(self.0.len(), timeout)?;
        Ok(Some(transport))
    }
}

/// Connect, send `prefix` then `send`, and return the first bytes that come
/// back (at most `read_max`; none are waited for when `read_max` is 0).
fn tcp_probe(address: &str, prefix: &[u8], send: &[u8], read_max: u32, timeout: Duration) -> Result<Vec<u8>, Error> {
    let started = Instant::now();
    let addr = resolve(address)?;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| failed(format!("connect to {address}: {e}")))?;
    let left = || timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
    if !prefix.is_empty() || !send.is_empty() {
        stream.set_write_timeout(Some(left())).ok();
        stream.write_all(&[prefix, send].concat()).map_err(|e| failed(format!("send to {address}: {e}")))?;
    }
    if read_max == 0 {
        return Ok(Vec::new());
    }
    stream.set_read_timeout(Some(left())).ok();
    let mut buf = vec![0; read_max.min(MAX_READ as u32) as usize];
    let n = stream.read(&mut buf).map_err(|e| failed(format!("read from {address}: {e}")))?;
    buf.truncate(n);
    Ok(buf)
}

fn udp_probe(address: &str, send: &[u8], timeout: Duration) -> Result<Vec<u8>, Error> {
    let addr = resolve(address)?;
    let local: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal address");
    let socket = UdpSocket::bind(local).map_err(|e| failed(format!("UDP socket: {e}")))?;
    socket.connect(addr).map_err(|e| failed(format!("UDP to {address}: {e}")))?;
    socket.set_read_timeout(Some(timeout.max(Duration::from_millis(1)))).ok();
    socket.send(send).map_err(|e| failed(format!("send to {address}: {e}")))?;
    let mut buf = vec![0; 65_536];
    let n = socket.recv(&mut buf).map_err(|e| failed(format!("no reply from {address}: {e}")))?;
    buf.truncate(n);
    Ok(buf)
}

fn read_granted_file(grants: &[PathBuf], path: &Path) -> Result<Vec<u8>, Error> {
    // Resolve `..` and symlinks before comparing, so a grant of a
    // directory cannot be escaped.
    let real = std::fs::canonicalize(path).map_err(|e| failed(format!("{}: {e}", path.display())))?;
    let allowed = grants
        .iter()
        .any(|g| std::fs::canonicalize(g).is_ok_and(|g| real == g || (g.is_dir() && real.starts_with(&g))));
    if !allowed {
        return Err(denied(format!("file {}", path.display())));
    }
    let mut data = Vec::new();
    std::fs::File::open(&real)
        .and_then(|f| f.take(MAX_READ).read_to_end(&mut data))
        .map_err(|e| failed(format!("{}: {e}", path.display())))?;
    Ok(data)
}

/// Run a program with no stdin, collect its output, kill it at the timeout.
fn run(program: &str, args: &[String], timeout: Duration) -> Result<io::ExecOutput, Error> {
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run {program}: {e}")))?;
    let collect = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(p) = pipe {
                let _ = p.take(MAX_READ).read_to_end(&mut out);
            }
            out
        })
    };
    let stdout = collect(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = collect(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!("{program} timed out after {timeout:?} and was killed")));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(failed(format!("{program}: {e}"))),
        }
    };
    Ok(io::ExecOutput {
        status: status.code().unwrap_or(-1),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

mod tls {
    //! A TLS client for probes (rustls with the ring provider), verifying
    //! against the Mozilla roots, or not at all when asked.

    use super::{failed, io, resolve, Error, MAX_READ};
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, RootCertStore};
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::{Arc, OnceLock};
    use std::time::{Duration, Instant};

    fn config(verify: bool) -> Arc<ClientConfig> {
        static VERIFYING: OnceLock<Arc<ClientConfig>> = OnceLock::new();
        static ANY: OnceLock<Arc<ClientConfig>> = OnceLock::new();
        let provider = || Arc::new(rustls::crypto::ring::default_provider());
        if verify {
            VERIFYING
                .get_or_init(|| {
                    let roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
                    let builder = ClientConfig::builder_with_provider(provider())
                        .with_safe_default_protocol_versions()
                        .expect("ring supports the default protocol versions");
                    Arc::new(builder.with_root_certificates(roots).with_no_client_auth())
                })
                .clone()
        } else {
            ANY.get_or_init(|| {
                let builder = ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default protocol versions");
                Arc::new(
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(crate::tls::AnyCertificate::new()))
                        .with_no_client_auth(),
                )
            })
            .clone()
        }
    }

    /// Connect, handshake, send, read the first reply.
    pub fn probe(
        address: &str,
        options: &io::TlsOptions,
        prefix: &[u8],
        send: &[u8],
        read_max: u32,
        timeout: Duration,
    ) -> Result<Vec<u8>, Error> {
        let started = Instant::now();
        let host = match &options.server_name {
            Some(name) => name.clone(),
            None => {
                let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
                host.trim_start_matches('[').trim_end_matches(']').to_string()
            }
        };
        let name =
            ServerName::try_from(host.clone()).map_err(|e| failed(format!("bad TLS server name {host}: {e}")))?;
        let addr = resolve(address)?;
        let left = || timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
        let mut tcp =
            TcpStream::connect_timeout(&addr, timeout).map_err(|e| failed(format!("connect to {address}: {e}")))?;
        tcp.set_read_timeout(Some(left())).ok();
        tcp.set_write_timeout(Some(left())).ok();
        tcp.write_all(prefix).map_err(|e| failed(format!("send to {address}: {e}")))?;
        let conn = rustls::ClientConnection::new(config(options.verify), name)
            .map_err(|e| failed(format!("TLS to {address}: {e}")))?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| failed(format!("TLS handshake with {address}: {e}")))?;
        }
        if !send.is_empty() {
            stream.write_all(send).map_err(|e| failed(format!("send to {address}: {e}")))?;
            stream.flush().ok();
        }
        if read_max == 0 {
            return Ok(Vec::new());
        }
        stream.sock.set_read_timeout(Some(left())).ok();
        let mut buf = vec![0; read_max.min(MAX_READ as u32) as usize];
        let n = stream.read(&mut buf).map_err(|e| failed(format!("read from {address}: {e}")))?;
        buf.truncate(n);
        Ok(buf)
    }
}

mod dns {
    //! One DNS question over UDP (TCP when the answer is truncated) to the
    //! granted server; no caching, no search domains.

    use super::{failed, io, Error};
    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::{Name, RData, RecordType};
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream, UdpSocket};
    use std::time::{Duration, Instant};

    fn ask(server: SocketAddr, name: &str, kind: RecordType, timeout: Duration) -> Result<Message, Error> {
        let started = Instant::now();
        let fqdn = Name::from_utf8(name).map_err(|e| failed(format!("bad DNS name {name}: {e}")))?;
        let mut query = Message::query();
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(fqdn, kind));
        let wire = query.to_vec().map_err(|e| failed(format!("DNS query: {e}")))?;
        let local: SocketAddr = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
        let socket = UdpSocket::bind(local).map_err(|e| failed(format!("UDP socket: {e}")))?;
        socket.connect(server).map_err(|e| failed(format!("DNS server {server}: {e}")))?;
        socket.send(&wire).map_err(|e| failed(format!("DNS server {server}: {e}")))?;
        let mut buf = vec![0; 4096];
        let reply = loop {
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(failed(format!("DNS server {server}: no answer for {name} in {timeout:?}")));
            }
            socket.set_read_timeout(Some(left)).ok();
            let n = socket.recv(&mut buf).map_err(|e| failed(format!("DNS server {server}: {e}")))?;
            match Message::from_vec(&buf[..n]) {
                Ok(m) if m.metadata.id == query.metadata.id => break m,
                _ => continue,
            }
        };
        let reply = if reply.metadata.truncation { ask_tcp(server, &wire, timeout, started)? } else { reply };
        match reply.metadata.response_code {
            ResponseCode::NoError => Ok(reply),
            ResponseCode::NXDomain => Err(failed(format!("{name}: no such name"))),
            code => Err(failed(format!("{name}: DNS server answered {code}"))),
        }
    }

    fn ask_tcp(server: SocketAddr, wire: &[u8], timeout: Duration, started: Instant) -> Result<Message, Error> {
        let left = || timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
        let mut s = TcpStream::connect_timeout(&server, left()).map_err(|e| failed(format!("DNS over TCP: {e}")))?;
        s.set_read_timeout(Some(left())).ok();
        let mut framed = (wire.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(wire);
        s.write_all(&framed).map_err(|e| failed(format!("DNS over TCP: {e}")))?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).map_err(|e| failed(format!("DNS over TCP: {e}")))?;
        let mut buf = vec![0; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).map_err(|e| failed(format!("DNS over TCP: {e}")))?;
        Message::from_vec(&buf).map_err(|e| failed(format!("bad DNS answer: {e}")))
    }

    /// A and AAAA records of `name`.
    pub fn lookup_ip(server: SocketAddr, name: &str, timeout: Duration) -> Result<Vec<String>, Error> {
        let started = Instant::now();
        let (mut ips, mut failure) = (Vec::new(), None);
        // A server may refuse one family (no AAAA records, no upstream):
        // that is not a failure when the other one answers.
        for kind in [RecordType::A, RecordType::AAAA] {
            let left = timeout.saturating_sub(started.elapsed());
            match ask(server, name, kind, left) {
                Ok(reply) => {
                    for r in reply.answers {
                        match r.data {
                            RData::A(a) => ips.push(a.0.to_string()),
                            RData::AAAA(a) => ips.push(a.0.to_string()),
                            _ => {}
                        }
                    }
                }
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        match failure {
            Some(e) if ips.is_empty() => Err(e),
            _ => Ok(ips),
        }
    }

    /// SRV records of `name`.
    pub fn lookup_srv(server: SocketAddr, name: &str, timeout: Duration) -> Result<Vec<io::SrvRecord>, Error> {
        let reply = ask(server, name, RecordType::SRV, timeout)?;
        Ok(reply
            .answers
            .into_iter()
            .filter_map(|r| match r.data {
                RData::SRV(s) => Some(io::SrvRecord {
                    priority: s.priority,
                    weight: s.weight,
                    port: s.port,
                    target: s.target.to_utf8(),
                }),
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn under(url: &str, prefix: &str) -> bool {
        url_under(&parse_http_url(url).unwrap(), prefix)
    }

    #[test]
    fn url_prefixes_stop_at_the_authority() {
        assert!(under("http://127.0.0.1:2379/v3/kv/range", "http://127.0.0.1:2379"));
        assert!(under("http://127.0.0.1:2379", "http://127.0.0.1:2379"));
        assert!(!under("http://127.0.0.1:23790/", "http://127.0.0.1:2379"));
        assert!(under("http://h:1/api/v1/x", "http://h:1/api/"));
        assert!(!under("http://h:1/admin", "http://h:1/api/"));
        assert!(parse_http_url("https://h:1/api/").is_none(), "plain HTTP only");
    }

    #[test]
    fn url_grants_are_matched_on_the_normalized_url() {
        // Dot segments, plain or percent-encoded, are resolved first.
        assert!(!under("http://h:2379/v3/../anything", "http://h:2379/v3/"));
        assert!(!under("http://h:2379/v3/%2e%2e/anything", "http://h:2379/v3/"));
        assert!(!under("http://h:2379/v3/./../admin", "http://h:2379/v3/"));
        assert!(under("http://h:2379/v3/x/../kv", "http://h:2379/v3/"));
        // Whole segments: `/api` is not a prefix of `/apix`.
        assert!(under("http://h:1/api", "http://h:1/api"));
        assert!(under("http://h:1/api/x", "http://h:1/api"));
        assert!(!under("http://h:1/apix", "http://h:1/api"));
        // Host case and default ports; user info does not change the host.
        assert!(under("http://H:80/x", "http://h/"));
        assert!(!under("http://h:1@evil:2/", "http://h:1"));
        assert!(parse_http_url("file:///etc/passwd").is_none());
        assert_eq!(parse_http_url("http://h:1/v3/../x").unwrap().as_str(), "http://h:1/x", "what is sent");
    }

    #[test]
    fn files_outside_a_granted_directory_are_denied() {
        let dir = std::env::temp_dir().join(format!("weir-io-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("ok")).unwrap();
        std::fs::write(dir.join("ok/list"), "a:1\n").unwrap();
        std::fs::write(dir.join("secret"), "no").unwrap();
        let grants = vec![dir.join("ok")];
        assert_eq!(read_granted_file(&grants, &dir.join("ok/list")).unwrap(), b"a:1\n");
        let e = read_granted_file(&grants, &dir.join("ok/../secret")).unwrap_err();
        assert!(matches!(&e, Error::Other(m) if m.starts_with("denied")), "{e:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_slow_program_is_killed_at_the_timeout() {
        let started = Instant::now();
        let e = run("/bin/sleep", &["5".into()], Duration::from_millis(100)).unwrap_err();
        assert!(matches!(&e, Error::Other(m) if m.contains("timed out")), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        let out = run("/bin/echo", &["1".into()], Duration::from_secs(5)).unwrap();
        assert_eq!((out.status, out.stdout.as_slice()), (0, b"1\n".as_slice()));
    }
}
