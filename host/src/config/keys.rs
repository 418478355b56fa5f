//! Values of config keys that name something rather than count it: where a
//! pool's hash key comes from, and the host's own balancer.

/// Whether `address` is `host:port` with a numeric port (a backend's
/// address, as discovery and the admin API accept it).
pub fn is_host_port(address: &str) -> bool {
    address.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// The name of the host's own round-robin balancer (`balancer = "native:round-robin"`).
pub const NATIVE_ROUND_ROBIN: &str = "native:round-robin";

/// Where a pool's balancer hash key comes from (`hash_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's IP address.
    ClientIp,
    /// The request path.
    Path,
    /// A header's value.
    Header(http::HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// The SNI of the client's TLS ClientHello.
    Sni,
}

impl HashKey {
    /// Parse `client-ip`, `path`, `sni`, `header:NAME` or `cookie:NAME`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.split_once(':') {
            None if s == "client-ip" => Some(Self::ClientIp),
            None if s == "path" => Some(Self::Path),
            None if s == "sni" => Some(Self::Sni),
            Some(("header", name)) => http::HeaderName::from_bytes(name.trim().as_bytes()).ok().map(Self::Header),
            Some(("cookie", name)) if !name.trim().is_empty() => Some(Self::Cookie(name.trim().to_string())),
            _ => None,
        }
    }
}
