//! The progress of every edit by id, for `GET /v1/edits/{id}/events`.
//!
//! A client may subscribe before it uploads (it chooses the id), so an entry is created by
//! whichever comes first. Entries are removed a while after their edit ends, or when nobody
//! uploaded for them in time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

/// Most ids tracked at once (subscriptions beyond it are refused).
const MAX_ENTRIES: usize = 10_000;
/// How long an ended edit's progress stays readable.
pub const LINGER: Duration = Duration::from_secs(60);

/// Where an edit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Subscribed, not uploaded yet.
    Waiting,
    /// In the queue.
    Queued,
    /// Being edited.
    Running,
    /// Finished; the result is in the upload's response.
    Done,
    /// Failed (`error` says why).
    Failed,
    /// Cancelled (the client went away).
    Cancelled,
}

impl State {
    /// Whether nothing more will happen.
    pub fn is_final(self) -> bool {
        matches!(self, State::Done | State::Failed | State::Cancelled)
    }
}

/// One progress report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    /// Where the edit is.
    pub state: State,
    /// Steps completed.
    pub step: usize,
    /// Steps requested (0 until known).
    pub total: usize,
    /// Requests edited together with this one (when running).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Progress {
    /// A report without steps.
    pub fn state(state: State) -> Self {
        Self {
            state,
            step: 0,
            total: 0,
            batch: None,
            error: None,
        }
    }
}

/// A handle to update one edit's progress.
pub type Reporter = Arc<watch::Sender<Progress>>;

/// The progress of every edit by id.
#[derive(Debug, Default)]
pub struct Events {
    map: Mutex<HashMap<String, Reporter>>,
}

/// Why an id cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Too many ids are tracked.
    Full,
    /// An upload with this id was already made.
    Taken,
}

impl Events {
    /// The reporter of `id`, created as [`State::Waiting`] when new.
    pub fn subscribe(&self, id: &str) -> Result<watch::Receiver<Progress>, Refusal> {
        let mut map = self.map.lock().map_err(|_| Refusal::Full)?;
        if let Some(reporter) = map.get(id) {
            return Ok(reporter.subscribe());
        }
        if map.len() >= MAX_ENTRIES {
            return Err(Refusal::Full);
        }
        let (sender, receiver) = watch::channel(Progress::state(State::Waiting));
        map.insert(id.to_string(), Arc::new(sender));
        Ok(receiver)
    }

    /// Claims `id` for an upload: its reporter, now [`State::Queued`].
    pub fn claim(&self, id: &str, total: usize) -> Result<Reporter, Refusal> {
        let mut map = self.map.lock().map_err(|_| Refusal::Full)?;
        let queued = Progress {
            total,
            ..Progress::state(State::Queued)
        };
        if let Some(reporter) = map.get(id) {
            let used = reporter.borrow().state != State::Waiting;
            if used {
                return Err(Refusal::Taken);
            }
            reporter.send_replace(queued);
            return Ok(Arc::clone(reporter));
        }
        if map.len() >= MAX_ENTRIES {
            return Err(Refusal::Full);
        }
        let reporter = Arc::new(watch::channel(queued).0);
        map.insert(id.to_string(), Arc::clone(&reporter));
        Ok(reporter)
    }

    /// Forgets `id` if it still maps to `reporter` (or to nothing newer).
    pub fn remove(&self, id: &str, reporter: &Reporter) {
        if let Ok(mut map) = self.map.lock()
            && map.get(id).is_some_and(|r| Arc::ptr_eq(r, reporter))
        {
            map.remove(id);
        }
    }

    /// The reporter of `id`, if tracked.
    pub fn get(&self, id: &str) -> Option<Reporter> {
        self.map.lock().ok()?.get(id).cloned()
    }

    /// How many ids are tracked.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// Whether `id` is a usable edit id: 1 to 64 of `A-Z a-z 0-9 - _`.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_before_the_upload_sees_it() {
        let events = Events::default();
        let receiver = events.subscribe("a").unwrap();
        assert_eq!(receiver.borrow().state, State::Waiting);
        let reporter = events.claim("a", 4).unwrap();
        assert_eq!(receiver.borrow().state, State::Queued);
        assert_eq!(receiver.borrow().total, 4);
        assert_eq!(events.claim("a", 4).unwrap_err(), Refusal::Taken);
        events.remove("a", &reporter);
        assert_eq!(events.len(), 0);
        assert!(valid_id("3f2a-b_9"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(&"x".repeat(65)));
    }
}
