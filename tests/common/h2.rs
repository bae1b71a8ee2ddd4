//! HTTP/2 as the tests need it. Well-formed requests go through `curl --http2-prior-knowledge`
//! (what a client sees, decoded); a request with header fields a real client library would
//! refuse to send (upper-case or connection-specific names) goes through [`send_raw_headers`],
//! which writes the frames itself and reports only how the server answered the stream.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use super::client::ClientResponse;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;

/// How the server answered a request stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamAnswer {
    /// Response headers: the stream was accepted and answered.
    Headers,
    /// The stream was reset, with this error code.
    Reset(u32),
    /// The whole connection was closed, with this error code.
    GoAway(u32),
    /// The connection ended without any of these.
    Closed,
}

/// `curl --http2-prior-knowledge` (HTTP/2 over cleartext, no upgrade) GET of `path`, each header
/// sent as its own field (two `cookie` headers are two crumbs).
pub fn curl_get(port: u16, path: &str, headers: &[(&str, &str)]) -> ClientResponse {
    let mut command = Command::new("curl");
    command.args(["-sS", "-i", "--http2-prior-knowledge", "--max-time", "20"]);
    for (name, value) in headers {
        command.arg("-H").arg(format!("{name}: {value}"));
    }
    command.arg(format!("http://127.0.0.1:{port}{path}"));
    let output = command.output().expect("run curl (Debian package curl)");
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = output.stdout;
    let split = text
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("curl -i output has a head");
    let head = String::from_utf8_lossy(&text[..split]);
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    assert!(
        status_line.starts_with("HTTP/2 "),
        "not HTTP/2: {status_line}"
    );
    let status = status_line[7..].trim().parse().expect("status");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    ClientResponse {
        status,
        headers,
        body: text[split + 4..].to_vec(),
        complete: true,
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame length");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn hpack_integer(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// Sends one GET stream whose header block holds `fields` exactly as given (HPACK literals
/// without indexing or Huffman), and reports how the server answered it.
pub fn send_raw_headers(port: u16, fields: &[(&str, &str)]) -> StreamAnswer {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x00);
        hpack_integer(&mut block, 0, 7, name.len());
        block.extend_from_slice(name.as_bytes());
        hpack_integer(&mut block, 0, 7, value.len());
        block.extend_from_slice(value.as_bytes());
    }
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    // END_STREAM | END_HEADERS
    out.extend(frame(HEADERS, 0x5, 1, &block));
    stream.write_all(&out).expect("send frames");
    loop {
        let mut head = [0u8; 9];
        if stream.read_exact(&mut head).is_err() {
            return StreamAnswer::Closed;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if stream.read_exact(&mut payload).is_err() {
            return StreamAnswer::Closed;
        }
        let stream_id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let code = |at: usize| {
            payload
                .get(at..at + 4)
                .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        match head[3] {
            HEADERS if stream_id == 1 => return StreamAnswer::Headers,
            RST_STREAM if stream_id == 1 => return StreamAnswer::Reset(code(0)),
            GOAWAY => return StreamAnswer::GoAway(code(4)),
            SETTINGS if head[4] & 0x1 == 0 => {
                // Acknowledge the server's settings, as a client must.
                let _ = stream.write_all(&frame(SETTINGS, 0x1, 0, &[]));
            }
            _ => {}
        }
    }
}
