//! The access phase: allow or deny a connection (L4 and L7) or a request (L7).
//!
//! Implement [`AccessFilter`] and call [`export_access_filter!`](crate::export_access_filter).
//! A filter that refuses requests without an API key:
//!
//! ```
//! use weir_sdk::access::*;
//!
//! #[derive(serde::Deserialize)]
//! struct Settings {
//!     header: String,
//! }
//!
//! struct NeedsKey(Settings);
//!
//! impl AccessFilter for NeedsKey {
//!     fn init(config: Config) -> Result<Self, Error> {
//!         Ok(NeedsKey(config.parse()?))
//!     }
//!     fn check_request(&mut self, _conn: &Connection, req: &Request) -> Result<Verdict, Error> {
//!         Ok(match req.header(&self.0.header) {
//!             Some(_) => Verdict::Allow,
//!             None => deny(format!("no {}", self.0.header), Some(401)),
//!         })
//!     }
//! }
//!
//! weir_sdk::export_access_filter!(NeedsKey);
//! # fn main() {}
//! ```

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "access-filter",
        with: {
            "weir:plugin/host@0.2.0": crate::imports::weir::plugin::host,
            "weir:plugin/types@0.2.0": crate::imports::weir::plugin::types,
        },
        pub_export_macro: true,
        export_macro_name: "__export_access_filter_world",
        default_bindings_module: "weir_sdk::access::bindings",
    });
}

pub use crate::{config::*, host::*, net::*, pick::*, Backend, Connection, Error, IpAddress, Protocol, SocketAddress};
pub use bindings::exports::weir::plugin::access::{DenyInfo, Verdict};
pub use bindings::weir::plugin::http::Request;

/// An access filter plugin.
pub trait AccessFilter: Sized + 'static {
    /// Build the filter from its instance config.
    fn init(config: Config) -> Result<Self, Error>;

    /// Decide on a new connection (TCP, TLS, HTTP) or UDP session. Allows
    /// by default. Answer [`Verdict::AllowConnection`] when the decision
    /// holds for all of an HTTP connection's requests (it depends only on
    /// the connection): weir then skips `check_request` for them.
    fn check_connection(&mut self, _conn: &Connection) -> Result<Verdict, Error> {
        Ok(Verdict::Allow)
    }

    /// Decide on an HTTP request head, unless `check_connection` settled
    /// the request's connection. Allows by default.
    fn check_request(&mut self, _conn: &Connection, _req: &Request) -> Result<Verdict, Error> {
        Ok(Verdict::Allow)
    }
}

/// A deny verdict with a reason and an optional HTTP status.
pub fn deny(reason: impl Into<String>, status: Option<u16>) -> Verdict {
    Verdict::Deny(DenyInfo { reason: reason.into(), status, headers: Vec::new() })
}

/// Export an [`AccessFilter`] implementation as the plugin's `access-filter` world.
#[macro_export]
macro_rules! export_access_filter {
    ($plugin:ty) => {
        const _: () = {
            use $crate::access::bindings::exports::weir::plugin::access::{Guest, Verdict};
            use $crate::access::bindings::weir::plugin::http::Request;
            use $crate::access::AccessFilter;
            use $crate::imports::weir::plugin::types::{Connection, Error};

            $crate::__plugin_state!($plugin);

            struct WeirExport;

            impl Guest for WeirExport {
                fn init(config: String) -> Result<(), Error> {
                    $crate::__report_panics();
                    let plugin = <$plugin as AccessFilter>::init($crate::Config::from_json(config))?;
                    set_state(plugin);
                    Ok(())
                }
                fn check_connection(conn: Connection) -> Result<Verdict, Error> {
                    with_state(|p| p.check_connection(&conn))
                }
                fn check_request(conn: Connection, req: &Request) -> Result<Verdict, Error> {
                    with_state(|p| p.check_request(&conn, req))
                }
            }

            // Exports exist only on wasm32; natively the plugin is a plain
            // library for unit tests, and this keeps its code counted as used.
            #[cfg(target_arch = "wasm32")]
    $crate::access::bindings::__export_access_filter_world!(WeirExport with_types_in $crate::access::bindings);
            #[cfg(not(target_arch = "wasm32"))]
            let _ = [
                <WeirExport as Guest>::init as *const (),
                <WeirExport as Guest>::check_connection as *const (),
                <WeirExport as Guest>::check_request as *const (),
            ];
        };
    };
}
