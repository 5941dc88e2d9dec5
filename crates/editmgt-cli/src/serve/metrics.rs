//! Counters and the Prometheus text exposition of `/metrics`.

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// The window of the per-second rates.
const WINDOW: Duration = Duration::from_secs(60);

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Edited and answered.
    Ok,
    /// Rejected before queueing (bad input, limits).
    Invalid,
    /// The queue was full (503).
    Rejected,
    /// The client went away.
    Cancelled,
    /// The edit failed.
    Failed,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::Invalid,
        Outcome::Rejected,
        Outcome::Cancelled,
        Outcome::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Invalid => "invalid",
            Outcome::Rejected => "rejected",
            Outcome::Cancelled => "cancelled",
            Outcome::Failed => "failed",
        }
    }
}

/// The server's counters.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    capacity: usize,
    /// Requests waiting in the queue.
    pub queued: AtomicUsize,
    /// Requests being edited.
    pub running: AtomicUsize,
    outcomes: [AtomicU64; 5],
    steps: AtomicU64,
    batches: AtomicU64,
    batched: AtomicU64,
    latency: Mutex<Latency>,
}

#[derive(Debug, Default)]
struct Latency {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
    /// Completion times and steps of the edits of the last [`WINDOW`].
    recent: VecDeque<(Instant, usize)>,
    /// Recent steps (for the rates).
    recent_steps: VecDeque<Instant>,
}

impl Metrics {
    /// Fresh counters for a queue of `capacity`.
    pub fn new(capacity: usize) -> Self {
        Self {
            started: Instant::now(),
            capacity,
            queued: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            outcomes: Default::default(),
            steps: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batched: AtomicU64::new(0),
            latency: Mutex::new(Latency::default()),
        }
    }

    /// Counts a request's outcome.
    pub fn outcome(&self, outcome: Outcome) {
        let k = Outcome::ALL.iter().position(|&o| o == outcome).unwrap_or(0);
        self.outcomes[k].fetch_add(1, Ordering::Relaxed);
    }

    /// How many requests ended so.
    pub fn count(&self, outcome: Outcome) -> u64 {
        let k = Outcome::ALL.iter().position(|&o| o == outcome).unwrap_or(0);
        self.outcomes[k].load(Ordering::Relaxed)
    }

    /// Counts one sampling step of one batch (of `items` requests).
    pub fn step(&self, items: usize) {
        self.steps.fetch_add(items as u64, Ordering::Relaxed);
        if let Ok(mut latency) = self.latency.lock() {
            let now = Instant::now();
            for _ in 0..items {
                latency.recent_steps.push_back(now);
            }
            prune(&mut latency.recent_steps, now);
        }
    }

    /// Counts a batch of `size` requests.
    pub fn batch(&self, size: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batched.fetch_add(size as u64, Ordering::Relaxed);
    }

    /// Records a finished edit: its latency from upload to result.
    pub fn edited(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        if let Ok(mut state) = self.latency.lock() {
            for (bound, count) in BUCKETS.iter().zip(state.buckets.iter_mut()) {
                if seconds <= *bound {
                    *count += 1;
                }
            }
            state.count += 1;
            state.sum += seconds;
            let now = Instant::now();
            state.recent.push_back((now, 0));
            while state
                .recent
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
            {
                state.recent.pop_front();
            }
        }
    }

    /// The mean latency of the edits so far, if any.
    pub fn mean_latency(&self) -> Option<f64> {
        let state = self.latency.lock().ok()?;
        (state.count > 0).then(|| state.sum / state.count as f64)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, value: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        gauge(
            "editmgt_queue_depth",
            "Requests waiting in the queue.",
            self.queued.load(Ordering::Relaxed) as f64,
        );
        gauge(
            "editmgt_queue_capacity",
            "Most requests the queue holds.",
            self.capacity as f64,
        );
        gauge(
            "editmgt_edits_in_flight",
            "Requests being edited.",
            self.running.load(Ordering::Relaxed) as f64,
        );
        let now = Instant::now();
        let span = now.duration_since(self.started).min(WINDOW).as_secs_f64();
        let (edits_rate, steps_rate, histogram) = match self.latency.lock() {
            Ok(mut state) => {
                prune(&mut state.recent_steps, now);
                let edits = state
                    .recent
                    .iter()
                    .filter(|(t, _)| now.duration_since(*t) <= WINDOW)
                    .count();
                (
                    edits as f64 / span.max(1e-3),
                    state.recent_steps.len() as f64 / span.max(1e-3),
                    Some((state.buckets, state.count, state.sum)),
                )
            }
            Err(_) => (0.0, 0.0, None),
        };
        gauge(
            "editmgt_edits_per_second",
            "Edits finished per second over the last minute.",
            edits_rate,
        );
        gauge(
            "editmgt_steps_per_second",
            "Sampling steps (per request) per second over the last minute.",
            steps_rate,
        );
        let _ = writeln!(
            out,
            "# HELP editmgt_requests_total Edit requests by outcome.\n# TYPE editmgt_requests_total counter"
        );
        for outcome in Outcome::ALL {
            let _ = writeln!(
                out,
                "editmgt_requests_total{{outcome=\"{}\"}} {}",
                outcome.label(),
                self.count(outcome)
            );
        }
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            &mut out,
            "editmgt_steps_total",
            "Sampling steps run, counted per request.",
            self.steps.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "editmgt_batches_total",
            "Guidance batches run.",
            self.batches.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "editmgt_batched_requests_total",
            "Requests edited in those batches.",
            self.batched.load(Ordering::Relaxed),
        );
        if let Some((buckets, count, sum)) = histogram {
            let name = "editmgt_edit_latency_seconds";
            let _ = writeln!(
                out,
                "# HELP {name} Seconds from upload to result of successful edits.\n# TYPE {name} histogram"
            );
            for (bound, value) in BUCKETS.iter().zip(buckets) {
                let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {value}");
            }
            let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
        }
        out
    }
}

fn prune(times: &mut VecDeque<Instant>, now: Instant) {
    while times
        .front()
        .is_some_and(|t| now.duration_since(*t) > WINDOW)
    {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::new(8);
        metrics.outcome(Outcome::Ok);
        metrics.outcome(Outcome::Rejected);
        metrics.step(2);
        metrics.batch(2);
        metrics.edited(Duration::from_millis(1500));
        let text = metrics.render();
        assert!(text.contains("editmgt_queue_capacity 8\n"), "{text}");
        assert!(text.contains("editmgt_requests_total{outcome=\"rejected\"} 1\n"));
        assert!(text.contains("editmgt_steps_total 2\n"));
        assert!(text.contains("editmgt_edit_latency_seconds_bucket{le=\"1\"} 0\n"));
        assert!(text.contains("editmgt_edit_latency_seconds_bucket{le=\"2\"} 1\n"));
        assert!(text.contains("editmgt_edit_latency_seconds_count 1\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
