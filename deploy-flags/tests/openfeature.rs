//! The OpenFeature provider, exercised through the OpenFeature client API.
#![cfg(feature = "openfeature")]

use std::sync::Arc;

use deploy_flags::openfeature::FlagEngineProvider;
use deploy_flags::{
    Constraint, FlagDefinition, FlagEngine, FlagKind, FlagSet, Operator, Payload, Rule, VariantDefinition,
};
use open_feature::{EvaluationContext, EvaluationErrorCode, EvaluationReason, OpenFeature};

fn flags() -> FlagSet {
    let beta = Rule {
        constraints: vec![Constraint::list("plan", Operator::In, &["beta"])],
        ..Rule::default()
    };
    let mut headline = FlagDefinition::new("headline", true);
    headline.kind = FlagKind::String;
    headline.variants = vec![VariantDefinition::new("plain", 1).with_payload(Payload::string("Welcome"))];
    headline.rules = vec![beta.clone()];
    let mut limit = FlagDefinition::new("upload-limit", true);
    limit.kind = FlagKind::Number;
    limit.variants = vec![VariantDefinition::new("big", 1).with_payload(Payload::number(50.0))];
    let mut ratio = FlagDefinition::new("sample-ratio", true);
    ratio.kind = FlagKind::Number;
    ratio.variants = vec![VariantDefinition::new("tenth", 1).with_payload(Payload::number(0.1))];
    let mut layout = FlagDefinition::new("layout", true);
    layout.kind = FlagKind::Json;
    layout.variants = vec![
        VariantDefinition::new("grid", 1)
            .with_payload(Payload::json(&serde_json::json!({"columns": 3, "dense": true}))),
    ];
    FlagSet {
        flags: vec![
            FlagDefinition::new("dark-mode", true).with_rule(beta),
            FlagDefinition::new("off", false),
            headline,
            limit,
            ratio,
            layout,
        ],
        segments: vec![],
    }
}

async fn client() -> open_feature::Client {
    let engine = Arc::new(FlagEngine::with_flags(flags()).unwrap());
    let mut api = OpenFeature::default();
    api.set_provider(FlagEngineProvider::new(engine)).await;
    api.create_client()
}

#[tokio::test]
async fn values_reasons_and_errors_through_the_client() {
    let client = client().await;
    let beta = EvaluationContext::default()
        .with_targeting_key("u1")
        .with_custom_field("plan", "beta");
    let free = EvaluationContext::default()
        .with_targeting_key("u2")
        .with_custom_field("plan", "free");

    let details = client
        .get_bool_details("dark-mode", Some(&beta), None)
        .await
        .unwrap();
    assert!(details.value);
    assert_eq!(details.reason, Some(EvaluationReason::TargetingMatch));
    let details = client
        .get_bool_details("dark-mode", Some(&free), None)
        .await
        .unwrap();
    assert!(!details.value);
    assert_eq!(details.reason, Some(EvaluationReason::Default));
    assert_eq!(
        client.get_bool_details("off", None, None).await.unwrap().reason,
        Some(EvaluationReason::Disabled)
    );

    let headline = client
        .get_string_details("headline", Some(&beta), None)
        .await
        .unwrap();
    assert_eq!(
        (headline.value.as_str(), headline.variant.as_deref()),
        ("Welcome", Some("plain"))
    );
    // Off for this caller with no off variant: the client falls back to the caller's default.
    assert!(
        client
            .get_string_value("headline", Some(&free), None)
            .await
            .is_err()
    );
    assert_eq!(
        client.get_int_value("upload-limit", None, None).await.unwrap(),
        50
    );
    assert_eq!(
        client.get_float_value("sample-ratio", None, None).await.unwrap(),
        0.1
    );
    assert!(
        client.get_int_value("sample-ratio", None, None).await.is_err(),
        "0.1 is not an integer"
    );
    let layout = client
        .get_struct_details::<open_feature::StructValue>("layout", None, None)
        .await
        .unwrap();
    assert_eq!(
        layout
            .value
            .fields
            .get("columns")
            .and_then(|value| value.as_i64()),
        Some(3)
    );

    let missing = client.get_bool_details("missing", None, None).await.unwrap_err();
    assert_eq!(missing.code, EvaluationErrorCode::FlagNotFound);
    let mismatch = client
        .get_bool_details("headline", Some(&beta), None)
        .await
        .unwrap_err();
    assert_eq!(mismatch.code, EvaluationErrorCode::TypeMismatch);
}
