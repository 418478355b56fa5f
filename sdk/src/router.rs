//! The route phase: map an HTTP request (or a TLS connection by SNI) to a pool.
//!
//! Implement [`Router`] and call [`export_router!`](crate::export_router).
//! A router that sends one host to its own pool, keyed by a header for the
//! pool's balancer:
//!
//! ```
//! use weir_sdk::router::*;
//!
//! struct ByHost;
//!
//! impl Router for ByHost {
//!     fn init(_config: Config) -> Result<Self, Error> {
//!         Ok(ByHost)
//!     }
//!     fn route_request(&mut self, req: &Request, host: Option<&str>, _path: &str) -> Result<Decision, Error> {
//!         if host != Some("api.example.com") {
//!             return Ok(Decision::NoMatch);
//!         }
//!         Ok(Decision::Forward(Forward {
//!             pool: "api".into(),
//!             hash_key: req.header("x-user"),
//!             request_headers: vec![HeaderEdit { name: "x-routed".into(), value: Some("api".into()) }],
//!             response_headers: Vec::new(),
//!         }))
//!     }
//! }
//!
//! weir_sdk::export_router!(ByHost);
//! # fn main() {}
//! ```

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "router",
        with: {
            "weir:plugin/host@0.2.0": crate::imports::weir::plugin::host,
            "weir:plugin/types@0.2.0": crate::imports::weir::plugin::types,
        },
        pub_export_macro: true,
        export_macro_name: "__export_router_world",
        default_bindings_module: "weir_sdk::router::bindings",
    });
}

pub use crate::{config::*, host::*, net::*, pick::*, Backend, Connection, Error, IpAddress, Protocol, SocketAddress};
pub use bindings::exports::weir::plugin::route::{Decision, Forward, HeaderEdit, Respond};
pub use bindings::weir::plugin::http::Request;

/// A router plugin.
pub trait Router: Sized + 'static {
    /// Build the router from its instance config.
    fn init(config: Config) -> Result<Self, Error>;

    /// Route an HTTP request head. `host` (the `Host` header or HTTP/2
    /// `:authority`, without its port) and `path` (without the query) are
    /// handed in; the rest, the connection included (`req.connection()`),
    /// is asked of `req`, each a call to the host.
    fn route_request(&mut self, req: &Request, host: Option<&str>, path: &str) -> Result<Decision, Error>;

    /// Route a connection by its TLS SNI and ALPN (passthrough). No match by default.
    fn route_connection(&mut self, _conn: &Connection, _alpn: &[String]) -> Result<Decision, Error> {
        Ok(Decision::NoMatch)
    }
}

/// Forward to `pool` with no hash key and no header edits.
pub fn forward(pool: impl Into<String>) -> Decision {
    Decision::Forward(Forward {
        pool: pool.into(),
        hash_key: None,
        request_headers: Vec::new(),
        response_headers: Vec::new(),
    })
}

/// Export a [`Router`] implementation as the plugin's `router` world.
#[macro_export]
macro_rules! export_router {
    ($plugin:ty) => {
        const _: () = {
            use $crate::imports::weir::plugin::types::{Connection, Error};
            use $crate::router::bindings::exports::weir::plugin::route::{Decision, Guest};
            use $crate::router::bindings::weir::plugin::http::Request;
            use $crate::router::Router;

            $crate::__plugin_state!($plugin);

            struct WeirExport;

            impl Guest for WeirExport {
                fn init(config: String) -> Result<(), Error> {
                    $crate::__report_panics();
                    let plugin = <$plugin as Router>::init($crate::Config::from_json(config))?;
                    set_state(plugin);
                    Ok(())
                }
                fn route_request(req: &Request, host: Option<String>, path: String) -> Result<Decision, Error> {
                    with_state(|p| p.route_request(req, host.as_deref(), &path))
                }
                fn route_connection(conn: Connection, alpn: Vec<String>) -> Result<Decision, Error> {
                    with_state(|p| p.route_connection(&conn, &alpn))
                }
            }

            // Exports exist only on wasm32; natively the plugin is a plain
            // library for unit tests, and this keeps its code counted as used.
            #[cfg(target_arch = "wasm32")]
    $crate::router::bindings::__export_router_world!(WeirExport with_types_in $crate::router::bindings);
            #[cfg(not(target_arch = "wasm32"))]
            let _ = [
                <WeirExport as Guest>::init as *const (),
                <WeirExport as Guest>::route_request as *const (),
                <WeirExport as Guest>::route_connection as *const (),
            ];
        };
    };
}
