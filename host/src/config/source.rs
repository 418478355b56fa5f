//! Where a config comes from and how its errors point into it.

use std::path::Path;
use toml::Spanned;

/// A config error: where it is and what is wrong, as one line.
#[derive(Debug, thiserror::Error)]
#[error("{origin}:{line}:{column}: {message}")]
pub struct ConfigError {
    /// The file (or other origin) the config came from.
    pub origin: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong, naming the key.
    pub message: String,
}

/// Config text with its origin, to turn byte offsets into line and column.
#[derive(Debug, Clone)]
pub struct Source {
    /// File name or other origin shown in errors.
    pub origin: String,
    /// The TOML text.
    pub text: String,
}

impl Source {
    /// Read a config file.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: path.display().to_string(),
            line: 1,
            column: 1,
            message: format!("cannot read config: {e}"),
        })?;
        Ok(Self { origin: path.display().to_string(), text })
    }

    /// An error at a byte offset.
    pub fn error_at(&self, offset: usize, message: impl Into<String>) -> ConfigError {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ConfigError { origin: self.origin.clone(), line, column, message: message.into() }
    }

    /// An error at a spanned value.
    pub fn error<T>(&self, at: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        self.error_at(at.span().start, message)
    }
}
