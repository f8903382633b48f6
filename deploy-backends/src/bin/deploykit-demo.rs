//! The demo service as a program: `deploykit-demo --port PORT (--artifact DIR | --version V)
//! [--fail-share S]`. Listens on 127.0.0.1; SIGTERM or Ctrl-C stops it after the requests
//! in flight.

use std::path::PathBuf;
use std::process::ExitCode;

use deploy_backends::demo::{self, DemoConfig};

fn usage(problem: &str) -> ExitCode {
    eprintln!(
        "deploykit-demo: {problem}\nusage: deploykit-demo --port PORT (--artifact DIR | --version V) [--fail-share S]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut port, mut artifact, mut version, mut fail_share) = (None, None, None, None);
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else {
            return usage(&format!("{flag} needs a value"));
        };
        match flag.as_str() {
            "--port" => match value.parse::<u16>() {
                Ok(p) => port = Some(p),
                Err(_) => return usage(&format!("port {value:?} is not a port number")),
            },
            "--artifact" => artifact = Some(PathBuf::from(value)),
            "--version" => version = Some(value),
            "--fail-share" => match value.parse::<f64>() {
                Ok(s) if (0.0..=1.0).contains(&s) => fail_share = Some(s),
                _ => return usage(&format!("fail share {value:?} is not in 0..=1")),
            },
            other => return usage(&format!("unknown flag {other}")),
        }
    }
    let Some(port) = port else {
        return usage("--port is required");
    };
    let mut config = match (artifact, version) {
        (Some(dir), _) => match DemoConfig::from_artifact(&dir) {
            Ok(config) => config,
            Err(err) => return usage(&err.to_string()),
        },
        (None, Some(version)) => DemoConfig::new(version),
        (None, None) => return usage("--artifact or --version is required"),
    };
    if let Some(share) = fail_share {
        config.fail_share = share;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return usage(&format!("cannot start the runtime: {err}")),
    };
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        eprintln!("deploykit-demo {} listening on 127.0.0.1:{port}", config.version);
        demo::serve(listener, config, async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("deploykit-demo: {err}");
            ExitCode::FAILURE
        }
    }
}
