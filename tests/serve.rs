//! `phi-web serve` over real sockets: MIME types, COOP/COEP, range requests,
//! ETags and caching, no listings, nothing outside the served folders, and
//! hundreds of concurrent range requests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

struct Server {
    child: Child,
    address: String,
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test site in its own folder per test (tests run in parallel).
fn site(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("serve-site-{name}"));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("web/empty")).unwrap();
    std::fs::create_dir_all(root.join("models/tiny")).unwrap();
    std::fs::write(root.join("web/index.html"), "<!doctype html><title>demo</title>").unwrap();
    std::fs::write(root.join("web/engine.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(root.join("web/with space.js"), "export {};").unwrap();
    let shard: Vec<u8> = (0..=255u8).collect();
    std::fs::write(root.join("models/tiny/shard-00000.bin"), shard).unwrap();
    std::fs::write(root.join("secret.txt"), "outside the served folders").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(root.join("secret.txt"), root.join("web/link-out.txt")).unwrap();
    root
}

fn start(root: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_phi-web"))
        .args(["serve", "web", "--mount", "/models=models", "--port", "0"])
        .current_dir(root)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let address = line.split("http://").nth(1).unwrap().split('/').next().unwrap().to_string();
    Server { child, address, _stdout: stdout }
}

/// (status line, lower-cased headers, body) for one raw request.
fn get(server: &Server, request: &str) -> (String, String, Vec<u8>) {
    let mut stream = TcpStream::connect(&server.address).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(response[..split].to_vec()).unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
    (status.to_string(), headers.to_ascii_lowercase(), response[split + 4..].to_vec())
}

fn request(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: x\r\n{extra}connection: close\r\n\r\n")
}

#[test]
fn serves_what_a_phi_web_page_needs() {
    let root = site("basics");
    let server = start(&root);

    let (status, headers, body) = get(&server, &request("/", ""));
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("content-type: text/html"), "{headers}");
    assert!(headers.contains("cross-origin-opener-policy: same-origin"), "{headers}");
    assert!(headers.contains("cross-origin-embedder-policy: require-corp"), "{headers}");
    assert_eq!(body, b"<!doctype html><title>demo</title>");

    let (_, headers, _) = get(&server, &request("/engine.wasm", ""));
    assert!(headers.contains("content-type: application/wasm"), "{headers}");
    let (status, headers, _) = get(&server, &request("/with%20space.js?v=1", ""));
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("content-type: text/javascript"), "{headers}");

    // Range requests on a mounted folder.
    let shard = "/models/tiny/shard-00000.bin";
    let (status, headers, body) = get(&server, &request(shard, "range: bytes=10-19\r\n"));
    assert_eq!(status, "HTTP/1.1 206 Partial Content");
    assert!(headers.contains("content-range: bytes 10-19/256"), "{headers}");
    assert_eq!(body, (10..20).collect::<Vec<u8>>());
    let (_, _, body) = get(&server, &request(shard, "range: bytes=-6\r\n"));
    assert_eq!(body, (250..=255).collect::<Vec<u8>>());
    let (status, headers, _) = get(&server, &request(shard, "range: bytes=300-\r\n"));
    assert_eq!(status, "HTTP/1.1 416 Range Not Satisfiable");
    assert!(headers.contains("content-range: bytes */256"), "{headers}");
    let (status, headers, body) = get(&server, &format!("HEAD {shard} HTTP/1.1\r\nconnection: close\r\n\r\n"));
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("content-length: 256"), "{headers}");
    assert!(body.is_empty());

    // No listings, nothing outside the served folders, only GET and HEAD.
    let escapes =
        ["/../secret.txt", "/%2e%2e/secret.txt", "/%2E%2E%2Fsecret.txt", "/models/../secret.txt", "/link-out.txt"];
    for path in ["/empty/", "/models/", "/nope", "/%00", "/a%5c..%5csecret.txt"].iter().chain(&escapes) {
        let (status, _, _) = get(&server, &request(path, ""));
        assert_eq!(status, "HTTP/1.1 404 Not Found", "{path}");
    }
    let (status, _, _) = get(&server, "POST / HTTP/1.1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");

    // Keep-alive: two requests on one connection.
    let mut bytes = Vec::new();
    let mut stream = TcpStream::connect(&server.address).unwrap();
    stream.write_all(b"GET /with%20space.js HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nconnection: close\r\n\r\n").unwrap();
    stream.read_to_end(&mut bytes).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
}

/// A reload revalidates: the ETag comes back as If-None-Match and gets 304
/// with no body; shards are immutable, pages revalidate every time.
#[test]
fn etags_and_caching() {
    let root = site("etags");
    let server = start(&root);
    let (status, headers, _) = get(&server, &request("/", ""));
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("cache-control: no-cache"), "{headers}");
    let etag = headers.lines().find_map(|l| l.strip_prefix("etag: ")).unwrap().to_string();
    let (status, headers, body) = get(&server, &request("/", &format!("if-none-match: {etag}\r\n")));
    assert_eq!(status, "HTTP/1.1 304 Not Modified");
    assert!(body.is_empty() && headers.contains("cross-origin-embedder-policy: require-corp"), "{headers}");
    let (status, _, _) = get(&server, &request("/", "if-none-match: \"other\"\r\n"));
    assert_eq!(status, "HTTP/1.1 200 OK");
    let (_, headers, _) = get(&server, &request("/models/tiny/shard-00000.bin", ""));
    assert!(headers.contains("cache-control: public, max-age=31536000, immutable"), "{headers}");
}

/// Load: 400 range requests from 200 connections at once on loopback, each
/// answered with its own bytes, within a bound.
#[test]
fn hundreds_of_concurrent_range_requests_are_all_answered() {
    let root = site("load");
    let server = std::sync::Arc::new(start(&root));
    let started = std::time::Instant::now();
    let threads: Vec<_> = (0..200)
        .map(|i| {
            let server = server.clone();
            std::thread::spawn(move || {
                // Two requests on one keep-alive connection.
                let (a, b) = (i % 200, (i * 7) % 250);
                let mut stream = TcpStream::connect(&server.address).unwrap();
                let ranges = format!(
                    "GET /models/tiny/shard-00000.bin HTTP/1.1\r\nhost: x\r\nrange: bytes={a}-{}\r\n\r\n\
                     GET /models/tiny/shard-00000.bin HTTP/1.1\r\nhost: x\r\nrange: bytes={b}-{}\r\nconnection: close\r\n\r\n",
                    a + 5,
                    b + 5
                );
                stream.write_all(ranges.as_bytes()).unwrap();
                let mut response = Vec::new();
                stream.read_to_end(&mut response).unwrap();
                let text = String::from_utf8_lossy(&response).to_string();
                let expected = |start: usize| (start as u8..=start as u8 + 5).collect::<Vec<u8>>();
                assert_eq!(text.matches("HTTP/1.1 206 Partial Content").count(), 2, "{text}");
                for start in [a, b] {
                    assert!(response.windows(6).any(|w| w == expected(start)), "bytes {start}..: {text}");
                }
            })
        })
        .collect();
    let answered = threads.into_iter().map(|t| t.join()).filter(Result::is_ok).count();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("serve load | 200 connections, 400 range requests on loopback | {answered} answered in {seconds:.2} s");
    assert_eq!(answered, 200, "every connection got both answers");
    assert!(seconds < 60.0, "{seconds} s");
}
