//! Secrets kept out of the config text. Wherever a secret goes (the admin
//! token, any value in a plugin's `config`), it may be written as a
//! reference instead: `{ secret_env = "NAME" }` (an environment variable)
//! or `{ secret_file = "path" }` (a file, relative to the config file; one
//! trailing newline is dropped). The reference is resolved each time the
//! config is loaded, so the text, and `GET /config`, never holds the secret.

use serde::Deserialize;
use std::path::Path;

/// A secret as written in the config: inline, or a reference.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Secret {
    /// The secret itself (shown by `GET /config` as `<redacted>`).
    Inline(String),
    /// Where to read it.
    Reference(SecretRef),
}

/// `{ secret_env = "NAME" }` or `{ secret_file = "path" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    secret_env: Option<String>,
    secret_file: Option<String>,
}

impl Secret {
    /// The secret's value.
    pub fn resolve(&self, base_dir: &Path) -> Result<String, String> {
        match self {
            Secret::Inline(s) => Ok(s.clone()),
            Secret::Reference(r) => r.resolve(base_dir),
        }
    }
}

impl SecretRef {
    fn resolve(&self, base_dir: &Path) -> Result<String, String> {
        match (&self.secret_env, &self.secret_file) {
            (Some(name), None) => {
                std::env::var(name).map_err(|_| format!("the environment variable `{name}` is not set"))
            }
            (None, Some(file)) => {
                let path = base_dir.join(file);
                let text =
                    std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let text = text.strip_suffix('\n').unwrap_or(&text);
                Ok(text.strip_suffix('\r').unwrap_or(text).to_string())
            }
            _ => Err("a secret reference names one of `secret_env` or `secret_file`".into()),
        }
    }
}

/// Replace every secret reference in a plugin's config table by its value.
pub fn resolve_table(table: &mut toml::Table, base_dir: &Path) -> Result<(), String> {
    for (key, value) in table.iter_mut() {
        resolve_value(value, base_dir).map_err(|e| format!("{key}: {e}"))?;
    }
    Ok(())
}

fn resolve_value(value: &mut toml::Value, base_dir: &Path) -> Result<(), String> {
    match value {
        toml::Value::Table(t) if t.contains_key("secret_env") || t.contains_key("secret_file") => {
            let reference = SecretRef::deserialize(toml::Value::Table(t.clone())).map_err(|e| e.to_string())?;
            *value = toml::Value::String(reference.resolve(base_dir)?);
            Ok(())
        }
        toml::Value::Table(t) => resolve_table(t, base_dir),
        toml::Value::Array(items) => items
            .iter_mut()
            .enumerate()
            .try_for_each(|(i, v)| resolve_value(v, base_dir).map_err(|e| format!("[{i}]: {e}"))),
        _ => Ok(()),
    }
}

/// A config text as `GET /config` shows it: an inline admin token
/// replaced by `"<redacted>"` (references show only where the secret is).
/// Secrets written inline in a plugin's `config` are the plugin's own keys,
/// which weir cannot tell from the others: write them as references.
pub fn redacted(text: &str) -> String {
    let Ok(config) = toml::from_str::<super::Config>(text) else { return text.to_string() };
    match config.admin.and_then(|a| a.token) {
        Some(token) if matches!(token.get_ref(), Secret::Inline(_)) => {
            let span = token.span();
            format!("{}\"<redacted>\"{}", &text[..span.start], &text[span.end..])
        }
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_from_the_environment_and_files() {
        let dir = std::env::temp_dir().join(format!("weir-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "s3cret\n").unwrap();
        std::env::set_var("WEIR_TEST_SECRET_A", "from-env");
        let shown = redacted("[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"hunter2\"\n");
        assert_eq!(shown, "[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"<redacted>\"\n");
        let mut table: toml::Table = toml::from_str(
            r#"
            plain = "x"
            token = { secret_env = "WEIR_TEST_SECRET_A" }
            nested = { list = [{ secret_file = "token" }, "y"] }
            "#,
        )
        .unwrap();
        resolve_table(&mut table, &dir).unwrap();
        assert_eq!(table["plain"].as_str(), Some("x"));
        assert_eq!(table["token"].as_str(), Some("from-env"));
        assert_eq!(table["nested"]["list"][0].as_str(), Some("s3cret"));
        let mut missing: toml::Table = toml::from_str(r#"t = { secret_env = "WEIR_TEST_SECRET_UNSET" }"#).unwrap();
        let e = resolve_table(&mut missing, &dir).unwrap_err();
        assert_eq!(e, "t: the environment variable `WEIR_TEST_SECRET_UNSET` is not set");
        let mut both: toml::Table = toml::from_str(r#"t = { secret_env = "A", secret_file = "b" }"#).unwrap();
        assert!(resolve_table(&mut both, &dir).unwrap_err().contains("one of"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
