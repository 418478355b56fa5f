use weir_sdk::balancer::*;

/// The instance config (`config = { ... }` in weir's TOML).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Skip this many backends on every pick (a toy knob to show config).
    #[serde(default)]
    offset: u32,
}

struct TYPE {
    offset: u32,
}

/// The decision, kept free of host calls so it is unit-tested natively: the
/// eligible backend a request's `x-pick: N` header names, else the next in
/// turn, `offset` further on.
pub fn choose(pinned: Option<&str>, sequence: u64, offset: u32, eligible: u32) -> u32 {
    match pinned.and_then(|n| n.trim().parse::<u32>().ok()) {
        Some(n) if n < eligible => n,
        _ => ((sequence + offset as u64) % eligible as u64) as u32,
    }
}

impl Balancer for TYPE {
    fn init(config: Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        Ok(Self { offset: s.offset })
    }

    fn pick(&mut self, pool: &PoolView, ctx: &PickContext, _key: Option<&str>) -> Result<Choice, Error> {
        let n = eligible_or_err(ctx)?;
        // HTTP requests only (None on L4); a host call, like every `pool` read.
        let pinned = pool.request_header("x-pick");
        Ok(Choice::EligibleIndex(choose(pinned.as_deref(), ctx.sequence, self.offset, n)))
    }
}

weir_sdk::export_balancer!(TYPE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_go_round_the_eligible_backends() {
        let picks: Vec<u32> = (0..6).map(|seq| choose(None, seq, 1, 3)).collect();
        assert_eq!(picks, vec![1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn a_pick_header_names_an_eligible_backend() {
        assert_eq!(choose(Some("2"), 0, 1, 3), 2);
        assert_eq!(choose(Some("7"), 0, 1, 3), 1, "out of range: in turn");
        assert_eq!(choose(Some("x"), 1, 1, 3), 2, "not a number: in turn");
    }
}
