//! `deploykitd`: deploykit's reference daemon. It reads one configuration file (TOML, YAML
//! or JSON, under `DEPLOYKITD_*` environment variables) and serves the control plane over
//! a store, with one deployer per configured app on the simulated fleet.
//!
//! ```text
//! deploykitd --config deploykitd.toml [--listen 127.0.0.1:7070]
//! deploykitd --demo [--listen 127.0.0.1:0]
//! ```
//!
//! `--demo` needs nothing else: SQLite in a temporary directory, two apps on the simulated
//! fleet serving generated traffic, a new release every little while (every third one bad,
//! so it rolls back), and a printed admin token.
//!
//! Exit codes: 0 after a signal (SIGINT, SIGTERM), 1 when it cannot run (store, port), 2
//! for a bad command line or configuration (each error names the key and where it was set).

mod alerting;
mod config;
mod daemon;
mod demo;
mod notifier;
mod token;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// deploykit's reference daemon: the control plane (HTTP API) over a store, with a deployer
/// per configured app.
#[derive(Debug, Parser)]
#[command(name = "deploykitd", version)]
struct Args {
    /// The configuration file (.toml, .yaml, .yml or .json); `DEPLOYKITD_*` variables
    /// override its keys (`DEPLOYKITD_TOKENS__BOOTSTRAP_SECRET`).
    #[arg(long, short, required_unless_present = "demo", conflicts_with = "demo")]
    config: Option<PathBuf>,
    /// Run the self-contained demo: simulated fleet, demo apps, SQLite in a temp dir.
    #[arg(long)]
    demo: bool,
    /// Serve on this address instead of the configured one (port 0 picks a free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// In demo mode, idle time between one rollout's end and the next.
    #[arg(long, default_value = "10s", value_parser = config::parse_duration, requires = "demo")]
    demo_interval: Duration,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("deploykitd: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    // Kept alive until the daemon returns: the demo's SQLite file lives in it.
    let mut _demo_dir = None;
    let (config, demo) = if args.demo {
        let dir = match tempfile::Builder::new().prefix("deploykitd-demo-").tempdir() {
            Ok(dir) => dir,
            Err(error) => {
                eprintln!("deploykitd: cannot create a temporary directory: {error}");
                return ExitCode::FAILURE;
            }
        };
        let token = token::generate();
        let listen = args.listen.unwrap_or_else(|| {
            config::DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| unreachable!("the default address parses"))
        });
        let config = demo::config(dir.path(), listen, token.clone());
        _demo_dir = Some(dir);
        let mode = daemon::DemoMode {
            interval: args.demo_interval,
            token,
        };
        (config, Some(mode))
    } else {
        let Some(path) = args.config.as_deref() else {
            unreachable!("clap requires --config without --demo")
        };
        let env = std::env::vars().filter(|(name, _)| name.starts_with(config::ENV_PREFIX));
        match config::load(path, env).await {
            Ok(mut config) => {
                if let Some(listen) = args.listen {
                    config.listen = listen;
                }
                (config, None)
            }
            Err(errors) => {
                eprintln!("deploykitd: {}: {errors}", path.display());
                return ExitCode::from(2);
            }
        }
    };
    match daemon::run(config, demo, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("deploykitd: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves at the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
