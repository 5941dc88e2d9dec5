//! The bounded request queue and the worker thread that edits batches of compatible requests.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use editmgt_pipeline::{
    EditError, EditOutput, EditRequest, Editor, Flow, Hooks, RgbImage, StepEvent,
};
use tokio::sync::oneshot;

use super::events::{Progress, Reporter, State};
use super::metrics::Metrics;

/// Why an edit produced no image.
#[derive(Debug)]
pub enum Failure {
    /// The request is invalid for this model (a 400).
    Invalid(String),
    /// Every client of the batch went away.
    Cancelled,
    /// Anything else (a 500).
    Internal(String),
}

/// A finished edit.
#[derive(Debug)]
pub struct Edited {
    /// The result.
    pub output: EditOutput,
    /// The source image (for the heatmap).
    pub source: RgbImage,
    /// Seconds spent waiting in the queue.
    pub queued_seconds: f64,
    /// Seconds the batch took.
    pub edit_seconds: f64,
    /// Requests edited in the same batch.
    pub batch: usize,
}

/// One queued request.
pub struct Job {
    /// The source image.
    pub image: RgbImage,
    /// What to do.
    pub request: EditRequest,
    /// The settings a batch must share.
    pub key: String,
    /// Set when the client has gone away.
    pub cancelled: Arc<AtomicBool>,
    /// Progress for `/events`.
    pub reporter: Reporter,
    /// Where the result goes.
    pub reply: oneshot::Sender<Result<Edited, Failure>>,
    /// When it was queued.
    pub queued_at: Instant,
}

/// The bounded queue.
pub struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
    capacity: usize,
}

struct QueueState {
    jobs: VecDeque<Job>,
    closed: bool,
}

impl Queue {
    /// An empty queue holding at most `capacity` requests.
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(QueueState {
                jobs: VecDeque::new(),
                closed: false,
            }),
            wake: Condvar::new(),
            capacity,
        }
    }

    /// Queues `job`, or gives it back when the queue is full or closed; returns the number
    /// waiting.
    pub fn push(&self, job: Job) -> Result<usize, Box<Job>> {
        let Ok(mut state) = self.state.lock() else {
            return Err(Box::new(job));
        };
        state.jobs.retain(|j| !j.cancelled.load(Ordering::Relaxed));
        if state.closed || state.jobs.len() >= self.capacity {
            return Err(Box::new(job));
        }
        state.jobs.push_back(job);
        let waiting = state.jobs.len();
        drop(state);
        self.wake.notify_all();
        Ok(waiting)
    }

    /// Stops taking requests; the worker ends once the queue is empty.
    pub fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.closed = true;
        }
        self.wake.notify_all();
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.state.lock().map(|s| s.jobs.len()).unwrap_or(0)
    }

    /// The next batch: the oldest request and up to `max_batch - 1` more with its settings,
    /// waiting up to `max_wait` for them. `None` once closed and empty.
    fn next_batch(
        &self,
        max_batch: usize,
        max_wait: Duration,
        metrics: &Metrics,
    ) -> Option<Vec<Job>> {
        let mut state = self.state.lock().ok()?;
        let mut batch: Vec<Job> = Vec::new();
        let mut deadline = None;
        loop {
            // Requests whose clients left are dropped (their reply receivers are gone).
            state.jobs.retain(|j| !j.cancelled.load(Ordering::Relaxed));
            if batch.is_empty()
                && let Some(first) = state.jobs.pop_front()
            {
                batch.push(first);
                deadline = Some(Instant::now() + max_wait);
            }
            if let Some(first) = batch.first() {
                let key = first.key.clone();
                while batch.len() < max_batch {
                    let Some(k) = state.jobs.iter().position(|j| j.key == key) else {
                        break;
                    };
                    batch.extend(state.jobs.remove(k));
                }
                let now = Instant::now();
                let due = deadline.is_none_or(|d| now >= d);
                if batch.len() >= max_batch || due || state.closed {
                    metrics.queued.store(state.jobs.len(), Ordering::Relaxed);
                    return Some(batch);
                }
                let wait = deadline.map(|d| d - now).unwrap_or_default();
                state = self.wake.wait_timeout(state, wait).ok()?.0;
            } else if state.closed {
                return None;
            } else {
                state = self.wake.wait(state).ok()?;
            }
        }
    }
}

/// Starts the worker thread: it edits batches until the queue is closed and empty.
pub fn spawn_worker(
    editor: Arc<Editor>,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    max_batch: usize,
    max_wait: Duration,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("editmgt-worker".into())
        .spawn(move || {
            while let Some(batch) = queue.next_batch(max_batch, max_wait, &metrics) {
                run_batch(&editor, batch, &metrics);
            }
        })
        .expect("spawning the worker thread")
}

/// Edits one batch and answers every request of it; a failed batch of several is retried one
/// request at a time, so that one bad request fails alone.
fn run_batch(editor: &Editor, batch: Vec<Job>, metrics: &Metrics) {
    let results = edit(editor, &batch, metrics);
    match results {
        Err(Failure::Invalid(_)) | Err(Failure::Internal(_)) if batch.len() > 1 => {
            for job in batch {
                run_batch(editor, vec![job], metrics);
            }
        }
        Err(failure) => {
            let message = match &failure {
                Failure::Invalid(m) | Failure::Internal(m) => Some(m.clone()),
                Failure::Cancelled => None,
            };
            for job in batch {
                let state = if message.is_some() {
                    State::Failed
                } else {
                    State::Cancelled
                };
                job.reporter.send_replace(Progress {
                    error: message.clone(),
                    ..Progress::state(state)
                });
                let again = match &failure {
                    Failure::Invalid(m) => Failure::Invalid(m.clone()),
                    Failure::Internal(m) => Failure::Internal(m.clone()),
                    Failure::Cancelled => Failure::Cancelled,
                };
                let _ = job.reply.send(Err(again));
            }
        }
        Ok((outputs, edit_seconds)) => {
            let size = batch.len();
            for (job, output) in batch.into_iter().zip(outputs) {
                let total = job.request.steps;
                job.reporter.send_replace(Progress {
                    step: total,
                    total,
                    batch: Some(size),
                    ..Progress::state(State::Done)
                });
                let edited = Edited {
                    output,
                    source: job.image,
                    queued_seconds: 0.0,
                    edit_seconds,
                    batch: size,
                };
                let queued_seconds =
                    (job.queued_at.elapsed().as_secs_f64() - edit_seconds).max(0.0);
                let _ = job.reply.send(Ok(Edited {
                    queued_seconds,
                    ..edited
                }));
            }
        }
    }
}

/// Runs the editor on a batch, reporting progress and stopping when every client left.
fn edit(
    editor: &Editor,
    batch: &[Job],
    metrics: &Metrics,
) -> Result<(Vec<EditOutput>, f64), Failure> {
    let size = batch.len();
    metrics.running.fetch_add(size, Ordering::Relaxed);
    metrics.batch(size);
    for job in batch {
        job.reporter.send_replace(Progress {
            total: job.request.steps,
            batch: Some(size),
            ..Progress::state(State::Running)
        });
    }
    let items: Vec<(&RgbImage, &EditRequest)> =
        batch.iter().map(|j| (&j.image, &j.request)).collect();
    let start = Instant::now();
    let mut on_step = |event: &StepEvent<'_>| {
        metrics.step(size);
        for job in batch {
            job.reporter.send_replace(Progress {
                step: event.step,
                total: event.total,
                batch: Some(size),
                ..Progress::state(State::Running)
            });
        }
        if batch.iter().all(|j| j.cancelled.load(Ordering::Relaxed)) {
            Flow::Cancel
        } else {
            Flow::Continue
        }
    };
    let result = catch_unwind(AssertUnwindSafe(|| {
        editor.edit_batch_with(&items, Hooks::progress(&mut on_step))
    }));
    metrics.running.fetch_sub(size, Ordering::Relaxed);
    let seconds = start.elapsed().as_secs_f64();
    match result {
        Ok(Ok(outputs)) => Ok((outputs, seconds)),
        Ok(Err(EditError::Cancelled { .. })) => Err(Failure::Cancelled),
        Ok(Err(error @ EditError::InvalidRequest { .. })) => {
            Err(Failure::Invalid(crate::run::describe(&error)))
        }
        Ok(Err(error)) => Err(Failure::Internal(crate::run::describe(&error))),
        Err(_) => Err(Failure::Internal("the edit panicked".into())),
    }
}
