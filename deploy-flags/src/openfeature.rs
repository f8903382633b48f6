//! An OpenFeature provider over a [`FlagEngine`] (feature `openfeature`).
//!
//! Context mapping: the targeting key becomes `userId`; custom fields are set by name (so
//! `sessionId`, `environment`... land on the standard attributes), numbers and booleans as
//! text, date-times as RFC 3339 (`currentTime` drives date constraints).
//!
//! Values: boolean flags resolve to whether they are on. String, number and JSON flags
//! resolve to the served variant's payload; a flag that serves no variant for the caller
//! (off without an off variant) resolves to an error, so the client returns the caller's
//! default. Reasons map as [`Reason::as_openfeature`] says.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use deploy_flags::openfeature::FlagEngineProvider;
//! use deploy_flags::{FlagDefinition, FlagEngine, FlagSet};
//! use open_feature::{EvaluationContext, OpenFeature};
//!
//! let engine = Arc::new(FlagEngine::with_flags(FlagSet { flags: vec![FlagDefinition::new("dark-mode", true)], ..Default::default() })?);
//! let mut api = OpenFeature::default();
//! api.set_provider(FlagEngineProvider::new(engine)).await;
//! let client = api.create_client();
//! let context = EvaluationContext::default().with_targeting_key("user-1");
//! assert_eq!(client.get_bool_value("dark-mode", Some(&context), None).await, Ok(true));
//! # Ok(()) }
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use open_feature::provider::{FeatureProvider, ProviderMetadata, ProviderStatus, ResolutionDetails};
use open_feature::{
    EvaluationContext, EvaluationContextFieldValue, EvaluationError, EvaluationErrorCode, EvaluationReason,
    EvaluationResult, StructValue, Value,
};

use crate::context::Context;
use crate::engine::{Details, FlagEngine};
use crate::eval::{ErrorCode, Reason};
use crate::model::FlagKind;

/// Serves a [`FlagEngine`]'s flags to OpenFeature clients.
#[derive(Debug)]
pub struct FlagEngineProvider {
    engine: Arc<FlagEngine>,
    metadata: ProviderMetadata,
}

impl FlagEngineProvider {
    /// A provider named `deploykit`.
    pub fn new(engine: Arc<FlagEngine>) -> Self {
        Self {
            engine,
            metadata: ProviderMetadata::new("deploykit"),
        }
    }

    fn resolve(&self, flag: &str, context: &EvaluationContext) -> EvaluationResult<Details> {
        let details = self.engine.evaluate(flag, &to_context(context));
        match details.reason {
            Reason::Error(ErrorCode::FlagNotFound) => Err(error(
                EvaluationErrorCode::FlagNotFound,
                format!("no flag named `{flag}`"),
            )),
            _ => Ok(details),
        }
    }

    /// The served payload of a non-boolean flag, checked against the kind asked for.
    fn payload<T>(
        &self,
        flag: &str,
        context: &EvaluationContext,
        wanted: &[FlagKind],
        convert: impl FnOnce(&crate::VariantPayload) -> Option<T>,
    ) -> EvaluationResult<ResolutionDetails<T>> {
        let details = self.resolve(flag, context)?;
        let kind = details.kind.unwrap_or_default();
        if !wanted.contains(&kind) {
            return Err(error(
                EvaluationErrorCode::TypeMismatch,
                format!("`{flag}` is a {kind:?} flag"),
            ));
        }
        let Some(variant) = &details.variant else {
            return Err(error(
                EvaluationErrorCode::General("no value".into()),
                format!(
                    "`{flag}` serves no variant to this context ({})",
                    details.reason.as_openfeature()
                ),
            ));
        };
        let value = variant.payload.as_ref().and_then(convert).ok_or_else(|| {
            error(
                EvaluationErrorCode::TypeMismatch,
                format!("variant `{}` of `{flag}` has no such value", variant.name),
            )
        })?;
        Ok(ResolutionDetails {
            value,
            variant: Some(variant.name.to_string()),
            reason: Some(reason(details.reason)),
            flag_metadata: None,
        })
    }
}

fn error(code: EvaluationErrorCode, message: String) -> EvaluationError {
    EvaluationError {
        code,
        message: Some(message),
    }
}

fn reason(reason: Reason) -> EvaluationReason {
    match reason {
        Reason::Disabled => EvaluationReason::Disabled,
        Reason::Static => EvaluationReason::Static,
        Reason::TargetingMatch { .. } => EvaluationReason::TargetingMatch,
        Reason::Split { .. } => EvaluationReason::Split,
        Reason::Default => EvaluationReason::Default,
        Reason::Error(_) => EvaluationReason::Error,
        other => EvaluationReason::Other(other.as_openfeature().to_owned()),
    }
}

fn to_context(context: &EvaluationContext) -> Context {
    let mut ours = Context::new();
    if let Some(key) = &context.targeting_key {
        ours.set("userId", key.clone());
    }
    for (name, value) in &context.custom_fields {
        let text = match value {
            EvaluationContextFieldValue::Bool(value) => value.to_string(),
            EvaluationContextFieldValue::Int(value) => value.to_string(),
            EvaluationContextFieldValue::Float(value) => value.to_string(),
            EvaluationContextFieldValue::String(value) => value.clone(),
            EvaluationContextFieldValue::DateTime(value) => {
                let seconds = value.unix_timestamp();
                let nanos = value.nanosecond();
                match chrono::DateTime::from_timestamp(seconds, nanos) {
                    Some(time) => time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                    None => continue,
                }
            }
            // Opaque structures cannot be compared by constraints.
            EvaluationContextFieldValue::Struct(_) => continue,
        };
        ours.set(name.clone(), text);
    }
    ours
}

#[async_trait]
impl FeatureProvider for FlagEngineProvider {
    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    fn status(&self) -> ProviderStatus {
        ProviderStatus::Ready
    }

    async fn resolve_bool_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<bool>> {
        let details = self.resolve(flag_key, evaluation_context)?;
        if details.kind != Some(FlagKind::Boolean) {
            return Err(error(
                EvaluationErrorCode::TypeMismatch,
                format!("`{flag_key}` is not a boolean flag"),
            ));
        }
        Ok(ResolutionDetails {
            value: details.enabled,
            variant: details.variant.map(|variant| variant.name.to_string()),
            reason: Some(reason(details.reason)),
            flag_metadata: None,
        })
    }

    async fn resolve_int_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<i64>> {
        self.payload(flag_key, evaluation_context, &[FlagKind::Number], |payload| {
            payload
                .number
                .filter(|number| number.fract() == 0.0 && number.abs() < 9.0e15)
                .map(|number| number as i64)
        })
    }

    async fn resolve_float_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<f64>> {
        self.payload(flag_key, evaluation_context, &[FlagKind::Number], |payload| {
            payload.number
        })
    }

    async fn resolve_string_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<String>> {
        // Unleash-imported flags are boolean with string payloads: serve those too.
        self.payload(
            flag_key,
            evaluation_context,
            &[FlagKind::String, FlagKind::Boolean],
            |payload| Some(payload.text.to_string()),
        )
    }

    async fn resolve_struct_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<StructValue>> {
        self.payload(
            flag_key,
            evaluation_context,
            &[FlagKind::Json],
            |payload| match Value::try_from(payload.json.as_deref()?).ok()? {
                Value::Struct(value) => Some(value),
                _ => None,
            },
        )
    }
}
