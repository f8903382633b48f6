//! Both providers against `conformance::provider` (issue 16), directly and as `Arc<dyn _>`.

use std::sync::Arc;

use deploy_infra::{FileProvider, Provider, SimProvider, conformance};
use serde_json::json;

#[tokio::test]
async fn sim_provider_keeps_the_provider_contract() {
    let sim = SimProvider::new("sim");
    conformance::provider(&sim, "a", &json!({"size": 1}), &json!({"size": 2}), None).await;
    let erased: Arc<dyn Provider> = Arc::new(sim.clone());
    conformance::provider(erased.as_ref(), "b", &json!({}), &json!({"x": [1]}), None).await;
    assert!(sim.resources().is_empty());
}

#[tokio::test]
async fn file_provider_keeps_the_provider_contract() {
    let root = std::env::temp_dir().join(format!("deploy-infra-conformance-{}", std::process::id()));
    let files = FileProvider::new(&root);
    let (v1, v2) = (json!({"content": "one\n"}), json!({"content": "two\n"}));
    let refused = json!({"content": "x"});
    conformance::provider(&files, "etc/app.conf", &v1, &v2, Some(("../escape", &refused))).await;
    let erased: Arc<dyn Provider> = Arc::new(files);
    let no_content = json!({"content": 7});
    conformance::provider(erased.as_ref(), "top", &v1, &v2, Some(("fine", &no_content))).await;
    std::fs::remove_dir_all(&root).unwrap();
}
