//! Bundled router `host-path`, after BFE's host table and route trees.
//!
//! ```toml
//! [plugins.routes]
//! source = "builtin:host-path"
//! config.default = "web"                      # optional: pool when nothing matches
//! config.routes = [
//!   { host = "api.example.com", path = "/v2/", pool = "api-v2" },
//!   { host = "api.example.com", path = "/", pool = "api" },
//!   { host = "*.example.com", path = "=/healthz", pool = "health" },   # `=`: exact path
//!   { host = "*", path = "/static/", pool = "static" },                  # any host
//! ]
//! ```
//!
//! A request's host is looked up in a trie of reversed labels: the exact host
//! first, then wildcards from the most specific (`*.a.example.com` before
//! `*.example.com`; a wildcard matches one or more labels), then `*`. Within
//! the first host table that has a match, an exact path wins over prefixes,
//! and the longest prefix wins among prefixes (plain string prefixes, as
//! nginx's `location`). No match: `default`, else the listener's pool.

use serde::Deserialize;
use std::collections::HashMap;
use weir_sdk::router::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    routes: Vec<RouteSpec>,
    default: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSpec {
    host: String,
    #[serde(default = "root")]
    path: String,
    pool: String,
}

fn root() -> String {
    "/".into()
}

/// Paths of one host: exact ones, then prefixes longest first.
#[derive(Default, Debug)]
struct PathTable {
    exact: HashMap<String, String>,
    prefixes: Vec<(String, String)>,
}

impl PathTable {
    fn add(&mut self, path: &str, pool: &str) -> Result<(), String> {
        let (exact, path) = match path.strip_prefix('=') {
            Some(p) => (true, p.trim()),
            None => (false, path),
        };
        if !path.starts_with('/') {
            return Err(format!("path `{path}` must start with `/`"));
        }
        if exact {
            self.exact.insert(path.to_string(), pool.to_string());
        } else {
            self.prefixes.retain(|(p, _)| p != path);
            self.prefixes.push((path.to_string(), pool.to_string()));
            self.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        }
        Ok(())
    }

    fn find(&self, path: &str) -> Option<&str> {
        if let Some(pool) = self.exact.get(path) {
            return Some(pool);
        }
        self.prefixes.iter().find(|(p, _)| path.starts_with(p.as_str())).map(|(_, pool)| pool.as_str())
    }
}

/// A trie of reversed host labels (`com` → `example` → `api`).
#[derive(Default, Debug)]
struct HostNode {
    children: HashMap<String, HostNode>,
    exact: Option<PathTable>,
    wildcard: Option<PathTable>,
}

/// The whole routing table, independent of the plugin ABI so it tests natively.
#[derive(Default, Debug)]
pub struct Table {
    hosts: HostNode,
    any: Option<PathTable>,
    default: Option<String>,
}

impl Table {
    fn add(&mut self, host: &str, path: &str, pool: &str) -> Result<(), String> {
        let host = host.trim().to_ascii_lowercase();
        let table = if host == "*" {
            self.any.get_or_insert_with(PathTable::default)
        } else {
            let (wild, name) = match host.strip_prefix("*.") {
                Some(rest) => (true, rest),
                None => (false, host.as_str()),
            };
            if name.is_empty() || name.contains('*') {
                return Err(format!("host `{host}`: a wildcard is only allowed as the first label (`*.example.com`)"));
            }
            let mut node = &mut self.hosts;
            for label in name.rsplit('.') {
                node = node.children.entry(label.to_string()).or_default();
            }
            let slot = if wild { &mut node.wildcard } else { &mut node.exact };
            slot.get_or_insert_with(PathTable::default)
        };
        table.add(path, pool)
    }

    /// Build from route specs.
    fn build(routes: &[RouteSpec], default: Option<String>) -> Result<Self, String> {
        let mut table = Table { default, ..Table::default() };
        for (i, r) in routes.iter().enumerate() {
            table.add(&r.host, &r.path, &r.pool).map_err(|e| format!("routes[{i}]: {e}"))?;
        }
        Ok(table)
    }

    /// The pool for a host and path, if any rule or the default matches:
    /// the exact host's table, then the wildcards from the most specific,
    /// then `*`; the first table with a matching path decides. Nothing is
    /// allocated unless the host has upper case or a wildcard applies.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&str> {
        let host = host.unwrap_or("").trim_end_matches('.');
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        let mut wildcards = Vec::new();
        let mut exact = None;
        let mut node = &self.hosts;
        let mut labels = host.rsplit('.').peekable();
        while let Some(label) = labels.next() {
            match node.children.get(label) {
                Some(next) => node = next,
                None => break,
            }
            if labels.peek().is_some() {
                // More labels remain to the left: this node's wildcard covers them.
                if let Some(w) = &node.wildcard {
                    wildcards.push(w);
                }
            } else {
                exact = node.exact.as_ref();
            }
        }
        exact
            .into_iter()
            .chain(wildcards.into_iter().rev())
            .chain(self.any.as_ref())
            .find_map(|t| t.find(path))
            .or(self.default.as_deref())
    }
}

struct HostPath(Table);

impl Router for HostPath {
    fn init(config: Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        Table::build(&s.routes, s.default).map(HostPath).map_err(Error::InvalidConfig)
    }

    fn route_request(&mut self, _req: &Request, host: Option<&str>, path: &str) -> Result<Decision, Error> {
        Ok(match self.0.route(host, path) {
            Some(pool) => forward(pool),
            None => Decision::NoMatch,
        })
    }

    fn route_connection(&mut self, conn: &Connection, _alpn: &[String]) -> Result<Decision, Error> {
        Ok(match conn.sni.as_deref().and_then(|sni| self.0.route(Some(sni), "/")) {
            Some(pool) => forward(pool),
            None => Decision::NoMatch,
        })
    }
}

weir_sdk::export_router!(HostPath);

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, &str, &str)], default: Option<&str>) -> Table {
        let specs: Vec<RouteSpec> = routes
            .iter()
            .map(|(h, p, pool)| RouteSpec { host: h.to_string(), path: p.to_string(), pool: pool.to_string() })
            .collect();
        Table::build(&specs, default.map(String::from)).unwrap()
    }

    #[test]
    fn exact_host_then_wildcards_most_specific_first_then_any() {
        let t = table(
            &[
                ("example.com", "/", "apex"),
                ("*.example.com", "/", "wild"),
                ("*.eu.example.com", "/", "wild-eu"),
                ("shop.eu.example.com", "/", "shop"),
                ("*", "/static/", "static"),
            ],
            None,
        );
        assert_eq!(t.route(Some("example.com"), "/x"), Some("apex"));
        assert_eq!(t.route(Some("a.example.com"), "/x"), Some("wild"));
        assert_eq!(t.route(Some("a.b.example.com"), "/x"), Some("wild"));
        assert_eq!(t.route(Some("x.eu.example.com"), "/x"), Some("wild-eu"));
        assert_eq!(t.route(Some("shop.eu.example.com"), "/x"), Some("shop"));
        assert_eq!(t.route(Some("EU.Example.com"), "/x"), Some("wild"), "case-insensitive");
        assert_eq!(t.route(Some("other.org"), "/static/a.css"), Some("static"));
        assert_eq!(t.route(Some("other.org"), "/"), None);
    }

    #[test]
    fn exact_path_then_longest_prefix_then_next_host_table() {
        let t = table(
            &[
                ("api.test", "/", "api"),
                ("api.test", "/v2/", "v2"),
                ("api.test", "/v2/admin/", "admin"),
                ("api.test", "=/v2/admin/login", "login"),
                ("*.test", "/only-wild/", "wild"),
            ],
            Some("fallback"),
        );
        assert_eq!(t.route(Some("api.test"), "/v2/admin/login"), Some("login"));
        assert_eq!(t.route(Some("api.test"), "/v2/admin/login/x"), Some("admin"));
        assert_eq!(t.route(Some("api.test"), "/v2/users"), Some("v2"));
        assert_eq!(t.route(Some("api.test"), "/v1"), Some("api"));
        assert_eq!(t.route(Some("x.test"), "/only-wild/a"), Some("wild"));
        assert_eq!(t.route(Some("x.test"), "/nothing"), Some("fallback"));
        assert_eq!(t.route(None, "/"), Some("fallback"));
    }

    #[test]
    fn bad_routes_are_named() {
        let bad = [RouteSpec { host: "a.*.com".into(), path: "/".into(), pool: "p".into() }];
        assert!(Table::build(&bad, None).unwrap_err().starts_with("routes[0]: host"));
        let bad = [RouteSpec { host: "a.com".into(), path: "nope".into(), pool: "p".into() }];
        assert!(Table::build(&bad, None).unwrap_err().contains("must start with `/`"));
    }
}
