//! Bundled router `cond`: BFE's condition expressions as an ordered rule list.
//!
//! ```toml
//! [plugins.rules]
//! source = "builtin:cond"
//! config.default = "web"          # optional: pool when no rule matches
//! config.rules = [
//!   { cond = 'req_host_in("api.example.com") && req_path_prefix_in("/v2/", false)', pool = "api-v2" },
//!   { cond = 'req_header_value_in("X-Beta", "1|yes", true) || req_cookie_value_in("beta", "1")', pool = "beta" },
//!   { cond = '!req_method_in("GET|HEAD") && req_cip_range("10.0.0.0", "10.255.255.255")', pool = "internal-writes" },
//! ]
//! ```
//!
//! Primitives: `req_host_in`, `req_path_in`, `req_path_prefix_in`,
//! `req_method_in`, `req_header_value_in`, `req_cookie_value_in`,
//! `req_query_value_in` (values separated by `|`, an optional last `true`
//! folds case) and `req_cip_range` (start and end address, or one CIDR); on
//! TLS and HTTPS listeners also `ses_tls_sni_in`, `ses_tls_client_auth()`
//! (a verified client certificate was presented) and
//! `ses_tls_client_identity_in` (its subject common name, else first SAN)
//! and `ses_tls_alpn_in` (the settled ALPN protocol; on passthrough, any
//! protocol the client offered).
//! Rules are tried in order; the first true one picks the pool. A rule that
//! does not parse is refused at load with its index and column.

pub mod expr;

use expr::{Cond, Facts};
use serde::Deserialize;
use std::net::IpAddr;
use weir_sdk::router::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    rules: Vec<RuleSpec>,
    default: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    cond: String,
    pool: String,
}

/// Parse every rule, naming the first bad one.
pub fn compile(rules: &[(String, String)]) -> Result<Vec<(Cond, String)>, String> {
    rules
        .iter()
        .enumerate()
        .map(|(i, (cond, pool))| {
            expr::parse(cond)
                .map(|c| (c, pool.clone()))
                .map_err(|e| format!("rules[{i}]: column {}: {} in `{cond}`", e.column, e.message))
        })
        .collect()
}

/// What conditions are evaluated against: a request, or on L4 only the
/// connection (request conditions are then false).
/// An HTTP request's host and path, handed to `route-request`, and the
/// request the rest is asked of.
struct Head<'a> {
    req: &'a Request,
    host: Option<&'a str>,
    path: &'a str,
}

struct RequestFacts<'a> {
    head: Option<Head<'a>>,
    /// The connection: given on L4, asked of the request on first use on HTTP.
    conn: std::cell::OnceCell<Connection>,
}

impl RequestFacts<'_> {
    fn conn(&self) -> &Connection {
        self.conn.get_or_init(|| self.head.as_ref().expect("a connection or a request").req.connection())
    }
}

impl Facts for RequestFacts<'_> {
    fn host(&self) -> Option<String> {
        self.head.as_ref()?.host.map(|h| h.to_ascii_lowercase())
    }
    fn path(&self) -> String {
        self.head.as_ref().map(|h| h.path.to_string()).unwrap_or_default()
    }
    fn method(&self) -> String {
        self.head.as_ref().map(|h| h.req.method()).unwrap_or_default()
    }
    fn header(&self, name: &str) -> Option<String> {
        self.head.as_ref()?.req.header(name)
    }
    fn cookie(&self, name: &str) -> Option<String> {
        self.head.as_ref()?.req.cookie(name)
    }
    fn query(&self, name: &str) -> Option<String> {
        self.head.as_ref()?.req.query_param(name)
    }
    fn client_ip(&self) -> IpAddr {
        client_ip(self.conn())
    }
    fn sni(&self) -> Option<String> {
        self.conn().sni.clone()
    }
    fn client_identity(&self) -> Option<String> {
        self.conn().client_identity.clone()
    }
    fn alpn(&self) -> Vec<String> {
        // One protocol when settled; on passthrough the offered ones, comma-separated.
        self.conn().alpn.iter().flat_map(|a| a.split(',')).map(String::from).collect()
    }
}

struct CondRouter {
    rules: Vec<(Cond, String)>,
    default: Option<String>,
}

impl Router for CondRouter {
    fn init(config: Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        let specs: Vec<(String, String)> = s.rules.into_iter().map(|r| (r.cond, r.pool)).collect();
        let rules = compile(&specs).map_err(Error::InvalidConfig)?;
        Ok(Self { rules, default: s.default })
    }

    fn route_request(&mut self, req: &Request, host: Option<&str>, path: &str) -> Result<Decision, Error> {
        Ok(self.decide(&RequestFacts { head: Some(Head { req, host, path }), conn: Default::default() }))
    }

    fn route_connection(&mut self, conn: &Connection, _alpn: &[String]) -> Result<Decision, Error> {
        Ok(self.decide(&RequestFacts { head: None, conn: conn.clone().into() }))
    }
}

impl CondRouter {
    fn decide(&self, facts: &RequestFacts) -> Decision {
        let pool = self.rules.iter().find(|(c, _)| c.eval(facts)).map(|(_, p)| p).or(self.default.as_ref());
        pool.map_or(Decision::NoMatch, forward)
    }
}

weir_sdk::export_router!(CondRouter);

#[cfg(test)]
mod tests {
    use super::expr::*;
    use std::collections::HashMap;
    use std::net::IpAddr;

    #[derive(Default)]
    struct Req {
        host: Option<String>,
        path: String,
        method: String,
        headers: HashMap<String, String>,
        cookies: HashMap<String, String>,
        query: HashMap<String, String>,
        ip: Option<IpAddr>,
        sni: Option<String>,
        identity: Option<String>,
        alpn: Vec<String>,
    }

    impl Facts for Req {
        fn host(&self) -> Option<String> {
            self.host.clone()
        }
        fn path(&self) -> String {
            self.path.clone()
        }
        fn method(&self) -> String {
            self.method.clone()
        }
        fn header(&self, n: &str) -> Option<String> {
            self.headers.get(&n.to_ascii_lowercase()).cloned()
        }
        fn cookie(&self, n: &str) -> Option<String> {
            self.cookies.get(n).cloned()
        }
        fn query(&self, n: &str) -> Option<String> {
            self.query.get(n).cloned()
        }
        fn client_ip(&self) -> IpAddr {
            self.ip.unwrap_or("127.0.0.1".parse().unwrap())
        }
        fn sni(&self) -> Option<String> {
            self.sni.clone()
        }
        fn client_identity(&self) -> Option<String> {
            self.identity.clone()
        }
        fn alpn(&self) -> Vec<String> {
            self.alpn.clone()
        }
    }

    fn req(host: &str, method: &str, path: &str) -> Req {
        Req { host: Some(host.into()), method: method.into(), path: path.into(), ..Req::default() }
    }

    fn holds(src: &str, r: &Req) -> bool {
        parse(src).unwrap_or_else(|e| panic!("{src}: {e:?}")).eval(r)
    }

    #[test]
    fn primitives() {
        let mut r = req("api.example.com", "POST", "/V2/users");
        r.headers.insert("x-beta".into(), "Yes".into());
        r.cookies.insert("ab".into(), "b".into());
        r.query.insert("lang".into(), "fr".into());
        r.ip = Some("10.1.2.3".parse().unwrap());
        assert!(holds(r#"req_host_in("www.example.com|API.example.com")"#, &r));
        assert!(!holds(r#"req_path_in("/v2/users")"#, &r));
        assert!(holds(r#"req_path_in("/v2/users", true)"#, &r));
        assert!(holds(r#"req_path_prefix_in("/v1/|/V2/", false)"#, &r));
        assert!(holds(r#"req_method_in("get|post")"#, &r));
        assert!(holds(r#"req_header_value_in("X-Beta", "1|yes", true)"#, &r));
        assert!(!holds(r#"req_header_value_in("X-Beta", "1|yes")"#, &r));
        assert!(holds(r#"req_cookie_value_in("ab", "a|b")"#, &r));
        assert!(holds(r#"req_query_value_in("lang", "fr")"#, &r));
        assert!(holds(r#"req_cip_range("10.0.0.0", "10.255.255.255")"#, &r));
        assert!(holds(r#"req_cip_range("10.0.0.0/8")"#, &r));
        assert!(!holds(r#"req_cip_range("192.168.0.0/16")"#, &r));
    }

    #[test]
    fn tls_session_conditions() {
        let mut r = req("a.com", "GET", "/");
        assert!(!holds(r#"ses_tls_client_auth()"#, &r));
        assert!(!holds(r#"ses_tls_sni_in("a.com")"#, &r));
        r.sni = Some("api.example.com".into());
        r.identity = Some("Alice".into());
        assert!(holds(r#"ses_tls_sni_in("API.example.com|b.example.com")"#, &r));
        assert!(holds(r#"ses_tls_client_auth() && ses_tls_client_identity_in("bob|Alice")"#, &r));
        assert!(!holds(r#"ses_tls_client_identity_in("alice")"#, &r));
        assert!(holds(r#"ses_tls_client_identity_in("alice", true)"#, &r));
        assert!(!holds(r#"ses_tls_alpn_in("h2")"#, &r));
        r.alpn = vec!["h2".into(), "http/1.1".into()];
        assert!(holds(r#"ses_tls_alpn_in("h2")"#, &r));
        assert!(holds(r#"ses_tls_alpn_in("http/1.1|spdy/3")"#, &r));
        assert!(!holds(r#"ses_tls_alpn_in("h3")"#, &r));
    }

    #[test]
    fn operators_and_precedence() {
        let r = req("a.com", "GET", "/x");
        assert!(holds(r#"req_host_in("b.com") || req_host_in("a.com") && req_method_in("GET")"#, &r));
        assert!(!holds(r#"(req_host_in("b.com") || req_host_in("a.com")) && req_method_in("POST")"#, &r));
        assert!(holds(r#"!req_method_in("POST") && !!true"#, &r));
        assert!(!holds(r#"!(req_path_prefix_in("/") )"#, &r));
    }

    #[test]
    fn errors_name_the_column() {
        let e = parse(r#"req_host_in("a") && req_pth_in("/")"#).unwrap_err();
        assert_eq!(e.column, 21);
        assert!(e.message.contains("unknown condition `req_pth_in`"));
        let e = parse(r#"req_host_in("a") & true"#).unwrap_err();
        assert_eq!(e.column, 18);
        let e = parse(r#"(req_host_in("a")"#).unwrap_err();
        assert_eq!(e.message, "expected `)`");
        let e = parse(r#"req_header_value_in("x")"#).unwrap_err();
        assert!(e.message.contains("wrong number of arguments"));
        let err = super::compile(&[("true".into(), "a".into()), ("req_host_in(a)".into(), "b".into())]).unwrap_err();
        assert!(err.starts_with("rules[1]: column 13:"), "{err}");
    }

    #[test]
    fn runaway_nesting_is_refused_not_a_stack_overflow() {
        let r = req("a.com", "GET", "/x");
        // Within the limit: parsed and evaluated as written.
        let deep = format!("{}true{}", "(".repeat(200), ")".repeat(200));
        assert!(holds(&deep, &r));
        let chain = vec![r#"req_method_in("GET")"#; 300].join(" && ");
        assert!(holds(&chain, &r));
        // Far beyond it: an error naming the column of the first operator
        // over the limit, before any recursion.
        let e = parse(&format!("{}true{}", "(".repeat(100_000), ")".repeat(100_000))).unwrap_err();
        assert_eq!((e.column, e.message.as_str()), (MAX_OPERATORS + 1, "more than 512 operators and parentheses"));
        let e = parse(&"!".repeat(100_000)).unwrap_err();
        assert!(e.message.starts_with("more than"), "{e:?}");
        let chain = vec!["true"; 100_000].join(" || ");
        assert!(parse(&chain).unwrap_err().message.starts_with("more than"));
    }
}
