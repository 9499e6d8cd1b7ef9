//! `runtime serve-web`: the browser page and one baked model folder, from the loopback address.
//!
//! - `/` and other paths: the built page (`./run.sh web` writes it to `target/web-site`:
//!   `index.html`, the wasm-bindgen package under `pkg/`, onnxruntime-web under `ort/`);
//! - `/model/...`: the model folder's files, streamed with their length so the page can show
//!   load progress.
//!
//! Every answer carries `Cross-Origin-Opener-Policy: same-origin` and
//! `Cross-Origin-Embedder-Policy: require-corp`, which make the page cross-origin isolated so
//! onnxruntime-web can use WASM threads, and the MIME types browsers insist on (`application/wasm`
//! for streaming compilation, `text/javascript` for modules). Only GET and HEAD are answered and
//! no path leaves its root.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use tiny_http::{Header, Method, Request, Response, Server, StatusCode};

/// Files the built page must hold, relative to its root.
const SITE_FILES: [&str; 4] = [
    "index.html",
    "app.js",
    "pkg/web_bg.wasm",
    "ort/ort.webgpu.min.mjs",
];

/// `runtime serve-web`.
#[derive(Debug, Args)]
pub struct ServeWebArgs {
    /// A model folder written by `exporter bake`, served under /model/.
    #[arg(long, value_name = "MODEL_DIR")]
    model: PathBuf,
    /// The built page [default: `web-site` beside this program's folder, which is where
    /// `./run.sh web` puts it for target/release and target/debug].
    #[arg(long, value_name = "DIR")]
    site: Option<PathBuf>,
    /// Loopback address to listen on (port 0 picks a free port; the URL is printed).
    #[arg(long, default_value = "127.0.0.1:8190")]
    addr: String,
    /// Write the listening address to this file once serving (for scripts).
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
}

/// The page's default location: `<dir of the executable>/../web-site`, then
/// `<dir of the executable>/web-site`.
fn default_site() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [dir.join("../web-site"), dir.join("web-site")];
    Ok(candidates
        .iter()
        .find(|c| c.join("index.html").is_file())
        .unwrap_or(&candidates[0])
        .clone())
}

/// The MIME type browsers expect for a file name.
pub fn mime_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
    match ext.to_ascii_lowercase().as_str() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "wasm" => "application/wasm",
        "json" | "map" => "application/json",
        "yaml" | "yml" => "application/yaml",
        "txt" => "text/plain; charset=utf-8",
        "png" => "image/png",
        "svg" => "image/svg+xml",
        "ico" => "image/x-icon",
        _ => "application/octet-stream",
    }
}

/// Decodes `%XX` escapes; `None` for malformed escapes or non-UTF-8 results.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The file a request path names under `root`, or `None` for paths that try to leave it
/// (`..`, absolute parts, backslashes, NUL).
pub fn resolve(root: &Path, rel: &str) -> Option<PathBuf> {
    let rel = percent_decode(rel)?;
    let mut path = root.to_path_buf();
    for part in rel.split('/') {
        match part {
            "" | "." => continue,
            ".." => return None,
            p if p.contains('\\') || p.contains('\0') || p.contains(':') => return None,
            p => path.push(p),
        }
    }
    Some(path)
}

struct Roots {
    site: PathBuf,
    model: PathBuf,
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header")
}

/// The headers of every answer: isolation for WASM threads, no sniffing, no stale caches
/// (a folder baked again under the same name must not be served from the browser's cache).
fn common_headers() -> Vec<Header> {
    vec![
        header("Cross-Origin-Opener-Policy", "same-origin"),
        header("Cross-Origin-Embedder-Policy", "require-corp"),
        header("Cross-Origin-Resource-Policy", "same-origin"),
        header("X-Content-Type-Options", "nosniff"),
        header("Cache-Control", "no-cache"),
    ]
}

fn text_reply(request: Request, status: u16, message: &str) {
    let mut response = Response::from_string(message).with_status_code(status);
    for h in common_headers() {
        response.add_header(h);
    }
    response.add_header(header("Content-Type", "text/plain; charset=utf-8"));
    let _ = request.respond(response);
}

fn handle(roots: &Roots, request: Request) {
    let head = match request.method() {
        Method::Get => false,
        Method::Head => true,
        _ => {
            return text_reply(request, 405, "only GET and HEAD are served");
        }
    };
    let url = request.url().to_string();
    let path = url.split(['?', '#']).next().unwrap_or("/");
    let target = if path == "/" {
        Some(roots.site.join("index.html"))
    } else if let Some(rel) = path.strip_prefix("/model/") {
        resolve(&roots.model, rel)
    } else {
        resolve(&roots.site, path)
    };
    let Some(target) = target else {
        return text_reply(request, 400, "bad path");
    };
    let opened = File::open(&target).and_then(|f| f.metadata().map(|m| (f, m)));
    let (file, len) = match opened {
        Ok((f, m)) if m.is_file() => (f, m.len()),
        _ => return text_reply(request, 404, &format!("{path} not found")),
    };
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let mut headers = common_headers();
    headers.push(header("Content-Type", mime_type(&name)));
    // HEAD: the headers (Content-Length included) without the body.
    let body: Box<dyn std::io::Read + Send> = if head {
        Box::new(std::io::empty())
    } else {
        Box::new(file)
    };
    let response = Response::new(
        StatusCode(200),
        headers,
        body,
        usize::try_from(len).ok(),
        None,
    );
    // A browser that went away mid-download is not an error worth a line.
    let _ = request.respond(response);
}

/// Writes `text` to `path` through a temporary file beside it.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Runs `runtime serve-web` until the process is stopped.
pub fn run(args: &ServeWebArgs) -> Result<()> {
    let manifest = args.model.join(runtime::manifest::MANIFEST_FILE);
    if !manifest.is_file() {
        bail!(
            "--model {}: no {} there; give a folder written by `exporter bake`",
            args.model.display(),
            runtime::manifest::MANIFEST_FILE
        );
    }
    // The page reads the same manifest; refuse one it would refuse, here, where it is clearer.
    runtime::manifest::Manifest::read(&args.model)?;
    let site = match &args.site {
        Some(s) => s.clone(),
        None => default_site()?,
    };
    let missing: Vec<&str> = SITE_FILES
        .iter()
        .copied()
        .filter(|f| !site.join(f).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "the page is not built at {} (missing {}): run `./run.sh web`, or pass --site",
            site.display(),
            missing.join(", ")
        );
    }
    let addr: SocketAddr = args.addr.parse().with_context(|| {
        format!(
            "--addr {}: expected IP:PORT, e.g. 127.0.0.1:8190",
            args.addr
        )
    })?;
    if !addr.ip().is_loopback() {
        bail!(
            "--addr {addr}: serve-web answers on the loopback address only (the page runs the model on the visitor's machine); publish the site folder with a web server that sends COOP/COEP headers instead"
        );
    }
    let server = Server::http(addr).map_err(|e| anyhow!("cannot listen on {addr}: {e}"))?;
    let bound = server.server_addr().to_string();
    let roots = Arc::new(Roots {
        site,
        model: args.model.clone(),
    });
    println!(
        "serving the page on http://{bound}/ with model {} (Ctrl-C to stop)",
        args.model.display()
    );
    if let Some(path) = &args.ready_file {
        write_atomic(path, &bound)?;
    }
    let server = Arc::new(server);
    // The page fetches its module, wasm and model files at once; a few workers keep a large
    // weight download from holding up the small files.
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let (server, roots) = (Arc::clone(&server), Arc::clone(&roots));
            std::thread::spawn(move || loop {
                match server.recv() {
                    Ok(request) => handle(&roots, request),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_their_root() {
        let root = Path::new("/srv/site");
        assert_eq!(
            resolve(root, "pkg/web.js"),
            Some(root.join("pkg").join("web.js"))
        );
        assert_eq!(resolve(root, "/a//b/./c"), Some(root.join("a/b/c")));
        assert_eq!(resolve(root, "a%20b.txt"), Some(root.join("a b.txt")));
        for bad in [
            "../etc/passwd",
            "a/../../x",
            "%2e%2e/x",
            "a\\b",
            "%zz",
            "c:x",
            "%00",
        ] {
            assert_eq!(resolve(root, bad), None, "{bad}");
        }
    }

    #[test]
    fn browsers_get_the_types_they_require() {
        assert_eq!(mime_type("web_bg.wasm"), "application/wasm");
        assert!(mime_type("ort.webgpu.min.mjs").starts_with("text/javascript"));
        assert!(mime_type("app.js").starts_with("text/javascript"));
        assert!(mime_type("index.HTML").starts_with("text/html"));
        assert_eq!(mime_type("unet.onnx"), "application/octet-stream");
        assert_eq!(mime_type("unet.onnx_data"), "application/octet-stream");
    }
}
