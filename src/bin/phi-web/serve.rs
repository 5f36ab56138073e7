//! `phi-web serve`: a small static file server for the demo and for trying a
//! package locally. What a browser running phi-web needs from a server:
//! `application/wasm` for the .wasm (streaming compilation), COOP/COEP headers
//! (cross-origin isolation: precise timers and memory measurement), single
//! HTTP range requests, and no directory listings. Only files under the served
//! folders are reachable — `..` and symlinks pointing outside are refused.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// URL prefix → folder, longest prefix first.
struct Site {
    mounts: Vec<(String, PathBuf)>,
}

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

    let listener = TcpListener::bind((host, port)).map_err(|e| format!("cannot listen on {host}:{port}: {e}"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    // Not println!: a closed stdout must not stop the server.
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "phi-web serve: http://{address}/ (Ctrl+C stops)");
    for (prefix, dir) in &site.mounts {
        let _ = writeln!(stdout, "  {prefix} -> {}", dir.display());
    }
    let _ = stdout.flush();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let site = site.clone();
        std::thread::spawn(move || {
            let _ = connection(&site, stream);
        });
    }
    Ok(())
}

/// One keep-alive connection: requests until the client closes it or idles.
fn connection(site: &Site, stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let Some(request) = read_request(&mut reader)? else { return Ok(()) };
        let keep_alive = respond(site, &request, &mut out)?;
        out.flush()?;
        if !keep_alive {
            return Ok(());
        }
    }
}

struct Request {
    method: String,
    path: String,
    range: Option<String>,
    close: bool,
}

/// The request line and the headers we use; None at end of stream.
fn read_request(reader: &mut impl BufRead) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let version = parts.next().unwrap_or("");
    let mut request = Request { method, path: target, range: None, close: version == "HTTP/1.0" };
    let mut header_bytes = 0;
    loop {
        let mut header = String::new();
        let n = reader.read_line(&mut header)?;
        header_bytes += n;
        if n == 0 || header_bytes > 64 * 1024 {
            return Ok(None);
        }
        let header = header.trim_end();
        if header.is_empty() {
            return Ok(Some(request));
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "range" => request.range = Some(value.to_string()),
                "connection" => request.close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }
}

/// Writes the response; returns whether the connection stays open.
fn respond(site: &Site, request: &Request, out: &mut impl Write) -> std::io::Result<bool> {
    let head = request.method == "HEAD";
    if request.method != "GET" && !head {
        status_only(
            out,
            "405 Method Not Allowed",
            "only GET and HEAD\n",
            &[("allow", "GET, HEAD".into())],
            request.close,
        )?;
        return Ok(!request.close);
    }
    let Some(file) = site.resolve(&request.path) else {
        status_only(out, "404 Not Found", "not found\n", &[], request.close)?;
        return Ok(!request.close);
    };
    let Ok(mut handle) = File::open(&file) else {
        status_only(out, "404 Not Found", "not found\n", &[], request.close)?;
        return Ok(!request.close);
    };
    let size = handle.metadata()?.len();
    let (status, start, len) = match request.range.as_deref().map(|r| parse_range(r, size)) {
        None => ("200 OK", 0, size),
        Some(Some((start, end))) => ("206 Partial Content", start, end - start + 1),
        Some(None) => {
            let range = [("content-range", format!("bytes */{size}"))];
            status_only(out, "416 Range Not Satisfiable", "range not satisfiable\n", &range, request.close)?;
            return Ok(!request.close);
        }
    };
    let mut headers = vec![
        ("content-type", content_type(&file).to_string()),
        ("content-length", len.to_string()),
        ("accept-ranges", "bytes".into()),
    ];
    if status.starts_with("206") {
        headers.push(("content-range", format!("bytes {start}-{}/{size}", start + len - 1)));
    }
    write_head(out, status, &headers, request.close)?;
    if !head {
        handle.seek(SeekFrom::Start(start))?;
        std::io::copy(&mut handle.take(len), out)?;
    }
    Ok(!request.close)
}

impl Site {
    /// The file a URL path names, if it lies inside a served folder. A
    /// directory means its index.html; there are no listings.
    fn resolve(&self, target: &str) -> Option<PathBuf> {
        let path = percent_decode(target.split(['?', '#']).next()?)?;
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

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let decoded = String::from_utf8(out).ok()?;
    (!decoded.contains('\0') && !decoded.contains('\\')).then_some(decoded)
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

fn write_head(out: &mut impl Write, status: &str, headers: &[(&str, String)], close: bool) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    // Cross-origin isolation, and revalidation so an edited page shows at once
    // (model shards are cached by phi-web itself, not by HTTP).
    head.push_str("cross-origin-opener-policy: same-origin\r\n");
    head.push_str("cross-origin-embedder-policy: require-corp\r\n");
    head.push_str("cross-origin-resource-policy: cross-origin\r\n");
    head.push_str("access-control-allow-origin: *\r\n");
    head.push_str("x-content-type-options: nosniff\r\n");
    head.push_str("cache-control: no-cache\r\n");
    head.push_str(if close { "connection: close\r\n" } else { "connection: keep-alive\r\n" });
    head.push_str("\r\n");
    out.write_all(head.as_bytes())
}

fn status_only(
    out: &mut impl Write,
    status: &str,
    body: &str,
    extra: &[(&str, String)],
    close: bool,
) -> std::io::Result<()> {
    let mut headers = vec![("content-type", "text/plain; charset=utf-8".to_string())];
    headers.push(("content-length", body.len().to_string()));
    headers.extend(extra.iter().cloned());
    write_head(out, status, &headers, close)?;
    out.write_all(body.as_bytes())
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
