//! The HTTP layer: routes, multipart parsing, limits, responses.

use std::convert::Infallible;
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use editmgt_pipeline::{EditRequest, Editor, GrayImage, RegionHold, RgbImage};
use image::{ImageFormat, ImageReader};
use serde_json::json;
use tokio::sync::{oneshot, watch};

use super::Limits;
use super::events::{Events, LINGER, Progress, Refusal, Reporter, State as EditState, valid_id};
use super::metrics::{Metrics, Outcome};
use super::queue::{Edited, Failure, Job, Queue};
use crate::run::{AnyError, mean_map};

/// How long `/events` waits for an upload with its id.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(120);
/// The web page.
const PAGE: &str = include_str!("page.html");

/// What every handler shares.
struct App {
    editor: Arc<Editor>,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    events: Arc<Events>,
    limits: Limits,
    shutdown: watch::Sender<bool>,
    quiet: bool,
    next_id: AtomicU64,
}

/// An error answer: `{"error": message}` with `status`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// Serves until SIGINT/SIGTERM, then finishes the requests in flight.
pub async fn serve(
    addr: SocketAddr,
    editor: Arc<Editor>,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    limits: Limits,
    quiet: bool,
) -> Result<(), AnyError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let body_limit = limits.max_upload_bytes;
    let app = Arc::new(App {
        editor,
        queue,
        metrics,
        events: Arc::new(Events::default()),
        limits,
        shutdown: watch::channel(false).0,
        quiet,
        next_id: AtomicU64::new(1),
    });
    let router = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/v1/edits", post(post_edit))
        .route("/v1/edits/{id}/events", get(events))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(Arc::clone(&app));
    // Tests and scripts read the address from this line (port 0 picks one).
    println!("editmgt serve: listening on http://{local}");
    let shutdown_app = Arc::clone(&app);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            wait_for_signal().await;
            if !shutdown_app.quiet {
                eprintln!("editmgt serve: shutting down, finishing the edits in flight");
            }
            shutdown_app.shutdown.send_replace(true);
        })
        .await?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn wait_for_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    let body = json!({
        "status": if *app.shutdown.borrow() { "shutting down" } else { "ok" },
        "queue": app.queue.len(),
        "in_flight": app.metrics.running.load(Ordering::Relaxed),
        "tracked_ids": app.events.len(),
        "resolution": app.editor.options().resolution,
    });
    let status = if *app.shutdown.borrow() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    app.metrics.queued.store(app.queue.len(), Ordering::Relaxed);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

/// `GET /v1/edits/{id}/events`: the edit's progress as server-sent events, one JSON object
/// each (`{"state", "step", "total", "batch"?, "error"?}`), ending with its final state.
async fn events(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    if !valid_id(&id) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("invalid edit id `{id}`: use 1 to 64 of A-Z a-z 0-9 - _"),
        );
    }
    let receiver = match app.events.subscribe(&id) {
        Ok(receiver) => receiver,
        Err(_) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many edits are tracked",
            );
        }
    };
    let deadline = tokio::time::Instant::now() + SUBSCRIBE_TIMEOUT;
    let shutdown = app.shutdown.subscribe();
    let events = Arc::clone(&app.events);
    let stream = futures_util::stream::unfold(Some((receiver, shutdown, true)), move |state| {
        let events = Arc::clone(&events);
        let id = id.clone();
        async move {
            let (mut receiver, mut shutdown, first) = state?;
            if !first {
                loop {
                    let waiting = receiver.borrow().state == EditState::Waiting;
                    let stopping = *shutdown.borrow();
                    if waiting && (stopping || tokio::time::Instant::now() >= deadline) {
                        // Nobody uploaded for this id: forget it.
                        if let Some(reporter) = events.get(&id) {
                            let unused = reporter.borrow().state == EditState::Waiting;
                            if unused {
                                events.remove(&id, &reporter);
                            }
                        }
                        return None;
                    }
                    tokio::select! {
                        changed = receiver.changed() => {
                            if changed.is_err() {
                                return None;
                            }
                            break;
                        }
                        _ = shutdown.changed(), if waiting && !stopping => {}
                        () = tokio::time::sleep_until(deadline), if waiting => {}
                    }
                }
            }
            let progress = receiver.borrow_and_update().clone();
            let event = Event::default()
                .json_data(&progress)
                .unwrap_or_else(|_| Event::default().data("{}"));
            let next = (!progress.state.is_final()).then_some((receiver, shutdown, false));
            Some((Ok::<_, Infallible>(event), next))
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A parsed upload.
struct Form {
    id: Option<String>,
    image: Option<axum::body::Bytes>,
    mask: Option<axum::body::Bytes>,
    instruction: Option<String>,
    negative: Option<String>,
    steps: Option<usize>,
    guidance: Option<f32>,
    strength: Option<f32>,
    seed: Option<u64>,
    hold: Option<f32>,
    hold_blocks: Option<Vec<usize>>,
    query: Option<String>,
    heatmap: bool,
    json: bool,
}

type Rejection = (StatusCode, String);

fn bad(message: impl Into<String>) -> Rejection {
    (StatusCode::BAD_REQUEST, message.into())
}

fn number<T: std::str::FromStr>(name: &str, text: &str) -> Result<T, Rejection> {
    text.trim()
        .parse()
        .map_err(|_| bad(format!("field `{name}`: `{text}` is not a valid number")))
}

fn flag(name: &str, text: &str) -> Result<bool, Rejection> {
    match text.trim() {
        "1" | "true" | "on" | "yes" => Ok(true),
        "0" | "false" | "off" | "no" | "" => Ok(false),
        other => Err(bad(format!(
            "field `{name}`: `{other}` is not true or false"
        ))),
    }
}

/// Reads the multipart fields, within the upload limit.
async fn read_form(
    multipart: Result<Multipart, MultipartRejection>,
    wants_json: bool,
) -> Result<Form, Rejection> {
    let mut multipart = multipart.map_err(|e| (e.status(), e.body_text()))?;
    let mut form = Form {
        id: None,
        image: None,
        mask: None,
        instruction: None,
        negative: None,
        steps: None,
        guidance: None,
        strength: None,
        seed: None,
        hold: None,
        hold_blocks: None,
        query: None,
        heatmap: false,
        json: wants_json,
    };
    let multipart_error = |e: axum::extract::multipart::MultipartError| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            (
                status,
                "the upload is larger than the server accepts (--max-upload-bytes)".to_string(),
            )
        } else {
            (
                status,
                format!("malformed multipart upload: {}", e.body_text()),
            )
        }
    };
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_string();
        let bytes = field.bytes().await.map_err(multipart_error)?;
        let text = || {
            String::from_utf8(bytes.to_vec())
                .map_err(|_| bad(format!("field `{name}` is not UTF-8 text")))
        };
        match name.as_str() {
            "image" => form.image = Some(bytes.clone()),
            "mask" => form.mask = Some(bytes.clone()),
            "id" => form.id = Some(text()?),
            "instruction" | "prompt" => form.instruction = Some(text()?),
            "negative" => form.negative = Some(text()?),
            "steps" => form.steps = Some(number(&name, &text()?)?),
            "guidance" => form.guidance = Some(number(&name, &text()?)?),
            "strength" => form.strength = Some(number(&name, &text()?)?),
            "seed" => form.seed = Some(number(&name, &text()?)?),
            "hold" => {
                let value = text()?;
                if !value.trim().is_empty() {
                    form.hold = Some(number(&name, &value)?);
                }
            }
            "hold_blocks" => {
                let value = text()?;
                if !value.trim().is_empty() {
                    form.hold_blocks = Some(
                        crate::args::parse_blocks(&value)
                            .map_err(|e| bad(format!("field `hold_blocks`: {e}")))?
                            .0,
                    );
                }
            }
            "query" => {
                let value = text()?;
                if !value.trim().is_empty() {
                    form.query = Some(value);
                }
            }
            "heatmap" => form.heatmap = flag(&name, &text()?)?,
            "format" => {
                form.json = match text()?.trim() {
                    "json" => true,
                    "png" => false,
                    other => {
                        return Err(bad(format!("field `format`: `{other}` is not png or json")));
                    }
                }
            }
            other => {
                return Err(bad(format!(
                    "unknown field `{other}` (expected image, instruction, id, negative, steps, guidance, strength, seed, hold, hold_blocks, query, heatmap, mask, format)"
                )));
            }
        }
    }
    Ok(form)
}

/// Decodes an uploaded image after checking its size against the pixel limit.
fn decode(name: &str, bytes: &[u8], max_pixels: u64) -> Result<image::DynamicImage, Rejection> {
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| bad(format!("field `{name}`: {e}")))
    };
    let probe = reader()?;
    if probe.format().is_none() {
        return Err(bad(format!(
            "field `{name}`: not a PNG, JPEG or WebP image"
        )));
    }
    let (w, h) = probe
        .into_dimensions()
        .map_err(|e| bad(format!("field `{name}`: cannot read the image: {e}")))?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "field `{name}`: {w}x{h} is more than the {max_pixels} pixels the server accepts"
            ),
        ));
    }
    reader()?
        .decode()
        .map_err(|e| bad(format!("field `{name}`: cannot decode the image: {e}")))
}

/// Builds the request of a form.
fn request_of(
    form: &Form,
    limits: &Limits,
    mask: Option<GrayImage>,
) -> Result<EditRequest, Rejection> {
    let instruction = form
        .instruction
        .as_deref()
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| bad("missing field `instruction`"))?;
    let steps = form.steps.unwrap_or(limits.default_steps);
    if steps == 0 || steps > limits.max_steps {
        return Err(bad(format!(
            "field `steps`: {steps} is not in 1..={} (the server's limit)",
            limits.max_steps
        )));
    }
    let mut request = EditRequest::new(instruction).steps(steps);
    if let Some(guidance) = form.guidance {
        request = request.guidance(guidance);
    }
    if let Some(strength) = form.strength {
        request = request.reference_strength(strength);
    }
    if let Some(seed) = form.seed {
        request = request.seed(seed);
    }
    if let Some(negative) = &form.negative {
        request = request.negative_prompt(negative);
    }
    if let Some(mask) = mask {
        request = request.mask(mask);
    }
    if form.hold.is_some() || form.heatmap || form.query.is_some() {
        let mut hold = RegionHold::new(form.hold.unwrap_or(0.0));
        if let Some(blocks) = form.hold_blocks.as_ref().or(limits.hold_blocks.as_ref()) {
            hold = hold.blocks(blocks.iter().copied());
        }
        if let Some(query) = &form.query {
            hold = hold.query(query);
        }
        request = request.region_hold(hold).record_localisation(form.heatmap);
    }
    Ok(request)
}

/// Marks a request cancelled when its handler is dropped before the result (the client went
/// away).
struct CancelOnDrop {
    cancelled: Arc<AtomicBool>,
    reporter: Reporter,
    metrics: Arc<Metrics>,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.cancelled.store(true, Ordering::Relaxed);
            self.metrics.outcome(Outcome::Cancelled);
            let ended = self.reporter.borrow().state.is_final();
            if !ended {
                self.reporter
                    .send_replace(Progress::state(EditState::Cancelled));
            }
        }
    }
}

/// Forgets an edit's progress a while after it ended.
fn forget_later(events: &Arc<Events>, id: String, reporter: Reporter) {
    let events = Arc::clone(events);
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move {
            tokio::time::sleep(LINGER).await;
            events.remove(&id, &reporter);
        });
    }
}

/// `POST /v1/edits`.
async fn post_edit(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let started = Instant::now();
    let response = edit(&app, &headers, multipart, started).await;
    if !app.quiet {
        eprintln!(
            "editmgt serve: POST /v1/edits -> {} in {:.2} s",
            response.status().as_u16(),
            started.elapsed().as_secs_f64()
        );
    }
    response
}

async fn edit(
    app: &Arc<App>,
    headers: &HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
    started: Instant,
) -> Response {
    let invalid = |(status, message): Rejection| {
        app.metrics.outcome(Outcome::Invalid);
        error(status, message)
    };
    if *app.shutdown.borrow() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        );
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > app.limits.max_upload_bytes as u64) {
        return invalid((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the upload ({} bytes) is larger than the {} bytes the server accepts",
                declared.unwrap_or_default(),
                app.limits.max_upload_bytes
            ),
        ));
    }
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    let form = match read_form(multipart, wants_json).await {
        Ok(form) => form,
        Err(rejection) => return invalid(rejection),
    };
    let id = match &form.id {
        Some(id) if !valid_id(id) => {
            return invalid(bad(format!(
                "invalid edit id `{id}`: use 1 to 64 of A-Z a-z 0-9 - _"
            )));
        }
        Some(id) => id.clone(),
        None => format!("edit-{}", app.next_id.fetch_add(1, Ordering::Relaxed)),
    };
    let Some(image_bytes) = form.image.clone() else {
        return invalid(bad("missing field `image` (the image to edit)"));
    };
    let max_pixels = app.limits.max_pixels;
    let mask_bytes = form.mask.clone();
    let decoded = tokio::task::spawn_blocking(move || {
        let image = decode("image", &image_bytes, max_pixels)?.to_rgb8();
        let mask = match mask_bytes {
            Some(bytes) => Some(decode("mask", &bytes, max_pixels)?.to_luma8()),
            None => None,
        };
        Ok::<_, Rejection>((image, mask))
    })
    .await;
    let (image, mask) = match decoded {
        Ok(Ok(decoded)) => decoded,
        Ok(Err(rejection)) => return invalid(rejection),
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "decoding failed"),
    };
    let request = match request_of(&form, &app.limits, mask) {
        Ok(request) => request,
        Err(rejection) => return invalid(rejection),
    };
    let reporter = match app.events.claim(&id, request.steps) {
        Ok(reporter) => reporter,
        Err(Refusal::Taken) => {
            return invalid((
                StatusCode::CONFLICT,
                format!("edit id `{id}` was already used"),
            ));
        }
        Err(Refusal::Full) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many edits are tracked",
            );
        }
    };
    let (reply, result) = oneshot::channel();
    let cancelled = Arc::new(AtomicBool::new(false));
    let job = Job {
        image,
        key: crate::batch::group_key(&request),
        request,
        cancelled: Arc::clone(&cancelled),
        reporter: Arc::clone(&reporter),
        reply,
        queued_at: Instant::now(),
    };
    match app.queue.push(job) {
        Ok(waiting) => app.metrics.queued.store(waiting, Ordering::Relaxed),
        Err(_) => {
            app.metrics.outcome(Outcome::Rejected);
            reporter.send_replace(Progress {
                error: Some("the queue is full".into()),
                ..Progress::state(EditState::Failed)
            });
            forget_later(&app.events, id, reporter);
            let per_batch = app.metrics.mean_latency().unwrap_or(5.0);
            let waiting = app.queue.len() + 1;
            let retry = (per_batch * waiting as f64 / app.limits.max_batch as f64)
                .ceil()
                .max(1.0) as u64;
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the queue is full ({} waiting); retry later", waiting - 1),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry));
            return response;
        }
    }
    let mut guard = CancelOnDrop {
        cancelled,
        reporter: Arc::clone(&reporter),
        metrics: Arc::clone(&app.metrics),
        armed: true,
    };
    let result = result.await;
    guard.armed = false;
    drop(guard);
    forget_later(&app.events, id.clone(), reporter);
    match result {
        Ok(Ok(edited)) => {
            app.metrics.edited(started.elapsed());
            app.metrics.outcome(Outcome::Ok);
            respond(id, edited, form.json, form.heatmap).await
        }
        Ok(Err(Failure::Invalid(message))) => {
            app.metrics.outcome(Outcome::Invalid);
            error(StatusCode::BAD_REQUEST, message)
        }
        Ok(Err(Failure::Cancelled)) => {
            app.metrics.outcome(Outcome::Cancelled);
            error(StatusCode::SERVICE_UNAVAILABLE, "the edit was cancelled")
        }
        Ok(Err(Failure::Internal(message))) => {
            app.metrics.outcome(Outcome::Failed);
            error(StatusCode::INTERNAL_SERVER_ERROR, message)
        }
        Err(_) => {
            app.metrics.outcome(Outcome::Failed);
            error(StatusCode::INTERNAL_SERVER_ERROR, "the worker stopped")
        }
    }
}

/// Encodes the result as a PNG or as JSON.
async fn respond(id: String, edited: Edited, json: bool, heatmap: bool) -> Response {
    let encoded = tokio::task::spawn_blocking(move || -> Result<Response, String> {
        let png = encode_png(&edited.output.image)?;
        let (width, height) = edited.output.image.dimensions();
        let mut response = if json {
            let heat = if heatmap {
                let mean = mean_map(&edited.output.localisation)
                    .ok_or("no localisation maps were recorded")?;
                let heat = mean
                    .heatmap(0, &edited.source, 0.6)
                    .map_err(|e| e.to_string())?;
                Some(data_url(&encode_png(&heat)?))
            } else {
                None
            };
            axum::Json(json!({
                "id": id,
                "width": width,
                "height": height,
                "image": data_url(&png),
                "heatmap": heat,
                "grid": [edited.output.grid.0, edited.output.grid.1],
                "tokens": edited.output.tokens,
                "batch": edited.batch,
                "queued_seconds": edited.queued_seconds,
                "edit_seconds": edited.edit_seconds,
            }))
            .into_response()
        } else {
            ([(header::CONTENT_TYPE, "image/png")], png).into_response()
        };
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&id) {
            headers.insert("x-edit-id", value);
        }
        headers.insert("x-edit-batch", HeaderValue::from(edited.batch));
        Ok(response)
    })
    .await;
    match encoded {
        Ok(Ok(response)) => response,
        Ok(Err(message)) => error(StatusCode::INTERNAL_SERVER_ERROR, message),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed"),
    }
}

fn encode_png(image: &RgbImage) -> Result<Vec<u8>, String> {
    let mut png = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .map_err(|e| format!("cannot encode the PNG: {e}"))?;
    Ok(png)
}

/// `data:image/png;base64,...`.
fn data_url(png: &[u8]) -> String {
    let mut url = String::from("data:image/png;base64,");
    base64(png, &mut url);
    url
}

/// Standard base64 with padding.
fn base64(bytes: &[u8], out: &mut String) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    out.reserve(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * k)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("foobar", "Zm9vYmFy"),
        ] {
            let mut out = String::new();
            base64(input.as_bytes(), &mut out);
            assert_eq!(out, expected);
        }
    }
}
