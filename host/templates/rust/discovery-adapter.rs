use weir_sdk::discovery::*;

/// The instance config: a fixed list, a stand-in for a real source.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    addresses: Vec<String>,
}

struct TYPE(Settings);

impl Discovery for TYPE {
    fn init(config: Config) -> Result<Self, Error> {
        Ok(Self(config.parse()?))
    }

    fn discover(&mut self) -> Result<Vec<Discovered>, Error> {
        Ok(self
            .0
            .addresses
            .iter()
            .map(|a| Discovered { address: a.clone(), weight: 1, priority: 0, tags: Vec::new() })
            .collect())
    }
}

weir_sdk::export_discovery!(TYPE);
