//! Infrastructure as code on real files: plan and apply a small layout under a temporary
//! directory, change a file behind the tool's back and see the drift, plan the fix, then
//! destroy everything in reverse dependency order.
//!
//! ```text
//! cargo run --example infra
//! ```

use std::sync::Arc;

use deploykit::core::MemoryStore;
use deploykit::infra::{FileProvider, Infra, Resource, StateStore};
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::env::temp_dir().join(format!("deploykit-infra-example-{}", std::process::id()));
    let states = StateStore::new(Arc::new(MemoryStore::new()), Arc::new(chrono::Utc::now));
    let infra = Infra::new(states).provider(FileProvider::new(&root));
    let desired = vec![
        Resource::new(
            "file",
            "shop/config/app.toml",
            &json!({"content": "port = 8080\nworkers = 4\n"}),
        )?,
        Resource::new(
            "file",
            "shop/config/limits.toml",
            &json!({"content": "rps = 500\n"}),
        )?
        .after("file.shop/config/app.toml"),
        Resource::new(
            "file",
            "shop/README",
            &json!({"content": "managed by deploykit\n"}),
        )?
        .after("file.shop/config/app.toml")
        .after("file.shop/config/limits.toml"),
    ];

    println!("== plan (files under {})", root.display());
    println!("{}", infra.plan("staging", &desired).await?.render());
    let report = infra.apply("staging", &desired, "example").await?;
    println!(
        "\n== apply: {:?}",
        report
            .done
            .iter()
            .map(|(id, action)| format!("{action:?} {id}"))
            .collect::<Vec<_>>()
    );
    println!("plan again: {}", infra.plan("staging", &desired).await?.render());

    println!("\n== someone edits app.toml by hand");
    std::fs::write(root.join("shop/config/app.toml"), "port = 9999\nworkers = 4\n")?;
    let drift = infra.refresh("staging").await?;
    for change in drift
        .changes
        .iter()
        .filter(|change| change.action != deploykit::infra::Action::NoOp)
    {
        println!(
            "drift: {:?} {} (now {})",
            change.action,
            change.id,
            change
                .before
                .as_ref()
                .map_or("gone".into(), |now| now.to_string())
        );
    }

    println!("\n== a change in the declaration: more workers");
    let mut changed = desired.clone();
    changed[0].config = json!({"content": "port = 8080\nworkers = 8\n"});
    println!("{}", infra.plan("staging", &changed).await?.render());
    infra.apply("staging", &changed, "example").await?;
    println!(
        "app.toml now:\n{}",
        std::fs::read_to_string(root.join("shop/config/app.toml"))?
    );

    let destroyed = infra.destroy("staging", "example").await?;
    println!(
        "== destroy: {:?}",
        destroyed
            .done
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>()
    );
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
