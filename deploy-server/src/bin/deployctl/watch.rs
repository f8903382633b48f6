//! `deployctl rollouts watch APP`: follows the app's event stream (reconnecting with
//! `Last-Event-ID`, so nothing is missed or repeated) and its status, until the rollout
//! ends. On a terminal the view (steps, weights as bars, analysis, pause and time left,
//! recent events) is redrawn in place; otherwise each event is a line of its own, and with
//! `--output json` each event is a JSON line.

use std::collections::VecDeque;
use std::io::Write;
use std::time::Duration;

use deploy_core::DeploymentEventKind;
use deploy_strategies::control::{EventRecord, Intent};
use futures::StreamExt;
use reqwest::Method;
use tokio::sync::mpsc;

use crate::Output;
use crate::client::{Api, CliError, path_segment};
use crate::render::{self, RolloutView};
use crate::sse::SseParser;

/// Steps of the timeline on screen in the live view (a window around the current one), so
/// a frame fits a small terminal and can be redrawn in place.
const STEPS_SHOWN: usize = 7;

/// Events kept on screen in the live view.
const RECENT_EVENTS: usize = 5;

/// How often the status is read again (the time left of a pause counts down with it).
const REFRESH: Duration = Duration::from_secs(1);

/// How long, once the status shows the end, to wait for the events that end the rollout
/// (they may arrive after the status).
const LAST_EVENTS_GRACE: Duration = Duration::from_secs(3);

/// Reconnection attempts in a row before giving up on the event stream.
const RECONNECTS: u32 = 10;

/// How the view is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Redrawn in place (stdout is a terminal).
    Live,
    /// One line per event.
    Lines,
    /// One JSON object per event.
    Json,
}

impl Mode {
    pub(crate) fn new(output: Output, tty: bool) -> Self {
        match (output, tty) {
            (Output::Json, _) => Self::Json,
            (Output::Text, true) => Self::Live,
            (Output::Text, false) => Self::Lines,
        }
    }
}

/// When a watch is over: the status shows a rollout that ended, newer than the one before
/// any start that was pending when the watch began.
#[derive(Debug)]
struct EndRule {
    /// The revision that must be passed before an ended status counts (a start was pending).
    after_revision: Option<u64>,
}

impl EndRule {
    fn new(first: &RolloutView) -> Self {
        let starting = first
            .pending
            .iter()
            .any(|i| matches!(i.intent, Intent::Start { .. } | Intent::Undo));
        let current = first.status.as_ref().map_or(0, |s| s.revision.get());
        Self {
            after_revision: starting.then_some(current),
        }
    }

    fn ended(&self, view: &RolloutView) -> bool {
        let Some(status) = &view.status else { return false };
        let starting = view
            .pending
            .iter()
            .any(|i| matches!(i.intent, Intent::Start { .. } | Intent::Undo));
        !starting
            && !status.phase.is_active()
            && self
                .after_revision
                .is_none_or(|before| status.revision.get() > before)
    }
}

/// Where the event stream starts: the whole current revision when one runs (or a start is
/// pending), otherwise only what comes after it.
fn start_after(first: &RolloutView) -> Option<String> {
    let status = first.status.as_ref()?;
    let revision = status.revision.get();
    let starting = first
        .pending
        .iter()
        .any(|i| matches!(i.intent, Intent::Start { .. } | Intent::Undo));
    if status.phase.is_active() && !starting {
        Some(format!("{revision}-0"))
    } else {
        Some(format!("{}-0", revision + 1))
    }
}

/// Reads the event stream into `events`, reconnecting with the last id seen.
async fn follow(
    api: Api,
    app: String,
    after: Option<String>,
    events: mpsc::Sender<Result<EventRecord, CliError>>,
) {
    let mut last_id = after;
    let mut failures = 0;
    loop {
        let path = format!("/api/rollouts/{}/events", path_segment(&app));
        let mut request = api
            .request(Method::GET, &path)
            .header("accept", "text/event-stream");
        if let Some(id) = &last_id {
            request = request.header("last-event-id", id.as_str());
        }
        let what = format!("GET {}", api.url(&path));
        let response = match api.send(what.clone(), request).await {
            Ok(response) => response,
            // The server refused: reconnecting will not help.
            Err(err @ CliError::Api { .. }) => {
                let _ = events.send(Err(err)).await;
                return;
            }
            Err(err) => {
                failures += 1;
                if failures >= RECONNECTS {
                    let _ = events.send(Err(err)).await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250 * u64::from(failures))).await;
                continue;
            }
        };
        let mut body = response.bytes_stream();
        let mut parser = SseParser::default();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            failures = 0;
            for message in parser.feed(&chunk) {
                if message.event == "error" {
                    let _ = events
                        .send(Err(CliError::Decode {
                            what: what.clone(),
                            reason: format!("the server ended the stream: {}", message.data),
                        }))
                        .await;
                    return;
                }
                let record =
                    serde_json::from_str::<EventRecord>(&message.data).map_err(|err| CliError::Decode {
                        what: what.clone(),
                        reason: err.to_string(),
                    });
                if let Some(id) = message.id {
                    last_id = Some(id);
                }
                if events.send(record).await.is_err() {
                    return;
                }
            }
        }
        // The connection ended: reconnect from the last id seen.
        failures += 1;
        if failures >= RECONNECTS {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `record` is the last event of its rollout.
fn ends(record: &EventRecord) -> bool {
    matches!(
        record.event.kind,
        DeploymentEventKind::Completed { .. }
            | DeploymentEventKind::RollbackFinished
            | DeploymentEventKind::Failed { .. }
    )
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The live view's lines.
fn frame(view: &RolloutView, recent: &VecDeque<EventRecord>) -> Vec<String> {
    let mut lines = render::rollout(view, now_ms(), STEPS_SHOWN);
    if !recent.is_empty() {
        lines.push("events:".into());
        lines.extend(recent.iter().map(|e| format!("  {}", render::event(e))));
    }
    lines
}

/// Runs the watch until the rollout ends (or the stream fails); whether it completed (as
/// opposed to rolled back or failed).
pub(crate) async fn watch(api: &Api, app: &str, mode: Mode) -> Result<bool, CliError> {
    let path = format!("/api/rollouts/{}", path_segment(app));
    let mut view: RolloutView = api.get_as(&path).await?;
    let rule = EndRule::new(&view);
    let (sender, mut events) = mpsc::channel(256);
    let follower = tokio::spawn(follow(api.clone(), app.to_owned(), start_after(&view), sender));
    let mut stdout = std::io::stdout().lock();
    let mut recent: VecDeque<EventRecord> = VecDeque::new();
    let mut drawn = 0usize;
    let mut refresh = tokio::time::interval(REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stream_open = true;
    // The revision whose last event (completed, rolled back, failed) was read.
    // A rollout that had already ended when the watch began: nothing more to wait for.
    let mut last_event_of: Option<u64> = if rule.ended(&view) {
        view.status.as_ref().map(|s| s.revision.get())
    } else {
        None
    };
    let mut end_seen_at: Option<tokio::time::Instant> = None;
    // Status reads that failed in a row for want of a connection (the server restarting):
    // the watch carries on until there are too many.
    let mut unreachable = 0u32;
    let result = loop {
        if mode == Mode::Live {
            let lines = frame(&view, &recent);
            // Back to the first line of the previous frame, clear below, draw.
            if drawn > 0 {
                write!(stdout, "\x1b[{drawn}F\x1b[J")?;
            }
            for line in &lines {
                writeln!(stdout, "{line}")?;
            }
            stdout.flush()?;
            drawn = lines.len();
        }
        if rule.ended(&view) {
            let revision = view.status.as_ref().map(|s| s.revision.get());
            let seen_at = *end_seen_at.get_or_insert_with(tokio::time::Instant::now);
            if !stream_open || last_event_of == revision || seen_at.elapsed() >= LAST_EVENTS_GRACE {
                break Ok(());
            }
        }
        tokio::select! {
            event = events.recv(), if stream_open => match event {
                Some(Ok(record)) => {
                    if ends(&record) {
                        last_event_of = Some(record.revision.get());
                    }
                    match mode {
                        Mode::Json => {
                            writeln!(stdout, "{}", serde_json::to_string(&record).unwrap_or_default())?;
                            stdout.flush()?;
                        }
                        Mode::Lines => {
                            writeln!(stdout, "{}", render::event(&record))?;
                            stdout.flush()?;
                        }
                        Mode::Live => {
                            recent.push_back(record);
                            while recent.len() > RECENT_EVENTS {
                                recent.pop_front();
                            }
                        }
                    }
                }
                Some(Err(err)) => break Err(err),
                // The stream gave up reconnecting: keep polling the status.
                None => stream_open = false,
            },
            _ = refresh.tick() => {}
        }
        match api.get_as::<RolloutView>(&path).await {
            Ok(read) => {
                view = read;
                unreachable = 0;
            }
            Err(CliError::Http { .. }) if unreachable + 1 < RECONNECTS => unreachable += 1,
            Err(err) => break Err(err),
        }
    };
    follower.abort();
    result?;
    // The events that came with the end are already read; say how it ended.
    match mode {
        Mode::Json => {
            let status = serde_json::to_value(&view.status).unwrap_or_default();
            writeln!(stdout, "{}", serde_json::json!({ "ended": status }))?;
        }
        Mode::Lines => {
            if let Some(status) = &view.status {
                writeln!(
                    stdout,
                    "rollout of {} revision {} ({}) ended: {}",
                    status.app,
                    status.revision.get(),
                    status.version,
                    render::phase(&status.phase)
                )?;
            }
        }
        Mode::Live => {}
    }
    stdout.flush()?;
    Ok(view
        .status
        .is_some_and(|status| status.phase == deploy_strategies::Phase::Completed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view(json: serde_json::Value) -> RolloutView {
        crate::client::decode("test", json).expect("a rollout view")
    }

    fn status(revision: u64, phase: serde_json::Value) -> serde_json::Value {
        json!({
            "app": "shop", "revision": revision, "version": "2.0", "previous": "1.0",
            "strategy": "canary", "phase": phase, "step": 0, "step_name": "set weight 10%",
            "steps": ["set weight 10%"], "routing": null, "paused": null, "last_analysis": null,
            "holder": null, "updated_at_ms": 0
        })
    }

    fn start_intent() -> serde_json::Value {
        json!({ "id": 1, "app": "shop", "intent": { "intent": "start", "version": "3.0" }, "actor": "a",
                "requested_at_ms": 0, "state": { "state": "pending" } })
    }

    #[test]
    fn a_watch_ends_with_the_rollout() {
        let running = view(json!({ "app": "shop", "status": status(2, json!({ "phase": "progressing" })) }));
        let rule = EndRule::new(&running);
        assert!(!rule.ended(&running));
        assert_eq!(start_after(&running).as_deref(), Some("2-0"));
        let done = view(json!({ "app": "shop", "status": status(2, json!({ "phase": "completed" })) }));
        assert!(rule.ended(&done));
    }

    #[test]
    fn a_watch_begun_before_a_pending_start_waits_for_the_new_revision() {
        let before = view(json!({
            "app": "shop", "status": status(2, json!({ "phase": "completed" })), "pending": [start_intent()]
        }));
        let rule = EndRule::new(&before);
        assert_eq!(start_after(&before).as_deref(), Some("3-0"));
        assert!(!rule.ended(&before));
        // Applied, but the new revision is not published yet.
        let applied = view(json!({ "app": "shop", "status": status(2, json!({ "phase": "completed" })) }));
        assert!(!rule.ended(&applied));
        let rolled_back = view(json!({
            "app": "shop", "status": status(3, json!({ "phase": "rolled_back", "reason": "analysis failed" }))
        }));
        assert!(rule.ended(&rolled_back));
    }

    #[test]
    fn the_mode_follows_the_output_and_the_terminal() {
        assert_eq!(Mode::new(Output::Text, true), Mode::Live);
        assert_eq!(Mode::new(Output::Text, false), Mode::Lines);
        assert_eq!(Mode::new(Output::Json, true), Mode::Json);
    }
}
