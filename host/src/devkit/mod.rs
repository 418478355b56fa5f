//! The plugin author's tools, used by `weir plugin ...`: scaffolding and
//! building projects (`new`, `build`), and running a component against
//! cases or logged traffic (`test`, `replay`). They use the runtime; the
//! runtime never uses them.

pub mod scaffold;
pub mod testkit;
