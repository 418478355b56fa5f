//! Durations (`"250ms"`, `"5m"`) and byte sizes (`"64MiB"`) as written in the config.

use serde::{Deserialize, Deserializer};

/// A duration written as `"250ms"`, `"5s"`, `"2m"` or a number of milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// Whole seconds.
    pub const fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }
    /// Milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Int(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Int(ms) => Ok(Self::from_millis(ms)),
            Raw::Text(s) => humantime::parse_duration(&s).map(Self).map_err(|e| {
                serde::de::Error::custom(format!("`{s}` is not a duration ({e}); write e.g. \"250ms\" or \"5s\""))
            }),
        }
    }
}

/// A size written as `"64MiB"`, `"512KiB"`, `"1GiB"` or a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Int(b) => Ok(Self(b)),
            Raw::Text(s) => parse_size(&s).map(Self).ok_or_else(|| {
                serde::de::Error::custom(format!("`{s}` is not a size; write e.g. \"64MiB\" or \"512KiB\""))
            }),
        }
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("512 KiB"), Some(512 << 10));
        assert_eq!(parse_size("10"), Some(10));
        assert_eq!(parse_size("10 parsecs"), None);
        assert_eq!(parse_size("MiB"), None);
    }
}
