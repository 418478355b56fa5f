//! `[pools.NAME]`: backends, balancer, health checks, discovery, TLS to the
//! backends, retries and passive health.

use super::{yes, Duration};
use serde::Deserialize;
use toml::Spanned;

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

/// One backend in a pool: `"host:port"` or a table.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum BackendEntry {
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

impl BackendEntry {
    /// The table form.
    pub fn table(&self) -> BackendTable {
        match self {
            BackendEntry::Address(a) => BackendTable { address: a.clone(), weight: 1, priority: 0, tags: vec![] },
            BackendEntry::Full(t) => t.clone(),
        }
    }
}

/// `[pools.NAME]`: backends with one balancer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolTable {
    /// A plugin instance name from `[plugins]`, or `builtin:<name>` with no config.
    #[serde(default = "default_balancer")]
    pub balancer: Spanned<String>,
    /// Static backends.
    #[serde(default = "no_backends")]
    pub backends: Spanned<Vec<Spanned<BackendEntry>>>,
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

fn no_backends() -> Spanned<Vec<Spanned<BackendEntry>>> {
    Spanned::new(0..0, Vec::new())
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}

fn default_max_tries() -> u32 {
    3
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
