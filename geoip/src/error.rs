//! [`GeoipError`]: what went wrong with which database file.

use std::{io, path::PathBuf};

/// An error reading a GeoIP source. Every variant names the file (and the
/// line, for CSV) and says what is wrong, so the message alone is enough for
/// an operator to fix the input.
#[derive(Debug, thiserror::Error)]
pub enum GeoipError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The database file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file is neither a MaxMind DB nor a CSV text file.
    #[error("{}: unrecognised format: {reason}", path.display())]
    Format {
        /// The database file.
        path: PathBuf,
        /// Why neither format applies.
        reason: String,
    },
    /// The MaxMind DB reader rejected the file (truncated, corrupt, …).
    #[error("{}: invalid MaxMind DB: {source}", path.display())]
    Mmdb {
        /// The database file.
        path: PathBuf,
        /// The reader's error.
        #[source]
        source: maxminddb::MaxMindDbError,
    },
    /// The MaxMind DB is well formed but unusable as a country database.
    #[error("{}: {message}", path.display())]
    Database {
        /// The database file.
        path: PathBuf,
        /// What is wrong with its content.
        message: String,
    },
    /// A CSV line is malformed.
    #[error("{}:{line}: {message}", path.display())]
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong, quoting the offending text.
        message: String,
    },
    /// A JSON range file (a cloud provider's) is malformed.
    #[error("{}: {at}: {message}", path.display())]
    Json {
        /// The range file.
        path: PathBuf,
        /// Where: the entry (`prefixes[12]`, `values[3] (AzureCloud)`) or,
        /// for invalid JSON, the line and column.
        at: String,
        /// What is wrong, quoting the offending entry.
        message: String,
    },
}

impl GeoipError {
    /// The file the error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            GeoipError::Io { path, .. }
            | GeoipError::Format { path, .. }
            | GeoipError::Mmdb { path, .. }
            | GeoipError::Database { path, .. }
            | GeoipError::Csv { path, .. }
            | GeoipError::Json { path, .. } => path,
        }
    }
}
