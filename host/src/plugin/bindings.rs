//! Host-side bindings generated from `wit/` for the worlds weir calls.

pub use crate::plugin::state::{MetricRep, PoolViewRep, RequestRep, SharedCounterRep};

/// The `balancer` world; also defines the shared `types`, `host` and `pool` interfaces.
pub mod balancer {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "balancer",
        imports: { default: trappable },
        with: {
            "weir:plugin/host.shared-counter": super::SharedCounterRep,
            "weir:plugin/host.metric": super::MetricRep,
            "weir:plugin/pool.pool-view": super::PoolViewRep,
        },
    });
}

/// The `access-filter` world; defines the `http` interface.
pub mod access {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "access-filter",
        imports: { default: trappable },
        with: {
            "weir:plugin/types": super::balancer::weir::plugin::types,
            "weir:plugin/host": super::balancer::weir::plugin::host,
            "weir:plugin/http.request": super::RequestRep,
        },
    });
}

pub use balancer::weir::plugin::types;

/// The `router` world.
pub mod router {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "router",
        imports: { default: trappable },
        with: {
            "weir:plugin/types": super::balancer::weir::plugin::types,
            "weir:plugin/host": super::balancer::weir::plugin::host,
            "weir:plugin/http": super::access::weir::plugin::http,
        },
    });
}

/// The `health-checker` world; defines the `io` interface.
pub mod health {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "health-checker",
        imports: { default: trappable },
        with: {
            "weir:plugin/types": super::balancer::weir::plugin::types,
            "weir:plugin/host": super::balancer::weir::plugin::host,
        },
    });
}

/// The `discovery-adapter` world.
pub mod discovery {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "discovery-adapter",
        imports: { default: trappable },
        with: {
            "weir:plugin/types": super::balancer::weir::plugin::types,
            "weir:plugin/host": super::balancer::weir::plugin::host,
            "weir:plugin/io": super::health::weir::plugin::io,
        },
    });
}

/// The `connection` record of a new connection or session, before TLS
/// fills in its `sni`, `alpn` and `client-identity`.
pub fn connection_record(
    client: std::net::SocketAddr,
    local: std::net::SocketAddr,
    listener: u32,
    protocol: types::Protocol,
) -> types::Connection {
    types::Connection {
        client: socket_address(client),
        local: socket_address(local),
        listener,
        protocol,
        sni: None,
        alpn: None,
        client_identity: None,
    }
}

/// The `socket-address` record of an address.
pub fn socket_address(addr: std::net::SocketAddr) -> types::SocketAddress {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            types::IpAddress::Ipv4((a, b, c, d))
        }
        std::net::IpAddr::V6(v6) => {
            let [a, b, c, d, e, f, g, h] = v6.segments();
            types::IpAddress::Ipv6((a, b, c, d, e, f, g, h))
        }
    };
    types::SocketAddress { ip, port: addr.port() }
}
