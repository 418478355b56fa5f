//! weir: a programmable L4/L7 load balancer whose decisions (access, route,
//! balance, health check, discovery) are WebAssembly components.
//!
//! The binary is a thin CLI over this library; integration tests drive the
//! library in-process and the binary as a user would.

pub mod access_log;
pub mod acme;
pub mod admin;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod devkit;
pub mod discovery;
pub mod handover;
pub mod health;
pub mod histogram;
pub mod l4;
pub mod l7;
#[cfg(test)]
mod layers;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod overload;
pub mod pipeline;
pub mod plugin;
pub mod proxy_protocol;
pub mod server;
pub mod tls;
pub mod udp;
pub mod upgrade;
pub mod upstream;
pub mod workers;

pub use app::Server;
pub use server::Prepared;
