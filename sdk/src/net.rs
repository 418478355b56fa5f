//! Addresses: WIT addresses as standard ones, and `host:port` strings.

use crate::{Connection, IpAddress};

/// A WIT address as a standard one.
pub fn ip_addr(ip: &IpAddress) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match *ip {
        IpAddress::Ipv4((a, b, c, d)) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
    }
}

/// The client's IP address of a connection.
pub fn client_ip(conn: &Connection) -> std::net::IpAddr {
    ip_addr(&conn.client.ip)
}

/// Split `host:port` into its host and port. An IPv6 host is written in
/// brackets (`[::1]:80`) and returned without them. `None` when there is no
/// port, the port is not a number in `0..=65535`, or the host is empty.
pub fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, rest) = rest.split_once(']')?;
        (host, rest.strip_prefix(':')?)
    } else {
        let (host, port) = address.rsplit_once(':')?;
        if host.contains(':') {
            // An unbracketed IPv6 address: ambiguous, refused.
            return None;
        }
        (host, port)
    };
    if host.is_empty() || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((host, port.parse().ok()?))
}

/// `host:port`, with an IPv6 host in brackets (`[::1]:80`).
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_round_trips() {
        assert_eq!(split_host_port("10.0.0.1:80"), Some(("10.0.0.1", 80)));
        assert_eq!(split_host_port("db.example.com:5432"), Some(("db.example.com", 5432)));
        assert_eq!(split_host_port("[::1]:8080"), Some(("::1", 8080)));
        assert_eq!(split_host_port("[fe80::1%eth0]:1"), Some(("fe80::1%eth0", 1)));
        assert_eq!(join_host_port("::1", 80), "[::1]:80");
        assert_eq!(join_host_port("a.b", 80), "a.b:80");
        assert_eq!(join_host_port("[::1]", 80), "[::1]:80");
    }

    #[test]
    fn bad_addresses_are_refused() {
        for bad in ["", "host", "host:", ":80", "host:http", "host:65536", "::1:80", "[::1]", "[::1]80", "h:+1"] {
            assert_eq!(split_host_port(bad), None, "{bad}");
        }
    }
}
