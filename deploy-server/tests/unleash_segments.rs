//! Segments defined through the FeatureFlagManager reach the Unleash client API: the client
//! state carries the segment and the flag's strategy refers to it by the segment's id, and a
//! change of the segment is served at once.

#[path = "unleash/common.rs"]
mod common;

use std::sync::Arc;

use common::{ENVIRONMENT, create_token, serve_store};
use deploy_core::MemoryStore;
use deploy_flags::{Constraint, FeatureFlagManager, FlagDefinition, Operator, Rule, Segment};
use deploy_server::unleash::UnleashConfig;
use serde_json::{Value, json};

fn paying(plans: &[&str]) -> Segment {
    Segment {
        id: "paying".into(),
        constraints: vec![Constraint::list("plan", Operator::In, plans)],
    }
}

/// The client state with `token`.
async fn client_features(http: &reqwest::Client, base: &str, token: &str) -> Value {
    let response = http
        .get(format!("{base}/api/client/features"))
        .header("authorization", token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The constraints of the segment that `reports`' only strategy refers to.
fn constraints_of_reports_segment(features: &Value) -> Value {
    let reports = features["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|feature| feature["name"] == "reports")
        .expect("the flag is served");
    let strategies = reports["strategies"].as_array().unwrap();
    assert_eq!(strategies.len(), 1, "{reports}");
    let ids = strategies[0]["segments"]
        .as_array()
        .expect("the strategy names its segments");
    assert_eq!(ids.len(), 1, "{reports}");
    let segment = features["segments"]
        .as_array()
        .expect("the state carries segments")
        .iter()
        .find(|segment| segment["id"] == ids[0])
        .unwrap_or_else(|| panic!("segment {} is in the state: {features}", ids[0]));
    segment["constraints"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_features_carry_managed_segments_referenced_by_strategies() {
    let store = Arc::new(MemoryStore::new());
    let manager = Arc::new(
        FeatureFlagManager::open(store.clone(), Default::default())
            .await
            .unwrap(),
    );
    manager.create_segment("ann", paying(&["pro"])).await.unwrap();
    let flag = FlagDefinition::new("reports", true).with_rule(Rule {
        segments: vec!["paying".into()],
        ..Rule::default()
    });
    manager.create_flag("ann", flag).await.unwrap();
    let (base, task) = serve_store(store, Arc::clone(&manager), UnleashConfig::default()).await;
    let http = reqwest::Client::new();
    let token = create_token(&http, &base, "segments-client", "client", ENVIRONMENT, &["*"]).await;

    let features = client_features(&http, &base, &token).await;
    let constraints = constraints_of_reports_segment(&features);
    assert_eq!(constraints.as_array().map(Vec::len), Some(1), "{constraints}");
    assert_eq!(constraints[0]["contextName"], "plan");
    assert_eq!(constraints[0]["operator"], "IN");
    assert_eq!(constraints[0]["values"], json!(["pro"]));

    // Changed through the manager: the next request serves the new constraints.
    manager
        .update_segment("bob", paying(&["pro", "team"]))
        .await
        .unwrap();
    let features = client_features(&http, &base, &token).await;
    let constraints = constraints_of_reports_segment(&features);
    assert_eq!(constraints[0]["values"], json!(["pro", "team"]), "{constraints}");
    task.abort();
}
