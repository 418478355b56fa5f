//! The TOML configuration: parsing with exact error locations, and the checks
//! that need no plugin (references between sections, addresses, durations).

mod units;

pub use units::{ByteSize, Duration};

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use toml::Spanned;

/// A config error: where it is and what is wrong, as one line.
#[derive(Debug, thiserror::Error)]
#[error("{origin}:{line}:{column}: {message}")]
pub struct ConfigError {
    /// The file (or other origin) the config came from.
    pub origin: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong, naming the key.
    pub message: String,
}

/// Config text with its origin, to turn byte offsets into line and column.
#[derive(Debug, Clone)]
pub struct Source {
    /// File name or other origin shown in errors.
    pub origin: String,
    /// The TOML text.
    pub text: String,
}

impl Source {
    /// Read a config file.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: path.display().to_string(),
            line: 1,
            column: 1,
            message: format!("cannot read config: {e}"),
        })?;
        Ok(Self { origin: path.display().to_string(), text })
    }

    /// An error at a byte offset.
    pub fn error_at(&self, offset: usize, message: impl Into<String>) -> ConfigError {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ConfigError { origin: self.origin.clone(), line, column, message: message.into() }
    }

    /// An error at a spanned value.
    pub fn error<T>(&self, at: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        self.error_at(at.span().start, message)
    }
}

/// Whether a phase that fails lets the work through with a native default or refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fallback {
    /// Use the native default (allow; native round-robin).
    FailOpen,
    /// Refuse the connection or request.
    FailClosed,
}

/// `[runtime]`: process-wide settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Worker threads (default: one per core).
    pub workers: Option<usize>,
    /// How long in-flight connections may finish after SIGINT/SIGTERM.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Duration,
    /// Where compiled plugins are cached (default: the user's cache directory).
    pub plugin_cache: Option<String>,
    /// Reload when the config file changes (checked every second).
    #[serde(default)]
    pub watch_config: bool,
}

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}

impl Default for Runtime {
    fn default() -> Self {
        Self { workers: None, shutdown_grace: default_shutdown_grace(), plugin_cache: None, watch_config: false }
    }
}

/// `[plugins.NAME]`: a plugin instance, a component plus its config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginInstance {
    /// `builtin:<name>` or a path to a component file (relative to the config file).
    pub source: Spanned<String>,
    /// The plugin's own config, handed to its `init` as JSON.
    #[serde(default)]
    pub config: Option<Spanned<toml::Table>>,
    /// Time one call may run before it is interrupted (wall-clock, counted in
    /// 10 ms epochs, so time the thread is descheduled counts too).
    #[serde(default = "default_call_timeout")]
    pub timeout: Duration,
    /// Time making an instance (instantiation plus the plugin's `init`) may
    /// run; instances are made at load and after one is dropped.
    #[serde(default = "default_init_timeout")]
    pub init_timeout: Duration,
    /// Linear memory one instance may grow to.
    #[serde(default = "default_memory_limit")]
    pub memory_limit: ByteSize,
    /// What a connection gets when the plugin fails (default depends on the phase).
    pub fallback: Option<Fallback>,
    /// What the plugin's `io` imports may reach (health checks and discovery).
    #[serde(default)]
    pub grants: Grants,
}

/// `[plugins.NAME.grants]`: the I/O a background plugin may do. Nothing is
/// granted by default; a health checker may always reach the backend it checks.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// URL prefixes `http-request` may fetch (`http://host:port/path/`).
    #[serde(default)]
    pub http: Vec<String>,
    /// `host:port` addresses `tcp-probe` may connect to.
    #[serde(default)]
    pub tcp: Vec<String>,
    /// `host:port` addresses `udp-probe` may send to.
    #[serde(default)]
    pub udp: Vec<String>,
    /// The DNS server (`ip:port`) the `dns-lookup-*` imports ask.
    pub dns: Option<Spanned<String>>,
    /// Files, or directories whose files, `read-file` may read (relative to the config file).
    #[serde(default)]
    pub files: Vec<String>,
    /// Programs `exec` may run, as absolute paths.
    #[serde(default)]
    pub exec: Vec<String>,
}

/// `[pools.NAME.health]`: active health checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// The health-check plugin instance (or `builtin:<name>`).
    pub plugin: Spanned<String>,
    /// Time between checks of one backend.
    #[serde(default = "default_check_interval")]
    pub interval: Duration,
    /// Time one check may take (failed after).
    #[serde(default = "default_check_timeout")]
    pub timeout: Duration,
    /// Passing checks in a row that bring a down backend up (gobetween `passes`).
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Failing checks in a row that take an up backend down (gobetween `fails`).
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// Health of a backend before its first checks: `up` or `down`.
    #[serde(default = "default_initial")]
    pub initial: InitialHealth,
}

/// A backend's health before it has been checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialHealth {
    /// Serving until checks say otherwise.
    Up,
    /// Not serving until `rise` checks pass.
    Down,
}

fn default_check_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_rise() -> u32 {
    2
}

fn default_fall() -> u32 {
    3
}

fn default_initial() -> InitialHealth {
    InitialHealth::Up
}

/// `[pools.NAME.discovery]`: where a pool's backends come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    /// The discovery plugin instance (or `builtin:<name>`).
    pub plugin: Spanned<String>,
    /// Time between discoveries.
    #[serde(default = "default_discovery_interval")]
    pub interval: Duration,
    /// Time one discovery may take.
    #[serde(default = "default_check_timeout")]
    pub timeout: Duration,
    /// On failure: keep the last list (`keeplast`) or empty the pool (`setempty`).
    #[serde(default = "default_failpolicy")]
    pub failpolicy: FailPolicy,
}

/// What a failed discovery does to the pool (gobetween's `failpolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailPolicy {
    /// Keep the backends found last time.
    Keeplast,
    /// Remove every backend.
    Setempty,
}

fn default_discovery_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_failpolicy() -> FailPolicy {
    FailPolicy::Keeplast
}

fn default_call_timeout() -> Duration {
    Duration::from_millis(100)
}

fn default_init_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_memory_limit() -> ByteSize {
    ByteSize(32 << 20)
}

/// One backend in a pool: `"host:port"` or a table.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum BackendSpec {
    /// Just an address, weight 1.
    Address(String),
    /// Address with weight, priority and tags.
    Full(BackendTable),
}

/// The table form of a backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTable {
    /// `host:port`.
    pub address: String,
    /// Relative share of traffic.
    #[serde(default = "one")]
    pub weight: u32,
    /// Lower is preferred by priority-aware balancers.
    #[serde(default)]
    pub priority: u32,
    /// Free-form labels a plugin can read.
    #[serde(default)]
    pub tags: Vec<String>,
}

fn one() -> u32 {
    1
}

impl BackendSpec {
    /// The table form.
    pub fn table(&self) -> BackendTable {
        match self {
            BackendSpec::Address(a) => BackendTable { address: a.clone(), weight: 1, priority: 0, tags: vec![] },
            BackendSpec::Full(t) => t.clone(),
        }
    }
}

/// `[pools.NAME]`: backends with one balancer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// A plugin instance name from `[plugins]`, or `builtin:<name>` with no config.
    #[serde(default = "default_balancer")]
    pub balancer: Spanned<String>,
    /// Static backends.
    #[serde(default = "no_backends")]
    pub backends: Spanned<Vec<Spanned<BackendSpec>>>,
    /// How long a backend connect may take.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Backends tried per connection before giving up (each a different one).
    #[serde(default = "default_max_tries")]
    pub max_tries: u32,
    /// Consecutive failed connects that take a backend out of rotation (0: never).
    #[serde(default = "one")]
    pub max_fails: u32,
    /// How long a backend taken out of rotation stays out before it is tried again.
    #[serde(default = "default_fail_timeout")]
    pub fail_timeout: Duration,
    /// When no backend is healthy, use them all rather than none.
    #[serde(default)]
    pub panic: bool,
    /// HTTP: the balancer's hash key when the router gives none:
    /// `client-ip`, `path`, `header:NAME` or `cookie:NAME`.
    pub hash_key: Option<Spanned<String>>,
    /// HTTP: time a backend has to send its response head (504 after).
    #[serde(default = "default_response_timeout")]
    pub response_timeout: Duration,
    /// HTTP: statuses after which an idempotent request without a body is
    /// retried on another backend (within the retry budget).
    #[serde(default)]
    pub retry_on: Vec<u16>,
    /// HTTP: response statuses that count as failed attempts for
    /// `max_fails` (passive health), besides those in `retry_on`.
    #[serde(default)]
    pub fail_on: Vec<u16>,
    /// HTTP: retries allowed as a share of requests (plus 10 a second of slack).
    #[serde(default = "default_retry_budget")]
    pub retry_budget: f64,
    /// HTTP: speak HTTP/2 without TLS (h2c) to the backends.
    #[serde(default)]
    pub http2: bool,
    /// Active health checks.
    pub health: Option<HealthCheck>,
    /// Backends found by a discovery plugin (replacing `backends` once it answers).
    pub discovery: Option<Discovery>,
    /// TCP: send a PROXY protocol header (`v1` or `v2`) on each backend
    /// connection, naming the client. Not on pools of HTTP listeners.
    pub send_proxy: Option<Spanned<crate::proxy_protocol::Version>>,
    /// HTTP: idle keep-alive connections kept per backend.
    #[serde(default = "default_keepalive")]
    pub keepalive: usize,
    /// HTTP: how long an idle keep-alive connection is kept.
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout: Duration,
    /// Connect to the backends over TLS.
    pub tls: Option<Spanned<PoolTls>>,
}

fn default_retry_budget() -> f64 {
    0.2
}

fn default_response_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_keepalive() -> usize {
    256
}

fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_fail_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_balancer() -> Spanned<String> {
    Spanned::new(0..0, "builtin:round-robin".to_string())
}

fn no_backends() -> Spanned<Vec<Spanned<BackendSpec>>> {
    Spanned::new(0..0, Vec::new())
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}

fn default_max_tries() -> u32 {
    3
}

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

/// `[pools.NAME.tls]`: connect to the backends over TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolTls {
    /// Verify the backend's certificate (turn off only for testing).
    #[serde(default = "yes")]
    pub verify: bool,
    /// PEM bundle of CAs to verify against; when set, `roots` is not used.
    pub ca: Option<Spanned<String>>,
    /// Without `ca`: the roots to verify against, `mozilla` (built in, the
    /// default) or `system` (the operating system's store, as OpenSSL
    /// finds it: `SSL_CERT_FILE`, `SSL_CERT_DIR`, else the distribution's bundle).
    #[serde(default)]
    pub roots: Roots,
    /// Server name to send as SNI and verify the certificate against
    /// (default: the host part of each backend's address).
    pub sni: Option<String>,
    /// Client certificate chain to present, PEM.
    pub cert: Option<Spanned<String>>,
    /// Its private key, PEM.
    pub key: Option<Spanned<String>>,
}

/// Trust roots of a pool's backend TLS without a `ca`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Roots {
    /// The Mozilla roots built into weir (webpki-roots).
    #[default]
    Mozilla,
    /// The operating system's trust store (rustls-native-certs).
    System,
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

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_header_size() -> ByteSize {
    ByteSize(64 << 10)
}

fn yes() -> bool {
    true
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
    /// Bearer token every request must carry. Required when `bind` is not
    /// a loopback address.
    pub token: Option<String>,
}

fn default_admin_bind() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:9900".to_string())
}

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-wide settings.
    #[serde(default)]
    pub runtime: Runtime,
    /// The admin API (none: no admin listener).
    pub admin: Option<Admin>,
    /// Automatic certificates from an ACME CA.
    pub acme: Option<Acme>,
    /// Named plugin instances.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginInstance>,
    /// Named pools.
    #[serde(default)]
    pub pools: BTreeMap<String, Pool>,
    /// Named listeners.
    #[serde(default)]
    pub listeners: BTreeMap<String, Listener>,
}

/// A parsed config together with its source, for located errors later.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The config.
    pub config: Config,
    /// Where it came from.
    pub source: Source,
}

impl Loaded {
    /// Parse and check a config text.
    pub fn parse(source: Source) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(&source.text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            source.error_at(offset, e.message().trim().replace('\n', " "))
        })?;
        let loaded = Self { config, source };
        loaded.check()?;
        Ok(loaded)
    }

    /// Read, parse and check a config file.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(Source::read(path)?)
    }

    /// The directory relative plugin paths are resolved against.
    pub fn base_dir(&self) -> &Path {
        Path::new(&self.source.origin).parent().unwrap_or(Path::new("."))
    }

    fn check_listener_tls(&self, name: &str, l: &Listener) -> Result<(), ConfigError> {
        let src = &self.source;
        let key = format!("listeners.{name}.tls");
        let Some(tls) = &l.tls else {
            if matches!(l.protocol, Protocol::Tls | Protocol::Https) {
                return Err(src.error(&l.bind, format!("{key}: required with protocol = \"{}\"", l.protocol.name())));
            }
            return Ok(());
        };
        let t = tls.get_ref();
        let fail = |msg: String| Err(src.error(tls, format!("{key}: {msg}")));
        match l.protocol {
            Protocol::Tcp | Protocol::Http => {
                fail(format!("needs protocol = \"tls\" or \"https\" (the listener says \"{}\")", l.protocol.name()))
            }
            Protocol::Https if t.passthrough => fail("passthrough needs protocol = \"tls\"".into()),
            _ if t.passthrough && !t.certificates.is_empty() => {
                fail("passthrough forwards the client's TLS untouched: remove `certificates`".into())
            }
            _ if t.passthrough && (t.client_ca.is_some() || t.alpn.is_some()) => {
                fail("passthrough does not terminate TLS: `client_ca` and `alpn` do not apply".into())
            }
            _ if t.passthrough && !t.acme.is_empty() => {
                fail("passthrough does not terminate TLS: remove `acme`".into())
            }
            _ if !t.passthrough && t.certificates.is_empty() && t.acme.is_empty() => fail(
                "`certificates` is empty: give at least one { cert, key }, `acme` host names, or passthrough = true"
                    .into(),
            ),
            _ if !t.acme.is_empty() && self.config.acme.is_none() => {
                fail("`acme` needs an [acme] table (directory, contact, storage)".into())
            }
            _ if t.handshake_timeout.0.is_zero() || t.watch_interval.0.is_zero() => {
                fail("`handshake_timeout` and `watch_interval` must be above zero".into())
            }
            _ => Ok(()),
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        let src = &self.source;
        let c = &self.config;
        for (name, l) in &c.listeners {
            l.bind.get_ref().parse::<SocketAddr>().map_err(|_| {
                src.error(&l.bind, format!("listeners.{name}.bind: `{}` is not an ip:port address", l.bind.get_ref()))
            })?;
            if !c.pools.contains_key(l.pool.get_ref()) {
                return Err(src.error(&l.pool, format!("listeners.{name}.pool: no pool named `{}`", l.pool.get_ref())));
            }
            for a in &l.access {
                self.check_plugin_ref(&format!("listeners.{name}.access"), a)?;
            }
            if let Some(r) = &l.router {
                self.check_plugin_ref(&format!("listeners.{name}.router"), r)?;
            }
            self.check_listener_tls(name, l)?;
            self.check_proxy_protocol(name, l)?;
            self.check_udp_keys(name, l)?;
        }
        for (name, p) in &c.pools {
            let key = format!("pools.{name}.balancer");
            match p.balancer.get_ref().as_str() {
                crate::upstream::NATIVE_ROUND_ROBIN => {}
                other if other.starts_with("native:") => {
                    return Err(self.source.error(
                        &p.balancer,
                        format!("{key}: no native balancer `{other}` (the host's own is `native:round-robin`)"),
                    ))
                }
                _ => self.check_plugin_ref(&key, &p.balancer)?,
            }
            if let Some(h) = &p.health {
                self.check_plugin_ref(&format!("pools.{name}.health.plugin"), &h.plugin)?;
                for (value, key) in [(h.interval, "interval"), (h.timeout, "timeout")] {
                    if value.0.is_zero() {
                        return Err(src.error(&h.plugin, format!("pools.{name}.health.{key}: must be above zero")));
                    }
                }
            }
            if let Some(d) = &p.discovery {
                self.check_plugin_ref(&format!("pools.{name}.discovery.plugin"), &d.plugin)?;
                for (value, key) in [(d.interval, "interval"), (d.timeout, "timeout")] {
                    if value.0.is_zero() {
                        return Err(src.error(&d.plugin, format!("pools.{name}.discovery.{key}: must be above zero")));
                    }
                }
            }
            if let Some(t) = &p.tls {
                let tk = t.get_ref();
                if tk.cert.is_some() != tk.key.is_some() {
                    return Err(src.error(t, format!("pools.{name}.tls: `cert` and `key` go together")));
                }
                if let Some(sni) = &tk.sni {
                    if rustls::pki_types::ServerName::try_from(sni.as_str()).is_err() {
                        return Err(
                            src.error(t, format!("pools.{name}.tls.sni: `{sni}` is not a DNS name or IP address"))
                        );
                    }
                }
            }
            if p.max_tries == 0 {
                return Err(src.error(&p.backends, format!("pools.{name}.max_tries: must be at least 1")));
            }
            if let Some(k) = &p.hash_key {
                if crate::upstream::HashKey::parse(k.get_ref()).is_none() {
                    return Err(src.error(
                        k,
                        format!(
                            "pools.{name}.hash_key: `{}` is not one of client-ip, path, sni, header:NAME, cookie:NAME",
                            k.get_ref()
                        ),
                    ));
                }
            }
            for b in p.backends.get_ref() {
                let t = b.get_ref().table();
                if t.address.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).is_none() {
                    return Err(
                        src.error(b, format!("pools.{name}.backends: `{}` is not a host:port address", t.address))
                    );
                }
            }
        }
        if let Some(a) = &c.admin {
            let addr: SocketAddr = a.bind.get_ref().parse().map_err(|_| {
                src.error(&a.bind, format!("admin.bind: `{}` is not an ip:port address", a.bind.get_ref()))
            })?;
            if a.token.as_deref().is_some_and(str::is_empty) {
                return Err(src.error(&a.bind, "admin.token: empty"));
            }
            if !addr.ip().is_loopback() && a.token.is_none() {
                return Err(src.error(
                    &a.bind,
                    format!("admin.token: required when the admin API listens beyond loopback ({addr})"),
                ));
            }
        }
        for (name, p) in &c.plugins {
            let s = p.source.get_ref();
            if s.is_empty() {
                return Err(src.error(&p.source, format!("plugins.{name}.source: empty")));
            }
            if p.timeout.0.is_zero() {
                return Err(src.error(&p.source, format!("plugins.{name}.timeout: must be above zero")));
            }
            if let Some(dns) = &p.grants.dns {
                if dns.get_ref().parse::<SocketAddr>().is_err() {
                    return Err(src.error(
                        dns,
                        format!("plugins.{name}.grants.dns: `{}` is not an ip:port address", dns.get_ref()),
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_proxy_protocol(&self, name: &str, l: &Listener) -> Result<(), ConfigError> {
        let src = &self.source;
        for n in &l.proxy_protocol_from {
            if crate::proxy_protocol::parse_network(n.get_ref()).is_none() {
                return Err(src.error(
                    n,
                    format!("listeners.{name}.proxy_protocol_from: `{}` is not an ip or ip/prefix", n.get_ref()),
                ));
            }
        }
        match (*l.proxy_protocol.get_ref(), l.proxy_protocol_from.first()) {
            (true, None) => {
                return Err(src.error(
                    &l.proxy_protocol,
                    format!(
                        "listeners.{name}.proxy_protocol_from: required with proxy_protocol = true \
                         (the peers trusted to send a PROXY header, e.g. [\"10.0.0.0/8\"])"
                    ),
                ))
            }
            (false, Some(first)) => {
                return Err(src.error(
                    first,
                    format!("listeners.{name}.proxy_protocol_from: has no effect without proxy_protocol = true"),
                ))
            }
            _ => {}
        }
        // An HTTP listener's backend connections are pooled and shared by
        // its clients: there is no one client to name in a header.
        if l.protocol == Protocol::Http {
            if let Some(v) = self.config.pools.get(l.pool.get_ref()).and_then(|p| p.send_proxy.as_ref()) {
                return Err(src.error(
                    v,
                    format!(
                        "pools.{}.send_proxy: the pool of HTTP listener `{name}`; HTTP backend connections \
                         are pooled and shared between clients, so send_proxy works on pools of TCP listeners only",
                        l.pool.get_ref()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The `udp_*` keys belong to UDP listeners only, and a session needs a
    /// non-zero idle timeout and room for at least one session.
    fn check_udp_keys(&self, name: &str, l: &Listener) -> Result<(), ConfigError> {
        let src = &self.source;
        let counts = [
            ("udp_max_requests", &l.udp_max_requests),
            ("udp_max_responses", &l.udp_max_responses),
            ("udp_max_sessions", &l.udp_max_sessions),
        ];
        if l.protocol != Protocol::Udp {
            let set = counts.iter().find_map(|(key, v)| v.as_ref().map(|v| (*key, v.span().start)));
            let set = set.or_else(|| l.udp_idle_timeout.as_ref().map(|v| ("udp_idle_timeout", v.span().start)));
            if let Some((key, at)) = set {
                return Err(src.error_at(at, format!("listeners.{name}.{key}: needs protocol = \"udp\"")));
            }
            return Ok(());
        }
        if let Some(r) = &l.router {
            return Err(src.error(
                r,
                format!("listeners.{name}.router: not on protocol = \"udp\" (sessions go to the listener's pool)"),
            ));
        }
        if let Some(t) = l.udp_idle_timeout.as_ref().filter(|t| t.get_ref().0.is_zero()) {
            return Err(src.error(t, format!("listeners.{name}.udp_idle_timeout: must be above zero")));
        }
        if let Some(m) = l.udp_max_sessions.as_ref().filter(|m| *m.get_ref() == 0) {
            return Err(src.error(m, format!("listeners.{name}.udp_max_sessions: must be at least 1")));
        }
        Ok(())
    }

    fn check_plugin_ref(&self, key: &str, r: &Spanned<String>) -> Result<(), ConfigError> {
        let name = r.get_ref();
        if name.starts_with("builtin:") || self.config.plugins.contains_key(name) {
            Ok(())
        } else {
            Err(self.source.error(
                r,
                format!("{key}: no plugin instance named `{name}` (define [plugins.{name}] or use builtin:<name>)"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Loaded, ConfigError> {
        Loaded::parse(Source { origin: "t.toml".into(), text: text.into() })
    }

    const GOOD: &str = r#"
[pools.web]
backends = ["127.0.0.1:1", { address = "127.0.0.1:2", weight = 3 }]

[listeners.front]
bind = "127.0.0.1:0"
pool = "web"
"#;

    #[test]
    fn good_config_parses_with_defaults() {
        let l = parse(GOOD).unwrap();
        let pool = &l.config.pools["web"];
        assert_eq!(pool.balancer.get_ref(), "builtin:round-robin");
        assert_eq!(pool.backends.get_ref()[1].get_ref().table().weight, 3);
        assert_eq!(l.config.listeners["front"].idle_timeout.0, std::time::Duration::from_secs(300));
    }

    #[test]
    fn typo_names_line_column_and_key() {
        let text = GOOD.replace("pool = \"web\"", "pool = \"web\"\nidle_timeot = \"1s\"");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:8:1: "), "{e}");
        assert!(e.contains("idle_timeot"), "{e}");
    }

    #[test]
    fn unknown_pool_is_located() {
        let e = parse(&GOOD.replace("pool = \"web\"", "pool = \"wbe\"")).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:7:8: listeners.front.pool: no pool named `wbe`"), "{e}");
    }

    #[test]
    fn proxy_protocol_keys_are_checked() {
        let listener = |extra: &str| GOOD.replace("pool = \"web\"", &format!("pool = \"web\"\n{extra}"));
        let l = parse(&listener("proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\", \"::1\"]")).unwrap();
        assert!(*l.config.listeners["front"].proxy_protocol.get_ref());
        let e = parse(&listener("proxy_protocol = true")).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:8:18: listeners.front.proxy_protocol_from: required"), "{e}");
        let e = parse(&listener("proxy_protocol_from = [\"10.0.0.0/8\"]")).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:8:24: listeners.front.proxy_protocol_from: has no effect"), "{e}");
        let e =
            parse(&listener("proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/33\"]")).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:9:24: listeners.front.proxy_protocol_from: `10.0.0.0/33`"), "{e}");
        let pool = |v: &str| GOOD.replace("[listeners.front]", &format!("send_proxy = \"{v}\"\n\n[listeners.front]"));
        assert_eq!(
            *parse(&pool("v2")).unwrap().config.pools["web"].send_proxy.as_ref().unwrap().get_ref(),
            crate::proxy_protocol::Version::V2
        );
        let e = parse(&pool("v3")).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:5:14: ") && e.contains("v3"), "{e}");
        let http = pool("v1").replace("pool = \"web\"", "pool = \"web\"\nprotocol = \"http\"");
        let e = parse(&http).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:5:14: pools.web.send_proxy: the pool of HTTP listener `front`"), "{e}");
    }

    #[test]
    fn udp_keys_belong_to_udp_listeners() {
        let udp = GOOD.replace("pool = \"web\"", "pool = \"web\"\nprotocol = \"udp\"\nudp_max_requests = 1");
        let l = parse(&udp).unwrap();
        let front = &l.config.listeners["front"];
        assert_eq!(front.protocol, Protocol::Udp);
        assert_eq!(front.udp_max_requests.as_ref().map(|v| *v.get_ref()), Some(1));
        let e =
            parse(&GOOD.replace("pool = \"web\"", "pool = \"web\"\nudp_max_responses = 1")).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:8:21: listeners.front.udp_max_responses: needs protocol = \"udp\""), "{e}");
        let e = parse(&format!("{udp}udp_idle_timeout = \"0s\"\n")).unwrap_err().to_string();
        assert!(e.contains("listeners.front.udp_idle_timeout: must be above zero"), "{e}");
        let e = parse(&format!("{udp}udp_max_sessions = 0\n")).unwrap_err().to_string();
        assert!(e.contains("listeners.front.udp_max_sessions: must be at least 1"), "{e}");
        let e = parse(&format!("{udp}router = \"builtin:host-path\"\n")).unwrap_err().to_string();
        assert!(e.contains("listeners.front.router: not on protocol = \"udp\""), "{e}");
    }

    #[test]
    fn bad_durations_and_addresses() {
        let e = parse(&GOOD.replace("bind = \"127.0.0.1:0\"", "bind = \"localhost\"")).unwrap_err().to_string();
        assert!(e.contains("listeners.front.bind"), "{e}");
        let e = parse(&format!("{GOOD}idle_timeout = \"5 parsecs\"\n")).unwrap_err().to_string();
        assert!(e.contains("5 parsecs"), "{e}");
    }
}
