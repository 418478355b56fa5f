use weir_sdk::access::*;

/// The instance config: requests carrying this header are denied.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    header: String,
}

struct TYPE(Settings);

/// The decision, kept free of host calls so it is unit-tested natively.
pub fn allowed(value: Option<&str>) -> bool {
    value.is_none()
}

impl AccessFilter for TYPE {
    fn init(config: Config) -> Result<Self, Error> {
        Ok(Self(config.parse()?))
    }

    fn check_request(&mut self, _conn: &Connection, req: &Request) -> Result<Verdict, Error> {
        if allowed(req.header(&self.0.header).as_deref()) {
            Ok(Verdict::Allow)
        } else {
            Ok(deny(format!("{} present", self.0.header), Some(403)))
        }
    }
}

weir_sdk::export_access_filter!(TYPE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_denies() {
        assert!(allowed(None));
        assert!(!allowed(Some("1")));
    }
}
