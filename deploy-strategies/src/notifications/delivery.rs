//! Getting rendered notifications to their receivers: one queue per receiver, drained in
//! order by a background task that exists only while the queue has work; each
//! notification is retried with the same identity under the retry policy, every attempt
//! bounded by a timeout.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use deploy_core::retry::retry;
use deploy_core::{AppId, BackendError, Delivery, DynNotifier, Notification, Retry, Revision};

use super::{DeliveryStatus, Inner, lock};

/// Notifications waiting for one receiver, at most; past it a notification is recorded as
/// failed rather than queued (a receiver that hangs for hours must not grow memory).
pub const MAX_QUEUED_PER_RECEIVER: usize = 1024;

/// One notification to deliver.
#[derive(Debug)]
pub(crate) struct Job {
    pub app: AppId,
    pub revision: Revision,
    pub notification: Notification,
}

/// A named receiver and its queue.
#[derive(Debug)]
pub(crate) struct Receiver {
    pub name: String,
    pub notifier: Arc<DynNotifier>,
    queue: std::sync::Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// A task is draining the queue.
    draining: bool,
}

impl Receiver {
    pub(crate) fn new(name: String, notifier: Arc<DynNotifier>) -> Self {
        Self {
            name,
            notifier,
            queue: std::sync::Mutex::new(Queue::default()),
        }
    }
}

/// Queues `job` for `receivers[index]` and makes sure a task drains the queue.
///
/// # Errors
/// The reason the job could not be queued (the queue is full, or there is no tokio
/// runtime to deliver on); the job is dropped.
pub(crate) fn enqueue(inner: &Arc<Inner>, index: usize, job: Job) -> Result<(), String> {
    let receiver = &inner.receivers[index];
    let mut queue = lock(&receiver.queue);
    if queue.jobs.len() >= MAX_QUEUED_PER_RECEIVER {
        return Err(format!(
            "not queued: {MAX_QUEUED_PER_RECEIVER} notifications already wait for this receiver"
        ));
    }
    if !queue.draining {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "not queued: no tokio runtime to deliver on".to_owned())?;
        queue.draining = true;
        runtime.spawn(drain(Arc::clone(inner), index));
    }
    queue.jobs.push_back(job);
    Ok(())
}

/// Ends the drain when its task is dropped mid-way (its runtime shut down): the job in
/// flight and those still queued are recorded as failed, so no record stays pending with
/// nobody to deliver it.
struct DrainGuard {
    inner: Arc<Inner>,
    index: usize,
    current: Option<(AppId, Revision, Notification)>,
    finished: bool,
}

impl Drop for DrainGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let receiver = &self.inner.receivers[self.index];
        let queued: Vec<Job> = {
            let mut queue = lock(&receiver.queue);
            queue.draining = false;
            queue.jobs.drain(..).collect()
        };
        let dropped = self.current.take().into_iter().chain(
            queued
                .into_iter()
                .map(|job| (job.app, job.revision, job.notification)),
        );
        for (app, revision, notification) in dropped {
            let status = DeliveryStatus::Failed {
                error: "delivery cancelled: its runtime shut down".into(),
                attempts: 0,
            };
            self.inner
                .settle(&app, revision, &receiver.name, &notification, status);
        }
    }
}

async fn drain(inner: Arc<Inner>, index: usize) {
    let mut guard = DrainGuard {
        inner: Arc::clone(&inner),
        index,
        current: None,
        finished: false,
    };
    let receiver = &inner.receivers[index];
    loop {
        let job = {
            let mut queue = lock(&receiver.queue);
            match queue.jobs.pop_front() {
                Some(job) => job,
                None => {
                    queue.draining = false;
                    guard.finished = true;
                    return;
                }
            }
        };
        guard.current = Some((job.app.clone(), job.revision, job.notification.clone()));
        let status = deliver(&inner, receiver, &job.notification).await;
        guard.current = None;
        inner.settle(&job.app, job.revision, &receiver.name, &job.notification, status);
    }
}

/// Sends `notification` until it is delivered, the notifier calls the failure final, or
/// the retry policy is spent. Every attempt sends the very same notification (same key and
/// sequence), so a receiver that saw an earlier attempt arrive deduplicates the retry.
async fn deliver(inner: &Inner, receiver: &Receiver, notification: &Notification) -> DeliveryStatus {
    let attempts = AtomicU32::new(0);
    let timeout = inner.attempt_timeout;
    let result = retry(
        &inner.retry,
        || {
            attempts.fetch_add(1, Ordering::Relaxed);
            async move {
                match tokio::time::timeout(timeout, receiver.notifier.notify(notification)).await {
                    Ok(result) => result,
                    Err(_) => Err(BackendError::Timeout {
                        operation: "notify",
                        after: timeout,
                    }),
                }
            }
        },
        |error: &BackendError| Retry::from(error),
    )
    .await;
    let attempts = attempts.load(Ordering::Relaxed);
    match result {
        Ok(Delivery::Duplicate) => DeliveryStatus::Duplicate,
        Ok(_) => DeliveryStatus::Delivered,
        Err(error) => {
            tracing::warn!(
                receiver = receiver.name,
                key = %notification.key,
                attempts,
                %error,
                "rollout notification not delivered"
            );
            DeliveryStatus::Failed {
                error: error.to_string(),
                attempts,
            }
        }
    }
}
