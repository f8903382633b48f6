//! Shared set-up for the tests against real components: demo-service fleets as local
//! processes, and skipping (or, under `DEPLOYKIT_REQUIRE_REAL=1`, failing) when a component
//! is not installed.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use deploy_backends::{ProcessInfra, ProcessSpec};
use deploy_core::{AppId, Pool, Version};
use deploy_lab::demo::DemoConfig;

/// Unwraps a launched component, or skips the test (returns) when it is not installed
/// (reported by `deploy_testkit::real::skip`; a failure under `DEPLOYKIT_REQUIRE_REAL=1`).
#[macro_export]
macro_rules! launch_or_skip {
    ($launch:expr) => {
        match deploy_lab::launch::or_skip($launch) {
            Ok(Some(component)) => component,
            Ok(None) => return,
            Err(err) => panic!("cannot start a real component: {err}"),
        }
    };
}

pub fn app() -> AppId {
    AppId::new("shop").unwrap()
}

pub fn pool(name: &str) -> Pool {
    Pool::new(name).unwrap()
}

pub fn version(name: &str) -> Version {
    Version::new(name).unwrap()
}

/// A temp dir with demo artifacts for `shop` at the given versions, each failing the given
/// share of requests.
pub struct Artifacts {
    pub dir: tempfile::TempDir,
}

impl Artifacts {
    pub fn new(versions: &[(&str, f64)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (version, fail_share) in versions {
            DemoConfig::new(*version)
                .failing(*fail_share)
                .write_artifact(&dir.path().join("artifacts/shop").join(version))
                .unwrap();
        }
        Self { dir }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }

    /// Demo-service instances as local processes.
    pub fn spec(&self) -> ProcessSpec {
        let demo = deploy_lab::launch::demo_program().unwrap_or_else(|err| panic!("{err}"));
        ProcessSpec::new(
            demo.display().to_string(),
            self.root(),
            self.dir.path().join("work"),
        )
        .args(["--port", "{port}", "--artifact", "{artifact}"])
        .ready_timeout(Duration::from_secs(10))
        .stop_timeout(Duration::from_secs(5))
    }

    pub fn infra(&self) -> ProcessInfra {
        ProcessInfra::new(self.spec()).unwrap()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
