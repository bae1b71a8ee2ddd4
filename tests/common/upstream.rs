//! The upstream behind Envoy: an HTTP/1.1 server on 127.0.0.1:<free port>, one thread per
//! connection, keep-alive. Scripted ([`Upstream::start`]): every request is parsed and recorded,
//! then a handler picks the answer, with any framing a test needs (chunks, early ends, delays).
//! Lean ([`Upstream::lean`], for the benchmark): answers prepared once, picked by path prefix,
//! requests only counted, so that the upstream costs little next to the Envoy being measured.

use std::fmt::Write as _;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::Duration;

use super::http::{
    content_length, find_header, find_headers, is_chunked, read_chunked, read_exactly, read_head,
    reason_phrase, status_has_no_body,
};

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

/// An upstream response. Builders:
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

    /// The status line and the headers set, without the empty line that ends the head.
    fn head(&self) -> String {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\n",
            self.status,
            reason_phrase(self.status)
        );
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        head
    }

    /// A response with a whole body (`BodyMode::Full`) as bytes: content-length added unless
    /// the test framed it itself; no body for HEAD or a status that has none.
    fn full_bytes(&self, head_request: bool) -> Vec<u8> {
        let mut head = self.head();
        let framed = self.has_header("content-length") || self.has_header("transfer-encoding");
        if !framed && !status_has_no_body(self.status) {
            let _ = write!(head, "content-length: {}\r\n", self.body.len());
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if !head_request && !status_has_no_body(self.status) {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }

    /// Writes the response; returns whether the connection must close.
    fn write_to(&self, out: &mut TcpStream, head_request: bool) -> io::Result<bool> {
        let send_body = !head_request && !status_has_no_body(self.status);
        match &self.mode {
            BodyMode::Full => {
                out.write_all(&self.full_bytes(head_request))?;
                out.flush()?;
                Ok(false)
            }
            BodyMode::Truncated { declared } => {
                let mut head = self.head();
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
                let mut head = self.head();
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
                let mut head = self.head();
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

/// Lean mode's answers: (path prefix, response bytes), first match wins.
type LeanRoutes = Vec<(Vec<u8>, Vec<u8>)>;

enum Serve {
    Scripted(RwLock<Arc<Handler>>),
    Lean {
        routes: LeanRoutes,
        not_found: Vec<u8>,
    },
}

struct UpstreamShared {
    serve: Serve,
    /// Scripted mode: every request, in arrival order.
    requests: Mutex<Vec<Request>>,
    /// Lean mode: how many requests were answered.
    answered: AtomicUsize,
    stop: AtomicBool,
}

/// The HTTP/1.1 upstream on 127.0.0.1:<free port>: one thread per connection, keep-alive.
/// Stops accepting when dropped.
pub struct Upstream {
    port: u16,
    shared: Arc<UpstreamShared>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Upstream {
    /// A scripted upstream: request bodies (content-length or chunked) are read, every request
    /// is recorded before `handler` answers it.
    pub fn start<F>(handler: F) -> Upstream
    where
        F: Fn(&Request) -> Response + Send + Sync + 'static,
    {
        Upstream::serve(Serve::Scripted(RwLock::new(Arc::new(handler))))
    }

    /// Always answers with a clone of `response`.
    pub fn always(response: Response) -> Upstream {
        Upstream::start(move |_| response.clone())
    }

    /// A lean upstream: each request gets the first of `routes` whose path prefix its path
    /// starts with (404 when none does), rendered to bytes once, here. Requests are counted
    /// ([`Upstream::count`]), not recorded; their bodies must be framed by content-length.
    /// The responses must be plain ones (no delay, no chunks, no early end).
    pub fn lean(routes: &[(&str, Response)]) -> Upstream {
        let render = |response: &Response| {
            assert!(
                matches!(response.mode, BodyMode::Full) && response.delay.is_none(),
                "a lean upstream sends plain responses only: {response:?}"
            );
            response.full_bytes(false)
        };
        Upstream::serve(Serve::Lean {
            routes: routes
                .iter()
                .map(|(prefix, response)| (prefix.as_bytes().to_vec(), render(response)))
                .collect(),
            not_found: render(&Response::new(404)),
        })
    }

    fn serve(serve: Serve) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let port = listener.local_addr().expect("upstream addr").port();
        let shared = Arc::new(UpstreamShared {
            serve,
            requests: Mutex::new(Vec::new()),
            answered: AtomicUsize::new(0),
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
                    thread::spawn(move || match &conn_shared.serve {
                        Serve::Scripted(handler) => serve_scripted(stream, handler, &conn_shared),
                        Serve::Lean { routes, not_found } => {
                            serve_lean(stream, routes, not_found, &conn_shared);
                        }
                    });
                }
            }
        });
        Upstream {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Replaces the handler of a scripted upstream for requests that arrive from now on.
    pub fn set_handler<F>(&self, handler: F)
    where
        F: Fn(&Request) -> Response + Send + Sync + 'static,
    {
        let Serve::Scripted(current) = &self.shared.serve else {
            panic!("set_handler on a lean upstream");
        };
        *current.write().expect("handler lock") = Arc::new(handler);
    }

    /// Every request received so far, in arrival order (none for a lean upstream).
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().expect("requests lock").clone()
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        match self.shared.serve {
            Serve::Scripted(_) => self.shared.requests.lock().expect("requests lock").len(),
            Serve::Lean { .. } => self.shared.answered.load(Ordering::Relaxed),
        }
    }

    /// Asserts that exactly `expected` requests arrived; the message lists them.
    pub fn assert_count(&self, expected: usize) {
        let count = self.count();
        if count != expected {
            let requests: Vec<String> = self
                .requests()
                .iter()
                .map(|r| format!("{} {}", r.method, r.path))
                .collect();
            panic!(
                "the upstream got {count} requests, expected {expected}: {}",
                requests.join(", ")
            );
        }
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
        self.shared.answered.store(0, Ordering::Relaxed);
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

fn serve_scripted(stream: TcpStream, handler: &RwLock<Arc<Handler>>, shared: &UpstreamShared) {
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
        let handler = Arc::clone(&handler.read().expect("handler lock"));
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

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The content-length of a raw request head, 0 when it has none.
fn head_content_length(head: &[u8]) -> usize {
    head.split(|&b| b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let (name, value) = line.split_at(colon);
            name.eq_ignore_ascii_case(b"content-length")
                .then(|| String::from_utf8_lossy(&value[1..]).trim().parse().ok())
                .flatten()
        })
        .next()
        .unwrap_or(0)
}

/// Lean mode's connection loop: requests are found in the raw buffer, not parsed into a
/// `Request`, and answered with prepared bytes; pipelined requests are answered in turn.
fn serve_lean(
    mut stream: TcpStream,
    routes: &LeanRoutes,
    not_found: &[u8],
    shared: &UpstreamShared,
) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 16 * 1024];
    let mut len = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        // Answer every complete request in the buffer.
        while let Some(end) = find(&buf[..len], b"\r\n\r\n") {
            let total = end + 4 + head_content_length(&buf[..end]);
            if len < total {
                break;
            }
            let path = buf[..end].split(|&b| b == b' ').nth(1).unwrap_or_default();
            let response = routes
                .iter()
                .find(|(prefix, _)| path.starts_with(prefix))
                .map_or(not_found, |(_, bytes)| bytes.as_slice());
            shared.answered.fetch_add(1, Ordering::Relaxed);
            if stream.write_all(response).is_err() {
                return;
            }
            buf.copy_within(total..len, 0);
            len -= total;
        }
        if len == buf.len() {
            if buf.len() >= 1 << 20 {
                return;
            }
            buf.resize(buf.len() * 2, 0);
        }
        match stream.read(&mut buf[len..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
    }
}
