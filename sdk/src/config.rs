//! A plugin instance's config, read into the plugin's own type, and the
//! errors a plugin reports.

use crate::Error;

/// The JSON config of a plugin instance, as written in weir's TOML config.
#[derive(Debug, Clone)]
pub struct Config(String);

impl Config {
    #[doc(hidden)]
    pub fn from_json(json: String) -> Self {
        Self(json)
    }

    /// The raw JSON text.
    pub fn as_json(&self) -> &str {
        &self.0
    }

    /// Deserialize into the plugin's own config type. An empty config reads
    /// as an empty table. The error names the key that does not fit, as a
    /// path (`checks[2].port: invalid type: ...`), and `?` turns it into
    /// [`Error::InvalidConfig`], which weir reports at load with the file and
    /// line of the instance's `config`.
    ///
    /// ```
    /// use weir_sdk::Config;
    ///
    /// #[derive(serde::Deserialize, Debug)]
    /// #[serde(deny_unknown_fields)]
    /// struct Settings {
    ///     prefix: String,
    ///     #[serde(default)]
    ///     weights: Vec<u32>,
    /// }
    ///
    /// let ok: Settings = Config::from_json(r#"{"prefix": "/api/"}"#.into()).parse().unwrap();
    /// assert_eq!((ok.prefix.as_str(), ok.weights.len()), ("/api/", 0));
    ///
    /// let bad = Config::from_json(r#"{"prefix": "/", "weights": [1, "x"]}"#.into()).parse::<Settings>();
    /// assert!(bad.unwrap_err().starts_with("weights[1]: invalid type"));
    /// let typo = Config::from_json(r#"{"prefx": "/"}"#.into()).parse::<Settings>();
    /// assert!(typo.unwrap_err().contains("unknown field `prefx`"));
    /// ```
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        let text = if self.0.trim().is_empty() { "{}" } else { &self.0 };
        let mut de = serde_json::Deserializer::from_str(text);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                inner.to_string()
            } else {
                format!("{path}: {inner}")
            }
        })?;
        de.end().map_err(|e| e.to_string())?;
        Ok(value)
    }
}

impl Error {
    /// The message, whatever the kind.
    pub fn message(&self) -> &str {
        match self {
            Error::InvalidConfig(m) | Error::Unavailable(m) | Error::Other(m) => m,
        }
    }

    /// Whether the host refused an I/O call the instance's grants do not allow.
    pub fn is_denied(&self) -> bool {
        matches!(self, Error::Other(m) if m.starts_with("denied"))
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error::InvalidConfig(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        #[serde(default)]
        port: u16,
        #[serde(default)]
        inner: Vec<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        weight: u32,
    }

    fn parse(json: &str) -> Result<Sample, String> {
        Config::from_json(json.into()).parse()
    }

    #[test]
    fn config_errors_name_the_key() {
        assert_eq!(parse("").unwrap().port, 0);
        assert!(parse(r#"{"port": "x"}"#).unwrap_err().starts_with("port: invalid type: string"));
        assert!(parse(r#"{"inner": [{"weight": 1}, {"weight": -1}]}"#).unwrap_err().starts_with("inner[1].weight: "));
        assert!(parse(r#"{"prot": 1}"#).unwrap_err().contains("unknown field `prot`"));
        assert!(parse(r#"{"port": 1} x"#).unwrap_err().contains("trailing characters"));
    }
}
