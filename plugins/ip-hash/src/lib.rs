//! Bundled balancer `ip-hash`: a hash of the client address (computed by
//! the host, `pick-context.client-hash`) modulo the
//! eligible backends, as gobetween's `iphash`. A client stays on one backend
//! while the eligible set does not change; use `consistent-hash` when
//! backends come and go.

use weir_sdk::balancer::*;

/// The hash of an address's bytes: the host's `pick-context.client-hash`.
pub fn ip_hash(ip: std::net::IpAddr) -> u64 {
    match ip {
        std::net::IpAddr::V4(v4) => hash64(&v4.octets()),
        std::net::IpAddr::V6(v6) => hash64(&v6.octets()),
    }
}

struct IpHash;

impl Balancer for IpHash {
    fn init(_config: Config) -> Result<Self, Error> {
        Ok(IpHash)
    }

    fn pick(&mut self, _pool: &PoolView, ctx: &PickContext, _key: Option<&str>) -> Result<Choice, Error> {
        let n = eligible_or_err(ctx)?;
        Ok(Choice::EligibleIndex((ctx.client_hash % n as u64) as u32))
    }
}

weir_sdk::export_balancer!(IpHash);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_addresses_evenly() {
        let mut counts = [0u32; 4];
        for i in 0..40_000u32 {
            let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            counts[(ip_hash(ip) % 4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (9_500..10_500).contains(&c)), "{counts:?}");
    }
}
