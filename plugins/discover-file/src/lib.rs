//! Bundled discovery adapter `discover-file`: backends listed in a file, one
//! per line as `host:port [weight=N] [priority=N] [tags=a,b]`; `#` comments
//! and blank lines are ignored. The file is read on every discovery round.
//!
//! ```toml
//! [plugins.from-file]
//! source = "builtin:discover-file"
//! config = { path = "/etc/weir/backends.txt" }
//! grants = { files = ["/etc/weir/backends.txt"] }
//! ```

use serde::Deserialize;
use weir_sdk::discovery::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    path: String,
}

/// The file's path, validated.
pub fn path(config: &Config) -> Result<String, Error> {
    let s: Settings = config.parse()?;
    if s.path.trim().is_empty() {
        return Err(Error::InvalidConfig("path: must not be empty".into()));
    }
    Ok(s.path)
}

/// The backends in a file's contents; an error names the file and line.
pub fn parse(path: &str, contents: &[u8]) -> Result<Vec<Discovered>, Error> {
    let text = std::str::from_utf8(contents).map_err(|e| Error::Other(format!("{path}: not UTF-8: {e}")))?;
    parse_backend_lines(text).map_err(|e| Error::Other(format!("{path}: {e}")))
}

struct DiscoverFile {
    path: String,
}

impl Discovery for DiscoverFile {
    fn init(config: Config) -> Result<Self, Error> {
        Ok(Self { path: path(&config)? })
    }

    fn discover(&mut self) -> Result<Vec<Discovered>, Error> {
        parse(&self.path, &io::read_file(&self.path)?)
    }
}

weir_sdk::export_discovery!(DiscoverFile);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_contents() {
        let text = b"# pool a\n10.0.0.1:80 weight=2\n10.0.0.2:80\tpriority=1\r\n\n[2001:db8::1]:80 # v6\n";
        let got = parse("/etc/b.txt", text).unwrap();
        let addrs: Vec<_> = got.iter().map(|d| (d.address.as_str(), d.weight, d.priority)).collect();
        assert_eq!(addrs, [("10.0.0.1:80", 2, 0), ("10.0.0.2:80", 1, 1), ("[2001:db8::1]:80", 1, 0)]);
        assert!(parse("/e", b"").unwrap().is_empty());
        assert!(parse("/e", b"# only comments\n\n").unwrap().is_empty());
    }

    #[test]
    fn errors_name_file_and_line() {
        let Err(Error::Other(m)) = parse("/etc/b.txt", b"a:1\nb:2 weight=heavy\n") else { panic!() };
        assert_eq!(m, "/etc/b.txt: line 2: `weight=heavy`: `heavy` is not a whole number");
        assert!(parse("/e", b"\xff:1").is_err());
    }

    #[test]
    fn config() {
        assert_eq!(path(&Config::from_json(r#"{"path": "/x"}"#.into())).unwrap(), "/x");
        let Err(Error::InvalidConfig(m)) = path(&Config::from_json("{}".into())) else { panic!() };
        assert!(m.contains("missing field `path`"), "{m}");
        let Err(Error::InvalidConfig(m)) = path(&Config::from_json(r#"{"path": ""}"#.into())) else { panic!() };
        assert_eq!(m, "path: must not be empty");
    }
}
