//! Host imports every plugin may use, wrapped for Rust: logging, clock,
//! randomness, shared counters, metrics and the shared key-value store.

use crate::imports::weir::plugin::host;
pub use crate::imports::weir::plugin::types::{Backend, Connection, Error, IpAddress, Protocol, SocketAddress};
use std::collections::HashMap;

pub use host::SharedCounter;

/// Log levels accepted by [`log`].
pub use host::LogLevel;

/// Write a line to weir's log, tagged with this plugin instance's name.
pub fn log(level: LogLevel, message: &str) {
    host::log(level, message);
}

/// A stable, well-spread 64-bit hash (FNV-1a, then a 64-bit finaliser): the
/// same key hashes the same in every instance, build and host.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Among `len` entries, the index of the `turn`-th (cyclically) of those
/// with the smallest `key`: "the least loaded, ties taken in turn", in two
/// passes and no allocation. For keys already in a slice,
/// [`nth_min_u32`](crate::nth_min_u32), [`nth_min_u64`](crate::nth_min_u64)
/// and [`nth_min_product`](crate::nth_min_product) give the same answer
/// several times faster.
pub fn nth_min(len: usize, key: impl Fn(usize) -> u64, turn: u64) -> usize {
    let (mut min, mut ties) = (u64::MAX, 0u64);
    for i in 0..len {
        let k = key(i);
        if k < min {
            (min, ties) = (k, 1);
        } else if k == min {
            ties += 1;
        }
    }
    let mut want = turn % ties.max(1);
    for i in 0..len {
        if key(i) == min {
            if want == 0 {
                return i;
            }
            want -= 1;
        }
    }
    0
}

/// A WIT address as a standard one.
pub fn ip_addr(ip: &IpAddress) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match *ip {
        IpAddress::Ipv4((a, b, c, d)) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
    }
}

/// The client's IP address of a connection.
pub fn client_ip(conn: &Connection) -> std::net::IpAddr {
    ip_addr(&conn.client.ip)
}

/// The config name of a listener, from `Connection::listener`.
pub fn listener_name(id: u32) -> String {
    host::listener_name(id)
}

/// Monotonic clock, nanoseconds.
pub fn now_nanos() -> u64 {
    host::now_nanos()
}

/// 64 random bits from the host (not for cryptography).
pub fn random_u64() -> u64 {
    host::random_u64()
}

/// A uniformly distributed number in `0..n` (`n` > 0).
pub fn random_below(n: u32) -> u32 {
    (((random_u64() >> 32) * n as u64) >> 32) as u32
}

/// A fast pseudo-random generator (wyrand) inside the plugin, seeded once
/// from the host: for balancers that draw on every pick, with no host call
/// per draw. Each plugin instance has its own sequence. Not for cryptography.
#[derive(Debug, Clone)]
pub struct FastRng(u64);

impl FastRng {
    /// A generator seeded from the host's [`random_u64`].
    pub fn from_host() -> Self {
        Self(random_u64())
    }

    /// A generator with a given seed (the same seed, the same sequence).
    pub fn from_seed(seed: u64) -> Self {
        Self(seed)
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = self.0 as u128 * (self.0 ^ 0xe703_7ed1_a0b4_28db) as u128;
        (t >> 64) as u64 ^ t as u64
    }

    /// A uniformly distributed number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * n as u64) >> 32) as u32
    }
}

/// Take a token from the host-owned bucket `key` (`rate` a second, at most
/// `burst` saved up). `Ok(())` when one was taken, else the wait until the
/// next one is due. Buckets are shared by every instance and worker thread.
pub fn take_token(key: &str, rate: u32, burst: u32) -> Result<(), std::time::Duration> {
    match host::take_token(key, rate, burst) {
        0 => Ok(()),
        ms => Err(std::time::Duration::from_millis(ms as u64)),
    }
}

/// A metric of this plugin instance that weir exports on its `/metrics`:
/// a counter as `weir_plugin_custom_total{plugin="NAME",name="..."}`, a
/// gauge as `weir_plugin_custom_gauge{...}`. Like [`SharedCounter`], it is
/// shared by every instance and worker thread and survives hot swaps.
///
/// Open it once, in `init`, and keep it: `inc`, `add` and `set` are one
/// host call each, with no lookup.
///
/// ```no_run
/// use weir_sdk::Metric;
///
/// let refused = Metric::counter("refused").expect("a valid metric name");
/// refused.inc();
/// let queue = Metric::gauge("queue_depth").expect("a valid metric name");
/// queue.set(3);
/// ```
pub struct Metric(host::Metric);

impl Metric {
    /// The counter `name` (1 to 64 of `a-z`, `A-Z`, `0-9`, `_`). Refused when
    /// the name is invalid, is a gauge already, or the plugin instance has
    /// 64 metrics.
    pub fn counter(name: &str) -> Result<Self, Error> {
        Self::open(name, host::MetricKind::Counter)
    }

    /// The gauge `name`; refused as for [`Metric::counter`].
    pub fn gauge(name: &str) -> Result<Self, Error> {
        Self::open(name, host::MetricKind::Gauge)
    }

    fn open(name: &str, kind: host::MetricKind) -> Result<Self, Error> {
        host::open_metric(name, kind).map(Self).map_err(Error::Other)
    }

    /// Add one.
    pub fn inc(&self) {
        self.0.add(1);
    }

    /// Add `delta` (a counter ignores a negative one).
    pub fn add(&self, delta: i64) {
        self.0.add(delta);
    }

    /// Set the value (a gauge; a counter ignores it).
    pub fn set(&self, value: i64) {
        self.0.set(value);
    }
}

/// Read a value from the host's shared key-value store.
pub fn kv_get(key: &str) -> Option<Vec<u8>> {
    host::kv_get(key)
}

/// Write a value to the host's shared key-value store.
pub fn kv_set(key: &str, value: &[u8]) {
    host::kv_set(key, value)
}

/// Delete a value from the host's shared key-value store.
pub fn kv_delete(key: &str) {
    host::kv_delete(key)
}

/// A map keyed by pool id (`PickContext::pool`, and the `pool` that
/// `set-backends` names), hashed with one multiplication instead of
/// SipHash: a balancer looks its pool up on every pick.
///
/// ```
/// let mut rings: weir_sdk::PoolMap<Vec<u32>> = Default::default();
/// rings.insert(7, vec![1, 2, 3]);
/// assert_eq!(rings.get(&7).map(Vec::len), Some(3));
/// ```
pub type PoolMap<T> = HashMap<u32, T, std::hash::BuildHasherDefault<PoolIdHasher>>;

/// The hasher of [`PoolMap`]: pool ids are small integers the host hands
/// out, so a multiplication spreads them well enough (Fibonacci hashing).
#[derive(Debug, Default, Clone, Copy)]
pub struct PoolIdHasher(u64);

impl std::hash::Hasher for PoolIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One host-owned [`SharedCounter`] per pool, opened on first use.
///
/// Counters are shared by every instance of the plugin instance (one per
/// worker thread) and survive hot swaps, so a round-robin sequence stays exact
/// whichever thread serves a connection.
pub struct PerPoolCounter {
    prefix: &'static str,
    counters: PoolMap<SharedCounter>,
}

impl PerPoolCounter {
    /// Counters named `<prefix>/<pool id>`.
    pub fn new(prefix: &'static str) -> Self {
        Self { prefix, counters: PoolMap::default() }
    }

    /// Add one to the pool's counter and return its previous value.
    pub fn next(&mut self, pool: u32) -> u64 {
        self.counter(pool).fetch_add(1) as u64
    }

    /// The pool's counter.
    pub fn counter(&mut self, pool: u32) -> &SharedCounter {
        let prefix = self.prefix;
        self.counters.entry(pool).or_insert_with(|| SharedCounter::new(&format!("{prefix}/{pool}")))
    }
}

/// Split `host:port` into its host and port. An IPv6 host is written in
/// brackets (`[::1]:80`) and returned without them. `None` when there is no
/// port, the port is not a number in `0..=65535`, or the host is empty.
pub fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, rest) = rest.split_once(']')?;
        (host, rest.strip_prefix(':')?)
    } else {
        let (host, port) = address.rsplit_once(':')?;
        if host.contains(':') {
            // An unbracketed IPv6 address: ambiguous, refused.
            return None;
        }
        (host, port)
    };
    if host.is_empty() || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((host, port.parse().ok()?))
}

/// `host:port`, with an IPv6 host in brackets (`[::1]:80`).
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The JSON config of a plugin instance, as written in weir's TOML config.
#[derive(Debug, Clone)]
pub struct Config(String);

impl Config {
    #[doc(hidden)]
    pub fn from_json(json: String) -> Self {
        Self(json)
    }

    /// The raw JSON text.
    pub fn as_json(&self) -> &str {
        &self.0
    }

    /// Deserialize into the plugin's own config type. An empty config reads
    /// as an empty table. The error names the key that does not fit, as a
    /// path (`checks[2].port: invalid type: ...`), and `?` turns it into
    /// [`Error::InvalidConfig`], which weir reports at load with the file and
    /// line of the instance's `config`.
    ///
    /// ```
    /// use weir_sdk::Config;
    ///
    /// #[derive(serde::Deserialize, Debug)]
    /// #[serde(deny_unknown_fields)]
    /// struct Settings {
    ///     prefix: String,
    ///     #[serde(default)]
    ///     weights: Vec<u32>,
    /// }
    ///
    /// let ok: Settings = Config::from_json(r#"{"prefix": "/api/"}"#.into()).parse().unwrap();
    /// assert_eq!((ok.prefix.as_str(), ok.weights.len()), ("/api/", 0));
    ///
    /// let bad = Config::from_json(r#"{"prefix": "/", "weights": [1, "x"]}"#.into()).parse::<Settings>();
    /// assert!(bad.unwrap_err().starts_with("weights[1]: invalid type"));
    /// let typo = Config::from_json(r#"{"prefx": "/"}"#.into()).parse::<Settings>();
    /// assert!(typo.unwrap_err().contains("unknown field `prefx`"));
    /// ```
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        let text = if self.0.trim().is_empty() { "{}" } else { &self.0 };
        let mut de = serde_json::Deserializer::from_str(text);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                inner.to_string()
            } else {
                format!("{path}: {inner}")
            }
        })?;
        de.end().map_err(|e| e.to_string())?;
        Ok(value)
    }
}

impl Error {
    /// The message, whatever the kind.
    pub fn message(&self) -> &str {
        match self {
            Error::InvalidConfig(m) | Error::Unavailable(m) | Error::Other(m) => m,
        }
    }

    /// Whether the host refused an I/O call the instance's grants do not allow.
    pub fn is_denied(&self) -> bool {
        matches!(self, Error::Other(m) if m.starts_with("denied"))
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error::InvalidConfig(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        #[serde(default)]
        port: u16,
        #[serde(default)]
        inner: Vec<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        weight: u32,
    }

    fn parse(json: &str) -> Result<Sample, String> {
        Config::from_json(json.into()).parse()
    }

    #[test]
    fn config_errors_name_the_key() {
        assert_eq!(parse("").unwrap().port, 0);
        assert!(parse(r#"{"port": "x"}"#).unwrap_err().starts_with("port: invalid type: string"));
        assert!(parse(r#"{"inner": [{"weight": 1}, {"weight": -1}]}"#).unwrap_err().starts_with("inner[1].weight: "));
        assert!(parse(r#"{"prot": 1}"#).unwrap_err().contains("unknown field `prot`"));
        assert!(parse(r#"{"port": 1} x"#).unwrap_err().contains("trailing characters"));
    }

    #[test]
    fn host_port_round_trips() {
        assert_eq!(split_host_port("10.0.0.1:80"), Some(("10.0.0.1", 80)));
        assert_eq!(split_host_port("db.example.com:5432"), Some(("db.example.com", 5432)));
        assert_eq!(split_host_port("[::1]:8080"), Some(("::1", 8080)));
        assert_eq!(split_host_port("[fe80::1%eth0]:1"), Some(("fe80::1%eth0", 1)));
        assert_eq!(join_host_port("::1", 80), "[::1]:80");
        assert_eq!(join_host_port("a.b", 80), "a.b:80");
        assert_eq!(join_host_port("[::1]", 80), "[::1]:80");
    }

    #[test]
    fn bad_addresses_are_refused() {
        for bad in ["", "host", "host:", ":80", "host:http", "host:65536", "::1:80", "[::1]", "[::1]80", "h:+1"] {
            assert_eq!(split_host_port(bad), None, "{bad}");
        }
    }
}
