//! `editmgt serve` against the tiny model on 127.0.0.1: the API, its limits and faults, and a
//! bounded load test with and without batching. Every request has a timeout; no loop runs
//! unbounded.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn edits_over_http_with_progress_events_health_and_metrics() {
    let server = Server::start(&["--max-batch", "1"]);
    let health = get(server.addr, "/healthz");
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(health.json()["status"], "ok");

    // The page is served.
    let page = get(server.addr, "/");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("/v1/edits"));

    // PNG answer at the input's size.
    let reply = post_edit(
        server.addr,
        &edit_form(source_png(320, 240), "make the sky blue", 1),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("image/png"));
    let edited = image::load_from_memory(&reply.body).unwrap();
    assert_eq!((edited.width(), edited.height()), (320, 240));

    // JSON answer with tokens and heatmap, with progress events for its id.
    let events = subscribe(server.addr, "test-json-1");
    let form = edit_form(source_png(200, 300), "make the sky blue", 2)
        .text("id", "test-json-1")
        .text("steps", "3")
        .text("heatmap", "true")
        .text("format", "json");
    let reply = post_edit(server.addr, &form);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["id"], "test-json-1");
    assert_eq!(
        (body["width"].as_u64(), body["height"].as_u64()),
        (Some(200), Some(300))
    );
    let grid = (
        body["grid"][0].as_u64().unwrap(),
        body["grid"][1].as_u64().unwrap(),
    );
    assert_eq!(grid, (16, 16), "256 / the tiny VQ's downsampling of 16");
    assert_eq!(
        body["tokens"].as_array().unwrap().len() as u64,
        grid.0 * grid.1
    );
    let image = data_url_image(body["image"].as_str().unwrap());
    assert_eq!((image.width(), image.height()), (200, 300));
    let heat = data_url_image(body["heatmap"].as_str().unwrap());
    assert_eq!((heat.width(), heat.height()), (200, 300));

    let events = events.join().unwrap();
    let states: Vec<&str> = events.iter().filter_map(|e| e["state"].as_str()).collect();
    assert_eq!(states.first(), Some(&"waiting"), "{events:?}");
    assert_eq!(states.last(), Some(&"done"), "{events:?}");
    let steps: Vec<u64> = events
        .iter()
        .filter(|e| e["state"] == "running")
        .filter_map(|e| e["step"].as_u64())
        .collect();
    assert!(steps.contains(&3) || states.contains(&"done"), "{events:?}");
    assert!(
        steps.windows(2).all(|w| w[0] <= w[1]),
        "steps go forward: {steps:?}"
    );
    assert!(
        events
            .iter()
            .all(|e| e["total"] == 3 || e["state"] == "waiting")
    );

    // An id is used once.
    let again = post_edit(server.addr, &form);
    assert_eq!(again.status, 409, "{}", again.text());

    // Metrics: Prometheus text with the two edits and their steps.
    assert_eq!(server.metric("editmgt_requests_total{outcome=\"ok\"}"), 2.0);
    assert_eq!(server.metric("editmgt_steps_total"), 5.0);
    assert_eq!(server.metric("editmgt_edit_latency_seconds_count"), 2.0);
    assert_eq!(server.metric("editmgt_queue_depth"), 0.0);
    assert!(server.metric("editmgt_edits_per_second") > 0.0);

    let missing = get(server.addr, "/v1/nothing");
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].is_string());
}

#[test]
fn bad_uploads_are_answered_with_json_errors() {
    let server = Server::start(&[
        "--max-upload-bytes",
        "1000000",
        "--max-pixels",
        "250000",
        "--max-steps",
        "8",
    ]);
    let check = |reply: Reply, status: u16, words: &str| {
        assert_eq!(reply.status, status, "{}", reply.text());
        let error = reply.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(words), "{error:?} should mention {words:?}");
    };
    // Larger than the upload limit (the body is never read in full).
    let big = Multipart::new()
        .file("image", "big.png", vec![7u8; 1_200_000])
        .text("instruction", "x");
    check(post_edit(server.addr, &big), 413, "larger");
    // More pixels than allowed, within the byte limit.
    check(
        post_edit(server.addr, &edit_form(source_png(600, 600), "x", 0)),
        413,
        "pixels",
    );
    // Not an image.
    let junk = Multipart::new()
        .file("image", "a.png", b"not an image at all".to_vec())
        .text("instruction", "x");
    check(post_edit(server.addr, &junk), 400, "image");
    // Missing fields, bad values, unknown fields.
    let no_instruction = Multipart::new().file("image", "a.png", source_png(64, 64));
    check(post_edit(server.addr, &no_instruction), 400, "instruction");
    check(
        post_edit(server.addr, &Multipart::new().text("instruction", "x")),
        400,
        "image",
    );
    let steps = edit_form(source_png(64, 64), "x", 0).text("steps", "9");
    check(post_edit(server.addr, &steps), 400, "steps");
    let steps = edit_form(source_png(64, 64), "x", 0).text("steps", "many");
    check(post_edit(server.addr, &steps), 400, "steps");
    let unknown = edit_form(source_png(64, 64), "x", 0).text("colour", "red");
    check(post_edit(server.addr, &unknown), 400, "colour");
    let bad_id = edit_form(source_png(64, 64), "x", 0).text("id", "../x");
    check(post_edit(server.addr, &bad_id), 400, "id");
    // Invalid for this model: found by the editor, still a 400.
    let blocks = edit_form(source_png(64, 64), "x", 0)
        .text("hold", "0.1")
        .text("hold_blocks", "50..60");
    check(post_edit(server.addr, &blocks), 400, "block");
    // Malformed multipart: not multipart at all, and a body that breaks off.
    check(
        request(
            server.addr,
            "POST",
            "/v1/edits",
            &[("Content-Type", "application/json")],
            b"{}",
        ),
        400,
        "multipart",
    );
    let mut truncated = edit_form(source_png(64, 64), "x", 0).body();
    truncated.truncate(truncated.len() / 2);
    check(
        request(
            server.addr,
            "POST",
            "/v1/edits",
            &[("Content-Type", &Multipart::new().content_type())],
            &truncated,
        ),
        400,
        "multipart",
    );
    // The server still edits after all that.
    let reply = post_edit(server.addr, &edit_form(source_png(64, 48), "x", 0));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(server.metric("editmgt_requests_total{outcome=\"invalid\"}") >= 11.0);
}

/// Starts an edit on its own connection with an id; returns the connection and the events.
fn start_edit(
    server: &Server,
    id: &str,
    steps: usize,
) -> (
    std::net::TcpStream,
    std::thread::JoinHandle<Vec<serde_json::Value>>,
) {
    let events = subscribe(server.addr, id);
    let form = edit_form(source_png(128, 128), "make the sky blue", 3)
        .text("id", id)
        .text("steps", &steps.to_string());
    let mut stream = connect(server.addr);
    stream
        .write_all(&request_bytes(
            "POST",
            "/v1/edits",
            &[("Content-Type", &form.content_type())],
            &form.body(),
        ))
        .unwrap();
    (stream, events)
}

/// Waits until `id`'s edit runs (its events say so), at most 60 s.
fn wait_running(server: &Server) {
    let start = Instant::now();
    while server.metric("editmgt_edits_in_flight") < 1.0 {
        assert!(start.elapsed() < Duration::from_secs(60), "no edit started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn disconnects_cancel_a_full_queue_answers_503_and_shutdown_finishes_edits() {
    let mut server = Server::start(&["--queue", "1", "--max-batch", "1", "--max-steps", "400"]);

    // A client that goes away mid-edit: its edit stops long before its 400 steps.
    let start = Instant::now();
    let (stream, events) = start_edit(&server, "leaver", 400);
    wait_running(&server);
    drop(stream);
    let events = events.join().unwrap();
    assert_eq!(events.last().unwrap()["state"], "cancelled", "{events:?}");
    let last_step = events
        .iter()
        .filter_map(|e| e["step"].as_u64())
        .max()
        .unwrap_or(0);
    assert!(last_step < 400, "cancelled at step {last_step}");
    let settle = Instant::now();
    while server.metric("editmgt_edits_in_flight") > 0.0 {
        assert!(
            settle.elapsed() < Duration::from_secs(30),
            "the edit went on"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        server.metric("editmgt_requests_total{outcome=\"cancelled\"}"),
        1.0
    );
    eprintln!(
        "disconnect: cancelled after {last_step} of 400 steps, {:.2} s after the upload",
        start.elapsed().as_secs_f64()
    );

    // A full queue: one edit running, one waiting, the third is refused with Retry-After.
    let (mut running, _) = start_edit(&server, "runner", 40);
    wait_running(&server);
    let (mut waiting, _) = start_edit(&server, "waiter", 2);
    let start = Instant::now();
    while server.metric("editmgt_queue_depth") < 1.0 {
        assert!(start.elapsed() < Duration::from_secs(30), "nothing queued");
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = post_edit(server.addr, &edit_form(source_png(64, 64), "x", 0));
    assert_eq!(refused.status, 503, "{}", refused.text());
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert!(refused.json()["error"].as_str().unwrap().contains("queue"));
    assert_eq!(
        server.metric("editmgt_requests_total{outcome=\"rejected\"}"),
        1.0
    );

    // Graceful shutdown with edits in flight and queued: both finish, then the process exits.
    server.terminate();
    let first = read_reply(&mut running);
    assert_eq!(first.status, 200, "{}", first.text());
    let second = read_reply(&mut waiting);
    assert_eq!(second.status, 200, "{}", second.text());
    let status = server.wait(Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    assert!(std::net::TcpStream::connect(server.addr).is_err());
}

/// Runs `clients` threads that each send `per_client` edits with the same settings; returns
/// the latencies in seconds and the wall time.
fn load(server: &Server, clients: usize, per_client: usize) -> (Vec<f64>, f64, Vec<u64>) {
    let image = source_png(256, 256);
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (addr, image) = (server.addr, image.clone());
            std::thread::spawn(move || {
                (0..per_client)
                    .map(|k| {
                        let form = edit_form(image.clone(), "make it snowy", (c * 100 + k) as u64);
                        let t = Instant::now();
                        let reply = post_edit(addr, &form);
                        assert_eq!(reply.status, 200, "{}", reply.text());
                        let batch = reply.header("x-edit-batch").unwrap().parse().unwrap();
                        (t.elapsed().as_secs_f64(), batch)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut batches = Vec::new();
    for thread in threads {
        for (latency, batch) in thread.join().unwrap() {
            latencies.push(latency);
            batches.push(batch);
        }
    }
    (latencies, start.elapsed().as_secs_f64(), batches)
}

/// Run by CI as its own step (`--ignored --nocapture`) so that its numbers show in the log.
#[test]
#[ignore = "a load test; CI runs it with --ignored --nocapture"]
fn load_with_and_without_batching() {
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 3;
    let mut report = Vec::new();
    for max_batch in [1usize, 4] {
        let server = Server::start(&[
            "--max-batch",
            &max_batch.to_string(),
            "--max-wait-ms",
            "50",
            "--steps",
            "4",
        ]);
        // Warm-up (first-use allocations), not measured.
        let warm = post_edit(server.addr, &edit_form(source_png(256, 256), "x", 0));
        assert_eq!(warm.status, 200, "{}", warm.text());
        let (latencies, wall, batches) = load(&server, CLIENTS, PER_CLIENT);
        let n = latencies.len();
        assert_eq!(n, CLIENTS * PER_CLIENT, "no request lost");
        assert_eq!(
            server.metric("editmgt_requests_total{outcome=\"ok\"}"),
            (n + 1) as f64
        );
        assert_eq!(
            server.metric("editmgt_requests_total{outcome=\"failed\"}"),
            0.0
        );
        let biggest = batches.iter().copied().max().unwrap();
        assert!(biggest <= max_batch as u64);
        if max_batch > 1 {
            assert!(
                biggest > 1,
                "concurrent same-settings requests were batched: {batches:?}"
            );
        }
        let line = format!(
            "max batch {max_batch}: {n} edits (256x256, 4 steps) from {CLIENTS} clients in {wall:.2} s = {:.2} edits/s, latency p50 {:.2} s, p95 {:.2} s, batch sizes {batches:?}",
            n as f64 / wall,
            percentile(&latencies, 50.0),
            percentile(&latencies, 95.0),
        );
        eprintln!("{line}");
        report.push((n as f64 / wall, line));
    }
    eprintln!(
        "batching gain: {:.2}x throughput",
        report[1].0 / report[0].0
    );
}
