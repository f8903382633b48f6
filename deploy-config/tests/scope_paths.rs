//! Review M17: the `Files` source joined the environment and application names into paths
//! unchecked, so `../x` or an absolute name read any `.toml`/`.yaml`/`.json` file, and
//! `with_extension` made `a.b` load `a.toml`. Names are now single safe segments (a typed
//! error names the bad one) and every path stays under the directory: the named attacks,
//! then arbitrary strings.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use deploy_config::{ConfigError, ConfigurationManager, Files, Requirement, Scope, StoreSource};
use deploy_core::{MemoryStore, RecordStoreExt};
use proptest::prelude::*;

/// `<tmp>/…/root` holding the layers, and a secret file next to it, outside the root.
struct Tree {
    top: PathBuf,
    root: PathBuf,
}

impl Tree {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let top = std::env::temp_dir().join(format!(
            "deploykit-scope-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&top);
        let root = top.join("root");
        std::fs::create_dir_all(root.join("production")).unwrap();
        std::fs::create_dir_all(root.join("a.b")).unwrap();
        let write = |path: PathBuf, text: &str| std::fs::write(path, text).unwrap();
        write(root.join("base.toml"), "layer = \"base\"\n");
        write(root.join("production.toml"), "env = \"production\"\n");
        write(root.join("production/shop.toml"), "app = \"shop\"\n");
        write(root.join("a.toml"), "env = \"a\"\n");
        write(root.join("a.b.toml"), "env = \"a.b\"\n");
        write(root.join("a.b/c.d.toml"), "app = \"c.d\"\n");
        write(root.join("a.b/c.toml"), "app = \"c\"\n");
        write(top.join("x.toml"), "secret = \"outside the root\"\n");
        Self { top, root }
    }

    fn manager(&self) -> ConfigurationManager {
        let manager = ConfigurationManager::new();
        manager.add_config_source(Files::new(&self.root), Requirement::Required);
        manager
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.top);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn scope(environment: &str, application: &str) -> Scope {
    Scope {
        environment: environment.to_owned(),
        application: application.to_owned(),
    }
}

/// The one error of a refused load, which must be `InvalidScope` naming `field` and `value`.
fn assert_refused(
    result: Result<Arc<deploy_config::Config>, deploy_config::ConfigErrors>,
    field: &str,
    value: &str,
) {
    let errors = result.expect_err("refused");
    match errors.0.as_slice() {
        [
            ConfigError::InvalidScope {
                field: got,
                value: bad,
                ..
            },
        ] => {
            assert_eq!((*got, bad.as_str()), (field, value), "{errors}");
        }
        _ => panic!("expected one InvalidScope error, got {errors}"),
    }
    assert!(
        errors.to_string().contains(&format!("{value:?}")),
        "the message names the value: {errors}"
    );
}

#[tokio::test]
async fn parent_directory_names_are_refused() {
    let tree = Tree::new();
    let manager = tree.manager();
    // Before the fix this loaded `<root>/../x.toml` and served its secret as configuration.
    assert_refused(manager.get_config("../x", "shop").await, "environment", "../x");
    assert_refused(
        manager.get_config("production", "../../x").await,
        "application",
        "../../x",
    );
    assert_refused(manager.get_config("..", "x").await, "environment", "..");
    assert_refused(manager.reload("production", "..").await, "application", "..");
}

#[tokio::test]
async fn absolute_names_are_refused() {
    let tree = Tree::new();
    let manager = tree.manager();
    assert_refused(manager.get_config("/etc", "shop").await, "environment", "/etc");
    assert_refused(
        manager.get_config("production", "/etc").await,
        "application",
        "/etc",
    );
    // An absolute path to a file that exists: before the fix, `join` replaced the root.
    let outside = tree.top.join("x").display().to_string();
    assert_refused(
        manager.get_config("production", &outside).await,
        "application",
        &outside,
    );
}

#[tokio::test]
async fn other_unsafe_names_are_refused() {
    let tree = Tree::new();
    let manager = tree.manager();
    for bad in ["", ".", ".hidden", "a/b", "a\\b", "prod\0", "a b", "C:x"] {
        assert_refused(manager.get_config(bad, "shop").await, "environment", bad);
        assert_refused(manager.get_config("production", bad).await, "application", bad);
    }
    let error = Files::new(&tree.root).paths(&scope("../x", "shop")).unwrap_err();
    assert!(
        matches!(
            error,
            ConfigError::InvalidScope {
                field: "environment",
                ..
            }
        ),
        "{error}"
    );
    assert!(Scope::new("production", "../x").is_err());
    assert!(Scope::new("eu.prod", "shop-2_b").is_ok());
}

#[tokio::test]
async fn dotted_names_load_their_own_files() {
    let tree = Tree::new();
    let manager = tree.manager();
    // Before the fix `a.b` resolved to `a.toml` (`with_extension` replaced `.b`).
    let config = manager.get_config("a.b", "c.d").await.unwrap();
    assert_eq!(config.get_at::<String>("env").unwrap(), "a.b");
    assert_eq!(config.get_at::<String>("app").unwrap(), "c.d");
    let paths = Files::new(&tree.root).paths(&scope("a.b", "c.d")).unwrap();
    assert_eq!(
        paths,
        vec![
            tree.root.join("base.toml"),
            tree.root.join("a.b.toml"),
            tree.root.join("a.b").join("c.d.toml")
        ]
    );
    let plain = manager.get_config("a", "shop").await.unwrap();
    assert_eq!(plain.get_at::<String>("env").unwrap(), "a");
    let usual = manager.get_config("production", "shop").await.unwrap();
    assert_eq!(usual.get_at::<String>("app").unwrap(), "shop");
}

#[tokio::test]
async fn store_keys_take_checked_names_too() {
    let store = Arc::new(MemoryStore::new());
    store
        .put_json(
            "config/a/b",
            &serde_json::json!({"leak": true}),
            Default::default(),
        )
        .await
        .unwrap();
    let manager = ConfigurationManager::new();
    manager.add_config_source(StoreSource::new(store, "config/"), Requirement::Optional);
    assert_refused(manager.get_config("a/b", "c").await, "environment", "a/b");
}

/// No path component leaves `root`: no `..`, no root or prefix, and `root` is a prefix.
fn stays_under(path: &Path, root: &Path) -> bool {
    path.strip_prefix(root)
        .is_ok_and(|rest| rest.components().all(|part| matches!(part, Component::Normal(_))))
}

/// Strings of path-ish characters (where the attacks are), and arbitrary Unicode.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[./\\\\a-z:~\\- ]{0,12}",
        Just("../x".to_owned()),
        Just("/etc".to_owned()),
        Just("a.b".to_owned()),
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any names: the files considered stay under the root, a load never panics and never
    /// reads the file outside the root; a refused name is named by the error.
    #[test]
    fn arbitrary_scopes_never_leave_the_root(environment in name(), application in name()) {
        let tree = Tree::new();
        let candidate = scope(&environment, &application);
        match Files::new(&tree.root).paths(&candidate) {
            Ok(paths) => {
                prop_assert!(candidate.check().is_ok());
                for path in &paths {
                    prop_assert!(stays_under(path, &tree.root), "{}", path.display());
                    let canonical = path.canonicalize().unwrap();
                    prop_assert!(canonical.starts_with(tree.root.canonicalize().unwrap()));
                }
            }
            Err(ConfigError::InvalidScope { field, value, .. }) => {
                prop_assert!(candidate.check().is_err());
                let named = match field {
                    "environment" => &environment,
                    _ => &application,
                };
                prop_assert_eq!(&value, named);
            }
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
        let loaded = runtime().block_on(tree.manager().get_config(&environment, &application));
        if let Ok(config) = loaded {
            prop_assert!(config.tree().get("secret").is_none(), "read the file outside the root");
        }
    }
}
