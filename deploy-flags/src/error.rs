//! Errors of loading, updating and persisting flags.

use deploy_core::StoreError;

/// Why a flag definition, a source or an update was refused. The previous snapshot keeps
/// serving whenever one of these is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlagError {
    /// The text is not valid JSON or YAML of the expected shape.
    #[error("cannot read {origin} as {format}: {message}")]
    Parse {
        /// Where the text came from (a path, "unleash client features", ...).
        origin: String,
        /// The format expected.
        format: &'static str,
        /// The parser's message, with line and column where it gives them.
        message: String,
    },
    /// A flag is well-formed but says something impossible.
    #[error("flag `{flag}`: {field}: {reason}")]
    InvalidFlag {
        /// The flag's name.
        flag: String,
        /// Path of the offending field inside the flag, e.g. `rules[1].constraints[0].value`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A segment is well-formed but says something impossible.
    #[error("segment `{segment}`: {field}: {reason}")]
    InvalidSegment {
        /// The segment's id.
        segment: String,
        /// Path of the offending field inside the segment.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Prerequisites form a cycle.
    #[error("flag `{flag}`: prerequisites form a cycle: {}", cycle.join(" -> "))]
    PrerequisiteCycle {
        /// A flag on the cycle.
        flag: String,
        /// The cycle, starting and ending at `flag`.
        cycle: Vec<String>,
    },
    /// An operation named a flag that does not exist.
    #[error("no flag named `{0}`")]
    UnknownFlag(String),
    /// An operation would create a flag that exists already.
    #[error("flag `{0}` exists already")]
    FlagExists(String),
    /// A conditional change ([`FeatureFlagManager::update_flag_if`]) was made against a
    /// revision of the flag that is no longer the stored one: someone changed the flag
    /// since it was read. Nothing was written; read the flag again and retry.
    ///
    /// [`FeatureFlagManager::update_flag_if`]: crate::FeatureFlagManager::update_flag_if
    #[error("flag `{flag}` is at revision {actual}, the change was made against revision {expected}")]
    Conflict {
        /// The flag.
        flag: String,
        /// The revision the caller expected.
        expected: u64,
        /// The flag's stored revision.
        actual: u64,
    },
    /// A flag's rule refers to a segment that is not defined
    /// ([`FeatureFlagManager::create_segment`] defines one). Nothing was written.
    ///
    /// [`FeatureFlagManager::create_segment`]: crate::FeatureFlagManager::create_segment
    #[error("flag `{flag}`: {field}: no segment with id `{segment}`")]
    MissingSegment {
        /// The flag.
        flag: String,
        /// Where the reference is, e.g. `rules[0].segments[1]`.
        field: String,
        /// The segment id it names.
        segment: String,
    },
    /// An operation named a segment that does not exist.
    #[error("no segment with id `{0}`")]
    UnknownSegment(String),
    /// An operation would create a segment that exists already.
    #[error("segment `{0}` exists already")]
    SegmentExists(String),
    /// A segment cannot be deleted while flags refer to it. Nothing was written.
    #[error("segment `{segment}` is used by {}", flags.iter().map(|flag| format!("`{flag}`")).collect::<Vec<_>>().join(", "))]
    SegmentInUse {
        /// The segment.
        segment: String,
        /// The flags whose rules refer to it, sorted.
        flags: Vec<String>,
    },
    /// The record store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A polling interval of zero (it would spin).
    #[error("the polling interval must be longer than zero")]
    ZeroInterval,
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl FlagError {
    pub(crate) fn invalid(flag: &str, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidFlag {
            flag: flag.to_owned(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The flag the error is about, if it is about one.
    pub fn flag(&self) -> Option<&str> {
        match self {
            Self::InvalidFlag { flag, .. } | Self::PrerequisiteCycle { flag, .. } => Some(flag),
            Self::UnknownFlag(flag) | Self::FlagExists(flag) | Self::Conflict { flag, .. } => Some(flag),
            _ => None,
        }
    }
}
