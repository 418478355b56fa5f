use weir_sdk::router::*;

/// The instance config: requests whose path starts with `prefix` go to `pool`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    prefix: String,
    pool: String,
}

struct TYPE(Settings);

/// The decision, kept free of host calls so it is unit-tested natively.
pub fn pool_for<'a>(path: &str, prefix: &str, pool: &'a str) -> Option<&'a str> {
    path.starts_with(prefix).then_some(pool)
}

impl Router for TYPE {
    fn init(config: Config) -> Result<Self, Error> {
        Ok(Self(config.parse()?))
    }

    // `host` and `path` come with the call; anything else is asked of
    // `req` (`req.header("x-user")`, `req.connection()`, ...).
    fn route_request(&mut self, _req: &Request, _host: Option<&str>, path: &str) -> Result<Decision, Error> {
        Ok(match pool_for(path, &self.0.prefix, &self.0.pool) {
            Some(pool) => forward(pool),
            None => Decision::NoMatch,
        })
    }
}

weir_sdk::export_router!(TYPE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_picks_the_pool() {
        assert_eq!(pool_for("/api/users", "/api/", "api"), Some("api"));
        assert_eq!(pool_for("/", "/api/", "api"), None);
    }
}
