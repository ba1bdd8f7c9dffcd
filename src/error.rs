//! The library's error type: one enum per concern would scatter matching across callers, so the crate
//! exposes a single [`Error`] whose variants say what was wrong and where.
use std::path::PathBuf;

/// Errors returned by the vlm3d library. Binaries wrap them in `anyhow` at their edges.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value that violates a documented invariant (NaN, negative size, empty prompt, …).
    #[error("invalid {what}: {why}")]
    Invalid { what: String, why: String },
    /// An I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file whose content cannot be parsed; `record` names the record (table row, message, tensor) when known.
    #[error("{path}{}: {why}", record.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Format {
        path: PathBuf,
        record: Option<String>,
        why: String,
    },
    /// A tensor operation failed (shape mismatch, device error, …).
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    /// Anything from the ROS 2 layer.
    #[error("ROS 2: {0}")]
    Ros(String),
}

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(what: impl Into<String>, why: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            why: why.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`Error::Format`].
    pub fn format(
        path: impl Into<PathBuf>,
        record: Option<String>,
        why: impl Into<String>,
    ) -> Self {
        Error::Format {
            path: path.into(),
            record,
            why: why.into(),
        }
    }
}
