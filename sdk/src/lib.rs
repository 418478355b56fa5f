//! `weir-sdk`: everything a Rust plugin for weir needs.
//!
//! A plugin is a `cdylib` crate that enables the feature of its phase
//! (`balancer`, `access-filter`, ...), implements that phase's trait and calls
//! the matching export macro. Health checkers (`health-checker`) and
//! discovery adapters (`discovery-adapter`) also get the `io` module (in those
//! features only). A whole round-robin balancer:
//!
//! ```
//! use weir_sdk::balancer::*;
//!
//! struct RoundRobin;
//!
//! impl Balancer for RoundRobin {
//!     fn init(_config: Config) -> Result<Self, Error> {
//!         Ok(RoundRobin)
//!     }
//!     fn pick(&mut self, _pool: &PoolView, ctx: &PickContext, _key: Option<&str>)
//!         -> Result<Choice, Error> {
//!         let n = eligible_or_err(ctx)?;
//!         Ok(Choice::EligibleIndex((ctx.sequence % n as u64) as u32))
//!     }
//! }
//!
//! weir_sdk::export_balancer!(RoundRobin);
//! # fn main() {}
//! ```
//!
//! Each phase module has an example of its own; they are compiled (and the
//! ones that need no host, run) by `cargo test -p weir-sdk --doc --all-features`.

#![deny(missing_docs)]

#[doc(hidden)]
pub mod imports {
    wit_bindgen::generate!({
        path: "../wit",
        world: "imports",
    });
}

pub use imports::weir::plugin::types::{Backend, Connection, Error, IpAddress, Protocol, SocketAddress};

mod config;
pub use config::*;

mod host;
pub use host::*;

mod net;
pub use net::*;

mod pick;
pub use pick::*;

mod scan;
pub use scan::*;

#[cfg(feature = "balancer")]
pub mod balancer;

#[cfg(feature = "access-filter")]
pub mod access;

#[cfg(feature = "router")]
pub mod router;

#[cfg(any(feature = "health-checker", feature = "discovery-adapter"))]
pub mod io;

#[cfg(feature = "health-checker")]
pub mod health;

#[cfg(feature = "discovery-adapter")]
pub mod discovery;

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// Make a panic's message reach weir's log (the export macros call this
/// from `init`). A plugin is built with `panic = "abort"` for
/// `wasm32-unknown-unknown`, which has no stderr: without this the host
/// would see only the trap. The host keeps the message and names it with
/// the trap that follows.
#[doc(hidden)]
pub fn __report_panics() {
    // Natively (a plugin's unit tests) panics print as usual.
    #[cfg(target_arch = "wasm32")]
    static HOOK: std::sync::Once = std::sync::Once::new();
    #[cfg(target_arch = "wasm32")]
    HOOK.call_once(|| {
        // `panicked at src/lib.rs:12:5:\nindex out of bounds: ...`
        std::panic::set_hook(Box::new(|info| log(LogLevel::Error, &info.to_string())));
    });
}

/// The per-instance plugin value behind every export macro: `STATE` holds
/// the value `init` built, `with_state` lends it to a call.
#[doc(hidden)]
#[macro_export]
macro_rules! __plugin_state {
    ($plugin:ty) => {
        thread_local! {
            static STATE: std::cell::RefCell<Option<$plugin>> = const { std::cell::RefCell::new(None) };
        }

        fn set_state(plugin: $plugin) {
            STATE.with_borrow_mut(|s| *s = Some(plugin));
        }

        fn with_state<R>(f: impl FnOnce(&mut $plugin) -> Result<R, $crate::Error>) -> Result<R, $crate::Error> {
            STATE.with_borrow_mut(|s| match s.as_mut() {
                Some(p) => f(p),
                None => Err($crate::Error::Other("plugin not initialised".into())),
            })
        }
    };
}
