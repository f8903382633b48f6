//! Rollout notifications (issue 20, item 4): a real canary on the simulated fleet tells its
//! subscribers what it does, in order; receivers that hang or fail never change the
//! rollout; retries reach people once per key; subscriptions filter; templates render
//! and bad ones are typed errors at build time.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use deploy_core::retry::{Backoff, RetryPolicy};
use deploy_core::{
    AnalysisOutcome, AppId, BackendError, Delivery, DeploymentEvent, DeploymentEventKind, EventSink,
    IdempotencyKey, Notification, NotificationAction, Notifier, Pool, Revision, Severity, TrafficSplit,
    Version, Weight,
};
use deploy_strategies::notifications::{
    DeliveryStatus, MAX_RECORDS_PER_ROLLOUT, NotificationDelivery, NotificationError, RolloutNotifications,
    RolloutNotificationsBuilder, Trigger,
};
use deploy_strategies::{Rollout, RolloutOutcome, RolloutReport};
use deploy_testkit::RecordingNotifier;

/// A notifier that never answers.
#[derive(Debug, Default)]
struct HangingNotifier {
    calls: AtomicU32,
}

#[async_trait]
impl Notifier for HangingNotifier {
    async fn notify(&self, _: &Notification) -> Result<Delivery, BackendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
}

/// A receiver whose answers get lost: the first `lose` calls reach `inner` (people see
/// them) but the caller is told the receiver was unavailable, as when a response times out.
/// Every call's identity is kept.
#[derive(Debug)]
struct LostAcks {
    inner: RecordingNotifier,
    lose: AtomicU32,
    calls: Mutex<Vec<(IdempotencyKey, NotificationAction, u64)>>,
}

impl LostAcks {
    fn new(lose: u32) -> Self {
        Self {
            inner: RecordingNotifier::new(),
            lose: AtomicU32::new(lose),
            calls: Mutex::new(Vec::new()),
        }
    }
}

#[async_trait]
impl Notifier for LostAcks {
    async fn notify(&self, notification: &Notification) -> Result<Delivery, BackendError> {
        self.calls.lock().unwrap().push(notification.identity());
        let delivery = self.inner.notify(notification).await?;
        let lost = self
            .lose
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1))
            .is_ok();
        if lost {
            return Err(BackendError::unavailable("lost-acks", "response lost"));
        }
        Ok(delivery)
    }
}

/// What a deliberately broken deliverer would do: send every attempt under a fresh key.
#[derive(Debug)]
struct FreshKeyEachAttempt {
    inner: Arc<LostAcks>,
    attempts: AtomicU32,
}

#[async_trait]
impl Notifier for FreshKeyEachAttempt {
    async fn notify(&self, notification: &Notification) -> Result<Delivery, BackendError> {
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst);
        let mut fresh = notification.clone();
        fresh.key = IdempotencyKey::new(format!("{}#{attempt}", notification.key)).unwrap();
        self.inner.notify(&fresh).await
    }
}

/// People saw each event once: no two delivered notifications tell the same thing.
fn seen_once(delivered: &[Notification]) -> Result<(), String> {
    let mut told: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for notification in delivered {
        let trigger = notification.labels.get("trigger").cloned().unwrap_or_default();
        *told
            .entry((trigger, notification.summary.clone(), notification.body.clone()))
            .or_default() += 1;
    }
    match told.into_iter().find(|(_, count)| *count > 1) {
        Some(((trigger, summary, _), count)) => {
            Err(format!("{trigger} '{summary}' reached people {count} times"))
        }
        None => Ok(()),
    }
}

fn trigger_of(notification: &Notification) -> Trigger {
    notification.labels["trigger"].parse().unwrap()
}

/// Retries fast enough for a test, and more of them than the lost answers.
fn quick_retry() -> RetryPolicy {
    RetryPolicy::default()
        .with_backoff(Backoff::constant(Duration::from_secs(1)))
        .with_max_attempts(5)
}

fn with_receiver(name: &str, notifier: Arc<dyn Notifier>) -> RolloutNotificationsBuilder {
    RolloutNotifications::builder()
        .receiver(name, notifier)
        .subscribe("*", Trigger::ALL, name)
}

/// Rolls v2 out on `world` with `strategy`, notifying through `notifications` if given;
/// returns the report and how long (on tokio's clock) the rollout took.
async fn run_with(
    world: &World,
    strategy: deploy_strategies::Strategy,
    notifications: Option<&RolloutNotifications>,
) -> (RolloutReport, Duration) {
    let mut builder = world.builder(strategy).holder("deployer-a");
    if let Some(notifications) = notifications {
        builder = builder.notifications(notifications.clone());
    }
    let rollout: Rollout = builder.build().unwrap();
    let started = tokio::time::Instant::now();
    let report = world.run_rollout(&rollout).await;
    (report, started.elapsed())
}

/// Waits for every delivery to end; an hour of simulated time is far past the retry
/// policies here, so a delivery that never ends (a hang without a timeout) fails the test.
async fn settle(notifications: &RolloutNotifications) {
    tokio::time::timeout(Duration::from_secs(3600), notifications.idle())
        .await
        .expect("every delivery ends within the retry policy");
}

fn statuses(deliveries: &[NotificationDelivery], receiver: &str) -> Vec<DeliveryStatus> {
    deliveries
        .iter()
        .filter(|delivery| delivery.receiver == receiver)
        .map(|delivery| delivery.status.clone())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_canary_tells_its_subscribers_each_trigger_in_order() {
    let world = world(REPLICAS).await;
    let chat = RecordingNotifier::new();
    let notifications = with_receiver("chat", Arc::new(chat.clone())).build().unwrap();
    let (report, _) = run_with(&world, canary(), Some(&notifications)).await;
    assert_eq!(report.outcome, RolloutOutcome::Completed);
    world.assert_settled(&report).await;
    settle(&notifications).await;

    let delivered = chat.delivered();
    let triggers: Vec<Trigger> = delivered.iter().map(trigger_of).collect();
    assert_eq!(triggers.first(), Some(&Trigger::Started), "{triggers:?}");
    assert_eq!(triggers.last(), Some(&Trigger::Completed), "{triggers:?}");
    // One timed pause per canary step (20%, 50%, 100%), each after the step that routes it.
    let paused: Vec<&Notification> = delivered
        .iter()
        .filter(|n| trigger_of(n) == Trigger::Paused)
        .collect();
    assert_eq!(paused.len(), 3, "{triggers:?}");
    for pause in &paused {
        assert!(pause.summary.contains("timed pause"), "{}", pause.summary);
    }
    assert!(
        paused[0].body.contains("=20.00%, stable=80.00%"),
        "the traffic in effect: {}",
        paused[0].body
    );
    assert!(
        !triggers
            .iter()
            .any(|t| matches!(t, Trigger::RolledBack | Trigger::Failed | Trigger::AnalysisFailed)),
        "{triggers:?}"
    );
    // Step announcements follow the plan, each once.
    let steps: Vec<u64> = delivered
        .iter()
        .filter(|n| trigger_of(n) == Trigger::StepReached)
        .map(|n| n.key.as_str().rsplit('/').next().unwrap().parse().unwrap())
        .collect();
    assert!(steps.len() >= 6, "{steps:?}");
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "in plan order: {steps:?}");
    // Keys name the rollout and trigger; the report's revision is in them.
    let prefix = format!("rollout/shop/{}/", report.revision.get());
    assert!(delivered.iter().all(|n| n.key.as_str().starts_with(&prefix)));
    assert_eq!(delivered[0].key.as_str(), format!("{prefix}started"));
    assert_eq!(delivered[0].labels["version"], "2.0");
    assert_eq!(delivered.last().unwrap().severity, Severity::Info);
    // What was delivered is what the records say, in the same order.
    let deliveries = notifications.deliveries(&world.app, report.revision);
    assert_eq!(deliveries.len(), delivered.len());
    for (record, sent) in deliveries.iter().zip(&delivered) {
        assert_eq!((&record.key, record.sequence), (&sent.key, sent.sequence));
        assert_eq!(record.summary, sent.summary);
        assert_eq!(record.status, DeliveryStatus::Delivered);
    }
    assert_eq!(
        chat.attempts(),
        delivered.len() as u64,
        "nothing retried, nothing sent twice"
    );
    // The report lists the deliveries as they stood when the rollout ended: the same keys,
    // in order, each delivered or (the last ones) still on their way.
    assert!(!report.notifications.is_empty());
    assert_eq!(report.notifications[0].trigger, Trigger::Started);
    for (listed, record) in report.notifications.iter().zip(&deliveries) {
        assert_eq!((&listed.key, listed.sequence), (&record.key, record.sequence));
        assert!(
            matches!(listed.status, DeliveryStatus::Delivered | DeliveryStatus::Pending),
            "{listed:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_bad_canary_pages_its_failed_analysis_and_rollback_with_the_reason() {
    let world = world(REPLICAS).await;
    world.make_v2_bad();
    let pager = RecordingNotifier::new();
    let notifications = RolloutNotifications::builder()
        .receiver("pager", Arc::new(pager.clone()))
        .subscribe("shop", [Trigger::AnalysisFailed, Trigger::RolledBack], "pager")
        .build()
        .unwrap();
    let (report, _) = run_with(&world, canary(), Some(&notifications)).await;
    assert!(matches!(report.outcome, RolloutOutcome::RolledBack { .. }));
    world.assert_settled(&report).await;
    settle(&notifications).await;

    let delivered = pager.delivered();
    let triggers: Vec<Trigger> = delivered.iter().map(trigger_of).collect();
    assert_eq!(triggers, [Trigger::AnalysisFailed, Trigger::RolledBack]);
    assert_eq!(delivered[0].severity, Severity::Warning);
    assert!(delivered[0].body.contains("error-rate"), "{}", delivered[0].body);
    let RolloutOutcome::RolledBack { reason } = &report.outcome else {
        unreachable!()
    };
    assert!(
        delivered[1].body.contains(reason.as_str()),
        "the rollback's reason '{reason}' is in '{}'",
        delivered[1].body
    );
}

#[tokio::test(start_paused = true)]
async fn hanging_and_failing_receivers_leave_the_rollout_and_its_timing_unchanged() {
    // The same rollout twice on identical worlds: once without notifications, once with a
    // receiver that never answers, one that is always down and one that rejects everything.
    let quiet = world(REPLICAS).await;
    let (expected, expected_took) = run_with(&quiet, canary(), None).await;

    let noisy = world(REPLICAS).await;
    let hanging = Arc::new(HangingNotifier::default());
    let down = RecordingNotifier::new();
    down.fail_next(u32::MAX, true);
    let rejecting = RecordingNotifier::new();
    rejecting.fail_next(u32::MAX, false);
    let notifications = RolloutNotifications::builder()
        .receiver("hanging", hanging.clone())
        .receiver("down", Arc::new(down.clone()))
        .receiver("rejecting", Arc::new(rejecting.clone()))
        .subscribe("*", Trigger::ALL, "hanging")
        .subscribe("*", Trigger::ALL, "down")
        .subscribe("*", Trigger::ALL, "rejecting")
        // A receiver's queue is worked through in order, so a hanging one delays its own
        // later notifications by one policy each: keep the policy short for the test.
        .attempt_timeout(Duration::from_secs(10))
        .retry(RetryPolicy::default().with_max_attempts(4))
        .build()
        .unwrap();
    let (report, took) = run_with(&noisy, canary(), Some(&notifications)).await;
    assert_eq!(report.outcome, expected.outcome);
    assert_eq!(took, expected_took, "not a tick later");
    assert_eq!(report.timeline, expected.timeline, "every step at the same time");
    noisy.assert_settled(&report).await;
    let at_the_end = notifications.deliveries(&noisy.app, report.revision);
    assert!(
        at_the_end
            .iter()
            .any(|d| d.receiver == "hanging" && d.status == DeliveryStatus::Pending),
        "the hanging receiver's queue was still being worked through when the rollout ended"
    );

    settle(&notifications).await;
    let deliveries = notifications.deliveries(&noisy.app, report.revision);
    let sent = deliveries.iter().filter(|d| d.receiver == "rejecting").count();
    assert!(
        sent >= 8,
        "every trigger was queued for every receiver: {deliveries:#?}"
    );
    for status in statuses(&deliveries, "rejecting") {
        assert!(
            matches!(&status, DeliveryStatus::Failed { attempts: 1, error } if error.contains("rejected")),
            "a rejected payload is final: {status:?}"
        );
    }
    for status in statuses(&deliveries, "down") {
        assert!(
            matches!(&status, DeliveryStatus::Failed { attempts, .. } if *attempts == 4),
            "a receiver that is down is retried to the policy's end: {status:?}"
        );
    }
    let hanging_statuses = statuses(&deliveries, "hanging");
    assert_eq!(hanging_statuses.len(), sent);
    for status in &hanging_statuses {
        assert!(
            matches!(status, DeliveryStatus::Failed { error, attempts } if error.contains("timed out") && *attempts >= 2),
            "each attempt is cut by the timeout and retried: {status:?}"
        );
    }
    assert!(hanging.calls.load(Ordering::SeqCst) as usize >= 2 * sent);
}

#[tokio::test(start_paused = true)]
async fn a_receiver_that_fails_then_recovers_shows_each_notification_once() {
    let world = world(REPLICAS).await;
    // The first three answers are lost although the notifications got through.
    let receiver = Arc::new(LostAcks::new(3));
    let notifications = with_receiver("chat", receiver.clone())
        .retry(quick_retry())
        .build()
        .unwrap();
    let (report, _) = run_with(&world, canary(), Some(&notifications)).await;
    assert_eq!(report.outcome, RolloutOutcome::Completed);
    settle(&notifications).await;

    let deliveries = notifications.deliveries(&world.app, report.revision);
    assert!(
        deliveries.iter().all(|d| d.status.is_delivered()),
        "{deliveries:#?}"
    );
    assert!(
        deliveries.iter().any(|d| d.status == DeliveryStatus::Duplicate),
        "a retry of a notification that got through counts as delivered"
    );
    let calls = receiver.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), deliveries.len() + 3, "three retries");
    // Every retry carried the identity of the attempt it repeats.
    let mut identities = calls.clone();
    identities.dedup();
    assert_eq!(identities.len(), deliveries.len());
    let delivered = receiver.inner.delivered();
    assert_eq!(delivered.len(), deliveries.len(), "one per key and sequence");
    seen_once(&delivered).unwrap();

    // The same check catches a deliverer that retries under a fresh key.
    let broken = LostAcks::new(3);
    let broken = Arc::new(broken);
    let fresh_keys = FreshKeyEachAttempt {
        inner: Arc::clone(&broken),
        attempts: AtomicU32::new(0),
    };
    let notifications = with_receiver("chat", Arc::new(fresh_keys))
        .retry(quick_retry())
        .build()
        .unwrap();
    notifications.emit(&event(
        "shop",
        1,
        DeploymentEventKind::Started {
            version: Version::new("2.0").unwrap(),
            strategy: "canary".into(),
        },
    ));
    settle(&notifications).await;
    assert_eq!(
        broken.inner.delivered().len(),
        4,
        "every lost answer sent it again"
    );
    assert!(seen_once(&broken.inner.delivered()).is_err());
}

fn event(app: &str, revision: u64, kind: DeploymentEventKind) -> DeploymentEvent {
    DeploymentEvent {
        app: AppId::new(app).unwrap(),
        revision: Revision::new(revision).unwrap(),
        kind,
    }
}

fn started(app: &str, revision: u64) -> DeploymentEvent {
    event(
        app,
        revision,
        DeploymentEventKind::Started {
            version: Version::new("2.0").unwrap(),
            strategy: "canary".into(),
        },
    )
}

fn step(app: &str, revision: u64, index: usize) -> DeploymentEvent {
    event(
        app,
        revision,
        DeploymentEventKind::StepEntered {
            index,
            name: format!("step {index}"),
        },
    )
}

#[tokio::test(start_paused = true)]
async fn subscriptions_filter_by_app_and_trigger() {
    let (shop_chat, cart_chat, pager) = (
        RecordingNotifier::new(),
        RecordingNotifier::new(),
        RecordingNotifier::new(),
    );
    let notifications = RolloutNotifications::builder()
        .receiver("shop-chat", Arc::new(shop_chat.clone()))
        .receiver("cart-chat", Arc::new(cart_chat.clone()))
        .receiver("pager", Arc::new(pager.clone()))
        .subscribe("shop", [Trigger::Started, Trigger::Completed], "shop-chat")
        .subscribe("cart", [Trigger::StepReached], "cart-chat")
        .subscribe("*", [Trigger::Failed], "pager")
        // Subscribed twice: still one notification.
        .subscribe("shop", [Trigger::Failed], "pager")
        .build()
        .unwrap();
    let failed = |app| {
        event(
            app,
            1,
            DeploymentEventKind::Failed {
                reason: "rollback gave up".into(),
            },
        )
    };
    for app in ["shop", "cart"] {
        notifications.emit(&started(app, 1));
        notifications.emit(&step(app, 1, 0));
        notifications.emit(&failed(app));
    }
    notifications.emit(&event(
        "shop",
        2,
        DeploymentEventKind::Completed {
            version: Version::new("2.1").unwrap(),
        },
    ));
    settle(&notifications).await;

    let told = |notifier: &RecordingNotifier| -> Vec<String> {
        notifier.delivered().iter().map(|n| n.key.to_string()).collect()
    };
    assert_eq!(
        told(&shop_chat),
        ["rollout/shop/1/started", "rollout/shop/2/completed"]
    );
    assert_eq!(told(&cart_chat), ["rollout/cart/1/step_reached/0"]);
    assert_eq!(told(&pager), ["rollout/shop/1/failed", "rollout/cart/1/failed"]);
    assert_eq!(pager.delivered()[0].severity, Severity::Critical);
    assert_eq!(
        notifications
            .deliveries(&AppId::new("shop").unwrap(), Revision::FIRST)
            .len(),
        2
    );
    assert!(
        notifications
            .deliveries(&AppId::new("other").unwrap(), Revision::FIRST)
            .is_empty()
    );
}

#[tokio::test(start_paused = true)]
async fn an_event_seen_twice_is_sent_once_and_distinct_events_under_one_key_are_sequenced() {
    let chat = RecordingNotifier::new();
    let notifications = with_receiver("chat", Arc::new(chat.clone())).build().unwrap();
    let paused = |reason: &str| {
        event(
            "shop",
            1,
            DeploymentEventKind::Paused {
                reason: reason.into(),
            },
        )
    };
    // A deployer that resumes emits the step it resumes, and its pause, again.
    for event in [
        started("shop", 1),
        step("shop", 1, 3),
        paused("timed pause"),
        step("shop", 1, 3),
        paused("timed pause"),
        paused("paused by operator"),
    ] {
        notifications.emit(&event);
    }
    settle(&notifications).await;
    let identities: Vec<(String, u64)> = chat
        .delivered()
        .iter()
        .map(|n| (n.key.to_string(), n.sequence))
        .collect();
    assert_eq!(
        identities,
        [
            ("rollout/shop/1/started".to_owned(), 0),
            ("rollout/shop/1/step_reached/3".to_owned(), 0),
            ("rollout/shop/1/paused/3".to_owned(), 0),
            ("rollout/shop/1/paused/3".to_owned(), 1),
        ]
    );
    assert_eq!(chat.attempts(), 4, "the repeats never reached the notifier");
}

#[tokio::test(start_paused = true)]
async fn rollback_steps_are_not_announced_and_the_rollback_carries_its_reason() {
    let chat = RecordingNotifier::new();
    let notifications = with_receiver("chat", Arc::new(chat.clone())).build().unwrap();
    let analysis = DeploymentEventKind::AnalysisCompleted {
        step: 2,
        outcome: AnalysisOutcome::Error,
        summary: "metrics source down".into(),
    };
    for kind in [
        analysis,
        DeploymentEventKind::RollbackStarted {
            reason: "analysis error at step 2".into(),
        },
        DeploymentEventKind::StepEntered {
            index: 0,
            name: "route all to stable".into(),
        },
        DeploymentEventKind::RollbackFinished,
    ] {
        notifications.emit(&event("shop", 4, kind));
    }
    settle(&notifications).await;
    let delivered = chat.delivered();
    let keys: Vec<&str> = delivered.iter().map(|n| n.key.as_str()).collect();
    assert_eq!(
        keys,
        ["rollout/shop/4/analysis_failed/2", "rollout/shop/4/rolled_back"]
    );
    assert!(
        delivered[0].summary.contains("analysis error at step 2"),
        "{}",
        delivered[0].summary
    );
    assert!(
        delivered[1]
            .body
            .ends_with("rolled back: analysis error at step 2"),
        "{}",
        delivered[1].body
    );
}

#[tokio::test(start_paused = true)]
async fn templates_see_every_variable() {
    let chat = RecordingNotifier::new();
    let notifications = with_receiver("chat", Arc::new(chat.clone()))
        .template(
            Trigger::Promoted,
            "[{{ trigger }}] {{ app }}#{{ revision }} {{ version }} ({{ strategy }}){% if full %} fully{% endif %}",
            "step {{ step }} '{{ step_name }}': {% for w in weights %}{{ w.pool }}={{ w.percent }}{% if not loop.last %}, {% endif %}{% endfor %}; {{ traffic }}; {{ outcome }}: {{ analysis }}; {{ reason | default('-', true) }}",
        )
        .severity(Trigger::Promoted, Severity::Warning)
        .build()
        .unwrap();
    let split = TrafficSplit::canary(
        Pool::stable(),
        Pool::new("canary").unwrap(),
        Weight::from_percent(25.0).unwrap(),
    )
    .unwrap();
    for kind in [
        DeploymentEventKind::Started {
            version: Version::new("3.1").unwrap(),
            strategy: "canary".into(),
        },
        DeploymentEventKind::StepEntered {
            index: 2,
            name: "pause until promoted".into(),
        },
        DeploymentEventKind::TrafficShifted { split },
        DeploymentEventKind::AnalysisCompleted {
            step: 1,
            outcome: AnalysisOutcome::Successful,
            summary: "error-rate 0.1% <= 5%".into(),
        },
        DeploymentEventKind::Promoted { full: true },
    ] {
        notifications.emit(&event("shop", 9, kind));
    }
    settle(&notifications).await;
    let promoted = chat
        .delivered()
        .into_iter()
        .find(|n| trigger_of(n) == Trigger::Promoted)
        .expect("a promoted notification");
    assert_eq!(promoted.key.as_str(), "rollout/shop/9/promoted/2");
    assert_eq!(promoted.summary, "[promoted] shop#9 3.1 (canary) fully");
    assert_eq!(
        promoted.body,
        "step 2 'pause until promoted': canary=25.0, stable=75.0; canary=25.00%, stable=75.00%; \
         successful: error-rate 0.1% <= 5%; -"
    );
    assert_eq!(promoted.severity, Severity::Warning);
    assert_eq!(promoted.labels["app"], "shop");
    assert_eq!(promoted.labels["revision"], "9");
}

#[tokio::test(start_paused = true)]
async fn a_template_that_fails_on_one_event_is_recorded_and_nothing_else_stops() {
    // `step + 1` renders the sample (step 3) but not a `started`, which has no step yet.
    let chat = RecordingNotifier::new();
    let notifications = with_receiver("chat", Arc::new(chat.clone()))
        .template(Trigger::Started, "next: {{ step + 1 }}", "")
        .build()
        .unwrap();
    notifications.emit(&started("shop", 1));
    notifications.emit(&step("shop", 1, 0));
    settle(&notifications).await;
    let deliveries = notifications.deliveries(&AppId::new("shop").unwrap(), Revision::FIRST);
    assert!(
        matches!(&deliveries[0].status, DeliveryStatus::Failed { attempts: 0, error } if error.contains("started")),
        "{deliveries:#?}"
    );
    assert_eq!(deliveries[1].status, DeliveryStatus::Delivered);
    assert_eq!(chat.attempts(), 1);
}

fn template_error(summary: &str, body: &str) -> NotificationError {
    RolloutNotifications::builder()
        .template(Trigger::Paused, summary, body)
        .build()
        .expect_err("a bad template")
}

#[test]
fn bad_templates_are_typed_errors_naming_the_trigger() {
    let cases = [
        ("{{ app ", "", "summary", "syntax"),
        ("{{ app }}", "{% for x in weights %}", "body", "syntax"),
        ("{{ verison }}", "", "summary", "undefined"),
        ("{{ app | shout }}", "", "summary", "filter"),
        ("{{ app }}", "{{ weights.first }}", "body", "undefined"),
        ("{% include 'secrets.txt' %}", "", "summary", ""),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "",
            "summary",
            "",
        ),
    ];
    for (summary, body, part, says) in cases {
        match template_error(summary, body) {
            NotificationError::Template {
                trigger: Trigger::Paused,
                part: named,
                message,
            } => {
                assert_eq!(named, part, "{summary:?} / {body:?}");
                assert!(
                    message.to_lowercase().contains(says),
                    "{summary:?} / {body:?}: {message}"
                );
            }
            other => panic!("{summary:?} / {body:?}: {other:?}"),
        }
    }
    let error = template_error("{{ nope }}", "").to_string();
    assert!(error.contains("paused") && error.contains("summary"), "{error}");
}

#[test]
fn bad_configurations_are_typed_errors() {
    let notifier = || -> Arc<dyn Notifier> { Arc::new(RecordingNotifier::new()) };
    let builder = || RolloutNotifications::builder().receiver("chat", notifier());
    assert_eq!(
        builder()
            .subscribe("shop", [Trigger::Started], "pager")
            .build()
            .unwrap_err(),
        NotificationError::UnknownReceiver {
            app: "shop".into(),
            receiver: "pager".into()
        }
    );
    assert_eq!(
        builder().receiver("chat", notifier()).build().unwrap_err(),
        NotificationError::DuplicateReceiver {
            receiver: "chat".into()
        }
    );
    assert!(matches!(
        builder().subscribe("shop/", [Trigger::Started], "chat").build().unwrap_err(),
        NotificationError::InvalidApp { app, .. } if app == "shop/"
    ));
    assert_eq!(
        builder().subscribe("shop", [], "chat").build().unwrap_err(),
        NotificationError::NoTriggers {
            app: "shop".into(),
            receiver: "chat".into()
        }
    );
    for name in ["", " chat", "a\nb", &"x".repeat(65)] {
        assert!(
            matches!(
                RolloutNotifications::builder().receiver(name, notifier()).build().unwrap_err(),
                NotificationError::InvalidReceiverName { receiver, .. } if receiver == name
            ),
            "{name:?}"
        );
    }
    assert_eq!(
        builder().attempt_timeout(Duration::ZERO).build().unwrap_err(),
        NotificationError::ZeroAttemptTimeout
    );
    assert_eq!(
        builder().max_rollouts(0).build().unwrap_err(),
        NotificationError::ZeroMaxRollouts
    );
    assert!(matches!(
        builder()
            .retry(RetryPolicy::default().with_max_attempts(0))
            .build()
            .unwrap_err(),
        NotificationError::InvalidRetry(_)
    ));
    assert!(matches!(
        "paused_forever".parse::<Trigger>(),
        Err(NotificationError::UnknownTrigger { name }) if name == "paused_forever"
    ));
}

#[test]
fn without_a_runtime_a_notification_is_recorded_as_failed_not_lost_or_panicking() {
    let notifications = with_receiver("chat", Arc::new(RecordingNotifier::new()))
        .build()
        .unwrap();
    notifications.emit(&started("shop", 1));
    let deliveries = notifications.deliveries(&AppId::new("shop").unwrap(), Revision::FIRST);
    assert!(
        matches!(&deliveries[0].status, DeliveryStatus::Failed { attempts: 0, error } if error.contains("runtime")),
        "{deliveries:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn memory_is_bounded_per_rollout_and_in_rollouts() {
    let chat = RecordingNotifier::new();
    let notifications = with_receiver("chat", Arc::new(chat.clone()))
        .max_rollouts(2)
        .build()
        .unwrap();
    let shop = AppId::new("shop").unwrap();
    for index in 0..MAX_RECORDS_PER_ROLLOUT + 40 {
        notifications.emit(&step("shop", 1, index));
    }
    settle(&notifications).await;
    let deliveries = notifications.deliveries(&shop, Revision::FIRST);
    assert_eq!(deliveries.len(), MAX_RECORDS_PER_ROLLOUT);
    assert_eq!(
        deliveries[0].key.as_str(),
        "rollout/shop/1/step_reached/40",
        "the oldest records made room"
    );
    assert_eq!(
        chat.delivered().len(),
        MAX_RECORDS_PER_ROLLOUT + 40,
        "all were sent"
    );

    notifications.emit(&started("shop", 2));
    notifications.emit(&started("shop", 3));
    settle(&notifications).await;
    assert!(
        notifications.deliveries(&shop, Revision::FIRST).is_empty(),
        "the oldest rollout is forgotten"
    );
    assert_eq!(
        notifications.deliveries(&shop, Revision::new(3).unwrap()).len(),
        1
    );
}

/// Never answers its first call; delivers the rest to `inner`.
#[derive(Debug, Default)]
struct HangsFirst {
    inner: RecordingNotifier,
    calls: AtomicU32,
}

#[async_trait]
impl Notifier for HangsFirst {
    async fn notify(&self, notification: &Notification) -> Result<Delivery, BackendError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            std::future::pending::<()>().await;
        }
        self.inner.notify(notification).await
    }
}

#[test]
fn deliveries_cut_by_a_runtime_shutdown_are_recorded_and_the_next_runtime_delivers() {
    let receiver = Arc::new(HangsFirst::default());
    let notifications = with_receiver("chat", receiver.clone()).build().unwrap();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let first = runtime();
    first.block_on(async {
        notifications.emit(&started("shop", 1));
        notifications.emit(&step("shop", 1, 0));
        // The first attempt is in flight (its timeout is 10 s), the second queued.
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    drop(first);
    let shop = AppId::new("shop").unwrap();
    for delivery in notifications.deliveries(&shop, Revision::FIRST) {
        assert!(
            matches!(&delivery.status, DeliveryStatus::Failed { error, .. } if error.contains("cancelled")),
            "{delivery:?}"
        );
    }
    runtime().block_on(async {
        notifications.emit(&step("shop", 1, 1));
        settle(&notifications).await;
    });
    let deliveries = notifications.deliveries(&shop, Revision::FIRST);
    assert_eq!(deliveries.len(), 3);
    assert_eq!(deliveries[2].status, DeliveryStatus::Delivered);
    assert_eq!(receiver.inner.delivered().len(), 1);
}
