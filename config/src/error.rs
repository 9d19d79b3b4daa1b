//! Load errors that point a user at the exact file, line and field that is wrong.

use std::fmt;
use std::path::PathBuf;

/// A resource file that could not be read, parsed or validated.
///
/// Displays as `path:line:column: field: what was wrong (what was expected)`, the form
/// compilers use, so editors and terminals can jump to it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    pub file: PathBuf,
    /// 1-based line, when the problem can be pinned to one.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// The message, starting with the field path (`spec.type: …`) when there is one.
    pub message: String,
}

impl LoadError {
    pub(crate) fn new(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        LoadError {
            file: file.into(),
            line: None,
            column: None,
            message: message.into(),
        }
    }

    pub(crate) fn at(mut self, line: usize, column: usize) -> Self {
        self.line = Some(line);
        self.column = Some(column);
        self
    }

    /// Builds a load error from a YAML (de)serialisation error, keeping its position but not
    /// the " at line N column M" tail, which we print in front instead. `field` is the serde
    /// path of the failing field (more exact than the YAML parser's own, which stops at the
    /// enclosing mapping).
    pub(crate) fn from_yaml(
        file: impl Into<PathBuf>,
        field: Option<String>,
        err: &serde_norway::Error,
    ) -> Self {
        let mut message = err.to_string();
        if let Some(idx) = message.rfind(" at line ") {
            message.truncate(idx);
        }
        if let Some(field) = field.filter(|f| !f.is_empty() && f != ".") {
            // The parser prefixes its own, shorter path ("spec: "); replace it with the exact one.
            if let Some((prefix, rest)) = message.split_once(": ") {
                if !prefix.contains(' ') && field.starts_with(prefix.trim_end_matches('.')) {
                    message = rest.to_string();
                }
            }
            message = format!("{field}: {message}");
        }
        let error = LoadError::new(file, message);
        match err.location() {
            Some(loc) => error.at(loc.line(), loc.column()),
            None => error,
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}
