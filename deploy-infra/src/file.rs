//! [`FileProvider`]: real files under a root, never through a link, written atomically.

use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::model::{Provider, ProviderError};

/// Files under a root directory: kind `file`, configuration `{"content": "..."}`; the
/// resource's name is its path relative to the root (directories are created as needed).
///
/// Nothing under the root is followed through a symbolic link: a name whose directories or
/// file is a link is refused, so a link planted under the root cannot redirect a read or
/// write outside it. (The root itself may be a link.) A write goes to a temporary file in
/// the same directory, synced, renamed over the file and the directory synced, so the file
/// is the old content or the new, never a truncated mix, also after a crash. Directories
/// swapped for links by someone racing the provider are not guarded against (std has no
/// `openat`).
#[derive(Debug, Clone)]
pub struct FileProvider {
    root: PathBuf,
    latency: Duration,
}

impl FileProvider {
    /// Files under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            latency: Duration::ZERO,
        }
    }

    /// Each write or delete first waits `latency` (to stand in for slow real resources).
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    async fn wait(&self) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }

    fn path(&self, name: &str) -> Result<PathBuf, ProviderError> {
        if name.is_empty() || name.split('/').any(|part| matches!(part, "" | "." | "..")) {
            return Err(ProviderError(format!(
                "`{name}` is not a relative path under the root"
            )));
        }
        Ok(self.root.join(name))
    }

    fn content(config: &Value) -> Result<&str, ProviderError> {
        config
            .get("content")
            .and_then(Value::as_str)
            .ok_or_else(|| ProviderError("`content` must be a string".into()))
    }

    /// Runs a file operation on `name`'s path off the async runtime (it may sync to disk).
    async fn blocking<T: Send + 'static>(
        &self,
        name: &str,
        operation: impl FnOnce(&Path, &Path) -> io::Result<T> + Send + 'static,
    ) -> Result<T, ProviderError> {
        let (root, path) = (self.root.clone(), self.path(name)?);
        let failed = |error: &dyn std::fmt::Display| ProviderError(format!("`{name}`: {error}"));
        tokio::task::spawn_blocking(move || operation(&root, &path))
            .await
            .map_err(|error| failed(&error))?
            .map_err(|error| failed(&error))
    }
}

/// Checks every component of `path` below `root` with `lstat`: a link is refused, a missing
/// directory is created when `create` is set; returns whether the file exists.
fn walk(root: &Path, path: &Path, create: bool) -> io::Result<bool> {
    let relative = path.strip_prefix(root).map_err(io::Error::other)?;
    let mut at = root.to_path_buf();
    let mut components = relative.components().peekable();
    while let Some(component) = components.next() {
        at.push(component);
        let last = components.peek().is_none();
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(io::Error::other(format!("{} is a symbolic link", at.display())));
            }
            Ok(_) if last => return Ok(true),
            Ok(meta) if !meta.is_dir() => {
                return Err(io::Error::other(format!("{} is not a directory", at.display())));
            }
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound && (last || !create) => return Ok(false),
            Err(error) if error.kind() == io::ErrorKind::NotFound => fs::create_dir(&at)?,
            Err(error) => return Err(error),
        }
    }
    Ok(false)
}

/// Whether `opened` is the very file `linked` (its `lstat`) describes, not one a link led to.
fn same_file(opened: &Metadata, linked: &Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        opened.dev() == linked.dev() && opened.ino() == linked.ino()
    }
    #[cfg(not(unix))]
    {
        opened.is_file() && linked.is_file()
    }
}

/// Reads the file at `path` without following a link (`None`: it does not exist). The file
/// is opened, then checked to be what `lstat` finds at `path`, so a link swapped in
/// between is caught.
fn read_file(root: &Path, path: &Path) -> io::Result<Option<String>> {
    if !walk(root, path, false)? {
        return Ok(None);
    }
    let mut file = match File::open(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        opened => opened?,
    };
    let linked = fs::symlink_metadata(path)?;
    if linked.file_type().is_symlink() || !same_file(&file.metadata()?, &linked) {
        return Err(io::Error::other(format!(
            "{} changed into a link while read",
            path.display()
        )));
    }
    let mut content = String::new();
    file.read_to_string(&mut content)?;
    Ok(Some(content))
}

/// Replaces the file at `path` atomically and durably: a new temporary file next to it
/// (created exclusively, so never through a link), synced, renamed over it, and the
/// directory synced.
fn write_file(root: &Path, path: &Path, content: &str) -> io::Result<()> {
    static TEMPORARIES: AtomicU64 = AtomicU64::new(0);
    fs::create_dir_all(root)?;
    walk(root, path, true)?;
    let directory = path.parent().unwrap_or(root);
    let temporary = directory.join(format!(
        ".{}.{}-{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id(),
        TEMPORARIES.fetch_add(1, Ordering::Relaxed)
    ));
    let written = File::create_new(&temporary).and_then(|mut file| {
        file.write_all(content.as_bytes())?;
        file.sync_all()
    });
    if let Err(error) = written.and_then(|()| fs::rename(&temporary, path)) {
        let _ = fs::remove_file(&temporary);
        return Err(error);
    }
    sync_directory(directory)
}

/// Makes a rename or removal in `directory` durable.
fn sync_directory(directory: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(directory)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = directory;
    Ok(())
}

/// Removes the file at `path` (missing is fine), never through a link.
fn remove_file(root: &Path, path: &Path) -> io::Result<()> {
    if !walk(root, path, false)? {
        return Ok(());
    }
    match fs::remove_file(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        removed => {
            removed?;
            sync_directory(path.parent().unwrap_or(root))
        }
    }
}

#[async_trait]
impl Provider for FileProvider {
    fn kind(&self) -> &str {
        "file"
    }

    fn validate(&self, name: &str, config: &Value) -> Result<(), String> {
        self.path(name).map_err(|error| error.0)?;
        Self::content(config).map(|_| ()).map_err(|error| error.0)
    }

    async fn create(&self, name: &str, config: &Value) -> Result<Value, ProviderError> {
        let content = Self::content(config)?.to_owned();
        self.path(name)?;
        self.wait().await;
        self.blocking(name, move |root, path| write_file(root, path, &content))
            .await?;
        self.read(name, config)
            .await?
            .ok_or_else(|| ProviderError("the file vanished after writing".into()))
    }

    async fn read(&self, name: &str, _config: &Value) -> Result<Option<Value>, ProviderError> {
        let content = self.blocking(name, read_file).await?;
        Ok(content.map(|content| json!({ "content": content })))
    }

    async fn update(&self, name: &str, config: &Value) -> Result<Value, ProviderError> {
        self.create(name, config).await
    }

    async fn delete(&self, name: &str, _config: &Value) -> Result<(), ProviderError> {
        self.path(name)?;
        self.wait().await;
        self.blocking(name, remove_file).await
    }
}
