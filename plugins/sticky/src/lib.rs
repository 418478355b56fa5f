//! Bundled balancer `sticky`: HTTP cookie stickiness. A request whose
//! cookie names an eligible backend goes there; any other request is
//! balanced by the inner algorithm and its response sets the cookie. The
//! cookie holds a hash of the backend's address, not its slot, so it stays
//! valid when the pool's membership changes around it. On L4 there are no
//! cookies, and every connection is balanced by the inner algorithm.

use serde::Deserialize;
use std::collections::HashMap;
use weir_sdk::balancer::*;

/// How a request without a valid cookie is balanced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Inner {
    /// The eligible backends in turn.
    RoundRobin,
    /// A uniformly random eligible backend.
    Random,
    /// The eligible backend with the fewest active requests, ties in turn.
    LeastConnections,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_cookie")]
    cookie: String,
    #[serde(default = "default_inner")]
    inner: Inner,
    /// Cookie lifetime in seconds; none makes a session cookie.
    max_age: Option<u64>,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default)]
    secure: bool,
}

fn default_cookie() -> String {
    "weir_sticky".into()
}

fn default_inner() -> Inner {
    Inner::RoundRobin
}

fn default_path() -> String {
    "/".into()
}

/// The cookie value naming a backend: its address hash, 16 hex digits.
pub fn cookie_value(address: &str) -> String {
    format!("{:016x}", hash64(address.as_bytes()))
}

/// The `Set-Cookie` field value for `value`.
fn set_cookie(s: &Settings, value: &str) -> String {
    let mut v = format!("{}={value}; Path={}; HttpOnly", s.cookie, s.path);
    if let Some(age) = s.max_age {
        v.push_str(&format!("; Max-Age={age}"));
    }
    if s.secure {
        v.push_str("; Secure");
    }
    v
}

struct Sticky {
    settings: Settings,
    /// Per pool: address hash -> slot, and each slot's `Set-Cookie` value.
    pools: PoolMap<(HashMap<u64, u32>, Vec<String>)>,
}

impl Balancer for Sticky {
    fn init(config: Config) -> Result<Self, Error> {
        let settings: Settings = config.parse()?;
        if settings.cookie.is_empty() || settings.cookie.contains([';', '=', ' ', ',']) {
            return Err(Error::InvalidConfig(format!("cookie: `{}` is not a cookie name", settings.cookie)));
        }
        Ok(Self { settings, pools: PoolMap::default() })
    }

    fn set_backends(&mut self, pool: u32, backends: Vec<Backend>) -> Result<(), Error> {
        let hashes: Vec<u64> = backends.iter().map(|b| hash64(b.address.as_bytes())).collect();
        let by_hash = backends.iter().zip(&hashes).map(|(b, &h)| (h, b.slot)).collect();
        let cookies = hashes.iter().map(|h| set_cookie(&self.settings, &format!("{h:016x}"))).collect();
        self.pools.insert(pool, (by_hash, cookies));
        Ok(())
    }

    fn pick(&mut self, pool: &PoolView, ctx: &PickContext, _key: Option<&str>) -> Result<Choice, Error> {
        let n = eligible_or_err(ctx)?;
        let remembered = pool
            .request_cookie(&self.settings.cookie)
            .and_then(|v| u64::from_str_radix(&v, 16).ok())
            .and_then(|h| self.pools.get(&ctx.pool)?.0.get(&h).copied());
        if let Some(slot) = remembered.filter(|&s| ctx.is_eligible(pool, s)) {
            return Ok(Choice::Slot(slot));
        }
        let index = match self.settings.inner {
            Inner::RoundRobin => (ctx.sequence % n as u64) as u32,
            Inner::Random => random_below(n),
            Inner::LeastConnections => {
                let active = pool.eligible_active();
                nth_min_u32(&active, ctx.sequence) as u32
            }
        };
        let Some((_, cookies)) = self.pools.get(&ctx.pool) else { return Ok(Choice::EligibleIndex(index)) };
        // Every backend eligible (the usual case): the index is the slot.
        let slot = if cookies.len() == n as usize { index } else { pool.eligible(index) };
        if let Some(cookie) = cookies.get(slot as usize) {
            pool.add_response_header("set-cookie", cookie);
        }
        Ok(Choice::Slot(slot))
    }
}

weir_sdk::export_balancer!(Sticky);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_names_the_address_and_carries_its_attributes() {
        let s: Settings = Config::from_json(r#"{"cookie":"srv","max_age":60,"secure":true}"#.into()).parse().unwrap();
        let v = cookie_value("127.0.0.1:8080");
        assert_eq!(v.len(), 16);
        assert_eq!(v, cookie_value("127.0.0.1:8080"));
        assert_ne!(v, cookie_value("127.0.0.1:8081"));
        assert_eq!(set_cookie(&s, &v), format!("srv={v}; Path=/; HttpOnly; Max-Age=60; Secure"));
    }

    #[test]
    fn bad_config_is_refused() {
        let e = Sticky::init(Config::from_json(r#"{"inner":"fastest"}"#.into())).err().unwrap();
        assert!(matches!(&e, Error::InvalidConfig(m) if m.contains("fastest")), "{e:?}");
        let e = Sticky::init(Config::from_json(r#"{"cookie":"a=b"}"#.into())).err().unwrap();
        assert!(matches!(&e, Error::InvalidConfig(m) if m.contains("a=b")), "{e:?}");
    }
}
