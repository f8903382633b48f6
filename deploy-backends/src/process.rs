//! [`ProcessInfra`]: local processes as instances.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deploy_core::{
    AppId, Artifact, BackendError, InfraManager, Instance, InstanceId, InstanceState, Pool, Version,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// How a [`ProcessInfra`] runs an instance.
///
/// `program` and `args` may use placeholders, filled in per instance: `{port}`, `{host}`,
/// `{artifact}` (the installed version's directory), `{instance}`, `{app}`, `{pool}`,
/// `{version}` and `{dir}` (the instance's own working directory). The same placeholders work
/// in environment values. Values are substituted as they are, never shell-escaped: versions
/// and app names are limited to `A-Z a-z 0-9 . _ + - ~` (not starting with `.`), but a
/// `sh -c` program should still quote what it substitutes.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    artifacts: PathBuf,
    work: PathBuf,
    host: String,
    ready_timeout: Duration,
    stop_timeout: Duration,
    wait_for_port: bool,
    file_sd: Option<PathBuf>,
    log_limit: u64,
}

impl ProcessSpec {
    /// Runs `program`; versions are the directories `<artifacts>/<app>/<version>`, and each
    /// instance keeps its log and state under `<work>/<app>/<instance>`.
    pub fn new(program: impl Into<String>, artifacts: impl AsRef<Path>, work: impl AsRef<Path>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            artifacts: artifacts.as_ref().to_path_buf(),
            work: work.as_ref().to_path_buf(),
            host: "127.0.0.1".to_owned(),
            ready_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(5),
            wait_for_port: true,
            file_sd: None,
            log_limit: 8 << 20,
        }
    }

    /// The arguments (with placeholders).
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Adds an environment variable (the value may use placeholders).
    #[must_use]
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// How long a started process may take to accept connections on its port (10 s).
    #[must_use]
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// How long a process and what it started may take to exit after SIGTERM before they
    /// get SIGKILL (5 s).
    #[must_use]
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// Counts an instance as running once its process is spawned, without waiting for it
    /// to listen on its port (for programs that do not serve).
    #[must_use]
    pub fn ready_when_started(mut self) -> Self {
        self.wait_for_port = false;
        self
    }

    /// The size at which an instance's `output.log` is moved to `output.log.1` (replacing
    /// the previous one) and started afresh (default 8 MiB): an instance's output takes at
    /// most twice this on disk, and [`ProcessInfra::logs`] returns at most this much.
    #[must_use]
    pub fn log_limit(mut self, bytes: u64) -> Self {
        self.log_limit = bytes.max(1);
        self
    }

    /// Keeps a Prometheus `file_sd` target file at `path` listing running instances with the
    /// labels `app`, `pool`, `version` and `instance`.
    #[must_use]
    pub fn prometheus_targets(mut self, path: impl AsRef<Path>) -> Self {
        self.file_sd = Some(path.as_ref().to_path_buf());
        self
    }
}

/// An instance and its process.
#[derive(Debug)]
struct Slot {
    instance: Instance,
    port: u16,
    installed: PathBuf,
    dir: PathBuf,
    child: Option<Group>,
}

impl Slot {
    /// Notices a process that exited on its own.
    fn refresh(&mut self) {
        if let Some(group) = &mut self.child
            && let Some(status) = group.exited()
        {
            tracing::warn!(instance = %self.instance.id, %status, "instance process exited");
            self.child = None;
            self.instance.state = InstanceState::Failed;
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("output.log")
    }

    /// Stops the process, if any, as [`Group::stop`] does.
    async fn stop(&mut self) {
        if let Some(group) = self.child.take() {
            group.stop().await;
        }
    }
}

/// An instance's process: the leader of its own process group, so that stopping it stops
/// whatever it started too (security review m9), with its stdout and stderr copied into
/// the instance's log by a thread.
///
/// Dropped while running, it sends the group SIGTERM and leaves a thread to SIGKILL what is
/// left after the grace period, so dropping never blocks.
#[derive(Debug)]
struct Group {
    /// `None` once the leader is reaped.
    leader: Option<Child>,
    id: Pid,
    copier: std::thread::JoinHandle<()>,
    grace: Duration,
}

impl Group {
    /// Runs `command` in a new process group, its output appended to `log` (moved to
    /// `<log>.1` whenever it reaches `limit` bytes).
    fn spawn(mut command: Command, log: PathBuf, limit: u64, grace: Duration) -> std::io::Result<Self> {
        let (output, writer) = std::io::pipe()?;
        // The copier first: should spawning fail, the pipe's writers close and it ends.
        let copier = std::thread::Builder::new()
            .name("instance-log".to_owned())
            .spawn(move || copy_log(output, &log, limit))?;
        command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(writer.try_clone()?)
            .stderr(writer);
        let leader = command.spawn()?;
        // The command holds the parent's ends of the pipe: without dropping it, the copier
        // would never see the end of the output.
        drop(command);
        // Process ids fit in a `pid_t` (Linux caps them at 2^22).
        let id = Pid::from_raw(leader.id().cast_signed());
        Ok(Self {
            leader: Some(leader),
            id,
            copier,
            grace,
        })
    }

    fn pid(&self) -> Option<u32> {
        self.leader.as_ref().map(Child::id)
    }

    /// The leader's exit status once it has exited on its own; what it left running in its
    /// group is killed then, while the group's id cannot have been reused.
    fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.leader.as_mut()?.try_wait().ok().flatten()?;
        self.leader = None;
        let _ = killpg(self.id, Signal::SIGKILL);
        Some(status)
    }

    /// Waits (up to 1 s) until the copier has written all the output there is.
    async fn flushed(&self) {
        for _ in 0..100 {
            if self.copier.is_finished() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM to the whole group, then SIGKILL to whatever is left after the grace period.
    async fn stop(mut self) {
        if let Some(leader) = self.leader.take() {
            let (id, grace) = (self.id, self.grace);
            let _ = killpg(id, Signal::SIGTERM);
            let _ = tokio::task::spawn_blocking(move || finish(leader, id, grace)).await;
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(leader) = self.leader.take() {
            let (id, grace) = (self.id, self.grace);
            let _ = killpg(id, Signal::SIGTERM);
            let _ = std::thread::Builder::new()
                .name("instance-stop".to_owned())
                .spawn(move || finish(leader, id, grace));
        }
    }
}

/// After SIGTERM to group `id`: waits until the leader has exited and the group is empty,
/// or `grace` has passed, then SIGKILLs what is left and reaps the leader.
fn finish(mut leader: Child, id: Pid, grace: Duration) {
    let deadline = Instant::now().checked_add(grace);
    loop {
        let leader_gone = !matches!(leader.try_wait(), Ok(None));
        if leader_gone && killpg(id, None).is_err() {
            return;
        }
        if deadline.is_none_or(|deadline| Instant::now() >= deadline) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = killpg(id, Signal::SIGKILL);
    let _ = leader.wait();
}

/// Appends `output` to the file at `path`, moving the file to `<path>.1` (replacing that)
/// whenever it has reached `limit` bytes, until the output ends: neither file exceeds `limit`.
fn copy_log(mut output: impl Read, path: &Path, limit: u64) {
    let open = || std::fs::OpenOptions::new().create(true).append(true).open(path);
    let Ok(mut file) = open() else { return };
    let mut size = file.metadata().map_or(0, |meta| meta.len());
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = match output.read(&mut buffer) {
            Ok(0) => return,
            Ok(read) => read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let mut pending = &buffer[..read];
        while !pending.is_empty() {
            if size >= limit {
                let _ = std::fs::rename(path, path.with_extension("log.1"));
                let Ok(fresh) = open() else { return };
                (file, size) = (fresh, 0);
            }
            let room = usize::try_from(limit - size).unwrap_or(usize::MAX);
            let (now, rest) = pending.split_at(pending.len().min(room));
            if file.write_all(now).is_err() {
                return;
            }
            size += now.len() as u64;
            pending = rest;
        }
    }
}

/// The last `max` bytes of the file at `path` (nothing when there is no file), read
/// without loading the rest.
async fn read_tail(path: &Path, max: u64) -> Result<String, BackendError> {
    let failed = |err| io_error(path, err);
    let mut file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(err) => return Err(failed(err)),
    };
    let length = file.metadata().await.map_err(failed)?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(max)))
        .await
        .map_err(failed)?;
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes).await.map_err(failed)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

type Slots = BTreeMap<InstanceId, Arc<tokio::sync::Mutex<Slot>>>;

/// An [`InfraManager`] whose instances are local processes.
///
/// - `provision` gives each instance its own port on 127.0.0.1 (kept for its life), working
///   directory and log file, installs the version's artifact directory and starts it.
/// - `fetch_artifact` finds `<artifacts>/<app>/<version>` ([`BackendError::NotFound`] with
///   kind `"artifact"` when it is missing); `install` points the stopped instance at it.
/// - `start_instance` spawns the command with the placeholders filled in, stdout and stderr
///   appended to the instance's log, and waits until the port accepts connections; a
///   process that exits first is [`InstanceState::Failed`] and the error quotes its log.
/// - Each process runs in its own process group. `stop_instance` sends the group SIGTERM,
///   waits up to the stop timeout for all of it to exit, then SIGKILLs what is left.
/// - A process that dies on its own is listed as `Failed` (and what it started is killed).
/// - `output.log` is moved to `output.log.1` when it reaches the
///   [`log_limit`](ProcessSpec::log_limit), so an instance's output is bounded on disk.
/// - When `provision` fails for one instance, the others it created are decommissioned.
///
/// Processes are stopped the same way when the `ProcessInfra` is dropped (SIGTERM at once,
/// SIGKILL from a background thread after the stop timeout); instances do not outlive the
/// process that manages them.
#[derive(Debug)]
pub struct ProcessInfra {
    spec: ProcessSpec,
    apps: Mutex<HashMap<AppId, Slots>>,
    next_id: AtomicU64,
    file_sd: tokio::sync::Mutex<()>,
}

impl ProcessInfra {
    /// Manages processes as `spec` says.
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when the working directory cannot be created.
    pub fn new(spec: ProcessSpec) -> Result<Self, BackendError> {
        std::fs::create_dir_all(&spec.work).map_err(|err| io_error(&spec.work, err))?;
        Ok(Self {
            spec,
            apps: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            file_sd: tokio::sync::Mutex::new(()),
        })
    }

    /// The latest of what the instance's processes wrote to stdout and stderr: `output.log`,
    /// at most [`log_limit`](ProcessSpec::log_limit) bytes (older output is in
    /// `output.log.1`).
    ///
    /// # Errors
    /// [`BackendError::NotFound`] for an unknown instance.
    pub async fn logs(&self, app: &AppId, instance: &InstanceId) -> Result<String, BackendError> {
        let slot = self.slot(app, instance)?;
        let path = slot.lock().await.log_path();
        read_tail(&path, self.spec.log_limit).await
    }

    /// Stops and starts an instance (same version, same port).
    ///
    /// # Errors
    /// As [`InfraManager::stop_instance`] and [`InfraManager::start_instance`].
    pub async fn restart_instance(
        &self,
        app: &AppId,
        instance: &InstanceId,
    ) -> Result<Instance, BackendError> {
        self.stop_instance(app, instance).await?;
        self.start_instance(app, instance).await
    }

    /// The process id of a running instance.
    ///
    /// # Errors
    /// [`BackendError::NotFound`] for an unknown instance.
    pub async fn pid(&self, app: &AppId, instance: &InstanceId) -> Result<Option<u32>, BackendError> {
        let slot = self.slot(app, instance)?;
        let mut slot = slot.lock().await;
        slot.refresh();
        Ok(slot.child.as_ref().and_then(Group::pid))
    }

    fn slot(
        &self,
        app: &AppId,
        instance: &InstanceId,
    ) -> Result<Arc<tokio::sync::Mutex<Slot>>, BackendError> {
        self.apps
            .lock()
            .get(app)
            .and_then(|slots| slots.get(instance))
            .cloned()
            .ok_or_else(|| BackendError::NotFound {
                kind: "instance",
                name: instance.to_string(),
            })
    }

    fn slots(&self, app: &AppId) -> Vec<Arc<tokio::sync::Mutex<Slot>>> {
        self.apps
            .lock()
            .get(app)
            .map(|slots| slots.values().cloned().collect())
            .unwrap_or_default()
    }

    /// `<artifacts>/<app>/<version>`, after checking that both are one safe path segment.
    fn artifact_dir(&self, app: &AppId, version: &Version) -> Result<PathBuf, BackendError> {
        path_segment("app", app.as_str())?;
        path_segment("version", version.as_str())?;
        Ok(self.spec.artifacts.join(app.as_str()).join(version.as_str()))
    }

    /// Refuses an artifact location that does not resolve (symbolic links followed) to a
    /// directory under the artifact root.
    fn check_under_root(&self, operation: &'static str, location: &Path) -> Result<(), BackendError> {
        let root =
            std::fs::canonicalize(&self.spec.artifacts).map_err(|err| io_error(&self.spec.artifacts, err))?;
        let resolved = std::fs::canonicalize(location).map_err(|_| BackendError::NotFound {
            kind: "artifact",
            name: location.display().to_string(),
        })?;
        if resolved.starts_with(&root) && resolved != root {
            Ok(())
        } else {
            Err(BackendError::Rejected {
                operation,
                reason: format!(
                    "artifact {} resolves to {}, outside the artifact root {}",
                    location.display(),
                    resolved.display(),
                    root.display()
                ),
            })
        }
    }

    fn fill(&self, template: &str, slot: &Slot) -> String {
        let instance = &slot.instance;
        template
            .replace("{port}", &slot.port.to_string())
            .replace("{host}", &self.spec.host)
            .replace("{artifact}", &slot.installed.to_string_lossy())
            .replace("{instance}", instance.id.as_str())
            .replace("{app}", instance.app.as_str())
            .replace("{pool}", instance.pool.as_str())
            .replace("{version}", instance.version.as_str())
            .replace("{dir}", &slot.dir.to_string_lossy())
    }

    async fn spawn(&self, slot: &mut Slot) -> Result<(), BackendError> {
        let mut command = Command::new(self.fill(&self.spec.program, slot));
        command
            .args(self.spec.args.iter().map(|arg| self.fill(arg, slot)))
            .envs(self.spec.env.iter().map(|(k, v)| (k, self.fill(v, slot))))
            .current_dir(&slot.dir);
        let (log, limit, grace) = (slot.log_path(), self.spec.log_limit, self.spec.stop_timeout);
        let group = Group::spawn(command, log, limit, grace).map_err(|err| BackendError::Failed {
            operation: "start_instance",
            message: format!("cannot run {}: {err}", self.spec.program),
            source: Some(Box::new(err)),
        })?;
        slot.child = Some(group);
        slot.instance.state = InstanceState::Starting;
        if self.spec.wait_for_port {
            self.wait_listening(slot).await?;
        }
        slot.instance.state = InstanceState::Running;
        Ok(())
    }

    async fn wait_listening(&self, slot: &mut Slot) -> Result<(), BackendError> {
        let address = (self.spec.host.as_str(), slot.port);
        let deadline = tokio::time::Instant::now() + self.spec.ready_timeout;
        loop {
            if tokio::net::TcpStream::connect(address).await.is_ok() {
                return Ok(());
            }
            if let Some(group) = &mut slot.child
                && let Some(status) = group.exited()
            {
                group.flushed().await;
                slot.child = None;
                slot.instance.state = InstanceState::Failed;
                return Err(BackendError::Failed {
                    operation: "start_instance",
                    message: format!(
                        "{} exited with {status} before listening on port {}; its log ends with: {}",
                        slot.instance.id,
                        slot.port,
                        log_tail(&slot.log_path()).await
                    ),
                    source: None,
                });
            }
            if tokio::time::Instant::now() >= deadline {
                slot.stop().await;
                slot.instance.state = InstanceState::Failed;
                return Err(BackendError::Timeout {
                    operation: "start_instance",
                    after: self.spec.ready_timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Rewrites the Prometheus target file from the running instances of every app.
    async fn write_targets(&self) -> Result<(), BackendError> {
        let Some(path) = &self.spec.file_sd else {
            return Ok(());
        };
        let _one_writer = self.file_sd.lock().await;
        let slots: Vec<_> = {
            let apps = self.apps.lock();
            apps.values().flat_map(|slots| slots.values().cloned()).collect()
        };
        let mut groups = Vec::new();
        for slot in slots {
            let slot = slot.lock().await;
            if slot.instance.state == InstanceState::Running {
                groups.push(serde_json::json!({
                    "targets": [format!("{}:{}", self.spec.host, slot.port)],
                    "labels": {
                        "app": slot.instance.app.as_str(),
                        "pool": slot.instance.pool.as_str(),
                        "version": slot.instance.version.as_str(),
                        "instance": slot.instance.id.as_str(),
                    },
                }));
            }
        }
        let text = serde_json::to_vec_pretty(&groups).unwrap_or_default();
        // A temporary file with an unpredictable name, created exclusively next to the
        // target (a predictable one is a symlink risk in a shared directory: review m9).
        let target = path.clone();
        let write = move || {
            let dir = target.parent().filter(|dir| !dir.as_os_str().is_empty());
            let mut file = tempfile::NamedTempFile::new_in(dir.unwrap_or(Path::new(".")))?;
            // Readable by a Prometheus running as another user, as a plainly written file was.
            file.as_file()
                .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
            file.write_all(&text)?;
            file.persist(&target).map(drop).map_err(|err| err.error)
        };
        tokio::task::spawn_blocking(write)
            .await
            .map_err(std::io::Error::other)
            .flatten()
            .map_err(|err| io_error(path, err))
    }

    /// Adds a stopped instance of `version` to `app`'s `pool`, with its own port and directory.
    fn add_slot(
        &self,
        app: &AppId,
        pool: &Pool,
        version: &Version,
        artifact: &Artifact,
    ) -> Result<InstanceId, BackendError> {
        let number = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = InstanceId::new(format!("{app}-{number}"))?;
        let dir = self.spec.work.join(app.as_str()).join(id.as_str());
        std::fs::create_dir_all(&dir).map_err(|err| io_error(&dir, err))?;
        let port = free_port(&self.spec.host)?;
        let slot = Arc::new(tokio::sync::Mutex::new(Slot {
            instance: Instance {
                id: id.clone(),
                app: app.clone(),
                pool: pool.clone(),
                version: version.clone(),
                state: InstanceState::Stopped,
                address: Some(format!("{}:{port}", self.spec.host)),
            },
            port,
            installed: PathBuf::from(&artifact.location),
            dir,
            child: None,
        }));
        self.apps
            .lock()
            .entry(app.clone())
            .or_default()
            .insert(id.clone(), slot);
        Ok(id)
    }
}

/// The longest version or app name used as a directory name.
const MAX_SEGMENT: usize = 128;

/// Checks that `value` is one safe path segment: 1..=128 of `A-Z a-z 0-9 . _ + - ~`, not
/// starting with `.` (so no `..`, no hidden names), hence no `/`, `\`, NUL or anything a
/// shell would interpret.
fn path_segment(kind: &'static str, value: &str) -> Result<(), BackendError> {
    let why = if value.is_empty() {
        Some("is empty".to_owned())
    } else if value.len() > MAX_SEGMENT {
        Some(format!("is longer than {MAX_SEGMENT} bytes"))
    } else if value.starts_with('.') {
        Some("starts with '.'".to_owned())
    } else {
        value
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-' | '~')))
            .map(|(at, bad)| format!("has {bad:?} at byte {at} (allowed: A-Z a-z 0-9 . _ + - ~)"))
    };
    match why {
        None => Ok(()),
        Some(why) => Err(BackendError::Rejected {
            operation: "fetch_artifact",
            reason: format!(
                "{kind} {:?} {why}: it must be a single directory name under the artifact root",
                value.chars().take(200).collect::<String>()
            ),
        }),
    }
}

fn io_error(path: &Path, err: std::io::Error) -> BackendError {
    BackendError::Unavailable {
        backend: "processes".to_owned(),
        message: format!("{}: {err}", path.display()),
        source: Some(Box::new(err)),
        retry_after: None,
    }
}

/// The last few lines of the log at `path`, on one line.
async fn log_tail(path: &Path) -> String {
    let text = read_tail(path, 4096).await.unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    let tail: Vec<&str> = lines.into_iter().rev().collect();
    if tail.is_empty() {
        "(nothing)".to_owned()
    } else {
        tail.join(" | ")
    }
}

/// A free TCP port on `host`, as the kernel hands one out.
fn free_port(host: &str) -> Result<u16, BackendError> {
    std::net::TcpListener::bind((host, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|err| BackendError::Unavailable {
            backend: "processes".to_owned(),
            message: format!("no free port on {host}: {err}"),
            source: Some(Box::new(err)),
            retry_after: None,
        })
}

/// The instances of `slots`, each refreshed from its process first.
async fn refreshed(slots: Vec<Arc<tokio::sync::Mutex<Slot>>>) -> Vec<Instance> {
    let mut instances = Vec::with_capacity(slots.len());
    for slot in slots {
        let mut slot = slot.lock().await;
        slot.refresh();
        instances.push(slot.instance.clone());
    }
    instances
}

#[async_trait]
impl InfraManager for ProcessInfra {
    async fn list_instances(&self, app: &AppId) -> Result<Vec<Instance>, BackendError> {
        Ok(refreshed(self.slots(app)).await)
    }

    async fn describe_instances(
        &self,
        app: &AppId,
        ids: &[InstanceId],
    ) -> Result<Vec<Instance>, BackendError> {
        let slots = ids.iter().filter_map(|id| self.slot(app, id).ok());
        Ok(refreshed(slots.collect()).await)
    }

    async fn provision(
        &self,
        app: &AppId,
        pool: &Pool,
        version: &Version,
        count: usize,
    ) -> Result<Vec<Instance>, BackendError> {
        if count == 0 {
            return Err(BackendError::Rejected {
                operation: "provision",
                reason: "count must be at least 1".to_owned(),
            });
        }
        let artifact = self.fetch_artifact(app, version).await?;
        let mut created = Vec::with_capacity(count);
        let mut result = Ok(Vec::new());
        for _ in 0..count {
            match self.add_slot(app, pool, version, &artifact) {
                Ok(id) => created.push(id),
                Err(err) => {
                    result = Err(err);
                    break;
                }
            }
        }
        if result.is_ok() {
            let started = futures::future::join_all(created.iter().map(|id| self.start_instance(app, id)));
            result = started.await.into_iter().collect();
        }
        if result.is_err() {
            // None of them reaches the caller, so none may be left running (review m9).
            for id in &created {
                let _ = self.decommission(app, id).await;
            }
        }
        result
    }

    async fn fetch_artifact(&self, app: &AppId, version: &Version) -> Result<Artifact, BackendError> {
        let dir = self.artifact_dir(app, version)?;
        match tokio::fs::metadata(&dir).await {
            Ok(meta) if meta.is_dir() => {
                self.check_under_root("fetch_artifact", &dir)?;
                Ok(Artifact {
                    version: version.clone(),
                    location: dir.to_string_lossy().into_owned(),
                    digest: None,
                })
            }
            _ => Err(BackendError::NotFound {
                kind: "artifact",
                name: dir.display().to_string(),
            }),
        }
    }

    async fn stop_instance(&self, app: &AppId, instance: &InstanceId) -> Result<(), BackendError> {
        let slot = self.slot(app, instance)?;
        {
            let mut slot = slot.lock().await;
            slot.stop().await;
            slot.instance.state = InstanceState::Stopped;
        }
        self.write_targets().await
    }

    async fn install(
        &self,
        app: &AppId,
        instance: &InstanceId,
        artifact: &Artifact,
    ) -> Result<(), BackendError> {
        let slot = self.slot(app, instance)?;
        let mut slot = slot.lock().await;
        slot.refresh();
        if slot.child.is_some() {
            return Err(BackendError::Rejected {
                operation: "install",
                reason: format!("{instance} is running; stop it first"),
            });
        }
        path_segment("version", artifact.version.as_str())?;
        let location = PathBuf::from(&artifact.location);
        if !location.is_dir() {
            return Err(BackendError::NotFound {
                kind: "artifact",
                name: artifact.location.clone(),
            });
        }
        self.check_under_root("install", &location)?;
        slot.installed = location;
        slot.instance.version = artifact.version.clone();
        Ok(())
    }

    async fn start_instance(&self, app: &AppId, instance: &InstanceId) -> Result<Instance, BackendError> {
        let slot = self.slot(app, instance)?;
        let started = {
            let mut slot = slot.lock().await;
            slot.refresh();
            if slot.child.is_none() {
                self.spawn(&mut slot).await?;
            }
            slot.instance.clone()
        };
        self.write_targets().await?;
        Ok(started)
    }

    async fn update_instance(
        &self,
        app: &AppId,
        instance: &InstanceId,
        version: &Version,
    ) -> Result<Instance, BackendError> {
        let artifact = self.fetch_artifact(app, version).await?;
        let slot = self.slot(app, instance)?;
        {
            let mut slot = slot.lock().await;
            slot.refresh();
            if slot.child.is_some() && slot.instance.version == *version {
                return Ok(slot.instance.clone());
            }
        }
        self.stop_instance(app, instance).await?;
        self.install(app, instance, &artifact).await?;
        self.start_instance(app, instance).await
    }

    async fn decommission(&self, app: &AppId, instance: &InstanceId) -> Result<(), BackendError> {
        let slot = self.slot(app, instance)?;
        let dir = {
            let mut slot = slot.lock().await;
            slot.stop().await;
            slot.dir.clone()
        };
        self.apps.lock().get_mut(app).map(|slots| slots.remove(instance));
        let _ = tokio::fs::remove_dir_all(&dir).await;
        self.write_targets().await
    }
}
