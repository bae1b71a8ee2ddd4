//! End-to-end test harness: a scripted HTTP/1.1 upstream, a real Envoy
//! running the filter, a small HTTP client and admin-API helpers.
//!
//! Each test file includes it with `mod common;`. Every test starts its own
//! [`Upstream`] and [`Envoy`] (own ports, own temp dir), so tests run in
//! parallel. Envoy exits when the thread that started it ends: start it in
//! the test's own thread, never share one across tests.
//!
//! ```ignore
//! let upstream = Upstream::start(|_req| Response::new(401).json(r#"{"error":"no"}"#));
//! let envoy = Envoy::start(EnvoyOptions::new(upstream.port(), json!({ ... })));
//! let resp = envoy.get("/api/me", &[("authorization", "Bearer wrong")]);
//! assert_eq!(resp.status, 401);
//! assert_eq!(upstream.count(), 1);
//! ```
//!
//! To change the filter's configuration while Envoy runs (same VM, same
//! shared data, only `on_configure` again), start it with
//! `EnvoyOptions { dynamic_listener: true, .. }` and call
//! `envoy.reconfigure(json!({ ... }))` (or `try_reconfigure` for a
//! configuration the filter should refuse).
//!
//! Paths: Envoy from `ENVOY_BIN` (default `.venv/bin/envoy`), the filter
//! from `NEGCACHE_WASM` (default `target/wasm32-wasip1/release/negcache.wasm`);
//! `make test` sets both. Set `NEGCACHE_KEEP_TMP=1` to keep each test's temp
//! dir (Envoy config, log, access log) for a look afterwards.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Upper bound for any single wait in the harness: only there to turn a
/// hang into a failure, never a performance assertion.
pub const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Paths, temp dirs, ports, polling
// ---------------------------------------------------------------------------

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn required_file(var: &str, default: PathBuf, what: &str) -> PathBuf {
    let path = std::env::var_os(var).map_or(default, PathBuf::from);
    assert!(
        path.is_file(),
        "{what} not found at {} (set {var}); run `make test`, which installs \
         Envoy and builds the filter before running the tests",
        path.display()
    );
    path
}

/// The Envoy binary: `$ENVOY_BIN` or `<repo>/.venv/bin/envoy`.
/// The filter hands its metric updates to Envoy once a second: a read this long after the
/// requests sees all of them.
pub const METRICS_SETTLE: Duration = Duration::from_millis(1300);

pub fn envoy_bin() -> PathBuf {
    required_file(
        "ENVOY_BIN",
        manifest_dir().join(".venv/bin/envoy"),
        "Envoy binary",
    )
}

/// The filter: `$NEGCACHE_WASM`, or what `make build` ships (`target/negcache.wasm`).
pub fn wasm_path() -> PathBuf {
    required_file(
        "NEGCACHE_WASM",
        manifest_dir().join("target/negcache.wasm"),
        "negcache.wasm",
    )
}

/// A fresh directory under the system temp dir, removed on drop (kept when
/// `NEGCACHE_KEEP_TMP` is set).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("NEGCACHE_KEEP_TMP").is_some() {
            eprintln!("keeping {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1, never handed out twice in this process:
/// Envoy listens with SO_REUSEPORT, so two test Envoys given the same port would both bind it
/// and answer each other's requests.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = free_port_once();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

fn free_port_once() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Polls `cond` every 20 ms until it holds; panics after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// HTTP/1.1 wire helpers (shared by the upstream and the client)
// ---------------------------------------------------------------------------

type Headers = Vec<(String, String)>;

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn find_headers<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    find_headers(headers, "transfer-encoding")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"))
}

fn content_length(headers: &[(String, String)]) -> Option<usize> {
    find_header(headers, "content-length").and_then(|v| v.trim().parse().ok())
}

fn read_line(reader: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    if reader.read_until(b'\n', &mut buf)? == 0 {
        return Ok(None);
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// Reads a start line and header block. `Ok(None)` on a clean EOF before
/// the start line. Header names are lowercased; duplicates are kept.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<(String, Headers)>> {
    let start = loop {
        match read_line(reader)? {
            None => return Ok(None),
            Some(line) if line.is_empty() => continue, // tolerate stray CRLFs
            Some(line) => break line,
        }
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "EOF in headers"))?;
        if line.is_empty() {
            return Ok(Some((start, headers)));
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
}

/// Reads a chunked body into `out`; `Ok(false)` if the stream ended early.
fn read_chunked(reader: &mut impl BufRead, out: &mut Vec<u8>) -> io::Result<bool> {
    loop {
        let Some(size_line) = read_line(reader)? else {
            return Ok(false);
        };
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                match read_line(reader)? {
                    None => return Ok(false),
                    Some(line) if line.is_empty() => return Ok(true),
                    Some(_) => {}
                }
            }
        }
        let start = out.len();
        out.resize(start + size, 0);
        if let Err(e) = reader.read_exact(&mut out[start..]) {
            out.truncate(start);
            return if e.kind() == io::ErrorKind::UnexpectedEof {
                Ok(false)
            } else {
                Err(e)
            };
        }
        if read_line(reader)?.is_none() {
            return Ok(false);
        }
    }
}

/// Reads exactly `len` bytes, or what arrives before EOF (`Ok(false)`).
fn read_exactly(reader: &mut impl Read, len: usize, out: &mut Vec<u8>) -> io::Result<bool> {
    let got = reader.take(len as u64).read_to_end(out)?;
    Ok(got == len)
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn status_has_no_body(status: u16) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}

// ---------------------------------------------------------------------------
// Scripted upstream
// ---------------------------------------------------------------------------

/// A request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path including the query string, as sent on the request line.
    pub path: String,
    /// Lowercased names, in arrival order, duplicates kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// First value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        find_headers(&self.headers, name)
    }

    /// The path without the query string.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Clone, Debug)]
enum BodyMode {
    /// `content-length` (unless the test set framing headers itself).
    Full,
    /// Declares `content-length: declared`, sends the body (shorter), closes.
    Truncated { declared: usize },
    /// `transfer-encoding: chunked`, one chunk per element; `finish: false`
    /// closes the connection instead of sending the last chunk.
    Chunked {
        chunks: Vec<Vec<u8>>,
        pause: Duration,
        finish: bool,
    },
    /// No framing headers: the body ends when the connection closes.
    UntilClose,
}

/// A scripted upstream response. Builders:
/// `Response::new(401).header("www-authenticate", "Bearer").json(r#"{"e":1}"#)`.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Sleep this long before sending anything.
    pub delay: Option<Duration>,
    mode: BodyMode,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: None,
            mode: BodyMode::Full,
        }
    }

    pub fn ok() -> Response {
        Response::new(200)
    }

    /// Adds a header (repeat the call for duplicates); sent in this order.
    pub fn header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// `content-type: application/json` and the body.
    pub fn json(self, body: &str) -> Response {
        self.header("content-type", "application/json").body(body)
    }

    /// `content-type: text/plain` and the body.
    pub fn text(self, body: &str) -> Response {
        self.header("content-type", "text/plain").body(body)
    }

    pub fn delay(mut self, delay: Duration) -> Response {
        self.delay = Some(delay);
        self
    }

    /// Headers declare `content-length: declared_len`, then only the body set
    /// so far is sent (keep it shorter) and the connection is closed: a
    /// response stream that ends early.
    pub fn truncated(mut self, declared_len: usize) -> Response {
        self.mode = BodyMode::Truncated {
            declared: declared_len,
        };
        self
    }

    /// `transfer-encoding: chunked`, each element written and flushed as its
    /// own chunk (with `pause` between chunks, see [`Response::chunk_pause`]).
    pub fn chunked<B: AsRef<[u8]>>(mut self, chunks: &[B]) -> Response {
        self.mode = BodyMode::Chunked {
            chunks: chunks.iter().map(|c| c.as_ref().to_vec()).collect(),
            pause: Duration::from_millis(20),
            finish: true,
        };
        self
    }

    /// Like [`Response::chunked`] but the connection closes after the given
    /// chunks, without the terminating zero-length chunk.
    pub fn chunked_unfinished<B: AsRef<[u8]>>(self, chunks: &[B]) -> Response {
        let mut r = self.chunked(chunks);
        if let BodyMode::Chunked { finish, .. } = &mut r.mode {
            *finish = false;
        }
        r
    }

    /// Pause between chunks of a chunked response (default 20 ms).
    pub fn chunk_pause(mut self, pause: Duration) -> Response {
        if let BodyMode::Chunked { pause: p, .. } = &mut self.mode {
            *p = pause;
        }
        self
    }

    /// No content-length / transfer-encoding: the body is delimited by
    /// closing the connection.
    pub fn until_close(mut self) -> Response {
        self.mode = BodyMode::UntilClose;
        self
    }

    fn has_header(&self, name: &str) -> bool {
        find_header(&self.headers, name).is_some()
    }

    /// Writes the response; returns whether the connection must close.
    fn write_to(&self, out: &mut TcpStream, head_request: bool) -> io::Result<bool> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\n",
            self.status,
            reason_phrase(self.status)
        );
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        let framed = self.has_header("content-length") || self.has_header("transfer-encoding");
        let send_body = !head_request && !status_has_no_body(self.status);
        match &self.mode {
            BodyMode::Full => {
                if !framed && !status_has_no_body(self.status) {
                    let _ = write!(head, "content-length: {}\r\n", self.body.len());
                }
                head.push_str("\r\n");
                out.write_all(head.as_bytes())?;
                if send_body {
                    out.write_all(&self.body)?;
                }
                out.flush()?;
                Ok(false)
            }
            BodyMode::Truncated { declared } => {
                let _ = write!(head, "content-length: {declared}\r\n\r\n");
                out.write_all(head.as_bytes())?;
                out.write_all(&self.body)?;
                out.flush()?;
                Ok(true)
            }
            BodyMode::Chunked {
                chunks,
                pause,
                finish,
            } => {
                head.push_str("transfer-encoding: chunked\r\n\r\n");
                out.write_all(head.as_bytes())?;
                out.flush()?;
                for (i, chunk) in chunks.iter().enumerate() {
                    if i > 0 && !pause.is_zero() {
                        thread::sleep(*pause);
                    }
                    if chunk.is_empty() {
                        continue; // an empty chunk would end the body
                    }
                    out.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
                    out.write_all(chunk)?;
                    out.write_all(b"\r\n")?;
                    out.flush()?;
                }
                if *finish {
                    out.write_all(b"0\r\n\r\n")?;
                    out.flush()?;
                }
                Ok(!*finish)
            }
            BodyMode::UntilClose => {
                head.push_str("connection: close\r\n\r\n");
                out.write_all(head.as_bytes())?;
                if send_body {
                    out.write_all(&self.body)?;
                }
                out.flush()?;
                Ok(true)
            }
        }
    }
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

struct UpstreamShared {
    handler: RwLock<Arc<Handler>>,
    requests: Mutex<Vec<Request>>,
    stop: AtomicBool,
}

/// A scripted HTTP/1.1 server on 127.0.0.1:<free port>: one thread per
/// connection, keep-alive, request bodies (content-length or chunked).
/// Every request is recorded before the handler runs.
pub struct Upstream {
    port: u16,
    shared: Arc<UpstreamShared>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Upstream {
    pub fn start<F>(handler: F) -> Upstream
    where
        F: Fn(&Request) -> Response + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let port = listener.local_addr().expect("upstream addr").port();
        let shared = Arc::new(UpstreamShared {
            handler: RwLock::new(Arc::new(handler)),
            requests: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let acceptor_shared = Arc::clone(&shared);
        let acceptor = thread::spawn(move || {
            for conn in listener.incoming() {
                if acceptor_shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = conn {
                    let conn_shared = Arc::clone(&acceptor_shared);
                    thread::spawn(move || serve_connection(stream, &conn_shared));
                }
            }
        });
        Upstream {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Always answers with a clone of `response`.
    pub fn always(response: Response) -> Upstream {
        Upstream::start(move |_| response.clone())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Replaces the handler for requests that arrive from now on.
    pub fn set_handler<F>(&self, handler: F)
    where
        F: Fn(&Request) -> Response + Send + Sync + 'static,
    {
        *self.shared.handler.write().expect("handler lock") = Arc::new(handler);
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().expect("requests lock").clone()
    }

    pub fn count(&self) -> usize {
        self.shared.requests.lock().expect("requests lock").len()
    }

    pub fn count_where(&self, pred: impl Fn(&Request) -> bool) -> usize {
        self.shared
            .requests
            .lock()
            .expect("requests lock")
            .iter()
            .filter(|r| pred(r))
            .count()
    }

    /// Forgets the recorded requests.
    pub fn clear(&self) {
        self.shared.requests.lock().expect("requests lock").clear();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees the flag.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(1),
        );
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn serve_connection(stream: TcpStream, shared: &UpstreamShared) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut out = stream;
    while !shared.stop.load(Ordering::SeqCst) {
        let Ok(Some((start, headers))) = read_head(&mut reader) else {
            return;
        };
        let mut parts = start.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let version = parts.next().unwrap_or("HTTP/1.1").to_string();
        let mut body = Vec::new();
        let complete = if is_chunked(&headers) {
            read_chunked(&mut reader, &mut body)
        } else {
            let len = content_length(&headers).unwrap_or(0);
            read_exactly(&mut reader, len, &mut body)
        };
        if !matches!(complete, Ok(true)) {
            return;
        }
        let wants_close = version == "HTTP/1.0"
            || find_header(&headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let request = Request {
            method,
            path,
            headers,
            body,
        };
        shared
            .requests
            .lock()
            .expect("requests lock")
            .push(request.clone());
        let handler = Arc::clone(&shared.handler.read().expect("handler lock"));
        let response = handler(&request);
        if let Some(delay) = response.delay {
            thread::sleep(delay);
        }
        match response.write_to(&mut out, request.method == "HEAD") {
            Ok(false) if !wants_close => {}
            _ => {
                let _ = out.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------

/// A response as the client received it.
#[derive(Clone, Debug)]
pub struct ClientResponse {
    pub status: u16,
    /// Lowercased names, in arrival order, duplicates kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// False when the connection ended before the body did (declared
    /// content-length not reached, or no last chunk).
    pub complete: bool,
}

impl ClientResponse {
    /// First value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        find_headers(&self.headers, name)
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON (panics if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {:?}\n{self:?}",
                self.body_str()
            )
        })
    }
}

fn connect(port: u16) -> TcpStream {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    stream.set_write_timeout(Some(WAIT)).expect("write timeout");
    let _ = stream.set_nodelay(true);
    stream
}

fn format_request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> Vec<u8> {
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !has("host") {
        head.push_str("host: localhost\r\n");
    }
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    let needs_length = !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH");
    if needs_length && !has("content-length") && !has("transfer-encoding") {
        let _ = write!(head, "content-length: {}\r\n", body.len());
    }
    if close && !has("connection") {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Reads one response (skipping 1xx interim responses).
fn read_response(reader: &mut impl BufRead, head_request: bool) -> io::Result<ClientResponse> {
    loop {
        let (start, headers) = read_head(reader)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            )
        })?;
        let status: u16 = start
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("bad status: {start}"))
            })?;
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let mut body = Vec::new();
        let complete = if head_request || status_has_no_body(status) {
            true
        } else if is_chunked(&headers) {
            read_chunked(reader, &mut body).or_else(eof_as_incomplete)?
        } else if let Some(len) = content_length(&headers) {
            read_exactly(reader, len, &mut body).or_else(eof_as_incomplete)?
        } else {
            reader
                .read_to_end(&mut body)
                .map(|_| true)
                .or_else(eof_as_incomplete)?
        };
        return Ok(ClientResponse {
            status,
            headers,
            body,
            complete,
        });
    }
}

/// A reset while reading a body means the stream ended early.
fn eof_as_incomplete(e: io::Error) -> io::Result<bool> {
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Ok(false),
        _ => Err(e),
    }
}

/// One request on a fresh connection with `connection: close`.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> ClientResponse {
    let stream = connect(port);
    let mut out = stream.try_clone().expect("clone stream");
    out.write_all(&format_request(method, path, headers, body, true))
        .unwrap_or_else(|e| panic!("send {method} {path} to :{port}: {e}"));
    let mut reader = BufReader::new(stream);
    read_response(&mut reader, method == "HEAD")
        .unwrap_or_else(|e| panic!("read response to {method} {path} from :{port}: {e}"))
}

/// A keep-alive client connection: requests go one after another on the
/// same TCP connection.
pub struct ClientConnection {
    reader: BufReader<TcpStream>,
    out: TcpStream,
}

impl ClientConnection {
    pub fn open(port: u16) -> ClientConnection {
        let stream = connect(port);
        let out = stream.try_clone().expect("clone stream");
        ClientConnection {
            reader: BufReader::new(stream),
            out,
        }
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> ClientResponse {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} on a kept-alive connection: {e}"))
    }

    /// Like `request`, but an `Err` when the server closed the connection.
    pub fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<ClientResponse> {
        self.out
            .write_all(&format_request(method, path, headers, body, false))?;
        read_response(&mut self.reader, method == "HEAD")
    }

    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> ClientResponse {
        self.request("GET", path, headers, b"")
    }
}

// ---------------------------------------------------------------------------
// Envoy
// ---------------------------------------------------------------------------

/// `PluginConfig.failure_policy`: what Envoy does when the wasm VM fails.
#[allow(clippy::enum_variant_names)] // Envoy's names
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Requests get 503: a crashing VM shows up in tests. Test default.
    FailClosed,
    /// Requests bypass the filter (the shipped config's choice).
    FailOpen,
    /// The VM is reloaded.
    FailReload,
}

impl FailurePolicy {
    fn as_yaml(self) -> &'static str {
        match self {
            FailurePolicy::FailClosed => "FAIL_CLOSED",
            FailurePolicy::FailOpen => "FAIL_OPEN",
            FailurePolicy::FailReload => "FAIL_RELOAD",
        }
    }
}

/// How to run Envoy. Start from [`EnvoyOptions::new`] /
/// [`EnvoyOptions::without_filter`] and override fields with `..`.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    /// The filter's configuration, given to it as a JSON string.
    pub plugin_config: Value,
    /// If set, given to the filter verbatim instead of `plugin_config`
    /// (e.g. malformed JSON).
    pub plugin_config_raw: Option<String>,
    /// The upstream cluster: 127.0.0.1:<upstream_port>.
    pub upstream_port: u16,
    /// False: no wasm filter at all (control runs).
    pub with_filter: bool,
    /// HCM `use_remote_address`; false = client address from X-Forwarded-For.
    pub use_remote_address: bool,
    /// Raw YAML fields added to the one virtual host (unindented), e.g. a
    /// `typed_per_filter_config` with Envoy's CORS policy.
    pub virtual_host_extra: String,
    /// HCM `skip_xff_append`: Envoy does not append to X-Forwarded-For (for a loopback peer it
    /// would append its own host address), so a test's chain reaches the filter as written.
    pub skip_xff_append: bool,
    pub failure_policy: FailurePolicy,
    /// `vm_config.environment_variables.key_values`.
    pub vm_env: Vec<(String, String)>,
    /// Raw YAML list items (`- name: ...`, unindented) placed in
    /// `http_filters` before the wasm filter.
    pub extra_http_filters: String,
    /// Raw YAML list items added to `static_resources.clusters`.
    pub extra_clusters: String,
    /// `--component-log-level`, e.g. `"wasm:debug"`.
    pub component_log_level: Option<String>,
    /// `--concurrency` (worker threads).
    pub concurrency: u32,
    /// Serve the listener through LDS from a file in the Envoy's temp dir
    /// instead of `static_resources`, so that [`Envoy::reconfigure`] can
    /// change the filter's configuration while Envoy runs (same VM, same
    /// shared data). Also sets `--drain-time-s 1`.
    pub dynamic_listener: bool,
    /// Load this wasm file instead of negcache's (`NEGCACHE_WASM`), e.g. a benchmark floor
    /// filter. Same filter name, `root_id` and `vm_id`.
    pub wasm: Option<PathBuf>,
    /// Envoy answers every request itself with this status and body (the route's
    /// `direct_response`) instead of routing to the upstream.
    pub direct_response: Option<(u16, String)>,
    /// The JSON access log (default on); off for benchmarks, where writing it would be a
    /// large part of the per-request cost.
    pub access_log: bool,
    /// Raw YAML fields added to the listener (unindented), e.g.
    /// `connection_balance_config: { exact_balance: {} }`.
    pub listener_extra: String,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        EnvoyOptions {
            plugin_config: Value::Object(serde_json::Map::new()),
            plugin_config_raw: None,
            upstream_port: 0,
            with_filter: true,
            use_remote_address: true,
            skip_xff_append: false,
            virtual_host_extra: String::new(),
            failure_policy: FailurePolicy::FailClosed,
            vm_env: Vec::new(),
            extra_http_filters: String::new(),
            extra_clusters: String::new(),
            component_log_level: None,
            concurrency: 2,
            dynamic_listener: false,
            wasm: None,
            direct_response: None,
            access_log: true,
            listener_extra: String::new(),
        }
    }
}

impl EnvoyOptions {
    /// The filter with `plugin_config`, in front of the upstream.
    pub fn new(upstream_port: u16, plugin_config: Value) -> EnvoyOptions {
        EnvoyOptions {
            plugin_config,
            upstream_port,
            ..EnvoyOptions::default()
        }
    }

    /// Envoy's own CORS filter in front of negcache, allowing `origin` (GET and POST with
    /// `authorization`, exposing `retry-after` and `x-negcache`): the second CORS set-up the
    /// README describes.
    pub fn with_envoy_cors(mut self, origin: &str) -> EnvoyOptions {
        self.extra_http_filters.push_str(
            r#"
- name: envoy.filters.http.cors
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors
"#,
        );
        self.virtual_host_extra.push_str(&format!(
            r#"
typed_per_filter_config:
  envoy.filters.http.cors:
    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
    allow_origin_string_match:
    - exact: "{origin}"
    allow_methods: "GET, POST"
    allow_headers: "authorization"
    expose_headers: "retry-after, x-negcache"
"#
        ));
        self
    }

    /// Plain Envoy, no wasm filter.
    pub fn without_filter(upstream_port: u16) -> EnvoyOptions {
        EnvoyOptions {
            upstream_port,
            with_filter: false,
            ..EnvoyOptions::default()
        }
    }

    fn plugin_json(&self) -> String {
        self.plugin_config_raw
            .clone()
            .unwrap_or_else(|| self.plugin_config.to_string())
    }
}

/// A YAML double-quoted scalar (a JSON string literal is one).
fn yaml_str(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// Removes the common indentation, then indents every line by `by` spaces.
fn reindent(text: &str, by: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let common = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let pad = " ".repeat(by);
    let mut out = String::new();
    for line in lines {
        if line.trim().is_empty() {
            continue;
        }
        out.push_str(&pad);
        out.push_str(&line[common..]);
        out.push('\n');
    }
    out
}

/// `text` (YAML at indentation 0) as one list item (`- ` before its first
/// line) indented by `by` spaces.
fn yaml_list_item(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        out.push_str(&pad);
        out.push_str(if i == 0 { "- " } else { "  " });
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The file holding the listener (an LDS `DiscoveryResponse`) when
/// [`EnvoyOptions::dynamic_listener`] is set, in the Envoy's own dir.
pub fn lds_path(dir: &Path) -> PathBuf {
    dir.join("listeners.yaml")
}

/// The connection manager's `access_log` field (indented for [`listener_yaml`]), empty when
/// `opts.access_log` is off.
fn access_log_yaml(opts: &EnvoyOptions, access_log: &Path) -> String {
    if !opts.access_log {
        return String::new();
    }
    format!(
        r#"      access_log:
      - name: envoy.access_loggers.file
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
          path: {access_log}
          log_format:
            json_format:
              method: "%REQ(:METHOD)%"
              path: "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"
              status: "%RESPONSE_CODE%"
              negcache: "%FILTER_STATE(wasm.negcache_decision:PLAIN)%"
              client: "%FILTER_STATE(wasm.negcache_client:PLAIN)%"
              downstream: "%DOWNSTREAM_REMOTE_ADDRESS%"
              upstream_host: "%UPSTREAM_HOST%"
              response_flags: "%RESPONSE_FLAGS%"
              details: "%RESPONSE_CODE_DETAILS%"
"#,
        access_log = yaml_str(&access_log.to_string_lossy()),
    )
}

/// The `ingress` listener (an `envoy.config.listener.v3.Listener`) as YAML
/// at indentation 0: 127.0.0.1:`listener_port`, all paths and authorities
/// to the upstream cluster, the filter loaded from `wasm` (absolute path)
/// with `opts`' plugin configuration, a JSON access log at `access_log`.
/// The one definition of the listener: [`bootstrap_yaml`] embeds it in
/// `static_resources`, [`lds_yaml`] in an LDS response.
pub fn listener_yaml(
    opts: &EnvoyOptions,
    listener_port: u16,
    wasm: &Path,
    access_log: &Path,
) -> String {
    let mut filters = reindent(&opts.extra_http_filters, 6);
    if opts.with_filter {
        let mut wasm_filter = format!(
            r#"- name: envoy.filters.http.wasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      name: negcache
      root_id: negcache
      failure_policy: {policy}
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: {config}
      vm_config:
        vm_id: negcache
        runtime: envoy.wasm.runtime.v8
        code:
          local:
            filename: {wasm}
"#,
            policy = opts.failure_policy.as_yaml(),
            config = yaml_str(&opts.plugin_json()),
            wasm = yaml_str(&wasm.to_string_lossy()),
        );
        if !opts.vm_env.is_empty() {
            wasm_filter.push_str("        environment_variables:\n");
            wasm_filter.push_str("          key_values:\n");
            for (k, v) in &opts.vm_env {
                let _ = writeln!(wasm_filter, "            {}: {}", yaml_str(k), yaml_str(v));
            }
        }
        filters.push_str(&reindent(&wasm_filter, 6));
    }
    filters.push_str(
        r#"      - name: envoy.filters.http.router
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
    );
    let route = match &opts.direct_response {
        Some((status, body)) => format!(
            "            direct_response: {{ status: {status}, body: {{ inline_string: {} }} }}",
            yaml_str(body)
        ),
        None => "            route: { cluster: upstream }".to_string(),
    };
    let access_log_block = access_log_yaml(opts, access_log);
    format!(
        r#"name: ingress
address:
  socket_address: {{ address: 127.0.0.1, port_value: {listener_port} }}
{listener_extra}filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: ingress_http
      use_remote_address: {use_remote_address}
      skip_xff_append: {skip_xff_append}
      normalize_path: true
      merge_slashes: true
{access_log_block}      route_config:
        name: all
        virtual_hosts:
        - name: all
          domains: ["*"]
{virtual_host_extra}          routes:
          - match: {{ prefix: "/" }}
{route}
      http_filters:
{filters}"#,
        use_remote_address = opts.use_remote_address,
        skip_xff_append = opts.skip_xff_append,
        virtual_host_extra = reindent(&opts.virtual_host_extra, 10),
        listener_extra = reindent(&opts.listener_extra, 0),
    )
}

/// The LDS file's content: a `DiscoveryResponse` with `version_info` and
/// the [`listener_yaml`] listener as its one resource.
pub fn lds_yaml(
    opts: &EnvoyOptions,
    listener_port: u16,
    wasm: &Path,
    access_log: &Path,
    version: u64,
) -> String {
    let listener = format!(
        "\"@type\": type.googleapis.com/envoy.config.listener.v3.Listener\n{}",
        listener_yaml(opts, listener_port, wasm, access_log)
    );
    format!(
        "# Generated by tests/common/mod.rs\nversion_info: \"{version}\"\nresources:\n{}",
        yaml_list_item(&listener, 0)
    )
}

/// Envoy bootstrap YAML for `opts`: the [`listener_yaml`] listener, admin
/// on `admin_port`, the upstream cluster (and `opts.extra_clusters`).
/// The listener is in `static_resources`, or with `opts.dynamic_listener`
/// served by LDS from [`lds_path`] in `access_log`'s directory (the Envoy's
/// temp dir, watched for files moved into it; LDS also needs a `node`);
/// write that file with [`lds_yaml`].
pub fn bootstrap_yaml(
    opts: &EnvoyOptions,
    listener_port: u16,
    admin_port: u16,
    wasm: &Path,
    access_log: &Path,
) -> String {
    let mut yaml = format!(
        r#"# Generated by tests/common/mod.rs
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }}
"#
    );
    if opts.dynamic_listener {
        let dir = access_log.parent().unwrap_or(Path::new("."));
        let _ = write!(
            yaml,
            r#"node: {{ id: negcache-test, cluster: negcache-test }}
dynamic_resources:
  lds_config:
    resource_api_version: V3
    path_config_source:
      path: {lds}
      watched_directory:
        path: {dir}
static_resources:
"#,
            lds = yaml_str(&lds_path(dir).to_string_lossy()),
            dir = yaml_str(&dir.to_string_lossy()),
        );
    } else {
        yaml.push_str("static_resources:\n  listeners:\n");
        yaml.push_str(&yaml_list_item(
            &listener_yaml(opts, listener_port, wasm, access_log),
            2,
        ));
    }
    let _ = write!(
        yaml,
        r#"  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {upstream_port} }}
{extra_clusters}"#,
        upstream_port = opts.upstream_port,
        extra_clusters = reindent(&opts.extra_clusters, 2),
    );
    yaml
}

/// One access log line (the test bootstrap logs JSON).
#[derive(Clone, Debug)]
pub struct AccessLogEntry {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// `%FILTER_STATE(wasm.negcache_decision:PLAIN)%`, None when unset.
    pub decision: Option<String>,
    /// `%FILTER_STATE(wasm.negcache_client:PLAIN)%`, None when unset.
    pub client: Option<String>,
    /// The whole line, including `downstream`, `upstream_host`,
    /// `response_flags` and `details`.
    pub raw: Value,
}

impl AccessLogEntry {
    fn parse(line: &str) -> AccessLogEntry {
        let raw: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {line}"));
        let text = |key: &str| -> Option<String> {
            match &raw[key] {
                Value::String(s) if s != "-" => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        };
        AccessLogEntry {
            method: text("method").unwrap_or_default(),
            path: text("path").unwrap_or_default(),
            status: text("status").and_then(|s| s.parse().ok()).unwrap_or(0),
            decision: text("negcache"),
            client: text("client"),
            raw,
        }
    }
}

/// A running Envoy (listener and admin on free ports, own temp dir).
/// Dropping it stops Envoy; if the test is panicking, the end of Envoy's
/// log is printed first.
pub struct Envoy {
    child: Child,
    port: u16,
    admin_port: u16,
    log_path: PathBuf,
    access_log_path: PathBuf,
    config_path: PathBuf,
    /// What it was started with; `reconfigure` renders the listener from it.
    opts: EnvoyOptions,
    wasm: PathBuf,
    /// The LDS file's `version_info`; the lock also serializes reconfigures.
    lds_version: Mutex<u64>,
    dir: TempDir,
}

impl Envoy {
    /// Starts Envoy and waits until admin `/ready` is 200 and the listener
    /// accepts; panics with the log tail otherwise.
    pub fn start(opts: EnvoyOptions) -> Envoy {
        Envoy::try_start(opts).unwrap_or_else(|log| {
            panic!(
                "Envoy did not start. Its log ends with:\n{}",
                tail(&log, 60)
            )
        })
    }

    /// Like `start`, but a failed start (e.g. a rejected configuration)
    /// returns `Err(whole Envoy log)`.
    pub fn try_start(opts: EnvoyOptions) -> Result<Envoy, String> {
        assert!(
            opts.upstream_port != 0,
            "EnvoyOptions.upstream_port is not set"
        );
        let bin = envoy_bin();
        let wasm = if opts.with_filter {
            opts.wasm.clone().unwrap_or_else(wasm_path)
        } else {
            PathBuf::from("unused.wasm")
        };
        let dir = TempDir::new("negcache-e2e");
        let log_path = dir.path().join("envoy.log");
        let access_log_path = dir.path().join("access.log");
        let config_path = dir.path().join("envoy.yaml");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            let admin_port = free_port();
            let yaml = bootstrap_yaml(&opts, port, admin_port, &wasm, &access_log_path);
            fs::write(&config_path, yaml).expect("write envoy.yaml");
            if opts.dynamic_listener {
                let lds = lds_yaml(&opts, port, &wasm, &access_log_path, 1);
                fs::write(lds_path(dir.path()), lds).expect("write listeners.yaml");
            }
            let log = File::create(&log_path).expect("create envoy.log");
            let mut cmd = Command::new(&bin);
            cmd.arg("-c")
                .arg(&config_path)
                .args(["--concurrency", &opts.concurrency.to_string()])
                .args(["--disable-hot-restart", "--log-level", "info"])
                // Access log lines reach the file within ~20 ms.
                .args(["--file-flush-interval-msec", "20"])
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().expect("clone log file")))
                .stderr(Stdio::from(log));
            if let Some(level) = &opts.component_log_level {
                cmd.args(["--component-log-level", level]);
            }
            if opts.dynamic_listener {
                // A replaced listener's old filter chains drain for this
                // long (default 600 s) before they are removed.
                cmd.args(["--drain-time-s", "1"]);
            }
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            match wait_ready(
                &mut child,
                port,
                admin_port,
                &log_path,
                opts.dynamic_listener,
            ) {
                Ok(()) => {
                    return Ok(Envoy {
                        child,
                        port,
                        admin_port,
                        log_path,
                        access_log_path,
                        config_path,
                        opts,
                        wasm,
                        lds_version: Mutex::new(1),
                        dir,
                    })
                }
                Err(log) => {
                    stop_child(&mut child, admin_port);
                    let port_clash =
                        log.contains("Address already in use") || log.contains("cannot bind");
                    if !(port_clash && attempt < 5) {
                        return Err(log);
                    }
                    // Something took a port between free_port() and Envoy's
                    // bind: try other ports.
                }
            }
        }
    }

    /// The Envoy process id (for `/proc/<pid>/stat` and `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The listener port (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// This Envoy's temp dir (config, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_yaml(&self) -> String {
        fs::read_to_string(&self.config_path).unwrap_or_default()
    }

    /// The LDS file as last written (with `dynamic_listener`), else "".
    pub fn listener_config_yaml(&self) -> String {
        if !self.opts.dynamic_listener {
            return String::new();
        }
        fs::read_to_string(lds_path(self.dir.path())).unwrap_or_default()
    }

    // -- live reconfiguration ----------------------------------------------

    /// Gives the running filter a new configuration (requires
    /// [`EnvoyOptions::dynamic_listener`]): the listener is updated through
    /// LDS with `plugin_config`, the rest unchanged. The wasm VM and its
    /// shared data stay (same `vm_id`, same code); only `on_configure` runs
    /// again, on the main thread and on every worker. Returns once new
    /// connections get the new configuration. Panics with the log tail if
    /// Envoy rejects the update (see [`Envoy::try_reconfigure`]) or it does
    /// not take effect within 20 s.
    ///
    /// Connections kept alive from before may still see the old
    /// configuration until they close (the client's one-shot requests use a
    /// fresh connection each).
    pub fn reconfigure(&self, plugin_config: Value) {
        if let Err(log) = self.try_reconfigure(plugin_config) {
            panic!("Envoy rejected the new listener. Its log ends with:\n{log}");
        }
    }

    /// Like [`Envoy::reconfigure`], but `Err(log tail)` when Envoy rejects
    /// the update (`listener_manager.lds.update_rejected` went up, e.g. the
    /// filter's `on_configure` refused the configuration): the old listener
    /// and configuration keep serving. Still panics if nothing happens
    /// within 20 s.
    pub fn try_reconfigure(&self, plugin_config: Value) -> Result<(), String> {
        assert!(
            self.opts.dynamic_listener,
            "reconfigure needs EnvoyOptions.dynamic_listener"
        );
        let mut version = self.lds_version.lock().expect("lds version lock");
        let success = "listener_manager.lds.update_success";
        let rejected = "listener_manager.lds.update_rejected";
        let modified = "listener_manager.listener_modified";
        // Once per worker each time a worker has taken a listener.
        let created = "listener_manager.listener_create_success";
        let (success0, rejected0, modified0, created0) = (
            self.stat(success),
            self.stat(rejected),
            self.stat(modified),
            self.stat(created),
        );
        let workers = self.stat("server.concurrency");

        *version += 1;
        let opts = EnvoyOptions {
            plugin_config,
            plugin_config_raw: None,
            ..self.opts.clone()
        };
        let yaml = lds_yaml(
            &opts,
            self.port,
            &self.wasm,
            &self.access_log_path,
            *version,
        );
        // Envoy reloads on a file moved into the watched dir: write aside,
        // then rename over the listener file.
        let path = lds_path(self.dir.path());
        let tmp = path.with_extension("yaml.tmp");
        fs::write(&tmp, yaml).expect("write listeners.yaml.tmp");
        fs::rename(&tmp, &path).expect("rename listeners.yaml.tmp");

        let timeout = Duration::from_secs(20);
        let deadline = Instant::now() + timeout;
        let mut state = String::new();
        loop {
            let stat = |name: &str| {
                admin_stat(self.admin_port, name).unwrap_or_else(|e| {
                    panic!(
                        "reconfigure: admin API gone ({e}). Envoy's log ends with:\n{}",
                        tail(&self.log(), 60)
                    )
                })
            };
            if stat(rejected) > rejected0 {
                return Err(tail(&self.log(), 40));
            }
            // `listener_modified` goes up before `update_success` does.
            if stat(success) > success0 {
                if stat(modified) == modified0 {
                    return Ok(()); // same listener as before: nothing to do
                }
                let (warming, active, created) = (
                    stat("listener_manager.total_listeners_warming"),
                    stat("listener_manager.total_listeners_active"),
                    stat(created),
                );
                if warming == 0 && active == 1 && created >= created0 + workers {
                    return Ok(());
                }
                state = format!(
                    "warming {warming}, active {active}, \
                     {} of {workers} workers took the listener",
                    created - created0
                );
            }
            assert!(
                Instant::now() < deadline,
                "reconfigure: LDS update {} not in effect after {timeout:?} ({}). \
                 Envoy's log ends with:\n{}",
                *version,
                if state.is_empty() {
                    "not applied"
                } else {
                    &state
                },
                tail(&self.log(), 60)
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the Envoy process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    // -- client ------------------------------------------------------------

    /// One request on a fresh connection (`connection: close`).
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> ClientResponse {
        http_request(self.port, method, path, headers, b"")
    }

    pub fn request_with_body(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> ClientResponse {
        http_request(self.port, method, path, headers, body)
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> ClientResponse {
        self.request("GET", path, headers)
    }

    /// A keep-alive connection to the listener.
    pub fn connect(&self) -> ClientConnection {
        ClientConnection::open(self.port)
    }

    /// Sends `raw` as is on a fresh connection and reads one response.
    pub fn request_raw(&self, raw: &[u8]) -> ClientResponse {
        let stream = connect(self.port);
        let mut out = stream.try_clone().expect("clone stream");
        out.write_all(raw).expect("send raw request");
        read_response(&mut BufReader::new(stream), false)
            .unwrap_or_else(|e| panic!("read response to raw request: {e}"))
    }

    /// Sends `raw` as is and returns every byte received until the server
    /// closes the connection (or 5 s pass).
    pub fn send_raw(&self, raw: &[u8]) -> Vec<u8> {
        let mut stream = connect(self.port);
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        stream.write_all(raw).expect("send raw request");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    }

    // -- admin -------------------------------------------------------------

    /// GET on the admin API.
    pub fn admin(&self, path: &str) -> ClientResponse {
        http_request(self.admin_port, "GET", path, &[], b"")
    }

    /// POST on the admin API (e.g. `/reset_counters`).
    pub fn admin_post(&self, path: &str) -> ClientResponse {
        http_request(self.admin_port, "POST", path, &[], b"")
    }

    /// A counter or gauge by its full name (`wasmcustom.negcache_hits_total`,
    /// `http.ingress_http.downstream_rq_total`); 0 when absent.
    pub fn stat(&self, name: &str) -> u64 {
        admin_stat(self.admin_port, name).unwrap_or_else(|e| panic!("admin /stats: {e}"))
    }

    /// A filter metric once the filter has handed Envoy its updates: waits one flush period
    /// (`METRICS_SETTLE`), then reads it.
    pub fn metric(&self, name: &str) -> u64 {
        thread::sleep(METRICS_SETTLE);
        self.metric_now(name)
    }

    /// A filter metric as Envoy holds it right now: `stat("wasmcustom.<name>")`.
    pub fn metric_now(&self, name: &str) -> u64 {
        self.stat(&format!("wasmcustom.{name}"))
    }

    /// Waits until `metric(name) == expected` (filters may update metrics
    /// after the response was sent); panics with the last value otherwise.
    pub fn wait_metric(&self, name: &str, expected: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let value = self.metric_now(name);
            if value == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "metric {name} is {value}, expected {expected}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// All stats, `name: value` per line.
    pub fn stats_text(&self) -> String {
        self.admin("/stats").body_str()
    }

    /// `/stats/prometheus`.
    pub fn prometheus(&self) -> String {
        let resp = self.admin("/stats/prometheus");
        assert_eq!(resp.status, 200, "admin /stats/prometheus");
        resp.body_str()
    }

    /// Downstream connections accepted by worker 0 and worker 1.
    pub fn worker_connections(&self) -> (u64, u64) {
        let stat = |w: u32| {
            self.stat(&format!(
                "listener.127.0.0.1_{}.worker_{w}.downstream_cx_total",
                self.port
            ))
        };
        (stat(0), stat(1))
    }

    // -- logs --------------------------------------------------------------

    /// Envoy's whole log (stdout and stderr).
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// Waits until Envoy's log contains `needle`; returns the log.
    pub fn wait_log_contains(&self, needle: &str) -> String {
        let mut log = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            log = self.log();
            if log.contains(needle) {
                return log;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "Envoy log never contained {needle:?}; it ends with:\n{}",
            tail(&log, 40)
        );
    }

    /// The access log as written so far (one JSON object per line).
    pub fn access_log(&self) -> String {
        fs::read_to_string(&self.access_log_path).unwrap_or_default()
    }

    pub fn access_log_entries(&self) -> Vec<AccessLogEntry> {
        self.access_log()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(AccessLogEntry::parse)
            .collect()
    }

    /// How many of the first `n` requests' access log lines show `decision`.
    pub fn count_decisions(&self, n: usize, decision: &str) -> usize {
        self.wait_access_log(n)
            .iter()
            .filter(|entry| entry.decision.as_deref() == Some(decision))
            .count()
    }

    /// Waits until the access log has at least `n` entries (lines are
    /// written when a stream ends, after the client got its response).
    pub fn wait_access_log(&self, n: usize) -> Vec<AccessLogEntry> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let entries = self.access_log_entries();
            if entries.len() >= n {
                return entries;
            }
            assert!(
                Instant::now() < deadline,
                "access log has {} entries, expected {n}:\n{}",
                entries.len(),
                self.access_log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- Envoy log ({}), last lines ---\n{}\n--- access log ---\n{}",
                self.log_path.display(),
                tail(&self.log(), 40),
                tail(&self.access_log(), 20)
            );
        }
        stop_child(&mut self.child, self.admin_port);
    }
}

fn read_log(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// A stat by its full name from the admin API on `admin_port` (0 when
/// absent); `Err` when the admin API does not answer.
fn admin_stat(admin_port: u16, name: &str) -> Result<u64, String> {
    let mut regex = String::from("^");
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() && c != '_' {
            regex.push('\\');
        }
        regex.push(c);
    }
    regex.push('$');
    let path = format!("/stats?filter={}", percent_encode(&regex));
    let addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let resp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .and_then(|stream| {
            stream.set_read_timeout(Some(WAIT))?;
            stream.set_write_timeout(Some(WAIT))?;
            stream
                .try_clone()?
                .write_all(&format_request("GET", &path, &[], b"", true))?;
            read_response(&mut BufReader::new(stream), false)
        })
        .map_err(|e| format!("GET {path} on :{admin_port}: {e}"))?;
    if resp.status != 200 {
        return Err(format!("GET {path}: {} {}", resp.status, resp.body_str()));
    }
    Ok(resp
        .body_str()
        .lines()
        .filter_map(|line| line.split_once(": "))
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0))
}

/// Waits until admin `/ready` is 200 and the listener accepts; `Err(log)`
/// if Envoy exits, rejects its LDS listener (`dynamic`) or is not ready in
/// time.
fn wait_ready(
    child: &mut Child,
    port: u16,
    admin_port: u16,
    log: &Path,
    dynamic: bool,
) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{}\n[envoy exited: {status}]", read_log(log)));
        }
        if admin_ready(admin_port) {
            if !dynamic {
                // A static listener that cannot bind makes Envoy exit.
                if listener_accepts(port) {
                    return Ok(());
                }
            } else {
                // A rejected LDS listener (e.g. its port is taken) does not
                // stop Envoy: it runs on without one, and what accepts on
                // the port may be someone else.
                let stat = |name| admin_stat(admin_port, name).unwrap_or(0);
                if stat("listener_manager.lds.update_rejected") > 0 {
                    return Err(format!("{}\n[listener rejected]", read_log(log)));
                }
                if stat("listener_manager.total_listeners_active") == 1 && listener_accepts(port) {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{}\n[not ready after {WAIT:?}]", read_log(log)));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn admin_ready(admin_port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(mut out) = stream.try_clone() else {
        return false;
    };
    if out
        .write_all(&format_request("GET", "/ready", &[], b"", true))
        .is_err()
    {
        return false;
    }
    read_response(&mut BufReader::new(stream), false).is_ok_and(|r| r.status == 200)
}

fn listener_accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// Stops Envoy: admin `/quitquitquit` (a graceful exit, like SIGTERM), then
/// SIGKILL if it is still running after 5 s.
fn stop_child(child: &mut Child, admin_port: u16) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
    if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.write_all(&format_request("POST", "/quitquitquit", &[], b"", true));
        let _ = s.read_to_end(&mut Vec::new());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Config validation (`envoy --mode validate`)
// ---------------------------------------------------------------------------

/// Runs `envoy --mode validate -c <config>` with cwd = the config's
/// directory. Returns (success, stdout + stderr). The filter's
/// `on_configure` runs under validate, so its log lines are in the output.
pub fn envoy_validate(config: &Path) -> (bool, String) {
    let dir = config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "-c"])
        .arg(config)
        .args(["--disable-hot-restart", "--log-level", "info"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run envoy --mode validate");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Writes a test bootstrap whose filter gets `plugin_json` verbatim to
/// `<dir>/envoy.yaml` and returns its path.
pub fn write_plugin_bootstrap(dir: &Path, plugin_json: &str) -> PathBuf {
    let opts = EnvoyOptions {
        plugin_config_raw: Some(plugin_json.to_string()),
        upstream_port: 1,
        ..EnvoyOptions::default()
    };
    let path = dir.join("envoy.yaml");
    let yaml = bootstrap_yaml(&opts, 0, 0, &wasm_path(), &dir.join("access.log"));
    fs::write(&path, yaml).expect("write envoy.yaml");
    path
}

/// Validates the filter configuration `plugin_json` with
/// `envoy --mode validate`: (accepted, Envoy's output).
pub fn validate_plugin_config(plugin_json: &str) -> (bool, String) {
    let dir = TempDir::new("negcache-validate");
    let path = write_plugin_bootstrap(dir.path(), plugin_json);
    envoy_validate(&path)
}
