//! Bundled router `ab-split`: A/B and canary routing.
//!
//! ```toml
//! [plugins.canary]
//! source = "builtin:ab-split"
//! config.rules = [                                   # checked in order, first match wins
//!   { header = "x-version", value = "B", pool = "b" },
//!   { cookie = "beta", pool = "b" },                  # no value: the cookie being present is enough
//! ]
//! config.split = [{ pool = "a", weight = 95 }, { pool = "b", weight = 5 }]
//! config.by = "cookie:uid"                           # optional: a consistent split by this key
//! config.sticky_cookie = "weir_ab"                   # optional: keep a client on its side
//! ```
//!
//! Without `by`, the split is random per request. With `by` (`client-ip`,
//! `header:NAME` or `cookie:NAME`) the same key always lands on the same
//! side, like nginx's `split_clients`. With `sticky_cookie`, a client that
//! carries the cookie naming a split pool stays there, and one without it
//! gets it set on the response.

use serde::Deserialize;
use weir_sdk::router::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    split: Vec<Share>,
    by: Option<String>,
    sticky_cookie: Option<String>,
    #[serde(default = "day")]
    sticky_max_age: u64,
}

fn day() -> u64 {
    86_400
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    header: Option<String>,
    cookie: Option<String>,
    value: Option<String>,
    pool: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Share {
    pool: String,
    weight: u32,
}

/// Where the split key comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum By {
    /// The client address.
    ClientIp,
    /// A header.
    Header(String),
    /// A cookie.
    Cookie(String),
}

impl By {
    fn parse(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "client-ip" => Ok(By::ClientIp),
            Some(("header", h)) if !h.is_empty() => Ok(By::Header(h.to_ascii_lowercase())),
            Some(("cookie", c)) if !c.is_empty() => Ok(By::Cookie(c.to_string())),
            _ => Err(format!("by: `{s}` is not client-ip, header:NAME or cookie:NAME")),
        }
    }
}

/// Weighted shares, as cumulative bounds out of their total.
#[derive(Debug)]
pub struct Split {
    pools: Vec<(String, u64)>,
    total: u64,
}

impl Split {
    fn new(shares: &[Share]) -> Result<Self, String> {
        let mut total = 0u64;
        let mut pools = Vec::new();
        for s in shares.iter().filter(|s| s.weight > 0) {
            total += s.weight as u64;
            pools.push((s.pool.clone(), total));
        }
        Ok(Self { pools, total })
    }

    /// The pool whose share covers `point` (0 <= point < total).
    pub fn at(&self, point: u64) -> Option<&str> {
        self.pools.iter().find(|(_, bound)| point < *bound).map(|(p, _)| p.as_str())
    }

    /// The pool for a 64-bit value spread uniformly.
    pub fn pick(&self, x: u64) -> Option<&str> {
        if self.total == 0 {
            return None;
        }
        self.at(((x >> 32) * self.total) >> 32)
    }

    fn contains(&self, pool: &str) -> bool {
        self.pools.iter().any(|(p, _)| p == pool)
    }
}

/// The stable hash of a split key.
pub fn stable_hash(key: &str) -> u64 {
    hash64(key.as_bytes())
}

struct AbSplit {
    rules: Vec<Rule>,
    split: Split,
    by: Option<By>,
    sticky: Option<String>,
    max_age: u64,
}

impl Router for AbSplit {
    fn init(config: Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        for (i, r) in s.rules.iter().enumerate() {
            if r.header.is_some() == r.cookie.is_some() {
                return Err(Error::InvalidConfig(format!("rules[{i}]: give exactly one of `header` or `cookie`")));
            }
        }
        let split = Split::new(&s.split).map_err(Error::InvalidConfig)?;
        if s.sticky_cookie.is_some() && split.total == 0 {
            return Err(Error::InvalidConfig("sticky_cookie needs a `split`".into()));
        }
        let by = s.by.as_deref().map(By::parse).transpose().map_err(Error::InvalidConfig)?;
        Ok(Self { rules: s.rules, split, by, sticky: s.sticky_cookie, max_age: s.sticky_max_age })
    }

    fn route_request(&mut self, req: &Request, _host: Option<&str>, _path: &str) -> Result<Decision, Error> {
        for rule in &self.rules {
            let found = match (&rule.header, &rule.cookie) {
                (Some(h), _) => req.header(h),
                (_, Some(c)) => req.cookie(c),
                _ => None,
            };
            if let Some(v) = found {
                if rule.value.as_deref().is_none_or(|want| want == v) {
                    return Ok(forward(&rule.pool));
                }
            }
        }
        if let Some(cookie) = &self.sticky {
            if let Some(pool) = req.cookie(cookie).filter(|p| self.split.contains(p)) {
                return Ok(forward(pool));
            }
        }
        let x = match &self.by {
            None => random_u64(),
            Some(By::ClientIp) => stable_hash(&client_ip(&req.connection()).to_string()),
            Some(By::Header(h)) => req.header(h).map_or_else(random_u64, |v| stable_hash(&v)),
            Some(By::Cookie(c)) => req.cookie(c).map_or_else(random_u64, |v| stable_hash(&v)),
        };
        let Some(pool) = self.split.pick(x) else { return Ok(Decision::NoMatch) };
        let mut decision = forward(pool);
        if let (Some(cookie), Decision::Forward(f)) = (&self.sticky, &mut decision) {
            f.response_headers.push(HeaderEdit {
                name: "set-cookie".into(),
                value: Some(format!("{cookie}={pool}; Path=/; Max-Age={}; HttpOnly", self.max_age)),
            });
        }
        Ok(decision)
    }
}

weir_sdk::export_router!(AbSplit);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_bounds_follow_weights() {
        let s = Split::new(&[Share { pool: "a".into(), weight: 9 }, Share { pool: "b".into(), weight: 1 }]).unwrap();
        assert_eq!(s.at(0), Some("a"));
        assert_eq!(s.at(8), Some("a"));
        assert_eq!(s.at(9), Some("b"));
        assert_eq!(s.at(10), None);
        let mut b = 0;
        for i in 0..100_000u64 {
            if s.pick(stable_hash(&format!("user-{i}"))) == Some("b") {
                b += 1;
            }
        }
        assert!((9_500..10_500).contains(&b), "hash split 10% got {b} of 100000");
    }

    #[test]
    fn by_parses() {
        assert_eq!(By::parse("cookie:uid"), Ok(By::Cookie("uid".into())));
        assert_eq!(By::parse("header:X-User"), Ok(By::Header("x-user".into())));
        assert!(By::parse("path").is_err());
    }
}
