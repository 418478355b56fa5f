//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, v1 text and v2
//! binary): reading the header a trusted proxy in front of weir sends before
//! its client's bytes, and writing one to a backend after connecting.
//!
//! A listener with `proxy_protocol = true` trusts the peers in
//! `proxy_protocol_from`: each of them must start its connection with a
//! header (v1 or v2, told apart by their first bytes), and every other peer
//! is refused unread. The header is read without taking a byte beyond it
//! (peeked, then consumed once known to be header), within the listener's
//! `header_timeout`. Everything after that sees the client address the
//! header names: access, route and balance plugins (`connection.client`),
//! `X-Forwarded-For` and `Forwarded`, the access log and client-ip hashing.

use ipnet::IpNet;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes peeked at a time.
const PEEK: usize = 256;

/// The codec itself lives in `weir-wire`, beside the other parsers of
/// untrusted bytes, where it is fuzzed alone.
pub use weir_wire::proxy_protocol::{parse, Header, Parsed, V1_MAX};

/// A header version a pool sends (`send_proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    /// The text header: `PROXY TCP4 src dst sport dport\r\n`.
    V1,
    /// The binary header.
    V2,
}

/// A listener's PROXY protocol policy.
#[derive(Debug, Clone)]
pub struct ProxyAccept {
    /// Peers that may, and must, send a header; every other peer is refused.
    pub trusted: Vec<IpNet>,
    /// Time a trusted peer has to send its whole header.
    pub timeout: Duration,
}

impl ProxyAccept {
    /// The policy of a listener that trusts the peers in `networks` (each
    /// as [`parse_network`] reads it; checked config, so others are skipped).
    pub fn new<'a>(networks: impl IntoIterator<Item = &'a str>, timeout: Duration) -> Arc<Self> {
        Arc::new(Self { trusted: networks.into_iter().filter_map(parse_network).collect(), timeout })
    }

    /// Whether `ip` may send a header.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|n| n.contains(&ip))
    }
}

/// `10.0.0.0/8`, `::1/128`, or a bare address (one host).
pub fn parse_network(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>().ok().or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Why a connection was refused before any plugin saw it.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The peer is not in `proxy_protocol_from`.
    #[error("peer is not trusted to send a PROXY header (proxy_protocol_from)")]
    Untrusted,
    /// No complete header in time.
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    /// The peer closed before the end of the header.
    #[error("connection closed before the end of the PROXY header")]
    Closed,
    /// Not a PROXY header, or a malformed one.
    #[error("invalid PROXY header: {0}")]
    Invalid(&'static str),
    /// A socket error.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Read the PROXY header at the start of `stream` from `peer` and return the
/// client address it names (`peer` itself for `LOCAL`/`UNKNOWN`). Nothing
/// past the header is read. Refuses a peer outside `policy.trusted`
/// without reading, and a header that is invalid, cut short or late.
///
/// Call it first on an accepted connection, before any TLS handshake or
/// HTTP parsing.
pub async fn accept_proxy_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
    policy: &ProxyAccept,
) -> Result<SocketAddr, ProxyError> {
    if !policy.trusts(peer.ip()) {
        return Err(ProxyError::Untrusted);
    }
    match tokio::time::timeout(policy.timeout, read_header(stream)).await {
        Err(_) => Err(ProxyError::Timeout(policy.timeout)),
        Ok(Err(e)) => Err(e),
        Ok(Ok(Header::Proxy { source, .. })) => Ok(source),
        Ok(Ok(Header::Local)) => Ok(peer),
    }
}

/// [`accept_proxy_header`] when `policy` is set (else `peer`), with a
/// refusal logged: the client address, or why the connection is to be closed.
pub async fn client_address(
    stream: &mut TcpStream,
    peer: SocketAddr,
    policy: Option<&ProxyAccept>,
    listener: &str,
) -> Result<SocketAddr, ProxyError> {
    let Some(policy) = policy else { return Ok(peer) };
    accept_proxy_header(stream, peer, policy).await.inspect_err(|e| {
        tracing::debug!(listener, %peer, "connection refused: {e}");
    })
}

/// Peek at what has arrived, and take the bytes known to be header bytes.
async fn read_header(stream: &mut TcpStream) -> Result<Header, ProxyError> {
    let mut buf = Vec::new();
    let mut taken = 0;
    loop {
        buf.resize(taken + PEEK, 0);
        let n = stream.peek(&mut buf[taken..]).await?;
        if n == 0 {
            return Err(ProxyError::Closed);
        }
        match parse(&buf[..taken + n]) {
            Parsed::Complete(header, len) => {
                stream.read_exact(&mut buf[taken..len]).await?;
                return Ok(header);
            }
            Parsed::Incomplete => {
                stream.read_exact(&mut buf[taken..taken + n]).await?;
                taken += n;
            }
            Parsed::Invalid(why) => return Err(ProxyError::Invalid(why)),
        }
    }
}

impl From<Version> for weir_wire::proxy_protocol::Version {
    fn from(v: Version) -> Self {
        match v {
            Version::V1 => Self::V1,
            Version::V2 => Self::V2,
        }
    }
}

/// The header saying `source` connected to `destination`. Addresses of
/// different families are both written as IPv6 (IPv4-mapped).
pub fn encode(version: Version, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    weir_wire::proxy_protocol::encode(version.into(), source, destination)
}

/// The header of a connection weir opens on its own behalf (a health
/// check): v1 `UNKNOWN`, v2 `LOCAL`.
pub fn encode_local(version: Version) -> Vec<u8> {
    weir_wire::proxy_protocol::encode_local(version.into())
}

/// Write the header for `source` → `destination` on a fresh backend connection.
pub async fn send_header(
    stream: &mut TcpStream,
    version: Version,
    source: SocketAddr,
    destination: SocketAddr,
) -> std::io::Result<()> {
    stream.write_all(&encode(version, source, destination)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
    #[test]
    fn networks_and_trust() {
        let policy = ProxyAccept {
            trusted: ["10.0.0.0/8", "192.0.2.7", "::1"].iter().filter_map(|s| parse_network(s)).collect(),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(policy.trusted.len(), 3);
        for (ip, trusted) in [
            ("10.200.0.1", true),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
            ("::1", true),
            ("::ffff:10.1.1.1", true),
            ("11.0.0.1", false),
        ] {
            assert_eq!(policy.trusts(ip.parse().unwrap()), trusted, "{ip}");
        }
        assert!(parse_network("10.0.0.0/33").is_none());
        assert!(parse_network("localhost").is_none());
    }

    async fn pair() -> (TcpStream, TcpStream, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        (client, server, peer)
    }

    fn loopback(timeout_ms: u64) -> ProxyAccept {
        ProxyAccept { trusted: vec![parse_network("127.0.0.0/8").unwrap()], timeout: Duration::from_millis(timeout_ms) }
    }

    #[tokio::test]
    async fn a_header_in_pieces_is_read_up_to_its_end_only() {
        for version in [Version::V1, Version::V2] {
            let (mut client, mut server, peer) = pair().await;
            let header = encode(version, addr("203.0.113.9:4242"), addr("127.0.0.1:80"));
            let writer = tokio::spawn(async move {
                for chunk in header.chunks(5) {
                    client.write_all(chunk).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                client.write_all(b"hello").await.unwrap();
                client
            });
            let got = accept_proxy_header(&mut server, peer, &loopback(5000)).await.unwrap();
            assert_eq!(got, addr("203.0.113.9:4242"));
            let mut rest = [0u8; 5];
            server.read_exact(&mut rest).await.unwrap();
            assert_eq!(&rest, b"hello");
            drop(writer.await.unwrap());
        }
    }

    #[tokio::test]
    async fn refusals() {
        // Untrusted: refused without reading.
        let (mut client, mut server, peer) = pair().await;
        client.write_all(&encode(Version::V1, addr("1.2.3.4:5"), addr("127.0.0.1:80"))).await.unwrap();
        let policy =
            ProxyAccept { trusted: vec![parse_network("10.0.0.0/8").unwrap()], timeout: Duration::from_secs(1) };
        assert!(matches!(accept_proxy_header(&mut server, peer, &policy).await, Err(ProxyError::Untrusted)));
        // Late, cut short, garbage.
        let (mut client, mut server, peer) = pair().await;
        client.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
        assert!(matches!(accept_proxy_header(&mut server, peer, &loopback(100)).await, Err(ProxyError::Timeout(_))));
        drop(client);
        let (mut client, mut server, peer) = pair().await;
        client.write_all(b"\r\n\r\n\0\r\nQUIT\n\x21").await.unwrap();
        drop(client);
        assert!(matches!(accept_proxy_header(&mut server, peer, &loopback(1000)).await, Err(ProxyError::Closed)));
        let (mut client, mut server, peer) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        assert!(matches!(accept_proxy_header(&mut server, peer, &loopback(1000)).await, Err(ProxyError::Invalid(_))));
        // LOCAL keeps the real peer.
        let (mut client, mut server, peer) = pair().await;
        client.write_all(&encode_local(Version::V2)).await.unwrap();
        assert_eq!(accept_proxy_header(&mut server, peer, &loopback(1000)).await.unwrap(), peer);
    }
}
