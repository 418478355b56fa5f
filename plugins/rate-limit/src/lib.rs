//! Bundled access filter `rate-limit`: a token bucket per client IP (or per
//! header value), kept by the host so the limit holds across worker threads.
//!
//! ```toml
//! [plugins.per-ip]
//! source = "builtin:rate-limit"
//! config = { rate = 100, burst = 20, by = "client-ip" }   # or by = "header:x-api-key"
//! ```
//!
//! Over the limit, HTTP requests get `429` with `Retry-After` (seconds,
//! rounded up); on TCP listeners the connection is closed. Requests without
//! the header named by `by` share one bucket.
//!
//! Refusals are counted on `/metrics` as
//! `weir_plugin_custom_total{plugin="NAME",name="limited"}`.

use serde::Deserialize;
use weir_sdk::access::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    rate: u32,
    burst: Option<u32>,
    #[serde(default = "by_client_ip")]
    by: String,
    #[serde(default = "too_many")]
    status: u16,
}

fn by_client_ip() -> String {
    "client-ip".into()
}

fn too_many() -> u16 {
    429
}

enum By {
    ClientIp,
    Header(String),
}

struct RateLimit {
    rate: u32,
    burst: u32,
    by: By,
    status: u16,
    /// Requests, connections or sessions refused.
    limited: Metric,
}

/// `Retry-After` in whole seconds, at least 1.
pub fn retry_after_secs(wait: std::time::Duration) -> u64 {
    wait.as_millis().div_ceil(1000).max(1) as u64
}

impl RateLimit {
    fn verdict(&self, key: String) -> Verdict {
        match take_token(&key, self.rate, self.burst) {
            Ok(()) => Verdict::Allow,
            Err(wait) => {
                self.limited.inc();
                Verdict::Deny(DenyInfo {
                    reason: format!("rate limit {} /s exceeded for {key}", self.rate),
                    status: Some(self.status),
                    headers: vec![("retry-after".into(), retry_after_secs(wait).to_string())],
                })
            }
        }
    }
}

impl AccessFilter for RateLimit {
    fn init(config: Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        if s.rate == 0 {
            return Err(Error::InvalidConfig("rate must be at least 1".into()));
        }
        let by = match s.by.split_once(':') {
            None if s.by == "client-ip" => By::ClientIp,
            Some(("header", h)) if !h.is_empty() => By::Header(h.to_string()),
            _ => return Err(Error::InvalidConfig(format!("by: `{}` is not client-ip or header:NAME", s.by))),
        };
        let limited = Metric::counter("limited")?;
        Ok(Self { rate: s.rate, burst: s.burst.unwrap_or(s.rate), by, status: s.status, limited })
    }

    fn check_connection(&mut self, conn: &Connection) -> Result<Verdict, Error> {
        // TCP listeners limit connections, UDP listeners sessions; HTTP
        // listeners limit requests (below).
        Ok(match (&self.by, conn.protocol) {
            (By::ClientIp, Protocol::Tcp | Protocol::Tls | Protocol::Udp) => self.verdict(client_ip(conn).to_string()),
            _ => Verdict::Allow,
        })
    }

    fn check_request(&mut self, conn: &Connection, req: &Request) -> Result<Verdict, Error> {
        let key = match &self.by {
            By::ClientIp => client_ip(conn).to_string(),
            By::Header(h) => req.header(h).unwrap_or_default(),
        };
        Ok(self.verdict(key))
    }
}

weir_sdk::export_access_filter!(RateLimit);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(std::time::Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(std::time::Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(std::time::Duration::from_millis(1001)), 2);
    }
}
