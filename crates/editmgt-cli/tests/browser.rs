//! The web page of `editmgt serve` in a real browser: headless Chromium, driven through its
//! DevTools protocol (a minimal WebSocket client below), uploads the tiny fixture image, types
//! an instruction, and must show step progress, a result of the source's size and a heatmap.
//!
//! Needs Chromium (`apt-get install -y chromium`; or set `CHROME` to a binary), so it is
//! `#[ignore]`d in `cargo test`; CI runs it with
//! `cargo test -p editmgt-cli --test browser -- --ignored`.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use editmgt_testkit::case_file;
use serde_json::{Value, json};
use support::Server;

/// Headless Chromium with a DevTools endpoint on 127.0.0.1, killed when dropped.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws_url: String,
}

impl Browser {
    fn start() -> Self {
        let binary = std::env::var("CHROME").ok().unwrap_or_else(|| {
            ["chromium", "chromium-browser", "google-chrome"]
                .into_iter()
                .find(|b| {
                    Command::new(b)
                        .arg("--version")
                        .output()
                        .is_ok_and(|o| o.status.success())
                })
                .expect("no Chromium found: apt-get install -y chromium (or set CHROME)")
                .to_string()
        });
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(&binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let ws_url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!("{binary} did not open its DevTools endpoint within 60 s");
            }
        };
        Self {
            child,
            _profile: profile,
            ws_url,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebSocket connection (client side: masked text frames out, unmasked frames in).
struct WebSocket {
    stream: TcpStream,
}

impl WebSocket {
    fn connect(url: &str) -> Self {
        let rest = url.strip_prefix("ws://").expect("a ws:// URL");
        let (host, path) = rest.split_once('/').expect("a path");
        let mut stream = TcpStream::connect(host).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        write!(
            stream,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        Self { stream }
    }

    fn send(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(k, b)| b ^ mask[k % 4]));
        self.stream.write_all(&frame).unwrap();
    }

    fn receive(&mut self) -> String {
        let mut message = Vec::new();
        loop {
            let mut head = [0u8; 2];
            self.stream.read_exact(&mut head).unwrap();
            let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0f);
            let mut len = u64::from(head[1] & 0x7f);
            if len == 126 {
                let mut b = [0u8; 2];
                self.stream.read_exact(&mut b).unwrap();
                len = u64::from(u16::from_be_bytes(b));
            } else if len == 127 {
                let mut b = [0u8; 8];
                self.stream.read_exact(&mut b).unwrap();
                len = u64::from_be_bytes(b);
            }
            let mut payload = vec![0u8; len as usize];
            self.stream.read_exact(&mut payload).unwrap();
            match opcode {
                0x8 => panic!("the browser closed the DevTools connection"),
                0x9 | 0xA => continue,
                _ => message.extend_from_slice(&payload),
            }
            if fin {
                return String::from_utf8(message).unwrap();
            }
        }
    }
}

/// A DevTools protocol session.
struct DevTools {
    socket: WebSocket,
    next_id: u64,
    session: Option<String>,
}

impl DevTools {
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        self.socket.send(&message.to_string());
        loop {
            let reply: Value = serde_json::from_str(&self.socket.receive()).unwrap();
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }
}

#[test]
#[ignore = "needs Chromium; CI runs it with --ignored"]
fn the_page_edits_the_fixture_image_in_headless_chromium() {
    let started = Instant::now();
    let server = Server::start(&[]);
    let browser = Browser::start();
    let mut devtools = DevTools {
        socket: WebSocket::connect(&browser.ws_url),
        next_id: 0,
        session: None,
    };
    let target = devtools.call("Target.createTarget", json!({ "url": "about:blank" }));
    let attached = devtools.call(
        "Target.attachToTarget",
        json!({ "targetId": target["targetId"], "flatten": true }),
    );
    devtools.session = Some(attached["sessionId"].as_str().unwrap().to_string());
    devtools.call(
        "Page.navigate",
        json!({ "url": format!("http://{}/", server.addr) }),
    );
    let start = Instant::now();
    while devtools.eval("document.readyState === 'complete' && !!document.getElementById('image')")
        != json!(true)
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the page did not load"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Choose the file as a user would (DevTools sets the file input), type, click Edit.
    let document = devtools.call("DOM.getDocument", json!({}));
    let input = devtools.call(
        "DOM.querySelector",
        json!({ "nodeId": document["root"]["nodeId"], "selector": "#image" }),
    );
    // An absolute path without `..` (Chromium refuses to read others).
    let source = std::fs::canonicalize(case_file("source.png")).unwrap();
    devtools.call(
        "DOM.setFileInputFiles",
        json!({ "nodeId": input["nodeId"], "files": [source.to_str().unwrap()] }),
    );
    devtools.eval(
        "document.getElementById('instruction').value = 'make the sky blue'; \
         document.getElementById('steps').value = '3'; \
         document.getElementById('edit').click(); true",
    );

    let state = "JSON.stringify({ size: document.getElementById('result-size').textContent, \
        error: document.getElementById('error').textContent, \
        maxStep: Number(document.body.dataset.maxStep || 0), \
        heat: document.getElementById('heat').naturalWidth + 'x' + document.getElementById('heat').naturalHeight, \
        source: document.getElementById('source').naturalWidth + 'x' + document.getElementById('source').naturalHeight, \
        download: !document.getElementById('download').hidden, \
        status: document.getElementById('status').textContent })";
    let start = Instant::now();
    let shown: Value = loop {
        let value: Value = serde_json::from_str(devtools.eval(state).as_str().unwrap()).unwrap();
        if value["size"] != "" || value["error"] != "" {
            break value;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "no result after 180 s: {value}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(shown["error"], "", "{shown}");
    let fixture = image::open(&source).unwrap();
    let size = format!("{}x{}", fixture.width(), fixture.height());
    assert_eq!(shown["size"], size.as_str(), "{shown}");
    assert_eq!(shown["source"], size.as_str(), "{shown}");
    // The heatmap loads asynchronously from its data URL.
    let start = Instant::now();
    let mut heat = shown["heat"].clone();
    while heat != json!(size) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        let value: Value = serde_json::from_str(devtools.eval(state).as_str().unwrap()).unwrap();
        heat = value["heat"].clone();
    }
    assert_eq!(heat, json!(size), "{shown}");
    assert_eq!(shown["download"], true, "{shown}");
    assert!(
        shown["maxStep"].as_u64().unwrap() >= 1,
        "no progress was shown: {shown}"
    );
    eprintln!(
        "browser test: {} in {:.1} s",
        shown["status"],
        started.elapsed().as_secs_f64()
    );
}
