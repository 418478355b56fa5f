//! Test balancer `scan-check`: its `init` runs the SDK's scans
//! (`nth_min_u32`, `nth_min_u64`, `nth_min_product`), which use 128-bit SIMD
//! on wasm32 only, over many pseudo-random inputs and compares each answer
//! with the plain two-pass `nth_min`; a mismatch refuses the config with
//! the input that failed. Picks are round-robin.

use weir_sdk::balancer::*;

/// Every disagreement between the scans and `nth_min`, described.
pub fn disagreements() -> Vec<String> {
    let mut rng = FastRng::from_seed(0x9e37_79b9_7f4a_7c15u64);
    let mut next = move || rng.next_u64();
    let mut bad = Vec::new();
    for round in 0..3000 {
        // Lengths around the SIMD block sizes, and a large pool now and then.
        let n = if round % 50 == 0 { 1024 + (next() % 70) as usize } else { (next() % 150) as usize };
        let spread = [1u64, 2, 3, 50, 1 << 16, 1 << 32, u64::MAX][round % 7];
        let a: Vec<u32> = (0..n).map(|_| (next() % spread.min(1 << 32)) as u32).collect();
        let b: Vec<u32> = (0..n)
            .map(|_| if round % 5 == 0 { u32::MAX - (next() % 3) as u32 } else { (next() % 7 + 1) as u32 })
            .collect();
        let wide: Vec<u64> = (0..n).map(|_| next() % spread.max(1)).collect();
        let turn = next();
        let offset = (round % 2) as u32;
        let product = |i: usize| a[i] as u64 * (b[i] as u64 + offset as u64);
        let checks = [
            ("nth_min_u32", nth_min_u32(&a, turn), nth_min(n, |i| a[i] as u64, turn)),
            ("nth_min_u64", nth_min_u64(&wide, turn), nth_min(n, |i| wide[i], turn)),
            ("nth_min_product", nth_min_product(&a, &b, offset, turn), nth_min(n, product, turn)),
        ];
        for (name, got, want) in checks {
            if got != want {
                bad.push(format!("{name}: round {round}, {n} keys, turn {turn}: {got}, not {want}"));
            }
        }
    }
    bad
}

struct ScanCheck;

impl Balancer for ScanCheck {
    fn init(_config: Config) -> Result<Self, Error> {
        match disagreements().first() {
            None => Ok(ScanCheck),
            Some(first) => Err(Error::InvalidConfig(first.clone())),
        }
    }

    fn pick(&mut self, _pool: &PoolView, ctx: &PickContext, _key: Option<&str>) -> Result<Choice, Error> {
        let n = eligible_or_err(ctx)?;
        Ok(Choice::EligibleIndex((ctx.sequence % n as u64) as u32))
    }
}

weir_sdk::export_balancer!(ScanCheck);

#[cfg(test)]
mod tests {
    #[test]
    fn the_portable_scans_agree_natively() {
        assert_eq!(super::disagreements(), Vec::<String>::new());
    }
}
