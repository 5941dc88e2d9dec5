//! `editmgt serve`: edits over HTTP (tokio + axum) with one model in memory.
//!
//! - `POST /v1/edits` (multipart: `image`, `instruction`, options as in the CLI) answers with the
//!   PNG, or with JSON (image, token grid, heatmap) when `format=json` or
//!   `Accept: application/json`;
//! - `GET /v1/edits/{id}/events` streams the edit's progress as server-sent events (the client
//!   chooses the id and sends it with the upload as the `id` field);
//! - `GET /healthz`, `GET /metrics` (Prometheus text), and a web page at `/`.
//!
//! Requests wait in a bounded queue (full: 503 with `Retry-After`); one worker thread takes up
//! to `--max-batch` queued requests with the same settings, waiting at most `--max-wait-ms` for
//! them, and edits them in one guidance batch. A request whose client disconnects is cancelled.
//! On SIGINT or SIGTERM the server stops accepting connections and finishes the edits in flight.

mod events;
mod http;
mod metrics;
mod queue;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use editmgt_pipeline::EditorOptions;

use crate::args::{BlockList, ModelArgs, parse_blocks};
use crate::run::AnyError;

/// `editmgt serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Model and device.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The square resolution edits run at (the model's: 1024 for the released one).
    #[arg(long, default_value_t = EditorOptions::default().resolution)]
    pub resolution: u32,
    /// Most requests edited in one guidance batch (1 turns batching off).
    #[arg(long, default_value_t = 4)]
    pub max_batch: usize,
    /// How long the worker waits for more requests with the same settings before it starts a
    /// batch, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub max_wait_ms: u64,
    /// Most requests waiting in the queue; more are answered 503 with `Retry-After`.
    #[arg(long, default_value_t = 32)]
    pub queue: usize,
    /// Largest accepted upload in bytes (all multipart fields together).
    #[arg(long, default_value_t = 32 << 20)]
    pub max_upload_bytes: usize,
    /// Largest accepted image in pixels (width x height).
    #[arg(long, default_value_t = 4096 * 4096)]
    pub max_pixels: u64,
    /// Most sampling steps a request may ask for.
    #[arg(long, default_value_t = 100)]
    pub max_steps: usize,
    /// Steps of a request that does not give `steps`.
    #[arg(long, default_value_t = 36)]
    pub steps: usize,
    /// Blocks whose attention localises edits when a request asks for region hold or a heatmap
    /// without naming blocks (`28..36` or `2,4`; needed for models that are not 42 blocks deep).
    #[arg(long, value_parser = parse_blocks)]
    pub hold_blocks: Option<BlockList>,
    /// Do not log requests to stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// Settings the HTTP layer and the worker share.
#[derive(Debug, Clone)]
pub struct Limits {
    max_upload_bytes: usize,
    max_pixels: u64,
    max_steps: usize,
    default_steps: usize,
    hold_blocks: Option<Vec<usize>>,
    max_batch: usize,
}

/// Runs `editmgt serve` until SIGINT or SIGTERM.
pub fn run(args: ServeArgs) -> Result<(), AnyError> {
    if args.max_batch == 0 || args.queue == 0 {
        return Err("--max-batch and --queue must be at least 1".into());
    }
    if args.steps == 0 || args.steps > args.max_steps {
        return Err(format!(
            "--steps {} must be in 1..={} (--max-steps)",
            args.steps, args.max_steps
        )
        .into());
    }
    let editor = Arc::new(crate::run::load_at(&args.model, args.resolution)?);
    let metrics = Arc::new(metrics::Metrics::new(args.queue));
    let queue = Arc::new(queue::Queue::new(args.queue));
    let worker = queue::spawn_worker(
        Arc::clone(&editor),
        Arc::clone(&queue),
        Arc::clone(&metrics),
        args.max_batch,
        Duration::from_millis(args.max_wait_ms),
    );
    let limits = Limits {
        max_upload_bytes: args.max_upload_bytes,
        max_pixels: args.max_pixels,
        max_steps: args.max_steps,
        default_steps: args.steps,
        hold_blocks: args.hold_blocks.map(|b| b.0),
        max_batch: args.max_batch,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(http::serve(
        args.addr,
        editor,
        Arc::clone(&queue),
        metrics,
        limits,
        args.quiet,
    ));
    // No new requests can arrive: let the worker finish what is queued, then stop.
    queue.close();
    let _ = worker.join();
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}
