//! Text output: rollouts as people read them (weights as bars, pauses with the time left),
//! anything else as aligned `key: value` lines or one line per item.

use std::fmt::Write as _;

use deploy_core::{AnalysisOutcome, DeploymentEventKind, TrafficSplit};
use deploy_strategies::Phase;
use deploy_strategies::RolloutOutcome;
use deploy_strategies::control::{EventRecord, HistoryEntry, IntentRecord, IntentState, PublishedStatus};
use serde::Deserialize;
use serde_json::Value;

/// `GET /api/rollouts/{app}` (and each item of `GET /api/rollouts`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RolloutView {
    /// The app.
    pub(crate) app: String,
    /// Its published status, when a deployer ever published one.
    pub(crate) status: Option<PublishedStatus>,
    /// Intents no deployer has taken up yet.
    #[serde(default)]
    pub(crate) pending: Vec<IntentRecord>,
}

/// Width of a weight bar, in cells.
const BAR_WIDTH: usize = 20;

/// `[██████░░░░...]` for `fraction` of [`BAR_WIDTH`].
pub(crate) fn bar(fraction: f64) -> String {
    let filled = ((fraction.clamp(0.0, 1.0) * BAR_WIDTH as f64).round() as usize).min(BAR_WIDTH);
    format!("[{}{}]", "█".repeat(filled), "░".repeat(BAR_WIDTH - filled))
}

/// A phase in words: `progressing`, `rolled back (analysis failed)`.
pub(crate) fn phase(phase: &Phase) -> String {
    match phase {
        Phase::Progressing => "progressing".into(),
        Phase::RollingBack { reason } => format!("rolling back ({reason})"),
        Phase::Completed => "completed".into(),
        Phase::RolledBack { reason } => format!("rolled back ({reason})"),
        Phase::Failed { reason } => format!("failed ({reason})"),
    }
}

/// A phase's one-word name, for tables.
pub(crate) fn phase_name(phase: &Phase) -> &'static str {
    match phase {
        Phase::Progressing => "progressing",
        Phase::RollingBack { .. } => "rolling_back",
        Phase::Completed => "completed",
        Phase::RolledBack { .. } => "rolled_back",
        Phase::Failed { .. } => "failed",
    }
}

/// `1m 05s`, `42s`, `3h 02m`.
pub(crate) fn duration_ms(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!("{}h {:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// `2026-11-30 14:03:12` (UTC) for unix milliseconds.
pub(crate) fn time_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

/// `14:03:12` (UTC) for unix milliseconds.
pub(crate) fn clock_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |t| t.format("%H:%M:%S").to_string())
}

/// One line per pool: `canary  [████░░...]  20.00%`.
pub(crate) fn weights(split: &TrafficSplit) -> Vec<String> {
    let width = split.pools().map(|p| p.as_str().len()).max().unwrap_or(0);
    split
        .iter()
        .map(|(pool, weight)| format!("{:width$}  {}  {weight}", pool.as_str(), bar(weight.fraction())))
        .collect()
}

/// An intent in one line: `#4 pause by alice, pending`.
pub(crate) fn intent(record: &IntentRecord) -> String {
    let what = match &record.intent {
        deploy_strategies::control::Intent::Start { version } => format!("start {version}"),
        other => other.name().to_owned(),
    };
    let state = match &record.state {
        IntentState::Pending => "pending".to_owned(),
        IntentState::Applied { holder, .. } => format!("applied by {holder}"),
        IntentState::Refused { reason, .. } => format!("refused: {reason}"),
    };
    format!(
        "#{} {what} by {} at {}, {state}",
        record.id,
        record.actor,
        time_ms(record.requested_at_ms)
    )
}

/// The pause line: `timed pause (42s left)`, `waiting for promotion (since 14:02:01)`.
pub(crate) fn pause(status: &PublishedStatus, now_ms: i64) -> Option<String> {
    let pause = status.paused.as_ref()?;
    Some(match pause.until_ms {
        Some(until) => format!("{} ({} left)", pause.reason, duration_ms(until - now_ms)),
        None => format!("{} (since {})", pause.reason, clock_ms(pause.since_ms)),
    })
}

/// The last analysis in one line: `successful at "analysis 1": errors: Successful (...)`.
pub(crate) fn analysis(status: &PublishedStatus) -> Option<String> {
    let record = status.last_analysis.as_ref()?;
    Some(format!(
        "{} at \"{}\": {}",
        outcome(record.result.outcome),
        record.step,
        record.result.summary()
    ))
}

fn outcome(outcome: AnalysisOutcome) -> &'static str {
    match outcome {
        AnalysisOutcome::Successful => "successful",
        AnalysisOutcome::Failed => "failed",
        AnalysisOutcome::Inconclusive => "inconclusive",
        AnalysisOutcome::Error => "error",
    }
}

/// A rollout's status as `key: value` lines, with at most `steps` of its steps as a
/// timeline (a window around the current one; `0`: none).
pub(crate) fn rollout(view: &RolloutView, now_ms: i64, steps: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let Some(status) = &view.status else {
        lines.push(format!("app:       {}", view.app));
        lines.push("status:    no rollout published yet".into());
        lines.extend(view.pending.iter().map(|i| format!("pending:   {}", intent(i))));
        return lines;
    };
    lines.push(format!("app:       {}", status.app));
    lines.push(format!(
        "revision:  {} ({})",
        status.revision.get(),
        status.strategy
    ));
    let from = status
        .previous
        .as_ref()
        .map_or_else(String::new, |previous| format!(" (from {previous})"));
    lines.push(format!("version:   {}{from}", status.version));
    lines.push(format!("phase:     {}", phase(&status.phase)));
    lines.push(format!(
        "step:      {}/{} {}",
        (status.step + 1).min(status.steps.len().max(status.step + 1)),
        status.steps.len(),
        status.step_name
    ));
    if steps > 0 {
        let (first, last) = window(status.steps.len(), status.step, steps);
        if first > 0 {
            lines.push(format!("  ✓ ... {first} earlier"));
        }
        for (index, name) in status.steps.iter().enumerate().take(last).skip(first) {
            let done = matches!(status.phase, Phase::Completed) || index < status.step;
            let mark = if done {
                "✓"
            } else if index == status.step && status.phase.is_active() {
                "▶"
            } else {
                "·"
            };
            lines.push(format!("  {mark} {name}"));
        }
        if last < status.steps.len() {
            lines.push(format!("  · ... {} more", status.steps.len() - last));
        }
    }
    match &status.routing {
        Some(split) => {
            let mut pools = weights(split).into_iter();
            if let Some(first) = pools.next() {
                lines.push(format!("weights:   {first}"));
            }
            lines.extend(pools.map(|line| format!("           {line}")));
        }
        None => lines.push("weights:   (no routing yet)".into()),
    }
    if let Some(pause) = pause(status, now_ms) {
        lines.push(format!("paused:    {pause}"));
    }
    if let Some(analysis) = analysis(status) {
        lines.push(format!("analysis:  {analysis}"));
    }
    lines.push(format!(
        "deployer:  {}",
        status.holder.as_deref().unwrap_or("(none: the rollout ended)")
    ));
    lines.push(format!("updated:   {}", time_ms(status.updated_at_ms)));
    lines.extend(view.pending.iter().map(|i| format!("pending:   {}", intent(i))));
    lines
}

/// The steps `first..last` to show of `total`: at most `max` (when more, one line each side
/// says how many are left out), the current one with two before it.
fn window(total: usize, current: usize, max: usize) -> (usize, usize) {
    if total <= max {
        return (0, total);
    }
    // Room for the "earlier" and "more" lines.
    let shown = max.saturating_sub(2).max(1);
    let first = current.saturating_sub(2).min(total - shown);
    (first, first + shown)
}

/// `GET /api/rollouts` as a table.
pub(crate) fn rollout_table(views: &[RolloutView]) -> Vec<String> {
    let mut rows = vec![[
        "APP".to_owned(),
        "REVISION".into(),
        "VERSION".into(),
        "STRATEGY".into(),
        "PHASE".into(),
        "STEP".into(),
        "PAUSED".into(),
        "PENDING".into(),
    ]];
    for view in views {
        let row = match &view.status {
            Some(s) => [
                view.app.clone(),
                s.revision.get().to_string(),
                s.version.to_string(),
                s.strategy.clone(),
                phase_name(&s.phase).into(),
                format!("{}/{}", (s.step + 1).min(s.steps.len().max(1)), s.steps.len()),
                s.paused.as_ref().map_or_else(|| "-".into(), |p| p.kind.clone()),
                view.pending.len().to_string(),
            ],
            None => [
                view.app.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                view.pending.len().to_string(),
            ],
        };
        rows.push(row);
    }
    table(&rows)
}

/// `GET /api/rollouts/{app}/history` as a table.
pub(crate) fn history_table(entries: &[HistoryEntry]) -> Vec<String> {
    let mut rows = vec![[
        "REVISION".to_owned(),
        "VERSION".into(),
        "PREVIOUS".into(),
        "STRATEGY".into(),
        "OUTCOME".into(),
        "STARTED".into(),
        "TOOK".into(),
    ]];
    for entry in entries {
        let outcome = match &entry.report.outcome {
            RolloutOutcome::Completed => "completed".to_owned(),
            RolloutOutcome::RolledBack { reason } => format!("rolled back: {reason}"),
            RolloutOutcome::Failed { reason } => format!("failed: {reason}"),
        };
        rows.push([
            entry.revision.get().to_string(),
            entry.version.to_string(),
            entry
                .previous
                .as_ref()
                .map_or_else(|| "-".into(), ToString::to_string),
            entry.strategy.clone(),
            outcome,
            time_ms(entry.started_at_ms),
            duration_ms(entry.ended_at_ms - entry.started_at_ms),
        ]);
    }
    table(&rows)
}

/// Rows padded into aligned columns (the last column is not padded).
pub(crate) fn table<const N: usize>(rows: &[[String; N]]) -> Vec<String> {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
                if i + 1 == N {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:width$}  ");
                }
            }
            line.trim_end().to_owned()
        })
        .collect()
}

/// An event in one line: `14:03:12 [3-5] step 2: set weight 20%`.
pub(crate) fn event(record: &EventRecord) -> String {
    let what = match &record.event.kind {
        DeploymentEventKind::Started { version, strategy } => format!("started {version} ({strategy})"),
        DeploymentEventKind::StepEntered { index, name } => format!("step {}: {name}", index + 1),
        DeploymentEventKind::TrafficShifted { split } => format!("traffic: {split}"),
        DeploymentEventKind::AnalysisCompleted {
            step,
            outcome: verdict,
            summary,
        } => format!("analysis at step {}: {} ({summary})", step + 1, outcome(*verdict)),
        DeploymentEventKind::Paused { reason } => format!("paused: {reason}"),
        DeploymentEventKind::Resumed => "resumed".into(),
        DeploymentEventKind::RollbackStarted { reason } => format!("rollback started: {reason}"),
        DeploymentEventKind::RollbackFinished => "rollback finished".into(),
        DeploymentEventKind::Completed { version } => format!("completed: {version} serves all traffic"),
        DeploymentEventKind::Failed { reason } => format!("failed: {reason}"),
        other => format!("{other:?}"),
    };
    format!("{} [{}] {what}", clock_ms(record.at_ms), record.id())
}

/// Any JSON answer as text: an object as aligned `key: value` lines, an array as one line
/// per item (`key=value` pairs), a scalar as itself.
pub(crate) fn generic(value: &Value) -> Vec<String> {
    match value {
        Value::Object(map) => {
            let width = map.keys().map(String::len).max().unwrap_or(0) + 1;
            map.iter()
                .map(|(key, value)| format!("{:width$} {}", format!("{key}:"), scalar(value)))
                .collect()
        }
        Value::Array(items) if items.is_empty() => vec!["(none)".into()],
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Object(map) => map
                    .iter()
                    .map(|(key, value)| format!("{key}={}", scalar(value)))
                    .collect::<Vec<_>>()
                    .join("  "),
                other => scalar(other),
            })
            .collect(),
        Value::Null => Vec::new(),
        other => vec![scalar(other)],
    }
}

/// A value on one line: strings bare, everything else as compact JSON.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_fill_in_proportion() {
        assert_eq!(bar(0.0), format!("[{}]", "░".repeat(20)));
        assert_eq!(bar(0.25), format!("[{}{}]", "█".repeat(5), "░".repeat(15)));
        assert_eq!(bar(1.0), format!("[{}]", "█".repeat(20)));
        assert_eq!(bar(7.0), bar(1.0));
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration_ms(-5), "0s");
        assert_eq!(duration_ms(42_400), "42s");
        assert_eq!(duration_ms(65_000), "1m 05s");
        assert_eq!(duration_ms(3 * 3_600_000 + 120_000), "3h 02m");
    }

    #[test]
    fn tables_align_columns() {
        let rows = [
            ["APP".to_owned(), "PHASE".to_owned()],
            ["checkout".to_owned(), "completed".to_owned()],
        ];
        assert_eq!(table(&rows), vec!["APP       PHASE", "checkout  completed"]);
    }

    #[test]
    fn a_rollout_shows_its_steps_weights_and_pause_with_the_time_left() {
        let view: RolloutView = serde_json::from_value(serde_json::json!({
            "app": "shop",
            "status": {
                "app": "shop", "revision": 3, "version": "2.0", "previous": "1.0", "strategy": "canary",
                "phase": { "phase": "progressing" }, "step": 1, "step_name": "pause 60s",
                "steps": ["route 25%", "pause 60s", "route 100%"],
                "routing": { "rev-3": 2500, "stable": 7500 },
                "paused": { "reason": "timed pause", "kind": "timed", "since_ms": 0, "until_ms": 60_000 },
                "last_analysis": null, "holder": "deployer-1", "updated_at_ms": 0
            },
            "pending": [{ "id": 7, "app": "shop", "intent": { "intent": "pause" }, "actor": "alice",
                          "requested_at_ms": 0, "state": { "state": "pending" } }]
        }))
        .expect("a rollout view");
        let lines = rollout(&view, 18_000, usize::MAX);
        let expected = [
            "app:       shop",
            "revision:  3 (canary)",
            "version:   2.0 (from 1.0)",
            "phase:     progressing",
            "step:      2/3 pause 60s",
            "  ✓ route 25%",
            "  ▶ pause 60s",
            "  · route 100%",
        ];
        assert_eq!(&lines[..expected.len()], expected);
        let rest = lines[expected.len()..].join("\n");
        assert!(
            rest.contains(&format!("weights:   rev-3   {}  25.00%", bar(0.25))),
            "{rest}"
        );
        assert!(
            rest.contains(&format!("           stable  {}  75.00%", bar(0.75))),
            "{rest}"
        );
        assert!(rest.contains("paused:    timed pause (42s left)"), "{rest}");
        assert!(rest.contains("deployer:  deployer-1"), "{rest}");
        assert!(
            rest.contains("pending:   #7 pause by alice at 1970-01-01 00:00:00, pending"),
            "{rest}"
        );
    }

    #[test]
    fn a_long_timeline_is_shown_as_a_window_around_the_current_step() {
        assert_eq!(window(5, 3, 10), (0, 5));
        assert_eq!(window(20, 0, 9), (0, 7));
        assert_eq!(window(20, 10, 9), (8, 15));
        assert_eq!(window(20, 19, 9), (13, 20));
    }

    #[test]
    fn generic_output_of_objects_and_lists() {
        let object = serde_json::json!({ "name": "t1", "role": "viewer", "scope": { "apps": [] } });
        assert_eq!(
            generic(&object),
            vec!["name:  t1", "role:  viewer", "scope: {\"apps\":[]}"]
        );
        let list = serde_json::json!([{ "id": 1, "state": "open" }, "x"]);
        assert_eq!(generic(&list), vec!["id=1  state=open", "x"]);
        assert_eq!(generic(&serde_json::json!([])), vec!["(none)"]);
    }
}
