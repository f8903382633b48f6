//! Hostile inputs at two boundaries (security review M4 and M5), with generated inputs:
//!
//! - an instance address or a backend name never turns into extra arguments of an HAProxy
//!   runtime-API command (a stand-in socket records every command and checks its words);
//! - a version never makes `ProcessInfra` use a directory outside its artifact root.
//!
//! Every case returns a value or a typed error; none panics.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use deploy_backends::{HaproxyLoadBalancer, ProcessInfra, ProcessSpec};
use deploy_core::{
    AppId, Artifact, BackendError, InfraManager, Instance, InstanceId, InstanceState, LoadBalancer, Pool,
    Version,
};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("DEPLOYKIT_PROPERTY_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(256)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// HAProxy (M4)
// ---------------------------------------------------------------------------------------

/// A stand-in for HAProxy's runtime API socket: records each command and answers as an
/// empty backend would.
struct FakeHaproxy {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    commands: Arc<Mutex<Vec<String>>>,
}

impl FakeHaproxy {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let commands = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&commands);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut line = String::new();
                if BufReader::new(&stream).read_line(&mut line).is_err() {
                    continue;
                }
                let command = line.trim_end_matches('\n').to_owned();
                let answer = if command.starts_with("show servers state") {
                    "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_port\n"
                } else if command.starts_with("show stat") {
                    "# pxname,svname,scur\n"
                } else if command.starts_with("add server") {
                    "New server registered.\n"
                } else {
                    ""
                };
                let _ = stream.write_all(answer.as_bytes());
                recorded.lock().unwrap().push(command);
            }
        });
        Self {
            _dir: dir,
            socket,
            commands,
        }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.commands.lock().unwrap())
    }
}

fn instance(address: &str) -> Instance {
    Instance {
        id: InstanceId::new("i-1").unwrap(),
        app: AppId::new("shop").unwrap(),
        pool: Pool::blue(),
        version: Version::new("1.0").unwrap(),
        state: InstanceState::Running,
        address: Some(address.to_owned()),
    }
}

/// How many words each command HAProxy may receive from the balancer has.
fn expected_words(command: &str) -> usize {
    let words: Vec<&str> = command.split(' ').collect();
    match (words.first().copied(), words.get(1).copied()) {
        (Some("show"), Some("servers")) => 4,
        (Some("show"), Some("stat")) => 5,
        (Some("add"), Some("server")) => 6,
        (Some("del"), Some("server")) => 3,
        (Some("set"), Some("server")) if words.get(3) == Some(&"addr") => 7,
        (Some("set"), Some("server")) => 5,
        _ => panic!("unexpected command {command:?}"),
    }
}

/// Each command has exactly its words, none of them empty, and only characters with no
/// meaning to HAProxy's command line.
fn assert_well_formed(commands: &[String]) {
    for command in commands {
        let words: Vec<&str> = command.split(' ').collect();
        assert_eq!(words.len(), expected_words(command), "{command:?}");
        assert!(words.iter().all(|word| !word.is_empty()), "{command:?}");
        assert!(
            command
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " .:-_/[]".contains(c)),
            "{command:?}"
        );
    }
}

/// Registers `instance` through `balancer`, returning the result and what HAProxy received.
fn register(
    fake: &FakeHaproxy,
    balancer: &HaproxyLoadBalancer,
    instance: &Instance,
) -> (Result<(), BackendError>, Vec<String>) {
    let result = runtime().block_on(balancer.register(instance));
    (result, fake.take())
}

#[test]
fn the_redirect_injection_is_rejected_before_haproxy_hears_of_it() {
    let fake = FakeHaproxy::start();
    let balancer = HaproxyLoadBalancer::new(&fake.socket);
    for attack in [
        "10.0.0.9:80 redir https://evil.example:443",
        "10.0.0.9:80 ssl verify none:443",
        "10.0.0.9:80\tbackup:443",
        "evil.example:80 track shop/green:i-2:443",
        "10.0.0.9:80\u{0}:443",
        "'10.0.0.9':80",
        "10.0.0.9#x:80",
    ] {
        let (result, commands) = register(&fake, &balancer, &instance(attack));
        match result {
            Err(BackendError::Rejected { operation, reason }) => {
                assert_eq!(operation, "register");
                assert!(reason.contains("i-1") && reason.contains("address"), "{reason}");
            }
            other => panic!("{attack:?} was not rejected: {other:?}; HAProxy received {commands:?}"),
        }
        assert!(commands.is_empty(), "{attack:?} reached HAProxy: {commands:?}");
    }
}

#[test]
fn valid_addresses_become_one_argument() {
    let fake = FakeHaproxy::start();
    let balancer = HaproxyLoadBalancer::new(&fake.socket);
    for (address, argument) in [
        ("10.0.0.9:80", "10.0.0.9:80"),
        ("[::1]:8080", "[::1]:8080"),
        ("Shop-1.internal.example:443", "shop-1.internal.example:443"),
    ] {
        let (result, commands) = register(&fake, &balancer, &instance(address));
        result.unwrap();
        assert_well_formed(&commands);
        assert!(
            commands.contains(&format!("add server shop/blue:i-1 {argument} weight 0")),
            "{commands:?}"
        );
    }
}

#[test]
fn a_backend_name_with_spaces_is_rejected() {
    let fake = FakeHaproxy::start();
    let app = AppId::new("shop").unwrap();
    let balancer = HaproxyLoadBalancer::new(&fake.socket).backend(app, "shop/blue:i-9 weight 256 # ");
    let (result, commands) = register(&fake, &balancer, &instance("10.0.0.9:80"));
    assert!(
        matches!(&result, Err(BackendError::Rejected { reason, .. }) if reason.contains("backend")),
        "{result:?}"
    );
    assert!(commands.is_empty(), "{commands:?}");
}

fn addresses() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9.:\\[\\] \t#;'\"/\\\\-]{0,40}",
        (any::<[u8; 4]>(), any::<u16>(), "[ -~\t]{0,30}")
            .prop_map(|(ip, port, rest)| format!("{}:{port}{rest}", Ipv4Addr::from(ip))),
        (any::<[u8; 4]>(), "[ -~\t]{0,30}", any::<u16>())
            .prop_map(|(ip, middle, port)| format!("{}{middle}:{port}", Ipv4Addr::from(ip))),
        ("[a-zA-Z0-9-]{1,12}(\\.[a-zA-Z0-9-]{1,12}){0,3}", 0u32..70_000)
            .prop_map(|(h, p)| format!("{h}:{p}")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Whatever the address, HAProxy receives only commands with their fixed number of
    /// words, and a refused address reaches it not at all.
    #[test]
    fn no_address_adds_arguments(address in addresses()) {
        let fake = FakeHaproxy::start();
        let balancer = HaproxyLoadBalancer::new(&fake.socket);
        let (result, commands) = register(&fake, &balancer, &instance(&address));
        assert_well_formed(&commands);
        match result {
            Ok(()) => {
                let add = commands.iter().find(|c| c.starts_with("add server")).expect("an add server");
                let endpoint = add.split(' ').nth(3).unwrap();
                prop_assert_eq!(endpoint.to_ascii_lowercase(), endpoint);
                prop_assert!(!address.contains(char::is_whitespace));
            }
            Err(BackendError::Rejected { .. }) => prop_assert!(commands.is_empty(), "{:?}", commands),
            Err(other) => prop_assert!(false, "{:?}: {}", address, other),
        }
    }

    /// Whatever the backend name, likewise.
    #[test]
    fn no_backend_name_adds_arguments(backend in prop_oneof![any::<String>(), "[a-z:/ #;.\t-]{0,20}"]) {
        let fake = FakeHaproxy::start();
        let app = AppId::new("shop").unwrap();
        let balancer = HaproxyLoadBalancer::new(&fake.socket).backend(app, backend.clone());
        let (result, commands) = register(&fake, &balancer, &instance("10.0.0.9:80"));
        assert_well_formed(&commands);
        match result {
            Ok(()) => {
                let word = format!(" {backend}");
                prop_assert!(commands.iter().all(|c| c.contains(&word)), "{:?}", commands);
            }
            Err(BackendError::Rejected { .. }) => prop_assert!(commands.is_empty(), "{:?}", commands),
            Err(other) => prop_assert!(false, "{:?}: {}", backend, other),
        }
    }
}

// ---------------------------------------------------------------------------------------
// ProcessInfra (M5)
// ---------------------------------------------------------------------------------------

/// `<tmp>/artifacts/shop/1.0`, a directory `<tmp>/outside` with a program in it, and a
/// symbolic link `<tmp>/artifacts/shop/escape` to it.
struct Layout {
    dir: tempfile::TempDir,
}

impl Layout {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("artifacts/shop/1.0")).unwrap();
        std::fs::create_dir_all(dir.path().join("artifacts/shop/.hidden")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/server"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink(
            dir.path().join("outside"),
            dir.path().join("artifacts/shop/escape"),
        )
        .unwrap();
        Self { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }

    fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    fn infra(&self) -> ProcessInfra {
        let spec = ProcessSpec::new("sleep", self.root(), self.dir.path().join("work"))
            .args(["30"])
            .ready_when_started();
        ProcessInfra::new(spec).unwrap()
    }
}

fn under(root: &Path, location: &str) -> bool {
    let root = std::fs::canonicalize(root).unwrap();
    std::fs::canonicalize(location).is_ok_and(|path| path.starts_with(&root) && path != root)
}

#[test]
fn traversal_and_absolute_versions_are_rejected() {
    let layout = Layout::new();
    let infra = layout.infra();
    let app = AppId::new("shop").unwrap();
    let absolute = layout.outside().display().to_string();
    let rt = runtime();
    for attack in [
        "../../outside",
        "../../../outside",
        absolute.as_str(),
        "..",
        ".hidden",
        "a\\b",
        "escape",
    ] {
        let version = Version::new(attack).unwrap();
        match rt.block_on(infra.fetch_artifact(&app, &version)) {
            Err(BackendError::Rejected { operation, reason }) => {
                assert_eq!(operation, "fetch_artifact");
                assert!(
                    reason.contains("version") || reason.contains("outside the artifact root"),
                    "{reason}"
                );
            }
            other => panic!("version {attack:?} was not rejected: {other:?}"),
        }
    }
    let fine = rt
        .block_on(infra.fetch_artifact(&app, &Version::new("1.0").unwrap()))
        .unwrap();
    assert!(under(&layout.root(), &fine.location), "{}", fine.location);
}

#[test]
fn install_refuses_an_artifact_outside_the_root() {
    let layout = Layout::new();
    let infra = layout.infra();
    let app = AppId::new("shop").unwrap();
    let rt = runtime();
    let version = Version::new("1.0").unwrap();
    let instance = rt
        .block_on(infra.provision(&app, &Pool::blue(), &version, 1))
        .unwrap()
        .remove(0)
        .id;
    rt.block_on(infra.stop_instance(&app, &instance)).unwrap();
    for (version, location) in [
        ("1.0", layout.outside()),
        ("1.0", layout.root().join("shop/../../outside")),
        ("../../outside", layout.root().join("shop/1.0")),
    ] {
        let artifact = Artifact {
            version: Version::new(version).unwrap(),
            location: location.display().to_string(),
            digest: None,
        };
        let result = rt.block_on(infra.install(&app, &instance, &artifact));
        assert!(
            matches!(result, Err(BackendError::Rejected { .. })),
            "{artifact:?}: {result:?}"
        );
    }
    let good = rt.block_on(infra.fetch_artifact(&app, &version)).unwrap();
    rt.block_on(infra.install(&app, &instance, &good)).unwrap();
    rt.block_on(infra.decommission(&app, &instance)).unwrap();
}

fn versions() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "(\\.\\./){1,5}(outside|artifacts|shop)?",
        "[./a-z0-9\\\\~+-]{1,20}",
        Just("/".to_owned()),
        "/[a-z/.]{0,20}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Whatever the version, an artifact found lies under the artifact root.
    #[test]
    fn no_version_leaves_the_artifact_root(version in versions()) {
        let Ok(version) = Version::new(version) else {
            return Ok(());
        };
        let layout = Layout::new();
        let infra = layout.infra();
        let app = AppId::new("shop").unwrap();
        match runtime().block_on(infra.fetch_artifact(&app, &version)) {
            Ok(artifact) => {
                prop_assert!(under(&layout.root(), &artifact.location), "{:?} -> {}", version, artifact.location);
                prop_assert_eq!(version.as_str(), "1.0");
            }
            Err(BackendError::Rejected { .. } | BackendError::NotFound { .. }) => {}
            Err(other) => prop_assert!(false, "{:?}: {}", version, other),
        }
    }
}
