//! `Arc<T>` and `Box<T>` forward every core trait to `T` (`dyn` included), as object_store's
//! `as_ref_impl!` does: decorators and generic code (`Prefixed<S: RecordStore>`, a
//! `fn f(lb: impl LoadBalancer)`) then accept an `Arc<dyn _>` as readily as a concrete
//! backend. Every method is forwarded, provided ones included, so a backend's overrides
//! (say, `InfraManager::describe_instances`) are used through the pointer too.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::balancer::LoadBalancer;
use crate::error::{BackendError, StoreError};
use crate::events::{DeploymentEvent, EventSink};
use crate::guard::{DeploymentGuard, FiringAlert, GuardScope};
use crate::health::{HealthChecker, HealthStatus};
use crate::ids::{AppId, InstanceId, Pool, Version};
use crate::infra::{Artifact, InfraManager, Instance};
use crate::metrics::{MetricQuery, MetricsSource, Series};
use crate::notify::{Delivery, Notification, Notifier};
use crate::routing::{RequestPolicy, RequestRouting};
use crate::store::{Lease, LeaseStore, Record, RecordStore, RecordVersion, WatchStream, WriteOptions};
use crate::time::Clock;

/// `forward!(async Trait { fn method(&self, arg: Type, ...) -> Ret; ... })` implements
/// `Trait` for `Arc<T>` and `Box<T>` (`T: Trait + ?Sized`) by calling `T`'s method; without
/// `async`, for synchronous traits.
macro_rules! forward {
    (async $trait:ident { $(fn $method:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)* }) => {
        forward!(@async $trait, Arc { $(fn $method(&self $(, $arg: $ty)*) -> $ret;)* });
        forward!(@async $trait, Box { $(fn $method(&self $(, $arg: $ty)*) -> $ret;)* });
    };
    (@async $trait:ident, $pointer:ident { $(fn $method:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)* }) => {
        #[async_trait]
        impl<T: $trait + ?Sized> $trait for $pointer<T> {
            $(
                async fn $method(&self $(, $arg: $ty)*) -> $ret {
                    (**self).$method($($arg),*).await
                }
            )*
        }
    };
    ($trait:ident { $(fn $method:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)* }) => {
        forward!(@sync $trait, Arc { $(fn $method(&self $(, $arg: $ty)*) -> $ret;)* });
        forward!(@sync $trait, Box { $(fn $method(&self $(, $arg: $ty)*) -> $ret;)* });
    };
    (@sync $trait:ident, $pointer:ident { $(fn $method:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)* }) => {
        impl<T: $trait + ?Sized> $trait for $pointer<T> {
            $(
                fn $method(&self $(, $arg: $ty)*) -> $ret {
                    (**self).$method($($arg),*)
                }
            )*
        }
    };
}

forward!(async LoadBalancer {
    fn register(&self, instance: &Instance) -> Result<(), BackendError>;
    fn deregister(&self, app: &AppId, instance: &InstanceId, drain: Duration) -> Result<(), BackendError>;
    fn members(&self, app: &AppId, pool: &Pool) -> Result<Vec<InstanceId>, BackendError>;
    fn routing(&self, app: &AppId) -> Result<Option<crate::TrafficSplit>, BackendError>;
    fn set_routing(&self, app: &AppId, split: &crate::TrafficSplit) -> Result<(), BackendError>;
});

forward!(async InfraManager {
    fn list_instances(&self, app: &AppId) -> Result<Vec<Instance>, BackendError>;
    fn describe_instances(&self, app: &AppId, ids: &[InstanceId]) -> Result<Vec<Instance>, BackendError>;
    fn provision(&self, app: &AppId, pool: &Pool, version: &Version, count: usize) -> Result<Vec<Instance>, BackendError>;
    fn fetch_artifact(&self, app: &AppId, version: &Version) -> Result<Artifact, BackendError>;
    fn stop_instance(&self, app: &AppId, instance: &InstanceId) -> Result<(), BackendError>;
    fn install(&self, app: &AppId, instance: &InstanceId, artifact: &Artifact) -> Result<(), BackendError>;
    fn start_instance(&self, app: &AppId, instance: &InstanceId) -> Result<Instance, BackendError>;
    fn update_instance(&self, app: &AppId, instance: &InstanceId, version: &Version) -> Result<Instance, BackendError>;
    fn decommission(&self, app: &AppId, instance: &InstanceId) -> Result<(), BackendError>;
});

forward!(async HealthChecker {
    fn check(&self, instance: &Instance) -> Result<HealthStatus, BackendError>;
});

forward!(async MetricsSource {
    fn query(&self, query: &MetricQuery) -> Result<Series, BackendError>;
});

forward!(async DeploymentGuard {
    fn check(&self, scope: &GuardScope) -> Result<Vec<FiringAlert>, BackendError>;
    fn rolled_back(&self, scope: &GuardScope, alert: &FiringAlert) -> Result<(), BackendError>;
    fn release(&self, scope: &GuardScope) -> Result<(), BackendError>;
});

forward!(async RequestRouting {
    fn set_request_policy(&self, app: &AppId, policy: &RequestPolicy) -> Result<(), BackendError>;
    fn request_policy(&self, app: &AppId) -> Result<Option<RequestPolicy>, BackendError>;
});

forward!(async Notifier {
    fn notify(&self, notification: &Notification) -> Result<Delivery, BackendError>;
});

forward!(async RecordStore {
    fn get(&self, key: &str) -> Result<Option<Record>, StoreError>;
    fn list(&self, prefix: &str) -> Result<Vec<Record>, StoreError>;
    fn put_opts(&self, key: &str, value: Bytes, opts: WriteOptions) -> Result<RecordVersion, StoreError>;
    fn delete_opts(&self, key: &str, opts: WriteOptions) -> Result<bool, StoreError>;
    fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError>;
});

forward!(async LeaseStore {
    fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<Lease, StoreError>;
    fn renew(&self, lease: &Lease) -> Result<Lease, StoreError>;
    fn release(&self, lease: &Lease) -> Result<(), StoreError>;
    fn holder(&self, name: &str) -> Result<Option<Lease>, StoreError>;
});

forward!(EventSink {
    fn emit(&self, event: &DeploymentEvent) -> ();
});

forward!(Clock {
    fn now(&self) -> std::time::SystemTime;
});
