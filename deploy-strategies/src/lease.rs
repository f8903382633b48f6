//! Holding an app's lease for the whole life of a rollout: [`LeaseKeeper`] renews it on its
//! own schedule, whatever the steps do, and keeps a local deadline so a deployer cut off
//! from its store stops acting before another one may take over.

use std::sync::Arc;
use std::time::Duration;

use deploy_core::{DynStore, Lease, StoreError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long this deployer may still act under its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Validity {
    /// Until this instant on the deployer's monotonic clock.
    Until(Instant),
    /// The store said the lease is gone, or the local deadline passed: for good.
    Lost,
}

/// The share of the TTL kept back from the local deadline, for clock drift between the
/// deployer and the store and for the time a request spends in flight.
const SAFETY_MARGIN_DIVISOR: u32 = 5;

/// The local deadline of a holding granted (or renewed) by a request sent at `sent`: the
/// store counts the TTL from when it handled the request, which is after `sent`, so this
/// deadline passes before the store's expiry does.
pub(crate) fn valid_until(sent: Instant, ttl: Duration) -> Instant {
    let usable = ttl.saturating_sub(ttl / SAFETY_MARGIN_DIVISOR);
    sent.checked_add(usable).unwrap_or(sent)
}

/// Renews a lease every third of its TTL in a task of its own, for as long as it lives.
/// Dropping the keeper stops the renewals (a killed deployer's lease then lapses).
#[derive(Debug)]
pub(crate) struct LeaseKeeper {
    lease: Lease,
    validity: watch::Receiver<Validity>,
    task: JoinHandle<()>,
}

impl LeaseKeeper {
    /// Starts keeping `lease`, granted by a request sent at `sent`.
    pub(crate) fn start(store: Arc<DynStore>, lease: Lease, sent: Instant) -> Self {
        let (tx, validity) = watch::channel(Validity::Until(valid_until(sent, lease.ttl)));
        let task = tokio::spawn(renew_until_lost(store, lease.clone(), tx));
        Self {
            lease,
            validity,
            task,
        }
    }

    /// The lease, for its fence.
    pub(crate) fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Resolves once this deployer must stop acting: the lease was lost, or no renewal
    /// succeeded before the local deadline. Never resolves while the lease is good.
    pub(crate) async fn lost(&self) {
        let mut validity = self.validity.clone();
        loop {
            let until = match *validity.borrow_and_update() {
                Validity::Lost => return,
                Validity::Until(until) => until,
            };
            if Instant::now() >= until {
                return;
            }
            tokio::select! {
                changed = validity.changed() => {
                    if changed.is_err() {
                        // The keeper ended without saying the lease is lost (it cannot, but
                        // a deadline is still a deadline).
                        tokio::time::sleep_until(until).await;
                        return;
                    }
                }
                // Looked at again at the top: a renewal may have landed at the same moment.
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Stops renewing and gives the lease up.
    pub(crate) async fn release(&self, store: &DynStore) {
        self.task.abort();
        if let Err(err) = store.release(&self.lease).await {
            tracing::debug!(lease = %self.lease.name, %err, "lease release failed; it lapses after its TTL");
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Renews `lease` every third of its TTL; after a failed renewal, tries again sooner, until
/// the local deadline passes.
async fn renew_until_lost(store: Arc<DynStore>, lease: Lease, validity: watch::Sender<Validity>) {
    let period = (lease.ttl / 3).max(Duration::from_millis(1));
    let retry = (lease.ttl / 15).max(Duration::from_millis(1));
    let mut next = Instant::now() + period;
    loop {
        let Validity::Until(until) = *validity.borrow() else {
            return;
        };
        tokio::time::sleep_until(next.min(until)).await;
        if Instant::now() >= until {
            validity.send_replace(Validity::Lost);
            return;
        }
        let sent = Instant::now();
        match tokio::time::timeout_at(until, store.renew(&lease)).await {
            Ok(Ok(_)) => {
                validity.send_replace(Validity::Until(valid_until(sent, lease.ttl)));
                next = sent + period;
            }
            Ok(Err(StoreError::LeaseLost { .. })) => {
                tracing::warn!(lease = %lease.name, "lease lost: another deployer may act on the app");
                validity.send_replace(Validity::Lost);
                return;
            }
            Ok(Err(err)) => {
                tracing::warn!(lease = %lease.name, %err, "lease renewal failed; retrying");
                next = Instant::now() + retry;
            }
            Err(_elapsed) => {
                tracing::warn!(lease = %lease.name, "no lease renewal before the local deadline");
                validity.send_replace(Validity::Lost);
                return;
            }
        }
    }
}
