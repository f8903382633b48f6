//! Lifecycle hooks: user code run at fixed points of a rollout, with a timeout and an
//! explicit verdict.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{AppId, Pool, Revision, Version};
use serde::{Deserialize, Serialize};

/// Where in a rollout a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookPoint {
    /// The new version is up and healthy, before it gets any traffic (smoke tests).
    BeforeTraffic,
    /// The new version got its first traffic.
    AfterTraffic,
    /// Before the new version takes all traffic.
    BeforePromotion,
    /// The new version takes all traffic.
    AfterPromotion,
    /// A rollback finished.
    AfterRollback,
}

/// What a hook sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookContext {
    /// The app.
    pub app: AppId,
    /// The rollout's revision.
    pub revision: Revision,
    /// The version going out.
    pub version: Version,
    /// The pool it runs in.
    pub pool: Pool,
    /// Where the hook runs.
    pub point: HookPoint,
}

/// A hook's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// Carry on.
    Pass,
    /// Stop and roll back (ignored, but reported, after a rollback).
    Fail(String),
}

/// User code run at a [`HookPoint`].
///
/// # Contract
/// `run` returns a verdict; a hook that does not answer within its timeout counts as
/// failed. Hooks may run more than once for one rollout (after a crash and `resume`), so
/// they must be safe to repeat.
#[async_trait]
pub trait Hook: Send + Sync + Debug + 'static {
    /// Runs the hook.
    async fn run(&self, context: &HookContext) -> HookOutcome;
}

#[async_trait]
impl<H: Hook + ?Sized> Hook for Arc<H> {
    async fn run(&self, context: &HookContext) -> HookOutcome {
        (**self).run(context).await
    }
}

/// A hook from an async closure: `hook_fn(|context| async move { HookOutcome::Pass })`.
///
/// ```
/// use deploy_strategies::{HookOutcome, hook_fn};
///
/// let smoke_test = hook_fn(|context| async move {
///     if context.version.as_str().ends_with("-broken") {
///         HookOutcome::Fail(format!("{} answers 500", context.version))
///     } else {
///         HookOutcome::Pass
///     }
/// });
/// # let _ = smoke_test;
/// ```
pub fn hook_fn<F, Fut>(run: F) -> HookFn<F>
where
    F: Fn(HookContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HookOutcome> + Send + 'static,
{
    HookFn { run }
}

/// A [`Hook`] made by [`hook_fn`].
#[derive(Clone)]
pub struct HookFn<F> {
    run: F,
}

impl<F> Debug for HookFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookFn")
    }
}

#[async_trait]
impl<F, Fut> Hook for HookFn<F>
where
    F: Fn(HookContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HookOutcome> + Send + 'static,
{
    async fn run(&self, context: &HookContext) -> HookOutcome {
        (self.run)(context.clone()).await
    }
}

/// A hook registered at a point, with its timeout.
#[derive(Debug, Clone)]
pub(crate) struct RegisteredHook {
    pub(crate) point: HookPoint,
    pub(crate) timeout: Duration,
    pub(crate) hook: Arc<dyn Hook>,
}

/// Runs every hook registered at `point`; the first failure wins.
pub(crate) async fn run_hooks(hooks: &[RegisteredHook], context: &HookContext) -> HookOutcome {
    for registered in hooks.iter().filter(|h| h.point == context.point) {
        match tokio::time::timeout(registered.timeout, registered.hook.run(context)).await {
            Ok(HookOutcome::Pass) => {}
            Ok(HookOutcome::Fail(reason)) => return HookOutcome::Fail(reason),
            Err(_) => {
                return HookOutcome::Fail(format!(
                    "{:?} hook did not answer within {:?}",
                    context.point, registered.timeout
                ));
            }
        }
    }
    HookOutcome::Pass
}
