//! `weir-sdk`: everything a Rust plugin for weir needs.
//!
//! A plugin is a `cdylib` crate that enables the feature of its phase
//! (`balancer`, `access-filter`, ...), implements that phase's trait and calls
//! the matching export macro. A whole round-robin balancer:
//!
//! ```ignore
//! use weir_sdk::balancer::*;
//!
//! struct RoundRobin;
//!
//! impl Balancer for RoundRobin {
//!     fn init(_config: Config) -> Result<Self, Error> {
//!         Ok(RoundRobin)
//!     }
//!     fn pick(&mut self, _pool: &PoolView, ctx: &PickContext, _conn: &Connection, _key: Option<&str>)
//!         -> Result<Choice, Error> {
//!         let n = eligible_or_err(ctx)?;
//!         Ok(Choice::EligibleIndex((ctx.sequence % n as u64) as u32))
//!     }
//! }
//!
//! weir_sdk::export_balancer!(RoundRobin);
//! ```

#![deny(missing_docs)]

#[doc(hidden)]
pub mod imports {
    wit_bindgen::generate!({
        path: "../wit",
        world: "imports",
    });
}

mod common;
pub use common::*;

#[cfg(feature = "balancer")]
pub mod balancer;

#[cfg(feature = "access-filter")]
pub mod access;

#[cfg(feature = "router")]
pub mod router;

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;
