//! `phi-web serve`: a static file server for the demo and for trying a
//! package locally, on hyper (HTTP/1.1, keep-alive) and tokio. What a browser
//! running phi-web needs from a server: `application/wasm` for the .wasm
//! (streaming compilation), COOP/COEP headers (cross-origin isolation:
//! precise timers and memory measurement), single HTTP range requests, ETags
//! (a reload revalidates with If-None-Match and gets 304), shards marked
//! immutable, and no directory listings. Only files under the served folders
//! are reachable — `..`, encoded or not, and symlinks pointing outside are
//! refused.

use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// URL prefix → folder, longest prefix first.
struct Site {
    mounts: Vec<(String, PathBuf)>,
}

/// Bytes a body chunk carries when a file is streamed.
const CHUNK: usize = 256 << 10;

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

pub fn serve(root: &Path, mounts: &[String], host: &str, port: u16) -> Result<(), String> {
    let mut site = vec![("/".to_string(), root.to_path_buf())];
    for mount in mounts {
        let (prefix, dir) = mount.split_once('=').ok_or_else(|| format!("--mount {mount}: expected /PREFIX=DIR"))?;
        let prefix = format!("/{}/", prefix.trim_matches('/'));
        site.push((prefix, PathBuf::from(dir)));
    }
    for (prefix, dir) in &mut site {
        *dir = dir.canonicalize().map_err(|e| format!("{} (for {prefix}): {e}", dir.display()))?;
    }
    site.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
    let site = Arc::new(Site { mounts: site });

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_io().build().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((host, port))
            .await
            .map_err(|e| format!("cannot listen on {host}:{port}: {e}"))?;
        let address: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
        // Not println!: a closed stdout must not stop the server.
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "phi-web serve: http://{address}/ (Ctrl+C stops)");
        for (prefix, dir) in &site.mounts {
            let _ = writeln!(stdout, "  {prefix} -> {}", dir.display());
        }
        let _ = stdout.flush();
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let site = site.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let site = site.clone();
                    async move { Ok::<_, Infallible>(respond(&site, &request).await) }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}

/// The response to one request (GET and HEAD only).
async fn respond(site: &Site, request: &Request<hyper::body::Incoming>) -> Response<Body> {
    let head = request.method() == Method::HEAD;
    if request.method() != Method::GET && !head {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let Some(file) = site.resolve(request.uri().path()) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let Ok(metadata) = std::fs::metadata(&file) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let size = metadata.len();
    let modified = metadata.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    let etag = format!("\"{size:x}-{:x}\"", modified.map_or(0, |d| d.as_nanos()));
    let header = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
    if header(header::IF_NONE_MATCH).is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*")) {
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        file_headers(&mut response, &file, &etag);
        return response;
    }
    let (status, start, len) = match header(header::RANGE).map(|r| parse_range(r, size)) {
        None => (StatusCode::OK, 0, size),
        Some(Some((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Some(None) => {
            let mut response = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
            insert(&mut response, header::CONTENT_RANGE, format!("bytes */{size}"));
            return response;
        }
    };
    let body = if head { empty() } else { file_body(file.clone(), start, len) };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    file_headers(&mut response, &file, &etag);
    insert(&mut response, header::CONTENT_LENGTH, len.to_string());
    if status == StatusCode::PARTIAL_CONTENT {
        insert(&mut response, header::CONTENT_RANGE, format!("bytes {start}-{}/{size}", start + len - 1));
    }
    response
}

/// `len` bytes of `file` from `start`, read in chunks on tokio's blocking
/// threads as the client takes them (a shard is never in memory whole).
fn file_body(file: PathBuf, start: u64, len: u64) -> Body {
    let (sender, receiver) = tokio::sync::mpsc::channel::<std::io::Result<Frame<Bytes>>>(2);
    tokio::task::spawn_blocking(move || {
        let read = || -> std::io::Result<()> {
            let mut handle = std::fs::File::open(&file)?;
            handle.seek(SeekFrom::Start(start))?;
            let mut left = len;
            while left > 0 {
                let mut chunk = vec![0u8; (left as usize).min(CHUNK)];
                handle.read_exact(&mut chunk)?;
                left -= chunk.len() as u64;
                if sender.blocking_send(Ok(Frame::data(Bytes::from(chunk)))).is_err() {
                    return Ok(()); // the client went away
                }
            }
            Ok(())
        };
        if let Err(e) = read() {
            let _ = sender.blocking_send(Err(e));
        }
    });
    let frames = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|frame| (frame, receiver))
    });
    StreamBody::new(frames).boxed()
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response =
        Response::new(Full::new(Bytes::from_static(body.as_bytes())).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    insert(&mut response, header::CONTENT_TYPE, "text/plain; charset=utf-8".into());
    common_headers(&mut response);
    response
}

fn insert(response: &mut Response<Body>, name: header::HeaderName, value: String) {
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(name, value);
    }
}

/// A file's type, validator and caching: shards (`shard-*.bin`) never change
/// under their name, so they are immutable; everything else revalidates (an
/// edited page shows at once, answered by 304 when it did not change).
fn file_headers(response: &mut Response<Body>, file: &Path, etag: &str) {
    insert(response, header::CONTENT_TYPE, content_type(file).into());
    insert(response, header::ETAG, etag.into());
    insert(response, header::ACCEPT_RANGES, "bytes".into());
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let shard = name.starts_with("shard-") && name.ends_with(".bin");
    let cache = if shard { "public, max-age=31536000, immutable" } else { "no-cache" };
    insert(response, header::CACHE_CONTROL, cache.into());
    common_headers(response);
}

/// Cross-origin isolation (COOP/COEP), and CORP so other isolated origins may
/// load the files.
fn common_headers(response: &mut Response<Body>) {
    let headers = response.headers_mut();
    for (name, value) in [
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-embedder-policy", "require-corp"),
        ("cross-origin-resource-policy", "cross-origin"),
        ("access-control-allow-origin", "*"),
        ("x-content-type-options", "nosniff"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-cache"));
}

impl Site {
    /// The file a URL path names, if it lies inside a served folder. A
    /// directory means its index.html; there are no listings.
    fn resolve(&self, target: &str) -> Option<PathBuf> {
        let path = percent_encoding::percent_decode_str(target).decode_utf8().ok()?;
        if path.contains('\0') || path.contains('\\') {
            return None;
        }
        if !path.starts_with('/') {
            return None;
        }
        let (prefix, dir) = self
            .mounts
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()) || path == prefix.trim_end_matches('/'))?;
        let rest = path.get(prefix.len()..).unwrap_or("");
        let mut file = dir.clone();
        for component in Path::new(rest).components() {
            match component {
                Component::Normal(part) => file.push(part),
                Component::CurDir => {}
                _ => return None, // `..`, or an absolute path smuggled in
            }
        }
        let mut file = file.canonicalize().ok()?;
        if file.is_dir() {
            file = file.join("index.html").canonicalize().ok()?;
        }
        (file.starts_with(dir) && file.is_file()).then_some(file)
    }
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` → inclusive (start, end); None when
/// it cannot be satisfied. Multiple ranges are not supported (also None).
fn parse_range(header: &str, size: u64) -> Option<(u64, u64)> {
    let spec = header.strip_prefix("bytes=")?.trim();
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (start, end) = if first.is_empty() {
        let suffix: u64 = last.parse().ok()?;
        (size.saturating_sub(suffix), size - 1)
    } else {
        let start: u64 = first.parse().ok()?;
        let end = if last.is_empty() { size - 1 } else { last.parse::<u64>().ok()?.min(size - 1) };
        (start, end)
    };
    (start <= end && start < size).then_some((start, end))
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "wasm" => "application/wasm",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" | "md" => "text/plain; charset=utf-8",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=95-200", 100), Some((95, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-2", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
