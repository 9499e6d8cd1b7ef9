//! `runtime serve`: health, images, clear 4xx for bad requests, 503 under overload, and a load
//! test of a few hundred requests from this (second) process that loses none.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runtime::onnx::{GenerateRequest, LoadOptions, Model};

/// A server child, killed when dropped.
pub struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `runtime ARGS --addr 127.0.0.1:0 --ready-file READY` and waits for its address; a
/// server that exits instead fails the test with its message.
pub fn start_runtime(args: &[&str], ready: &Path) -> (Server, String) {
    // stderr goes to a file, not a pipe nobody drains (a full pipe would block the server).
    let log = ready.with_extension("stderr");
    let child = Command::new(tests::binary("runtime"))
        .args(args)
        .args(["--addr", "127.0.0.1:0"])
        .args(["--ready-file", ready.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let started = Instant::now();
    while !ready.is_file() {
        if let Some(status) = server.0.try_wait().unwrap() {
            let stderr = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("runtime {args:?} exited ({status}) before serving: {stderr}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the server did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let addr = std::fs::read_to_string(ready).unwrap();
    (server, addr)
}

/// One HTTP/1.1 exchange: (status, headers lowercased, body).
fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn start(model: &Path, ready: &Path, extra: &[&str]) -> (Server, String) {
    let mut args = vec!["serve", "--model", model.to_str().unwrap()];
    args.extend_from_slice(extra);
    start_runtime(&args, ready)
}

#[test]
fn serve_answers_bad_requests_clearly_and_loses_no_request_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let student = dir.path().join("student");
    tests::init_tiny(&student, "tiny-student", "0");
    let model = dir.path().join("model");
    crate::runtime_generate::bake_tiny(&student, None, &model, false);
    let (_server, addr) = start(
        &model,
        &dir.path().join("ready"),
        &[
            "--max-concurrent",
            "2",
            "--max-body",
            "512",
            "--max-batch",
            "2",
        ],
    );

    let health = http(&addr, "GET", "/health", b"").unwrap();
    assert_eq!(health.status, 200, "{}", health.text());
    let h: serde_json::Value = serde_json::from_slice(&health.body).unwrap();
    assert_eq!(h["steps"], serde_json::json!([1, 2, 4]));
    assert_eq!(h["graphs"], "split");

    // An image: the PNG the library makes for the same seed.
    let r = http(
        &addr,
        "POST",
        "/generate",
        br#"{"prompt": "a dog", "seed": 5}"#,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("image/png"));
    let served = image::load_from_memory(&r.body).unwrap().to_rgb8();
    let local = Model::load(&model, &LoadOptions::default())
        .unwrap()
        .generate(&GenerateRequest::new("a dog", 5, 1))
        .unwrap();
    assert_eq!(served.as_raw(), &local.images[0].rgb);
    // A batch is a strip of images.
    let r = http(
        &addr,
        "POST",
        "/generate",
        br#"{"prompt": "a dog", "batch": 2, "steps": 2}"#,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-images"), Some("2"));
    assert_eq!(
        image::load_from_memory(&r.body)
            .unwrap()
            .to_rgb8()
            .dimensions(),
        (128, 64)
    );

    // Bad requests: each a 4xx that says what is wrong.
    let big = format!(r#"{{"prompt": "{}"}}"#, "a".repeat(600));
    let long_prompt = format!(r#"{{"prompt": "{}"}}"#, "dog ".repeat(100));
    let cases: [(&str, &str, &[u8], u16, &str); 8] = [
        ("POST", "/generate", b"{not json", 400, "malformed JSON"),
        ("POST", "/generate", br#"{"seed": 1}"#, 400, "prompt"),
        (
            "POST",
            "/generate",
            br#"{"prompt": "a", "colour": 1}"#,
            400,
            "colour",
        ),
        (
            "POST",
            "/generate",
            br#"{"prompt": "a", "steps": 3}"#,
            400,
            "steps 3",
        ),
        (
            "POST",
            "/generate",
            br#"{"prompt": "a", "batch": 9}"#,
            400,
            "batch 9",
        ),
        ("POST", "/generate", big.as_bytes(), 413, "512-byte limit"),
        ("GET", "/generate", b"", 405, "POST /generate"),
        ("GET", "/nope", b"", 404, "no route /nope"),
    ];
    for (method, path, body, status, says) in cases {
        let r = http(&addr, method, path, body).unwrap();
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        assert!(r.text().contains(says), "{method} {path}: {}", r.text());
    }
    // Past 77 tokens the prompt is cut with a warning header, not refused (limit is chars).
    let r = http(&addr, "POST", "/generate", long_prompt.as_bytes()).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let warning = r.header("x-warning").unwrap_or_default();
    assert!(warning.contains("77 tokens"), "{warning:?}");

    // Load: 8 clients × 40 requests. Each is answered (200, or 503 when both generation slots
    // are busy, then retried) and every one ends with an image.
    let served = Arc::new(AtomicUsize::new(0));
    let busy = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (addr, served, busy) = (addr.clone(), Arc::clone(&served), Arc::clone(&busy));
            std::thread::spawn(move || {
                for i in 0..40 {
                    let body = format!(r#"{{"prompt": "a dog", "seed": {}}}"#, c * 100 + i);
                    loop {
                        let r = http(&addr, "POST", "/generate", body.as_bytes())
                            .expect("every request gets an answer");
                        match r.status {
                            200 => {
                                assert!(r.body.starts_with(b"\x89PNG"));
                                served.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                            503 => {
                                assert_eq!(r.header("retry-after"), Some("1"));
                                busy.fetch_add(1, Ordering::SeqCst);
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            other => panic!("status {other}: {}", r.text()),
                        }
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    eprintln!(
        "load test: {} images served, {} busy answers (503) retried",
        served.load(Ordering::SeqCst),
        busy.load(Ordering::SeqCst)
    );
    assert_eq!(served.load(Ordering::SeqCst), 320);
    assert!(
        busy.load(Ordering::SeqCst) > 0,
        "8 clients on 2 slots never saw a 503: the limit is not enforced"
    );
    // Still healthy, nothing in flight.
    let h: serde_json::Value =
        serde_json::from_slice(&http(&addr, "GET", "/health", b"").unwrap().body).unwrap();
    assert_eq!(h["in_flight"], 0);
}
