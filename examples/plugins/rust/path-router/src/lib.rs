//! Example user router `path-router`: the longest matching path prefix
//! picks the pool, with header edits on the request and the response. A
//! request no prefix matches goes to the listener's default pool
//! (`no-match`). It is the Rust twin of `examples/plugins/python/path-router`:
//! the two take the same config and make the same decisions.
//!
//! ```toml
//! config.routes = [
//!   { prefix = "/api/", pool = "api", request_headers = { "x-routed-by" = "path-router" } },
//!   { prefix = "/api/v2/", pool = "api-v2", remove_request_headers = ["x-secret"], response_headers = { "x-pool" = "v2" } },
//! ]
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;
use weir_sdk::router::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    routes: Vec<RouteSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSpec {
    prefix: String,
    pool: String,
    #[serde(default)]
    request_headers: BTreeMap<String, String>,
    #[serde(default)]
    remove_request_headers: Vec<String>,
    #[serde(default)]
    response_headers: BTreeMap<String, String>,
}

struct PathRouter {
    /// Longest prefix first, so the most specific route wins.
    routes: Vec<(String, Forward)>,
}

/// The route for `path` among `prefixes` (longest first): its index.
pub fn longest_prefix<'a>(prefixes: impl IntoIterator<Item = &'a str>, path: &str) -> Option<usize> {
    prefixes.into_iter().position(|p| path.starts_with(p))
}

fn set(headers: BTreeMap<String, String>) -> impl Iterator<Item = HeaderEdit> {
    headers.into_iter().map(|(name, value)| HeaderEdit { name, value: Some(value) })
}

impl Router for PathRouter {
    fn init(config: Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        let mut routes = Vec::new();
        for (i, r) in s.routes.into_iter().enumerate() {
            if !r.prefix.starts_with('/') {
                return Err(Error::InvalidConfig(format!("routes[{i}].prefix: expected a path starting with /")));
            }
            if r.pool.is_empty() {
                return Err(Error::InvalidConfig(format!("routes[{i}].pool: expected a pool name")));
            }
            let removals = r.remove_request_headers.into_iter().map(|name| HeaderEdit { name, value: None });
            let forward = Forward {
                pool: r.pool,
                hash_key: None,
                request_headers: set(r.request_headers).chain(removals).collect(),
                response_headers: set(r.response_headers).collect(),
            };
            routes.push((r.prefix, forward));
        }
        // Stable: among equal lengths the first configured wins, as in Python.
        routes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        Ok(PathRouter { routes })
    }

    fn route_request(&mut self, _req: &Request, _host: Option<&str>, path: &str) -> Result<Decision, Error> {
        Ok(match longest_prefix(self.routes.iter().map(|(p, _)| p.as_str()), path) {
            Some(i) => Decision::Forward(self.routes[i].1.clone()),
            None => Decision::NoMatch,
        })
    }
}

weir_sdk::export_router!(PathRouter);

#[cfg(test)]
mod tests {
    use super::longest_prefix;

    #[test]
    fn the_first_of_the_sorted_prefixes_that_matches_wins() {
        let sorted = ["/api/v2/", "/api/", "/"];
        assert_eq!(longest_prefix(sorted, "/api/v2/x"), Some(0));
        assert_eq!(longest_prefix(sorted, "/api/v1"), Some(1));
        assert_eq!(longest_prefix(sorted, "/other"), Some(2));
        assert_eq!(longest_prefix(["/api/"], "/other"), None);
    }
}
