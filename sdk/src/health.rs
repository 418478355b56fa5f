//! The health-check phase: judge one backend, in the background.
//!
//! Implement [`HealthChecker`] and call [`export_health_checker!`](crate::export_health_checker).
//! The [`io`](crate::io) functions reach the backend being checked without
//! any grant. A checker that expects a banner from the backend:
//!
//! ```
//! use std::time::Duration;
//! use weir_sdk::health::*;
//!
//! struct Banner;
//!
//! impl HealthChecker for Banner {
//!     fn init(_config: Config) -> Result<Self, Error> {
//!         Ok(Banner)
//!     }
//!     fn check(&mut self, target: &Backend) -> Result<Health, Error> {
//!         match io::tcp_probe(&target.address, b"", 64, Duration::from_millis(500)) {
//!             Ok(reply) if reply.starts_with(b"220 ") => Ok(Health::Healthy),
//!             Ok(_) => Ok(Health::Unhealthy("no 220 banner".into())),
//!             // A refused or timed-out probe is unhealthy; I/O the grants
//!             // deny is the instance's error.
//!             Err(e) => unhealthy_from(e),
//!         }
//!     }
//! }
//!
//! weir_sdk::export_health_checker!(Banner);
//! # fn main() {}
//! ```

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "health-checker",
        with: {
            "weir:plugin/host@0.2.0": crate::imports::weir::plugin::host,
            "weir:plugin/types@0.2.0": crate::imports::weir::plugin::types,
            "weir:plugin/io@0.2.0": crate::io::bindings::weir::plugin::io,
        },
        pub_export_macro: true,
        export_macro_name: "__export_health_checker_world",
        default_bindings_module: "weir_sdk::health::bindings",
    });
}

pub use crate::io;
pub use crate::{config::*, host::*, net::*, pick::*, Backend, Connection, Error, IpAddress, Protocol, SocketAddress};
pub use bindings::exports::weir::plugin::healthcheck::Health;

/// A health checker plugin. The host calls `check` for each backend of the
/// pools that use it, at the pool's interval, on a background thread.
pub trait HealthChecker: Sized + 'static {
    /// Build the checker from its instance config.
    fn init(config: Config) -> Result<Self, Error>;

    /// Judge one backend. `Err` means the check itself could not be made
    /// (the host decides what that counts as); a backend that answered
    /// wrongly or not at all is `Ok(Health::Unhealthy(reason))`.
    fn check(&mut self, target: &Backend) -> Result<Health, Error>;
}

/// An unhealthy verdict with a reason for the log.
pub fn unhealthy(reason: impl Into<String>) -> Health {
    Health::Unhealthy(reason.into())
}

/// The verdict for a failed probe: the backend is unhealthy, with the error
/// as the reason, unless the host denied the call (a config problem, not the
/// backend's), which stays an error.
pub fn unhealthy_from(err: Error) -> Result<Health, Error> {
    if err.is_denied() {
        Err(err)
    } else {
        Ok(Health::Unhealthy(err.message().to_string()))
    }
}

/// Export a [`HealthChecker`] implementation as the plugin's `health-checker` world.
#[macro_export]
macro_rules! export_health_checker {
    ($plugin:ty) => {
        const _: () = {
            use $crate::health::bindings::exports::weir::plugin::healthcheck::{Guest, Health};
            use $crate::health::HealthChecker;
            use $crate::imports::weir::plugin::types::{Backend, Error};

            $crate::__plugin_state!($plugin);

            struct WeirExport;

            impl Guest for WeirExport {
                fn init(config: String) -> Result<(), Error> {
                    $crate::__report_panics();
                    let plugin = <$plugin as HealthChecker>::init($crate::Config::from_json(config))?;
                    set_state(plugin);
                    Ok(())
                }
                fn check(target: Backend) -> Result<Health, Error> {
                    with_state(|p| p.check(&target))
                }
            }

            // Exports exist only on wasm32; natively the plugin is a plain
            // library for unit tests, and this keeps its code counted as used.
            #[cfg(target_arch = "wasm32")]
    $crate::health::bindings::__export_health_checker_world!(WeirExport with_types_in $crate::health::bindings);
            #[cfg(not(target_arch = "wasm32"))]
            let _ = [<WeirExport as Guest>::init as *const (), <WeirExport as Guest>::check as *const ()];
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_probes_are_unhealthy_but_denials_are_errors() {
        let h = unhealthy_from(Error::Other("connection refused".into())).unwrap();
        assert!(matches!(h, Health::Unhealthy(m) if m == "connection refused"));
        assert!(unhealthy_from(Error::Other("denied: 10.0.0.9:80 is not granted".into())).is_err());
    }
}
