//! Where screenshots go: always under the target directory (CI keeps them as artifacts),
//! and into `docs/screenshots/` when `DEPLOYKIT_UPDATE_SCREENSHOTS=1` (the README's).

use std::path::PathBuf;

/// The environment variable that makes the tests refresh `docs/screenshots/`.
pub const UPDATE_SCREENSHOTS: &str = "DEPLOYKIT_UPDATE_SCREENSHOTS";

/// `target/tmp/ui-screenshots` (cargo's temporary directory for integration tests).
fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots")
}

/// The checked-in screenshots, `docs/screenshots/` at the workspace's root.
fn docs_dir() -> PathBuf {
    let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir.parent().unwrap_or(crate_dir).join("docs/screenshots")
}

/// Writes the PNG `png` as `name` into the artifacts directory, and, when it is one to be
/// `checked_in`, into `docs/screenshots/` when [`UPDATE_SCREENSHOTS`] is `1`; the paths
/// written.
pub fn save_screenshot(name: &str, png: &[u8], checked_in: bool) -> Vec<PathBuf> {
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    let mut dirs = vec![artifacts()];
    if checked_in && std::env::var(UPDATE_SCREENSHOTS).is_ok_and(|value| value == "1") {
        dirs.push(docs_dir());
    }
    dirs.into_iter()
        .map(|dir| {
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|error| panic!("creating {}: {error}", dir.display()));
            let path = dir.join(name);
            std::fs::write(&path, png).unwrap_or_else(|error| panic!("writing {}: {error}", path.display()));
            path
        })
        .collect()
}
