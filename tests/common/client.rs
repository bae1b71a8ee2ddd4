//! The client side: one request per fresh connection ([`http_request`]), or several on one
//! kept-alive connection ([`ClientConnection`]).

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use super::http::{
    content_length, find_header, find_headers, is_chunked, read_chunked, read_exactly, read_head,
    status_has_no_body,
};
use super::WAIT;

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

    /// The `x-negcache` header: `Some("hit")` for a replayed entry, `Some("shadow-hit")` in
    /// shadow mode, `None` when the upstream answered.
    pub fn negcache(&self) -> Option<&str> {
        self.header("x-negcache")
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

/// A connection to 127.0.0.1:`port` with the harness's timeouts.
pub fn connect(port: u16) -> TcpStream {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    stream.set_write_timeout(Some(WAIT)).expect("write timeout");
    let _ = stream.set_nodelay(true);
    stream
}

/// A request as bytes: `host: localhost` and a content-length unless given, and
/// `connection: close` when `close` is set.
pub fn format_request(
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
pub fn read_response(reader: &mut impl BufRead, head_request: bool) -> io::Result<ClientResponse> {
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

/// One request on a fresh connection, `Err` instead of a panic when the server does not answer
/// (for polling an admin API that may not be up yet, or already gone).
pub fn try_http_request(port: u16, method: &str, path: &str) -> io::Result<ClientResponse> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.set_write_timeout(Some(WAIT))?;
    stream
        .try_clone()?
        .write_all(&format_request(method, path, &[], b"", true))?;
    read_response(&mut BufReader::new(stream), method == "HEAD")
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
