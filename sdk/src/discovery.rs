//! The discovery phase: list a pool's backends, in the background.
//!
//! Implement [`Discovery`] and call [`export_discovery!`](crate::export_discovery).
//! The [`io`](crate::io) functions reach what the instance's `grants` allow.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "discovery-adapter",
        with: {
            "weir:plugin/host@0.2.0": crate::imports::weir::plugin::host,
            "weir:plugin/types@0.2.0": crate::imports::weir::plugin::types,
            "weir:plugin/io@0.2.0": crate::io::bindings::weir::plugin::io,
        },
        pub_export_macro: true,
        export_macro_name: "__export_discovery_world",
        default_bindings_module: "weir_sdk::discovery::bindings",
    });
}

pub use crate::io;
pub use crate::{config::*, host::*, net::*, pick::*, Backend, Connection, Error, IpAddress, Protocol, SocketAddress};
pub use bindings::exports::weir::plugin::discovery::Discovered;

/// A discovery adapter plugin. The host calls `discover` at the pool's
/// interval, on a background thread, and replaces the pool's backends with
/// the answer.
pub trait Discovery: Sized + 'static {
    /// Build the adapter from its instance config.
    fn init(config: Config) -> Result<Self, Error>;

    /// The pool's backends now. `Err` when the source could not be read
    /// (the host then keeps the backends it has).
    fn discover(&mut self) -> Result<Vec<Discovered>, Error>;
}

impl Discovered {
    /// A backend at `address` (`host:port`) with weight 1, priority 0 and no tags.
    pub fn new(address: impl Into<String>) -> Self {
        Self { address: address.into(), weight: 1, priority: 0, tags: Vec::new() }
    }
}

/// Parse one backend line: `host:port [weight=N] [priority=N] [tags=a,b]`
/// (fields separated by whitespace, in any order after the address). Blank
/// lines and `#` comments (whole-line or trailing) give `Ok(None)`.
pub fn parse_backend_line(line: &str) -> Result<Option<Discovered>, String> {
    let line = line.split_once('#').map_or(line, |(before, _)| before).trim();
    let mut fields = line.split_whitespace();
    let Some(address) = fields.next() else { return Ok(None) };
    if split_host_port(address).is_none() {
        return Err(format!("`{address}` is not `host:port`"));
    }
    let mut d = Discovered::new(address);
    for field in fields {
        let (key, value) = field
            .split_once('=')
            .ok_or_else(|| format!("`{field}`: expected `weight=N`, `priority=N` or `tags=a,b`"))?;
        let number = || value.parse::<u32>().map_err(|_| format!("`{field}`: `{value}` is not a whole number"));
        match key {
            "weight" => d.weight = number()?,
            "priority" => d.priority = number()?,
            "tags" => d.tags = value.split(',').filter(|t| !t.is_empty()).map(String::from).collect(),
            _ => return Err(format!("`{field}`: unknown field `{key}`, expected `weight`, `priority` or `tags`")),
        }
    }
    Ok(Some(d))
}

/// Parse a whole text of backend lines (see [`parse_backend_line`]); an
/// error names the 1-based line number.
///
/// ```
/// use weir_sdk::discovery::parse_backend_lines;
///
/// let list = parse_backend_lines("# the web tier\n10.0.0.1:80 weight=3 tags=eu,ssd\n\n10.0.0.2:80\n").unwrap();
/// assert_eq!(list.len(), 2);
/// assert_eq!((list[0].weight, list[0].tags.clone()), (3, vec!["eu".to_string(), "ssd".to_string()]));
/// assert_eq!(parse_backend_lines("10.0.0.1:80\nnot-an-address\n").unwrap_err(), "line 2: `not-an-address` is not `host:port`");
/// ```
pub fn parse_backend_lines(text: &str) -> Result<Vec<Discovered>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(d) = parse_backend_line(line).map_err(|e| format!("line {}: {e}", i + 1))? {
            out.push(d);
        }
    }
    Ok(out)
}

/// Export a [`Discovery`] implementation as the plugin's `discovery-adapter` world.
#[macro_export]
macro_rules! export_discovery {
    ($plugin:ty) => {
        const _: () = {
            use $crate::discovery::bindings::exports::weir::plugin::discovery::{Discovered, Guest};
            use $crate::discovery::Discovery;
            use $crate::imports::weir::plugin::types::Error;

            $crate::__plugin_state!($plugin);

            struct WeirExport;

            impl Guest for WeirExport {
                fn init(config: String) -> Result<(), Error> {
                    $crate::__report_panics();
                    let plugin = <$plugin as Discovery>::init($crate::Config::from_json(config))?;
                    set_state(plugin);
                    Ok(())
                }
                fn discover() -> Result<Vec<Discovered>, Error> {
                    with_state(|p| p.discover())
                }
            }

            // Exports exist only on wasm32; natively the plugin is a plain
            // library for unit tests, and this keeps its code counted as used.
            #[cfg(target_arch = "wasm32")]
    $crate::discovery::bindings::__export_discovery_world!(WeirExport with_types_in $crate::discovery::bindings);
            #[cfg(not(target_arch = "wasm32"))]
            let _ = [<WeirExport as Guest>::init as *const (), <WeirExport as Guest>::discover as *const ()];
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_lines() {
        let text = "# backends\n10.0.0.1:80\n\n  10.0.0.2:80 weight=3 priority=1 # spare\n[::1]:81 tags=a,b\n";
        let got = parse_backend_lines(text).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!((got[0].address.as_str(), got[0].weight, got[0].priority), ("10.0.0.1:80", 1, 0));
        assert_eq!((got[1].address.as_str(), got[1].weight, got[1].priority), ("10.0.0.2:80", 3, 1));
        assert_eq!(got[2].address, "[::1]:81");
        assert_eq!(got[2].tags, ["a", "b"]);
        assert!(parse_backend_lines("").unwrap().is_empty());
    }

    #[test]
    fn bad_lines_name_the_line() {
        assert_eq!(parse_backend_lines("a:1\nnoport\n").unwrap_err(), "line 2: `noport` is not `host:port`");
        assert!(parse_backend_lines("a:1 weight=x").unwrap_err().contains("not a whole number"));
        assert!(parse_backend_lines("a:1 color=red").unwrap_err().contains("unknown field `color`"));
        assert!(parse_backend_lines("a:1 weight").unwrap_err().contains("expected `weight=N`"));
    }
}
