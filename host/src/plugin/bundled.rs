//! The bundled plugins, built from `plugins/` by `build.rs` and embedded.

include!(concat!(env!("OUT_DIR"), "/bundled.rs"));

/// The component bytes of bundled plugin `name`.
pub fn bundled(name: &str) -> Option<&'static [u8]> {
    BUNDLED.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}
