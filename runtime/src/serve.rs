//! `runtime serve`: a small local HTTP endpoint over one loaded [`Model`].
//!
//! - `GET /health` → 200 JSON: model folder, steps, size, graphs, provider, requests in flight.
//! - `POST /generate` with JSON `{"prompt": "...", "seed": 7, "steps": 1, "batch": 1}` (all but
//!   `prompt` optional) → 200 `image/png` (a batch comes as one strip, images left to right;
//!   `X-Images` says how many, `X-Seed` the first seed, `X-Warning` any tokenizer warning).
//!
//! Limits keep one machine responsive: bodies past `--max-body` get 413, prompts past
//! `--max-prompt-chars` and batches past `--max-batch` get 400, malformed JSON or fields 400
//! with the reason, and a request arriving while `--max-concurrent` generations run gets 503
//! with `Retry-After` at once instead of queueing without bound. A failed generation is a 500
//! with its message; nothing a client sends stops the server.

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use runtime::onnx::{GenerateRequest, Model, Noise};
use serde::Deserialize;
use tiny_http::{Header, Method, Request, Response, Server};

use crate::ModelArgs;

/// `runtime serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8188")]
    addr: String,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    max_body: usize,
    /// Largest batch a request may ask for.
    #[arg(long, default_value_t = 4)]
    max_batch: usize,
    /// Longest prompt in characters (prompts past 77 tokens are cut with a warning).
    #[arg(long, default_value_t = 2000)]
    max_prompt_chars: usize,
    /// Generations at once; more get 503.
    #[arg(long, default_value_t = 2)]
    max_concurrent: usize,
    /// Write the listening address to this file once the model is loaded (for scripts).
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateBody {
    prompt: String,
    #[serde(default)]
    seed: u64,
    steps: Option<u32>,
    #[serde(default = "one")]
    batch: usize,
}

fn one() -> usize {
    1
}

struct Limits {
    max_body: usize,
    max_batch: usize,
    max_prompt_chars: usize,
    max_concurrent: usize,
}

struct State {
    model: Model,
    limits: Limits,
    in_flight: AtomicUsize,
}

/// A response to send: status, content type, body, extra headers.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

impl Reply {
    fn json(status: u16, value: serde_json::Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
            headers: Vec::new(),
        }
    }

    fn error(status: u16, message: impl Into<String>) -> Self {
        Self::json(status, serde_json::json!({ "error": message.into() }))
    }
}

fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

fn send(request: Request, reply: Reply) {
    let mut response = Response::from_data(reply.body).with_status_code(reply.status);
    if let Some(h) = header("Content-Type", reply.content_type) {
        response.add_header(h);
    }
    for (name, value) in &reply.headers {
        // Header values must be one line of visible ASCII.
        let clean: String = value
            .chars()
            .map(|c| {
                if c.is_ascii() && !c.is_ascii_control() {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        if let Some(h) = header(name, &clean) {
            response.add_header(h);
        }
    }
    // A client that went away is not the server's problem.
    let _ = request.respond(response);
}

/// Reads at most `limit` bytes of body; `Err(413 reply)` past it.
fn read_body(request: &mut Request, limit: usize) -> Result<Vec<u8>, Reply> {
    let too_large = || Reply::error(413, format!("the body is over the {limit}-byte limit"));
    if request.body_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    match request
        .as_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
    {
        Ok(_) if body.len() > limit => Err(too_large()),
        Ok(_) => Ok(body),
        Err(e) => Err(Reply::error(400, format!("cannot read the body: {e}"))),
    }
}

/// Lays images of equal size side by side.
fn strip(images: &[runtime::onnx::GeneratedImage]) -> (u32, u32, Vec<u8>) {
    let (w, h) = (images[0].width as usize, images[0].height as usize);
    let n = images.len();
    let mut rgb = vec![0u8; n * w * h * 3];
    for (k, image) in images.iter().enumerate() {
        for y in 0..h {
            let src = &image.rgb[y * w * 3..(y + 1) * w * 3];
            let start = (y * n * w + k * w) * 3;
            rgb[start..start + w * 3].copy_from_slice(src);
        }
    }
    ((n * w) as u32, h as u32, rgb)
}

fn png(width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::write_buffer_with_format(
        &mut out,
        rgb,
        width,
        height,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )?;
    Ok(out.into_inner())
}

/// Releases a generation slot when dropped.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn generate(state: &State, request: &mut Request) -> Reply {
    let limits = &state.limits;
    let body = match read_body(request, limits.max_body) {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let body: GenerateBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return Reply::error(
                400,
                format!(
                    "malformed JSON ({e}); send {{\"prompt\": \"...\", \"seed\": 0, \"steps\": 1, \"batch\": 1}}"
                ),
            )
        }
    };
    if body.prompt.chars().count() > limits.max_prompt_chars {
        return Reply::error(
            400,
            format!(
                "the prompt is over the {}-character limit",
                limits.max_prompt_chars
            ),
        );
    }
    if body.batch == 0 || body.batch > limits.max_batch {
        return Reply::error(
            400,
            format!("batch {}: give 1 to {}", body.batch, limits.max_batch),
        );
    }
    let req = GenerateRequest {
        prompts: vec![body.prompt],
        images_per_prompt: body.batch,
        noise: Noise::Seed(body.seed),
        steps: body.steps.unwrap_or_else(|| state.model.default_steps()),
    };
    if let Err(e) = state.model.check_request(&req) {
        return Reply::error(400, format!("{e:#}"));
    }
    // Take a slot, or refuse at once.
    let taken = state.in_flight.fetch_add(1, Ordering::SeqCst);
    let _slot = Slot(&state.in_flight);
    if taken >= limits.max_concurrent {
        let mut reply = Reply::error(
            503,
            format!(
                "busy: {} generation(s) running; retry shortly",
                limits.max_concurrent
            ),
        );
        reply.headers.push(("Retry-After", "1".into()));
        return reply;
    }
    let result = state.model.generate(&req).and_then(|g| {
        let (w, h, rgb) = strip(&g.images);
        Ok((g, png(w, h, &rgb)?))
    });
    match result {
        Ok((g, bytes)) => {
            let mut headers = vec![
                ("X-Images", g.images.len().to_string()),
                ("X-Seed", body.seed.to_string()),
                ("X-Generation-Ms", format!("{:.1}", g.seconds * 1e3)),
            ];
            headers.extend(g.warnings.into_iter().map(|w| ("X-Warning", w)));
            Reply {
                status: 200,
                content_type: "image/png",
                body: bytes,
                headers,
            }
        }
        Err(e) => Reply::error(500, format!("{e:#}")),
    }
}

fn health(state: &State) -> Reply {
    let m = state.model.manifest();
    let (w, h) = state.model.image_size();
    Reply::json(
        200,
        serde_json::json!({
            "status": "ok",
            "model": state.model.dir().display().to_string(),
            "tokens": m.tokens.iter().map(|t| t.token.clone()).collect::<Vec<_>>(),
            "steps": m.steps,
            "width": w,
            "height": h,
            "graphs": if state.model.is_fused() { "fused" } else { "split" },
            "provider": state.model.provider().name(),
            "in_flight": state.in_flight.load(Ordering::SeqCst),
        }),
    )
}

fn handle(state: &State, mut request: Request) {
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let reply = match (request.method(), path.as_str()) {
        (Method::Get, "/health") => health(state),
        (Method::Post, "/generate") => generate(state, &mut request),
        (_, "/health") | (_, "/generate") => {
            let mut r = Reply::error(405, "use GET /health or POST /generate");
            r.headers.push((
                "Allow",
                if path == "/health" { "GET" } else { "POST" }.into(),
            ));
            r
        }
        _ => Reply::error(
            404,
            format!("no route {path}: use GET /health or POST /generate"),
        ),
    };
    send(request, reply);
}

/// Runs `runtime serve` until the process is stopped.
pub fn run(args: &ServeArgs) -> Result<()> {
    if args.max_concurrent == 0 || args.max_batch == 0 || args.max_body == 0 {
        bail!("--max-concurrent, --max-batch and --max-body must be at least 1");
    }
    let model = args.model.load()?;
    let server =
        Server::http(&args.addr).map_err(|e| anyhow!("cannot listen on {}: {e}", args.addr))?;
    let addr = server.server_addr().to_string();
    let state = Arc::new(State {
        model,
        limits: Limits {
            max_body: args.max_body,
            max_batch: args.max_batch,
            max_prompt_chars: args.max_prompt_chars,
            max_concurrent: args.max_concurrent,
        },
        in_flight: AtomicUsize::new(0),
    });
    let server = Arc::new(server);
    println!(
        "listening on http://{addr} (model {}, {} graphs on {}; POST /generate, GET /health)",
        state.model.dir().display(),
        if state.model.is_fused() {
            "fused"
        } else {
            "split"
        },
        state.model.provider()
    );
    if let Some(path) = &args.ready_file {
        std::fs::write(path, &addr).with_context(|| format!("cannot write {}", path.display()))?;
    }
    // Workers beyond the generation slots answer health checks and 503s while generations run.
    let workers = args.max_concurrent + 4;
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (server, state) = (Arc::clone(&server), Arc::clone(&state));
            std::thread::spawn(move || loop {
                match server.recv() {
                    Ok(request) => {
                        // A bug in one request must not take a worker down with it.
                        let outcome =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                handle(&state, request)
                            }));
                        if outcome.is_err() {
                            eprintln!("error: a request handler panicked; the server goes on");
                        }
                    }
                    Err(e) => eprintln!("warning: a connection failed: {e}"),
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}
