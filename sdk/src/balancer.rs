//! The balance phase: pick a backend of a pool.
//!
//! Implement [`Balancer`] and call [`export_balancer!`](crate::export_balancer).

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "balancer",
        with: {
            "weir:plugin/host@0.2.0": crate::imports::weir::plugin::host,
            "weir:plugin/types@0.2.0": crate::imports::weir::plugin::types,
        },
        pub_export_macro: true,
        export_macro_name: "__export_balancer_world",
        default_bindings_module: "weir_sdk::balancer::bindings",
    });
}

pub use crate::{config::*, host::*, net::*, pick::*, Backend, Connection, Error, IpAddress, Protocol, SocketAddress};
pub use crate::{nth_min_product, nth_min_u32, nth_min_u64, weight_scale};
pub use bindings::exports::weir::plugin::balance::{Choice, PickContext};
pub use bindings::weir::plugin::pool::PoolView;

/// A balancer plugin. One value lives per plugin instance (per worker thread);
/// state that must be shared across threads belongs in a [`SharedCounter`].
pub trait Balancer: Sized + 'static {
    /// Build the balancer from its instance config.
    fn init(config: Config) -> Result<Self, Error>;

    /// The static data of a pool's backends, sent when the pool is created or changes.
    fn set_backends(&mut self, _pool: u32, _backends: Vec<Backend>) -> Result<(), Error> {
        Ok(())
    }

    /// Pick an eligible backend: by slot, or by its index among the eligible ones.
    /// `pool.connection()` gives the whole connection record when
    /// `ctx.client_hash` is not enough.
    fn pick(&mut self, pool: &PoolView, ctx: &PickContext, hash_key: Option<&str>) -> Result<Choice, Error>;
}

impl PickContext {
    /// Whether `slot` is eligible: from `eligible-mask` for the first 64
    /// slots, else asked of the host.
    pub fn is_eligible(&self, pool: &PoolView, slot: u32) -> bool {
        if slot < 64 {
            self.eligible_mask & (1 << slot) != 0
        } else {
            pool.is_eligible(slot)
        }
    }

    /// The eligible slots in slot order: from `eligible-mask` when it holds
    /// them all (pools of up to 64 backends, the usual case), else asked of
    /// the host.
    pub fn eligible_slots(&self, pool: &PoolView) -> Vec<u32> {
        if self.eligible_mask.count_ones() == self.eligible_count {
            (0..64).filter(|&s| self.eligible_mask & (1 << s) != 0).collect()
        } else {
            pool.eligible_slots()
        }
    }
}

/// The number of eligible backends, or an `unavailable` error when there are none.
pub fn eligible_or_err(ctx: &PickContext) -> Result<u32, Error> {
    match ctx.eligible_count {
        0 => Err(Error::Unavailable("no eligible backend".into())),
        n => Ok(n),
    }
}

/// Export a [`Balancer`] implementation as the plugin's `balancer` world.
#[macro_export]
macro_rules! export_balancer {
    ($plugin:ty) => {
        const _: () = {
            use $crate::balancer::bindings::exports::weir::plugin::balance::{Choice, Guest, PickContext};
            use $crate::balancer::bindings::weir::plugin::pool::PoolView;
            use $crate::balancer::Balancer;
            use $crate::imports::weir::plugin::types::{Backend, Error};

            $crate::__plugin_state!($plugin);

            struct WeirExport;

            impl Guest for WeirExport {
                fn init(config: String) -> Result<(), Error> {
                    $crate::__report_panics();
                    let plugin = <$plugin as Balancer>::init($crate::Config::from_json(config))?;
                    set_state(plugin);
                    Ok(())
                }
                fn set_backends(pool: u32, backends: Vec<Backend>) -> Result<(), Error> {
                    with_state(|p| p.set_backends(pool, backends))
                }
                fn pick(pool: &PoolView, ctx: PickContext, hash_key: Option<String>) -> Result<Choice, Error> {
                    with_state(|p| p.pick(pool, &ctx, hash_key.as_deref()))
                }
            }

            // Exports exist only on wasm32; natively the plugin is a plain
            // library for unit tests, and this keeps its code counted as used.
            #[cfg(target_arch = "wasm32")]
    $crate::balancer::bindings::__export_balancer_world!(WeirExport with_types_in $crate::balancer::bindings);
            #[cfg(not(target_arch = "wasm32"))]
            let _ = [
                <WeirExport as Guest>::init as *const (),
                <WeirExport as Guest>::set_backends as *const (),
                <WeirExport as Guest>::pick as *const (),
            ];
        };
    };
}
