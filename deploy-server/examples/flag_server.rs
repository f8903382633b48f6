//! An Unleash-compatible flag server over a file, with hot reload.
//!
//! ```text
//! cargo run -p deploy-server --example flag_server -- ../shared/unleash-spec/01-simple-examples.json
//! cargo run -p deploy-server --example flag_server -- features.json --listen 0.0.0.0:4242 --poll-ms 250
//! ```
//!
//! The file is in Unleash's client-features format: a `../shared/unleash-spec` file (its
//! `state` object is read), a plain `GET /api/client/features` answer, or a delta
//! (`{"events": [...]}`). Its features are imported with Unleash's semantics
//! (`deploy_flags::unleash`) into a `FeatureFlagManager` over a memory store, and
//! deploy-server's router serves them: Unleash's client API (polling, delta and streaming
//! SDKs) and frontend API, with a client token and a frontend token printed at start, and
//! the control plane's `/api/flags` with a bootstrap admin token.
//!
//! The file is read again every `--poll-ms` (default 1000) and, when its content changed,
//! the differences go through the manager (created, updated, deleted flags), so polling
//! SDKs see them at their next poll and streaming SDKs at once. A file that does not parse,
//! or whose flags are invalid, is reported and the last good flags keep serving.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deploy_core::MemoryStore;
use deploy_flags::unleash::UnleashState;
use deploy_flags::{FeatureFlagManager, FlagDefinition, FlagEngine, FlagSet, ReloadStatus};
use deploy_server::unleash::UnleashConfig;
use deploy_server::{ServerBuilder, TokenKind};
use rand::RngCore;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The actor the manager's audit log names for changes read from the file.
const ACTOR: &str = "flag_server";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Options {
    /// The features file.
    pub(crate) file: PathBuf,
    /// Where to listen.
    pub(crate) listen: SocketAddr,
    /// How often the file is checked.
    pub(crate) poll: Duration,
    /// The Unleash environment the flags are served as (and the tokens are for).
    pub(crate) environment: String,
}

/// Usage, for a bad command line.
pub(crate) const USAGE: &str = "usage: flag_server <features.json> [--listen 127.0.0.1:4242] [--poll-ms 1000] \
                         [--environment development]";

impl Options {
    /// Parses the arguments after the program name.
    ///
    /// # Errors
    /// What was wrong, with the usage.
    pub(crate) fn parse(arguments: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut file = None;
        let mut listen: SocketAddr = ([127, 0, 0, 1], 4242).into();
        let mut poll = Duration::from_secs(1);
        let mut environment = "development".to_owned();
        let mut arguments = arguments.into_iter();
        while let Some(argument) = arguments.next() {
            let mut value = |name: &str| {
                arguments
                    .next()
                    .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
            };
            match argument.as_str() {
                "--listen" => {
                    let text = value("--listen")?;
                    listen = text
                        .parse()
                        .map_err(|error| format!("--listen {text:?}: {error}\n{USAGE}"))?;
                }
                "--poll-ms" => {
                    let text = value("--poll-ms")?;
                    let millis: u64 = text
                        .parse()
                        .map_err(|error| format!("--poll-ms {text:?}: {error}\n{USAGE}"))?;
                    if !(10..=60_000).contains(&millis) {
                        return Err(format!("--poll-ms must be in 10..=60000, not {millis}\n{USAGE}"));
                    }
                    poll = Duration::from_millis(millis);
                }
                "--environment" => environment = value("--environment")?,
                "-h" | "--help" => return Err(USAGE.to_owned()),
                flag if flag.starts_with('-') => return Err(format!("unknown option {flag}\n{USAGE}")),
                path if file.is_none() => file = Some(PathBuf::from(path)),
                extra => return Err(format!("unexpected argument {extra:?}\n{USAGE}")),
            }
        }
        let file = file.ok_or_else(|| format!("the features file is missing\n{USAGE}"))?;
        Ok(Self {
            file,
            listen,
            poll,
            environment,
        })
    }
}

/// Reads a features file and imports it as deploykit definitions, checked as a whole (a
/// scratch engine compiles them), so nothing is applied from a file with one bad flag.
///
/// # Errors
/// The file cannot be read, is not JSON in one of the accepted shapes, or a flag is invalid.
pub(crate) fn read_flags(path: &Path) -> Result<Vec<FlagDefinition>, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let json: Value = serde_json::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))?;
    let state_json = match json.get("state") {
        Some(state) if json.get("features").is_none() => state.clone(),
        _ => json,
    };
    let mut state = UnleashState::default();
    let text = state_json.to_string();
    let loaded = if state_json.get("events").is_some() {
        state.apply_delta_json(&text)
    } else {
        state.hydrate_json(&text)
    };
    loaded.map_err(|error| format!("{}: {error}", path.display()))?;
    let import = state.to_flag_set();
    for warning in &import.warnings {
        eprintln!(
            "flag_server: {}: {}: {}",
            path.display(),
            warning.flag,
            warning.message
        );
    }
    let flags = import.flags.flags;
    FlagEngine::new()
        .replace(FlagSet {
            flags: flags.clone(),
            segments: Vec::new(),
        })
        .map_err(|error| format!("{}: {error}", path.display()))?;
    Ok(flags)
}

/// What one [`apply`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Flags created.
    pub(crate) created: usize,
    /// Flags whose definition changed.
    pub(crate) updated: usize,
    /// Flags no longer in the file.
    pub(crate) deleted: usize,
    /// Changes the manager refused, with why.
    pub(crate) refused: Vec<String>,
}

/// Makes the manager's flags equal `flags`: creates and updates (a flag after the flags it
/// depends on), then deletes the flags no longer listed (dependents first). Unchanged flags
/// are not written.
pub(crate) async fn apply(manager: &FeatureFlagManager, flags: Vec<FlagDefinition>) -> Applied {
    let mut applied = Applied::default();
    let current = manager.engine().snapshot();
    let wanted: BTreeMap<String, FlagDefinition> =
        flags.into_iter().map(|flag| (flag.name.clone(), flag)).collect();
    let mut pending: Vec<FlagDefinition> = wanted
        .values()
        .filter(|flag| current.definition(&flag.name) != Some(*flag))
        .cloned()
        .collect();
    while !pending.is_empty() {
        let snapshot = manager.engine().snapshot();
        let ready: Vec<FlagDefinition>;
        (ready, pending) = pending.into_iter().partition(|flag| {
            flag.prerequisites
                .iter()
                .all(|prerequisite| snapshot.definition(&prerequisite.flag).is_some())
        });
        if ready.is_empty() {
            applied.refused.extend(
                pending
                    .drain(..)
                    .map(|flag| format!("{}: a prerequisite is missing", flag.name)),
            );
            break;
        }
        for flag in ready {
            let name = flag.name.clone();
            let exists = snapshot.definition(&name).is_some();
            let result = if exists {
                manager.update_flag(ACTOR, flag).await
            } else {
                manager.create_flag(ACTOR, flag).await
            };
            match result {
                Ok(_) if exists => applied.updated += 1,
                Ok(_) => applied.created += 1,
                Err(error) => applied.refused.push(format!("{name}: {error}")),
            }
        }
    }
    let mut gone: Vec<String> = manager
        .engine()
        .snapshot()
        .to_flag_set()
        .flags
        .into_iter()
        .filter(|flag| !wanted.contains_key(&flag.name))
        .map(|flag| flag.name)
        .collect();
    while !gone.is_empty() {
        let before = gone.len();
        let mut failed = Vec::new();
        for name in gone {
            match manager.delete_flag(ACTOR, &name).await {
                Ok(_) => applied.deleted += 1,
                Err(error) => failed.push((name, error.to_string())),
            }
        }
        if failed.len() == before {
            applied
                .refused
                .extend(failed.into_iter().map(|(name, error)| format!("{name}: {error}")));
            break;
        }
        gone = failed.into_iter().map(|(name, _)| name).collect();
    }
    applied
}

/// A running flag server.
pub(crate) struct FlagServer {
    /// The address it listens on.
    pub(crate) addr: SocketAddr,
    /// An Unleash client token (server-side SDKs).
    pub(crate) client_token: String,
    /// An Unleash frontend token (browsers, mobile apps).
    pub(crate) frontend_token: String,
    /// The control plane's admin token.
    pub(crate) admin_token: String,
    /// The manager the file's flags are applied through.
    pub(crate) manager: Arc<FeatureFlagManager>,
    /// Reloads of the file: how many were applied (the start's load included), the engine
    /// version after the last, and why the last refused content was refused.
    pub(crate) reloads: watch::Receiver<ReloadStatus>,
    server: JoinHandle<()>,
    watcher: JoinHandle<()>,
}

impl Drop for FlagServer {
    fn drop(&mut self) {
        self.server.abort();
        self.watcher.abort();
    }
}

fn secret() -> String {
    let mut random = [0_u8; 24];
    rand::rng().fill_bytes(&mut random);
    let hex: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("dk_{hex}")
}

impl FlagServer {
    /// Loads the file (it must be valid at start), serves it, and watches it.
    ///
    /// # Errors
    /// The file is invalid, the manager refuses a flag, the address cannot be bound.
    pub(crate) async fn start(options: &Options) -> Result<Self, String> {
        let flags = read_flags(&options.file)?;
        let store = Arc::new(MemoryStore::new());
        let manager = Arc::new(
            FeatureFlagManager::open(store.clone(), Default::default())
                .await
                .map_err(|error| error.to_string())?,
        );
        let applied = apply(&manager, flags).await;
        if !applied.refused.is_empty() {
            return Err(format!("refused: {}", applied.refused.join("; ")));
        }
        let admin_token = secret();
        let state = ServerBuilder::new(store)
            .flags(Arc::clone(&manager))
            .bootstrap_token("flag_server-admin", admin_token.clone())
            .unleash(UnleashConfig::default().environment(options.environment.clone()))
            .build_state()
            .map_err(|error| error.to_string())?;
        let token = |name: &'static str, kind| {
            let state = state.clone();
            let environment = options.environment.clone();
            async move {
                state
                    .tokens()
                    .create_unleash(ACTOR, name, kind, &environment, Vec::new())
                    .await
                    .map(|token| token.secret)
                    .map_err(|error| format!("creating the {name} token: {error:?}"))
            }
        };
        let client_token = token("flag_server-client", TokenKind::Client).await?;
        let frontend_token = token("flag_server-frontend", TokenKind::Frontend).await?;
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|error| format!("binding {}: {error}", options.listen))?;
        let addr = listener.local_addr().map_err(|error| error.to_string())?;
        let router = deploy_server::router(state);
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                eprintln!("flag_server: serving stopped: {error}");
            }
        });
        let (status, reloads) = watch::channel(ReloadStatus {
            loaded: 1,
            version: manager.engine().snapshot().version(),
            last_error: None,
        });
        let watcher = tokio::spawn(follow(
            options.file.clone(),
            options.poll,
            Arc::clone(&manager),
            status,
        ));
        Ok(Self {
            addr,
            client_token,
            frontend_token,
            admin_token,
            manager,
            reloads,
            server,
            watcher,
        })
    }
}

/// Checks the file every `poll` and applies a changed content through the manager; a bad
/// file is reported (on standard error and in `status`) once per content and changes nothing.
async fn follow(
    path: PathBuf,
    poll: Duration,
    manager: Arc<FeatureFlagManager>,
    status: watch::Sender<ReloadStatus>,
) {
    let mut last = std::fs::read(&path).ok();
    let mut ticks = tokio::time::interval(poll);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let content = match std::fs::read(&path) {
            Ok(content) => content,
            Err(error) => {
                if last.is_some() {
                    let message = format!("{}: {error}", path.display());
                    eprintln!("flag_server: {message}; the last good flags keep serving");
                    status.send_modify(|status| status.last_error = Some(message));
                    last = None;
                }
                continue;
            }
        };
        if last.as_deref() == Some(&content[..]) {
            continue;
        }
        last = Some(content);
        match read_flags(&path) {
            Ok(flags) => {
                let applied = apply(&manager, flags).await;
                eprintln!(
                    "flag_server: reloaded {}: {} created, {} updated, {} deleted",
                    path.display(),
                    applied.created,
                    applied.updated,
                    applied.deleted
                );
                for refused in &applied.refused {
                    eprintln!("flag_server: refused {refused}");
                }
                let version = manager.engine().snapshot().version();
                status.send_modify(|status| {
                    status.loaded += 1;
                    status.version = version;
                    status.last_error = (!applied.refused.is_empty()).then(|| applied.refused.join("; "));
                });
            }
            Err(error) => {
                eprintln!("flag_server: {error}; the last good flags keep serving");
                status.send_modify(|status| status.last_error = Some(error));
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let server = match FlagServer::start(&options).await {
        Ok(server) => server,
        Err(message) => {
            eprintln!("flag_server: {message}");
            std::process::exit(1);
        }
    };
    let url = format!("http://{}", server.addr);
    println!(
        "serving {} flags of {} at {url}/api (checked every {:?})",
        server.manager.engine().snapshot().len(),
        options.file.display(),
        options.poll
    );
    println!("  client token:   {}", server.client_token);
    println!("  frontend token: {}", server.frontend_token);
    println!("  admin token:    {}", server.admin_token);
    println!(
        "  curl -H 'Authorization: {}' {url}/api/client/features",
        server.client_token
    );
    // Serves until the process is stopped (Ctrl-C); reloads are reported as they happen.
    let mut reloads = server.reloads.clone();
    while reloads.changed().await.is_ok() {}
}
