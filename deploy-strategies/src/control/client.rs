//! [`RolloutClient`]: reads and writes the control records of any app, from any process.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use deploy_core::{
    AppId, ClockExt, DynStore, FollowEvent, FollowStream, Precondition, Record, RecordStoreExt, StoreError,
    Version, WriteOptions,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::de::DeserializeOwned;

use super::{
    ControlError, ControlOptions, EventId, EventRecord, HistoryEntry, Intent, IntentRecord, IntentState,
    PublishedStatus, keys,
};
use crate::handle::RolloutOutcome;
use crate::journal::{Journal, journal_key};

/// Attempts at taking the next intent number before giving up on a busy app.
const INTENT_ID_ATTEMPTS: usize = 32;

/// Longest actor name kept with an intent.
const MAX_ACTOR_LEN: usize = 255;

/// Decodes a stored JSON record.
pub(crate) fn decode<T: DeserializeOwned>(record: &Record) -> Result<T, ControlError> {
    serde_json::from_slice(&record.value).map_err(|err| ControlError::Store {
        key: record.key.clone(),
        source: StoreError::Codec {
            key: record.key.clone(),
            source: Box::new(err),
        },
    })
}

/// The version an idle undo goes back to: the previous version of the newest rollout that
/// completed (what the app serves now came from it), from the history, or from the
/// journal when the history has none.
pub(crate) fn undo_target(history: &[HistoryEntry], journal: Option<&Journal>) -> Option<Version> {
    let completed = history
        .iter()
        .filter(|entry| entry.report.outcome == RolloutOutcome::Completed)
        .max_by_key(|entry| entry.revision);
    match (completed, journal) {
        (Some(entry), _) => entry.previous.clone(),
        (None, Some(journal)) if journal.phase == crate::Phase::Completed => journal.previous.clone(),
        _ => None,
    }
}

/// Reads and writes the control records of every app: status, history, events and
/// intents. No lease is needed; cheap to clone. A server, a command-line tool or a second
/// replica each hold one over the deployers' store.
#[derive(Debug, Clone)]
pub struct RolloutClient {
    store: Arc<DynStore>,
    options: ControlOptions,
}

impl RolloutClient {
    /// A client over `store`, stamping intents with the system clock.
    pub fn new(store: Arc<DynStore>) -> Self {
        Self::with_options(store, ControlOptions::default())
    }

    /// A client over `store` with `options` (its clock stamps intents).
    pub fn with_options(store: Arc<DynStore>, options: ControlOptions) -> Self {
        Self { store, options }
    }

    /// The store it reads and writes.
    pub fn store(&self) -> &Arc<DynStore> {
        &self.store
    }

    async fn list<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>, ControlError> {
        let records = self
            .store
            .list(prefix)
            .await
            .map_err(ControlError::store(prefix))?;
        records.iter().map(decode).collect()
    }

    /// Every app with a rollout journal or a published status, by name.
    ///
    /// # Errors
    /// [`ControlError::Store`] when the store fails.
    pub async fn apps(&self) -> Result<Vec<AppId>, ControlError> {
        let records = self
            .store
            .list(keys::ROOT)
            .await
            .map_err(ControlError::store(keys::ROOT))?;
        let apps: BTreeSet<AppId> = records
            .iter()
            .filter_map(|record| {
                let rest = record.key.strip_prefix(keys::ROOT)?;
                let (app, what) = rest.split_once('/')?;
                matches!(what, "journal" | "status")
                    .then(|| AppId::new(app).ok())
                    .flatten()
            })
            .collect();
        Ok(apps.into_iter().collect())
    }

    /// The status `app`'s deployer last published, if any.
    ///
    /// # Errors
    /// [`ControlError::Store`] when the store fails or the record is not a status.
    pub async fn status(&self, app: &AppId) -> Result<Option<PublishedStatus>, ControlError> {
        let key = keys::status(app);
        self.store
            .get_json(&key)
            .await
            .map(|found| found.map(|(status, _)| status))
            .map_err(ControlError::store(key))
    }

    /// `app`'s finished rollouts, newest first (at most the deployer's history limit).
    ///
    /// # Errors
    /// [`ControlError::Store`] when the store fails or a record is not a history entry.
    pub async fn history(&self, app: &AppId) -> Result<Vec<HistoryEntry>, ControlError> {
        let mut entries: Vec<HistoryEntry> = self.list(&keys::history(app)).await?;
        entries.reverse();
        Ok(entries)
    }

    /// `app`'s intents, oldest first, pending or not (resolved ones are pruned to the
    /// newest thousand).
    ///
    /// # Errors
    /// [`ControlError::Store`] when the store fails or a record is not an intent.
    pub async fn intents(&self, app: &AppId) -> Result<Vec<IntentRecord>, ControlError> {
        self.list(&keys::intents(app)).await
    }

    async fn journal(&self, app: &AppId) -> Result<Option<Journal>, ControlError> {
        let key = journal_key(app);
        self.store
            .get_json::<Journal>(&key)
            .await
            .map(|found| found.map(|(journal, _)| journal))
            .map_err(ControlError::store(key))
    }

    /// Writes an intent for `app`, pending until its deployer applies it; returns the
    /// record written. Stamped with this client's clock and `actor`.
    ///
    /// # Errors
    /// [`ControlError::InvalidTransition`] when the intent cannot apply: `start` or `undo`
    /// while another start is pending, `start` while a rollout runs, `pause`, `resume`,
    /// `abort`, `promote` or `promote_full` with no rollout running or about to start,
    /// `undo` with nothing running and no previous version;
    /// [`ControlError::InvalidArgument`] for an empty actor or one over 255 characters;
    /// [`ControlError::Store`] when the store fails.
    pub async fn request(
        &self,
        app: &AppId,
        intent: Intent,
        actor: &str,
    ) -> Result<IntentRecord, ControlError> {
        let length = actor.chars().count();
        if length == 0 || length > MAX_ACTOR_LEN {
            return Err(ControlError::InvalidArgument {
                field: "actor",
                reason: "must be 1..=255 characters".into(),
            });
        }
        self.check(app, &intent).await?;
        let prefix = keys::intents(app);
        for _ in 0..INTENT_ID_ATTEMPTS {
            let existing = self
                .store
                .list(&prefix)
                .await
                .map_err(ControlError::store(&prefix))?;
            // Keys are zero-padded numbers, so the last one is the highest.
            let highest = existing
                .last()
                .and_then(|record| record.key.strip_prefix(&prefix)?.parse::<u64>().ok())
                .unwrap_or(0);
            let record = IntentRecord {
                id: highest.saturating_add(1),
                app: app.clone(),
                intent: intent.clone(),
                actor: actor.to_owned(),
                requested_at_ms: self.options.clock.unix_millis(),
                state: IntentState::Pending,
            };
            let key = keys::intent(app, record.id);
            match self
                .store
                .put_json(&key, &record, WriteOptions::when(Precondition::Absent))
                .await
            {
                Ok(_) => return Ok(record),
                Err(StoreError::Conflict { .. }) => continue,
                Err(source) => return Err(ControlError::Store { key, source }),
            }
        }
        Err(ControlError::Store {
            key: prefix.clone(),
            source: StoreError::Conflict {
                key: prefix,
                expected: Precondition::Absent,
                actual: None,
            },
        })
    }

    /// Refuses an intent that cannot apply to what the store shows of `app`.
    async fn check(&self, app: &AppId, intent: &Intent) -> Result<(), ControlError> {
        let refuse = |reason: String| ControlError::InvalidTransition {
            app: app.clone(),
            intent: intent.name().to_owned(),
            reason,
        };
        let status = self.status(app).await?;
        let journal = self.journal(app).await?;
        let running = status.as_ref().is_some_and(|s| s.phase.is_active())
            || journal.as_ref().is_some_and(|j| j.phase.is_active());
        let starting = self.intents(app).await?.into_iter().find(|record| {
            record.state.is_pending() && matches!(record.intent, Intent::Start { .. } | Intent::Undo)
        });
        let revision = status
            .as_ref()
            .map(|s| s.revision)
            .or_else(|| journal.as_ref().map(|j| j.revision));
        match intent {
            Intent::Start { .. } | Intent::Undo if starting.is_some() => Err(refuse(format!(
                "intent {} ({}) is pending and starts a rollout",
                starting.as_ref().map_or(0, |r| r.id),
                starting.as_ref().map_or("", |r| r.intent.name()),
            ))),
            Intent::Start { .. } if running => Err(refuse(format!(
                "revision {} is still running",
                revision.map_or(0, deploy_core::Revision::get)
            ))),
            Intent::Undo if !running => {
                let history = self.history(app).await?;
                match undo_target(&history, journal.as_ref()) {
                    Some(_) => Ok(()),
                    None => Err(refuse(
                        "no rollout is running and no previous version is known".into(),
                    )),
                }
            }
            Intent::Pause | Intent::Resume | Intent::Abort | Intent::Promote | Intent::PromoteFull
                if !running && starting.is_none() =>
            {
                Err(refuse("no rollout is running".into()))
            }
            _ => Ok(()),
        }
    }

    /// `app`'s stored events after `after` (all of them without), in order.
    ///
    /// # Errors
    /// [`ControlError::Store`] when the store fails or a record is not an event.
    pub async fn events(
        &self,
        app: &AppId,
        after: Option<EventId>,
    ) -> Result<Vec<EventRecord>, ControlError> {
        let events: Vec<EventRecord> = self.list(&keys::events(app)).await?;
        Ok(events
            .into_iter()
            .filter(|event| after.is_none_or(|after| event.id() > after))
            .collect())
    }

    /// Every event of `app` after `after` (all without): the stored ones first, then the
    /// live ones as the deployer stores them, in order, with no gap and no repeat. The
    /// stream never ends by itself; a record that cannot be decoded is yielded as an error
    /// and skipped.
    ///
    /// # Errors
    /// [`ControlError::Store`] when the store's watch cannot start.
    pub async fn follow_events(
        &self,
        app: &AppId,
        after: Option<EventId>,
    ) -> Result<BoxStream<'static, Result<EventRecord, ControlError>>, ControlError> {
        let prefix = keys::events(app);
        let seen = self
            .store
            .follow(&prefix)
            .await
            .map_err(ControlError::store(&prefix))?;
        let state = EventFollower {
            seen,
            prefix,
            last: after,
            ready: VecDeque::new(),
        };
        Ok(futures::stream::unfold(state, |mut state| async move {
            let next = state.next().await?;
            Some((next, state))
        })
        .boxed())
    }

    /// `app`'s status as its deployer publishes it: the current one first (when there is
    /// one), then every change. The stream never ends by itself.
    ///
    /// # Errors
    /// [`ControlError::Store`] when the store's watch cannot start.
    pub async fn watch_status(
        &self,
        app: &AppId,
    ) -> Result<BoxStream<'static, Result<PublishedStatus, ControlError>>, ControlError> {
        let key = keys::status(app);
        let seen = self.store.follow(&key).await.map_err(ControlError::store(&key))?;
        Ok(seen
            .filter_map(move |seen| {
                let record = match seen {
                    Ok(FollowEvent::Snapshot(records)) => records.into_iter().find(|r| r.key == key),
                    Ok(FollowEvent::Put(record)) => Some(record).filter(|r| r.key == key),
                    Ok(FollowEvent::Delete { .. }) => None,
                    Err(source) => {
                        return std::future::ready(Some(Err(ControlError::Store {
                            key: key.clone(),
                            source,
                        })));
                    }
                };
                std::future::ready(record.map(|record| decode::<PublishedStatus>(&record)))
            })
            .boxed())
    }
}

/// The state of a [`RolloutClient::follow_events`] stream.
struct EventFollower {
    seen: FollowStream,
    prefix: String,
    /// The newest event yielded (or the caller's starting point).
    last: Option<EventId>,
    ready: VecDeque<Result<EventRecord, ControlError>>,
}

impl EventFollower {
    async fn next(&mut self) -> Option<Result<EventRecord, ControlError>> {
        loop {
            if let Some(next) = self.ready.pop_front() {
                return Some(next);
            }
            let records = match self.seen.next().await? {
                Ok(FollowEvent::Snapshot(records)) => records,
                Ok(FollowEvent::Put(record)) => vec![record],
                // Events are pruned, never edited: a delete brings nothing to follow.
                Ok(FollowEvent::Delete { .. }) => Vec::new(),
                Err(source) => {
                    return Some(Err(ControlError::Store {
                        key: self.prefix.clone(),
                        source,
                    }));
                }
            };
            for record in records {
                match decode::<EventRecord>(&record) {
                    // Events are written in order, once each: only what comes after the
                    // last one yielded is new (a listing after a lag repeats the rest).
                    Ok(event) if self.last.is_none_or(|last| event.id() > last) => {
                        self.last = Some(event.id());
                        self.ready.push_back(Ok(event));
                    }
                    Ok(_) => {}
                    Err(err) => self.ready.push_back(Err(err)),
                }
            }
        }
    }
}
