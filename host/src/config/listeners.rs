//! `[listeners.NAME]`, `[acme]` and `[admin]`: what weir listens on and how.

use super::{yes, ByteSize, Duration};
use serde::Deserialize;
use toml::Spanned;

/// Listener protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Plain TCP, proxied byte for byte.
    Tcp,
    /// HTTP/1.1 and HTTP/2 (h2c prior knowledge), proxied request by request.
    Http,
    /// TLS: terminated with the listener's certificates and proxied as
    /// TCP, or (`tls.passthrough`) routed by its ClientHello and forwarded
    /// untouched.
    Tls,
    /// HTTP over TLS: terminated, then proxied as `http` (ALPN `h2` and
    /// `http/1.1`).
    Https,
    /// UDP datagrams, proxied per client session.
    Udp,
}

impl Protocol {
    /// The name as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Tls => "tls",
            Protocol::Https => "https",
            Protocol::Udp => "udp",
        }
    }

    /// Whether requests are proxied one by one (HTTP), not as a byte stream.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Https)
    }
}

/// `[listeners.NAME.tls]`: certificates and handshake settings of a TLS or
/// HTTPS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificate chains and keys, PEM. The first one is the default; the
    /// others are chosen by the SNI names their certificates carry.
    #[serde(default)]
    pub certificates: Vec<CertificateFiles>,
    /// `protocol = "tls"` only: do not terminate; read the ClientHello,
    /// route by its SNI and ALPN, and forward the bytes untouched.
    #[serde(default)]
    pub passthrough: bool,
    /// Lowest TLS version accepted: `"1.2"` or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// ALPN protocols offered, in preference order (HTTPS default:
    /// `["h2", "http/1.1"]`; TLS default: none).
    pub alpn: Option<Vec<String>>,
    /// PEM bundle of CAs that client certificates must chain to (mTLS).
    pub client_ca: Option<Spanned<String>>,
    /// With `client_ca`: whether a client certificate is required (the
    /// default) or only verified when one is sent.
    #[serde(default = "yes")]
    pub client_cert_required: bool,
    /// How often the certificate files are checked for changes.
    #[serde(default = "default_tls_watch")]
    pub watch_interval: Duration,
    /// Time a client has to finish its handshake (or, on passthrough, to
    /// send its ClientHello).
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Duration,
    /// Host names to get one certificate for from the `[acme]` CA (served
    /// after `certificates`, or as the default when there are none).
    #[serde(default)]
    pub acme: Vec<String>,
}

/// `[acme]`: certificates obtained and renewed automatically (RFC 8555),
/// proven with HTTP-01 challenges that weir's HTTP listeners answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acme {
    /// The CA's directory URL.
    #[serde(default = "default_acme_directory")]
    pub directory: Spanned<String>,
    /// Contact URLs for the account (`mailto:ops@example.com`).
    #[serde(default)]
    pub contact: Vec<String>,
    /// Directory for the account key and the certificates (relative to the
    /// config file).
    #[serde(default = "default_acme_storage")]
    pub storage: String,
    /// PEM root to trust for the directory's own HTTPS (a private CA).
    pub ca: Option<Spanned<String>>,
    /// Renew a certificate this long before it expires.
    #[serde(default = "default_renew_before")]
    pub renew_before: Duration,
    /// How often certificates are checked for renewal (and a failed order
    /// retried).
    #[serde(default = "default_acme_check")]
    pub check_interval: Duration,
}

fn default_acme_directory() -> Spanned<String> {
    Spanned::new(0..0, "https://acme-v02.api.letsencrypt.org/directory".to_string())
}

fn default_acme_storage() -> String {
    "acme".into()
}

fn default_renew_before() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

fn default_acme_check() -> Duration {
    Duration::from_secs(12 * 3600)
}

/// One certificate chain and its private key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// PEM file with the certificate chain, leaf first.
    pub cert: Spanned<String>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Spanned<String>,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 (and 1.3).
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

fn default_tls_watch() -> Duration {
    Duration::from_secs(2)
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `[access_log]`: where access-log lines go and their format.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogTable {
    /// A file to append lines to (relative to the config file), reopened
    /// on SIGUSR1; none: the application log (stderr).
    pub file: Option<Spanned<String>>,
    /// `logfmt`, `json` or `combined` (default: `json` under
    /// `--log-format json`, else `logfmt`).
    pub format: Option<crate::access_log::Format>,
}

/// A listener's access-log setting.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum AccessLog {
    /// On (the default fields) or off.
    Switch(bool),
    /// On, with these fields in this order.
    Fields(Vec<crate::access_log::Field>),
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog::Switch(false)
    }
}

impl AccessLog {
    /// The fields to log, when on.
    pub fn fields(&self) -> Option<std::sync::Arc<[crate::access_log::Field]>> {
        match self {
            AccessLog::Switch(false) => None,
            AccessLog::Switch(true) => Some(crate::access_log::DEFAULT_FIELDS.into()),
            AccessLog::Fields(f) => Some(f.as_slice().into()),
        }
    }
}

/// `[listeners.NAME]`: a bound address and what to do with its traffic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Address to bind, `ip:port` (port 0 picks a free one).
    pub bind: Spanned<String>,
    /// Protocol spoken on the listener.
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    /// The pool the traffic goes to (HTTP: when the router has no match).
    pub pool: Spanned<String>,
    /// Access plugin instances, checked in order; every one must allow.
    #[serde(default)]
    pub access: Vec<Spanned<String>>,
    /// HTTP: the router plugin instance that picks a pool per request.
    pub router: Option<Spanned<String>>,
    /// Time a client has to send a request head (HTTP, 408 after) and a
    /// trusted peer its PROXY header.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Duration,
    /// Accept PROXY protocol headers (v1 or v2): peers in
    /// `proxy_protocol_from` must send one, every other peer is refused.
    #[serde(default = "off")]
    pub proxy_protocol: Spanned<bool>,
    /// Peers trusted to send a PROXY header: `ip` or `ip/prefix`.
    #[serde(default)]
    pub proxy_protocol_from: Vec<Spanned<String>>,
    /// HTTP: largest request head accepted (431 above).
    #[serde(default = "default_max_header_size")]
    pub max_header_size: ByteSize,
    /// HTTP: add `X-Forwarded-For`, `-Proto` and `-Host`.
    #[serde(default = "yes")]
    pub x_forwarded: bool,
    /// HTTP: add an RFC 7239 `Forwarded` field.
    #[serde(default)]
    pub forwarded: bool,
    /// HTTP: add `Via: 1.1 weir`.
    #[serde(default)]
    pub via: bool,
    /// TCP, TLS and HTTP: connections open at once; more wait in the
    /// listen backlog until one closes (none: no cap).
    pub max_connections: Option<Spanned<u64>>,
    /// TCP, TLS and HTTP: connections open at once from one client
    /// address (the socket's peer); more are closed at once, after a 429
    /// on plain HTTP (none: no cap).
    pub max_connections_per_client: Option<Spanned<u64>>,
    /// HTTP/2: streams a client may have open at once on one connection.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: Spanned<u32>,
    /// Close a connection with no traffic either way for this long.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// Access log: `true` for the default fields, or the list of fields.
    #[serde(default)]
    pub access_log: AccessLog,
    /// Listen backlog.
    #[serde(default = "default_backlog")]
    pub backlog: u32,
    /// TLS and HTTPS: certificates and handshake settings.
    pub tls: Option<Spanned<ListenerTls>>,
    /// UDP: end a session with no datagram either way for this long (default 30s).
    pub udp_idle_timeout: Option<Spanned<Duration>>,
    /// UDP: datagrams a session forwards to its backend before the next
    /// datagram from that client makes a new session (0 or none: unlimited).
    pub udp_max_requests: Option<Spanned<u64>>,
    /// UDP: responses after which a session ends (0 or none: unlimited).
    pub udp_max_responses: Option<Spanned<u64>>,
    /// UDP: sessions open at once; datagrams that would open more are dropped (default 65536).
    pub udp_max_sessions: Option<Spanned<u64>>,
}

/// UDP sessions' idle timeout when `udp_idle_timeout` is not set.
pub const DEFAULT_UDP_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Sessions per UDP listener when `udp_max_sessions` is not set.
pub const DEFAULT_UDP_MAX_SESSIONS: u64 = 65_536;

fn default_max_concurrent_streams() -> Spanned<u32> {
    Spanned::new(0..0, 200)
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_header_size() -> ByteSize {
    ByteSize(64 << 10)
}

fn off() -> Spanned<bool> {
    Spanned::new(0..0, false)
}

fn default_protocol() -> Protocol {
    Protocol::Tcp
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}

fn default_backlog() -> u32 {
    4096
}

/// `[admin]`: the admin REST API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address of the admin listener (`ip:port`), loopback by default.
    #[serde(default = "default_admin_bind")]
    pub bind: Spanned<String>,
    /// Bearer token every request must carry, inline or as a secret
    /// reference. Required when `bind` is not a loopback address.
    pub token: Option<Spanned<super::Secret>>,
}

fn default_admin_bind() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:9900".to_string())
}
