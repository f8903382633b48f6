//! Flags from a JSON or YAML file that reloads when the file changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::engine::FlagEngine;
use crate::error::FlagError;
use crate::model::FlagSet;

/// The file formats a [`FileSource`] reads, chosen by extension (`.yaml`/`.yml` or JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

impl FileFormat {
    /// The format a path's extension names (JSON unless `.yaml` or `.yml`).
    pub fn of(path: &Path) -> Self {
        match path.extension().and_then(|extension| extension.to_str()) {
            Some("yaml" | "yml") => Self::Yaml,
            _ => Self::Json,
        }
    }

    /// Parses a flag set.
    ///
    /// # Errors
    /// [`FlagError::Parse`] with the parser's message (line and column included).
    pub fn parse(self, text: &str, origin: &str) -> Result<FlagSet, FlagError> {
        let (result, format) = match self {
            Self::Json => (
                serde_json::from_str(text).map_err(|error| error.to_string()),
                "JSON",
            ),
            Self::Yaml => (
                crate::yaml::from_str(text).map_err(|error| error.to_string()),
                "YAML",
            ),
        };
        result.map_err(|message| FlagError::Parse {
            origin: origin.to_owned(),
            format,
            message,
        })
    }
}

/// What the last reload attempt did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReloadStatus {
    /// Loads that were accepted.
    pub loaded: u64,
    /// The engine version the last accepted load produced.
    pub version: u64,
    /// Why the most recent change was refused (`None` once a later load succeeds).
    pub last_error: Option<String>,
}

/// Serves a file's flags through an engine: [`FileSource::load`] once, or
/// [`FileSource::spawn`] to poll for changes. An invalid file is reported and the previous
/// flags keep serving.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), deploy_flags::FlagError> {
/// use std::sync::Arc;
/// use deploy_flags::{Context, FileSource, FlagEngine};
///
/// let path = std::env::temp_dir().join(format!("flags-doc-{}.yaml", std::process::id()));
/// std::fs::write(&path, "flags:\n  - name: banner\n    enabled: true\n").unwrap();
/// let engine = Arc::new(FlagEngine::new());
/// let source = FileSource::new(&path, engine.clone());
/// source.load()?;
/// assert!(engine.is_enabled("banner", &Context::new()));
/// # std::fs::remove_file(&path).ok();
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FileSource {
    path: PathBuf,
    format: FileFormat,
    engine: Arc<FlagEngine>,
    status: Arc<watch::Sender<ReloadStatus>>,
}

impl FileSource {
    /// A source over `path` (format by extension) feeding `engine`.
    pub fn new(path: impl AsRef<Path>, engine: Arc<FlagEngine>) -> Self {
        let path = path.as_ref().to_path_buf();
        Self {
            format: FileFormat::of(&path),
            path,
            engine,
            status: Arc::new(watch::channel(ReloadStatus::default()).0),
        }
    }

    /// Reads, validates and swaps in the file's flags.
    ///
    /// # Errors
    /// The file cannot be read or parsed, or a flag is invalid; the engine is unchanged.
    pub fn load(&self) -> Result<u64, FlagError> {
        let text = std::fs::read_to_string(&self.path).map_err(|source| FlagError::Io {
            path: self.path.display().to_string(),
            source,
        });
        self.apply(text.and_then(|text| self.load_text(&text)))
    }

    fn load_text(&self, text: &str) -> Result<u64, FlagError> {
        let set = self.format.parse(text, &self.path.display().to_string())?;
        self.engine.replace(set)
    }

    fn apply(&self, result: Result<u64, FlagError>) -> Result<u64, FlagError> {
        self.status.send_modify(|status| match &result {
            Ok(version) => {
                status.loaded += 1;
                status.version = *version;
                status.last_error = None;
            }
            Err(error) => status.last_error = Some(error.to_string()),
        });
        if let Err(error) = &result {
            tracing::warn!(path = %self.path.display(), %error, "flag file refused; the previous flags keep serving");
        }
        result
    }

    /// Follows reload attempts.
    pub fn status(&self) -> watch::Receiver<ReloadStatus> {
        self.status.subscribe()
    }

    /// Loads now, then checks the file every `interval` (on tokio's clock) and reloads when
    /// its content changed. Abort the handle to stop.
    ///
    /// # Errors
    /// [`FlagError::ZeroInterval`] for an interval of zero.
    pub fn spawn(&self, interval: Duration) -> Result<JoinHandle<()>, FlagError> {
        if interval.is_zero() {
            return Err(FlagError::ZeroInterval);
        }
        let source = self.clone();
        Ok(tokio::spawn(async move {
            let mut last: Option<Vec<u8>> = None;
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let content = match std::fs::read(&source.path) {
                    Ok(content) => content,
                    Err(error) => {
                        let _ = source.apply(Err(FlagError::Io {
                            path: source.path.display().to_string(),
                            source: error,
                        }));
                        continue;
                    }
                };
                if last.as_deref() == Some(&content[..]) {
                    continue;
                }
                let text = String::from_utf8_lossy(&content).into_owned();
                let _ = source.apply(source.load_text(&text));
                // Remember the content even when refused, so one bad save is reported once.
                last = Some(content);
            }
        }))
    }
}
