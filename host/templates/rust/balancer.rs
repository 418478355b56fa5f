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

/// The decision, kept free of host calls so it is unit-tested natively.
pub fn choose(sequence: u64, offset: u32, eligible: u32) -> u32 {
    ((sequence + offset as u64) % eligible as u64) as u32
}

impl Balancer for TYPE {
    fn init(config: Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        Ok(Self { offset: s.offset })
    }

    fn pick(&mut self, _pool: &PoolView, ctx: &PickContext, _key: Option<&str>) -> Result<Choice, Error> {
        let n = eligible_or_err(ctx)?;
        Ok(Choice::EligibleIndex(choose(ctx.sequence, self.offset, n)))
    }
}

weir_sdk::export_balancer!(TYPE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_go_round_the_eligible_backends() {
        let picks: Vec<u32> = (0..6).map(|seq| choose(seq, 1, 3)).collect();
        assert_eq!(picks, vec![1, 2, 0, 1, 2, 0]);
    }
}
