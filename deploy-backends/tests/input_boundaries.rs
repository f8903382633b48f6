//! Hostile inputs at two boundaries (security review M4 and M5), with generated inputs:
//!
//! - an instance address or a backend name never turns into extra arguments of an HAProxy
//!   runtime-API command (a stand-in socket records every command and checks its words);
//! - a version never makes `ProcessInfra` use a directory outside its artifact root;
//! - whatever the runtime API answers, the balancer returns a value or a typed error.
//!
//! Every case returns a value or a typed error; none panics. Also here, with the same
//! stand-in: two drains overlap (security review m15).

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

/// A stand-in for HAProxy's runtime API socket: records each command and answers as
/// `answer` says (by default, as an empty backend would).
struct FakeHaproxy {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    commands: Arc<Mutex<Vec<String>>>,
}

fn empty_backend(command: &str) -> String {
    if command.starts_with("show servers state") {
        "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_port\n"
    } else if command.starts_with("show stat") {
        "# pxname,svname,scur\n"
    } else if command.starts_with("add server") {
        "New server registered.\n"
    } else {
        ""
    }
    .to_owned()
}

impl FakeHaproxy {
    fn start() -> Self {
        Self::answering(empty_backend)
    }

    fn answering(answer: impl Fn(&str) -> String + Send + 'static) -> Self {
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
                let _ = stream.write_all(answer(&command).as_bytes());
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

/// Security review m15: `deregister` held the balancer-wide lock through the drain wait,
/// so `retire_all` drained one server after the other. Now the second drain starts while
/// the first waits, and the sessions are polled at `drain_poll`, not every 10 ms. The
/// order of the commands shows the overlap; real time (0.4 s) because the stand-in answers
/// from a thread, which a paused clock's auto-advance would race with the command timeout.
#[test]
fn drains_overlap_and_poll_at_the_configured_interval() {
    // Two servers in rotation, each with a session that never ends.
    let admin: Arc<Mutex<Vec<(String, u32)>>> = Arc::new(Mutex::new(vec![
        ("blue:i-1".to_owned(), 0),
        ("blue:i-2".to_owned(), 0),
    ]));
    let fake = FakeHaproxy::answering(move |command| {
        let mut admin = admin.lock().unwrap();
        let words: Vec<&str> = command.split(' ').collect();
        if command.starts_with("show servers state") {
            let rows: String = admin
                .iter()
                .map(|(name, bits)| format!("{name} 127.0.0.1 2 {bits} 1 1 8080\n"))
                .collect();
            format!(
                "1\n# srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_port\n{rows}"
            )
        } else if command.starts_with("show stat") {
            let rows: String = admin.iter().map(|(name, _)| format!("shop,{name},1\n")).collect();
            format!("# pxname,svname,scur\n{rows}")
        } else if let ["set", "server", server, "state", state] = words.as_slice() {
            let bits = match *state {
                "drain" => 8,
                "maint" => 1,
                _ => 0,
            };
            for (name, admin) in admin.iter_mut() {
                if server.ends_with(name.as_str()) {
                    *admin = bits;
                }
            }
            String::new()
        } else if command.starts_with("del server") {
            admin.retain(|(name, _)| !command.ends_with(name.as_str()));
            "Server deleted.\n".to_owned()
        } else {
            String::new()
        }
    });
    let balancer = HaproxyLoadBalancer::new(&fake.socket).drain_poll(std::time::Duration::from_millis(50));
    let app = AppId::new("shop").unwrap();
    let drain = std::time::Duration::from_millis(400);
    let (one, two) = (InstanceId::new("i-1").unwrap(), InstanceId::new("i-2").unwrap());
    let (first, second) = runtime().block_on(async {
        tokio::join!(
            balancer.deregister(&app, &one, drain),
            balancer.deregister(&app, &two, drain),
        )
    });
    first.unwrap();
    second.unwrap();
    let commands = fake.take();
    let position = |wanted: &str| commands.iter().position(|c| c == wanted);
    let drains = [
        position("set server shop/blue:i-1 state drain").unwrap(),
        position("set server shop/blue:i-2 state drain").unwrap(),
    ];
    let first_maint = commands.iter().position(|c| c.ends_with("state maint")).unwrap();
    assert!(drains.iter().all(|at| *at < first_maint), "{commands:#?}");
    // 400 ms of 50 ms polls per server, not 40 polls of 10 ms each.
    let polls = commands.iter().filter(|c| c.starts_with("show stat")).count();
    assert!((4..=24).contains(&polls), "{polls} polls: {commands:#?}");
}

/// An answer from the runtime API: arbitrary text, or the shape of the real thing with
/// arbitrary fields.
fn runtime_answers() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        "[a-z0-9:._-]{0,12}",
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<String>(),
    ];
    let row = proptest::collection::vec(field, 0..8).prop_map(|fields| fields.join(" "));
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(row.clone(), 0..5).prop_map(|rows| format!(
            "1\n# srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_port\n{}\n",
            rows.join("\n")
        )),
        proptest::collection::vec(row, 0..5).prop_map(|rows| format!(
            "# pxname,svname,scur\n{}\n",
            rows.iter()
                .map(|row| row.replace(' ', ","))
                .collect::<Vec<_>>()
                .join("\n")
        )),
        Just("Can't find backend.\n".to_owned()),
        Just("No such server.\n".to_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Item 8 of the hostile-inputs issue: whatever HAProxy answers (to `show servers state`,
    /// `show stat` and the `set` commands alike), reading members and routing and draining a
    /// server give a value or a typed error, never a panic or a hang.
    #[test]
    fn arbitrary_runtime_answers_are_values_or_typed_errors(answer in runtime_answers()) {
        let reply = answer.clone();
        let fake = FakeHaproxy::answering(move |_| reply.clone());
        let balancer = HaproxyLoadBalancer::new(&fake.socket).drain_poll(std::time::Duration::from_millis(1));
        let app = AppId::new("shop").unwrap();
        let instance = InstanceId::new("i-1").unwrap();
        let outcomes = runtime().block_on(async {
            [
                balancer.members(&app, &Pool::blue()).await.map(drop),
                balancer.routing(&app).await.map(drop),
                balancer.deregister(&app, &instance, std::time::Duration::from_millis(5)).await,
            ]
        });
        for outcome in outcomes {
            match outcome {
                Ok(()) | Err(BackendError::Unavailable { .. } | BackendError::NotFound { .. }
                    | BackendError::Rejected { .. } | BackendError::Timeout { .. }) => {}
                Err(other) => prop_assert!(false, "{:?}: {}", answer, other),
            }
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
