//! One of the filter's own replies, written once into one buffer in the form the host takes it:
//! the body, then the headers in the proxy-wasm serialized map layout (the one
//! `request::Headers::from_serialized` reads). A reply is one allocation and no second copy,
//! where a list of name/value strings would be one allocation per value, then the layout.
//! (Measured in Envoy, the seven allocations this saves a hit were below the noise of its
//! time: bench/results.md, "Attribution"; the decision allocates nothing it does not need.)

use crate::decimal;

/// The most headers a reply carries: a hit's five (`content-type`, `www-authenticate`,
/// `x-negcache`, `age`, `retry-after`) or the 429's four, and the four CORS headers.
const MAX_HEADERS: usize = 10;

/// Room after the body for the count and length table of `MAX_HEADERS` headers.
const TABLE: usize = 4 + 8 * MAX_HEADERS;

/// Room for the names and values of a typical reply's headers.
const HEADERS_CAPACITY: usize = 256;

#[derive(Clone)]
pub struct LocalReply {
    pub status: u16,
    /// The body, then `TABLE` bytes for the count and length table (written by `host_form`,
    /// right before the first name), then each header as `name\0value\0`.
    buffer: Vec<u8>,
    body_len: usize,
    /// Each header's name and value length, in order.
    headers: [(&'static str, u32); MAX_HEADERS],
    count: usize,
}

impl LocalReply {
    /// A reply whose body is the concatenation of `body`; headers are pushed after.
    pub fn new(status: u16, body: &[&[u8]]) -> LocalReply {
        let body_len: usize = body.iter().map(|part| part.len()).sum();
        let mut buffer = Vec::with_capacity(body_len + TABLE + HEADERS_CAPACITY);
        for part in body {
            buffer.extend_from_slice(part);
        }
        buffer.resize(body_len + TABLE, 0);
        LocalReply {
            status,
            buffer,
            body_len,
            headers: [("", 0); MAX_HEADERS],
            count: 0,
        }
    }

    /// Adds a header whose value is the concatenation of `parts`. A header past `MAX_HEADERS`
    /// is left out: the filter's replies carry at most nine (a test in
    /// `exchange/tests/cache.rs` sends the largest, a hit with every CORS header).
    pub fn push_parts(&mut self, name: &'static str, parts: &[&[u8]]) {
        let Some(slot) = self.headers.get_mut(self.count) else {
            return;
        };
        let value_len: usize = parts.iter().map(|part| part.len()).sum();
        *slot = (name, len32(value_len));
        self.count += 1;
        self.buffer.extend_from_slice(name.as_bytes());
        self.buffer.push(0);
        for part in parts {
            self.buffer.extend_from_slice(part);
        }
        self.buffer.push(0);
    }

    pub fn push(&mut self, name: &'static str, value: &str) {
        self.push_parts(name, &[value.as_bytes()]);
    }

    /// Adds a header whose value is `n` in decimal.
    pub fn push_decimal(&mut self, name: &'static str, n: u64) {
        self.push_parts(name, &[decimal::digits(n).as_bytes()]);
    }

    pub fn body(&self) -> &[u8] {
        &self.buffer[..self.body_len]
    }

    /// The headers in the host's layout, and the body: the count and the length table are
    /// written into the room right before the first name.
    pub fn host_form(&mut self) -> (&[u8], &[u8]) {
        let start = self.body_len + TABLE - 4 - 8 * self.count;
        let mut at = start;
        let mut put = |word: u32| {
            self.buffer[at..at + 4].copy_from_slice(&word.to_le_bytes());
            at += 4;
        };
        put(len32(self.count));
        for &(name, value_len) in &self.headers[..self.count] {
            put(len32(name.len()));
            put(value_len);
        }
        let (body, headers) = self.buffer.split_at(start);
        (headers, &body[..self.body_len])
    }

    /// Each header, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, &[u8])> {
        let mut at = self.body_len + TABLE;
        self.headers[..self.count]
            .iter()
            .map(move |&(name, value_len)| {
                let value_at = at + name.len() + 1;
                at = value_at + value_len as usize + 1;
                (name, &self.buffer[value_at..value_at + value_len as usize])
            })
    }

    /// The first value of `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .find(|(key, _)| *key == name)
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }
}

/// Two replies are equal when a client would see the same: the room for the length table is
/// not part of it.
impl PartialEq for LocalReply {
    fn eq(&self, other: &Self) -> bool {
        self.status == other.status
            && self.body() == other.body()
            && self.headers().eq(other.headers())
    }
}

impl Eq for LocalReply {}

impl std::fmt::Debug for LocalReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<_> = self
            .headers()
            .map(|(name, value)| (name, String::from_utf8_lossy(value)))
            .collect();
        f.debug_struct("LocalReply")
            .field("status", &self.status)
            .field("headers", &headers)
            .field("body", &String::from_utf8_lossy(self.body()))
            .finish()
    }
}

/// Lengths in the layout are `u32`; a reply's are a few hundred bytes.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Headers;

    #[test]
    fn the_host_reads_back_the_body_and_the_headers_in_order() {
        let mut reply = LocalReply::new(429, &[b"{\"retry_after\":", b"7", b"}"]);
        let (map, body) = reply.host_form();
        assert_eq!(body, b"{\"retry_after\":7}");
        assert_eq!(Headers::from_serialized(map).unwrap().lines().count(), 0);

        reply.push("content-type", "application/json");
        reply.push_decimal("retry-after", 3600);
        reply.push_parts("ratelimit", &[b"r=0;t=", b"7"]);
        reply.push("vary", "");
        reply.push("vary", "origin");
        let before = reply.clone();
        let (map, body) = reply.host_form();
        let (map, body) = (map.to_vec(), body.to_vec());
        assert_eq!(body, b"{\"retry_after\":7}");
        let read = Headers::from_serialized(&map).unwrap();
        assert_eq!(
            read.lines().map(|(name, _)| name).collect::<Vec<_>>(),
            [
                &b"content-type"[..],
                b"retry-after",
                b"ratelimit",
                b"vary",
                b"vary"
            ]
        );
        assert_eq!(read.first("retry-after"), Some(&b"3600"[..]));
        assert_eq!(read.first("ratelimit"), Some(&b"r=0;t=7"[..]));
        assert_eq!(read.all("vary").collect::<Vec<_>>(), [&b""[..], b"origin"]);
        assert_eq!(reply.header("retry-after"), Some("3600"));
        assert_eq!(reply.body(), b"{\"retry_after\":7}");
        assert_eq!(
            reply, before,
            "putting it in the host's form changes nothing a client sees"
        );
        let mut other = before.clone();
        other.push("x-other", "1");
        assert_ne!(reply, other);

        // A header added after the reply was once put in the host's form: the table is
        // written anew.
        reply.push("x-late", "1");
        let map = reply.host_form().0.to_vec();
        let read = Headers::from_serialized(&map).unwrap();
        assert_eq!(read.first("x-late"), Some(&b"1"[..]));
        assert_eq!(read.first("content-type"), Some(&b"application/json"[..]));
    }

    #[test]
    fn headers_past_the_most_a_reply_carries_are_left_out() {
        let mut reply = LocalReply::new(401, &[]);
        for _ in 0..MAX_HEADERS + 2 {
            reply.push("x", "1");
        }
        assert_eq!(reply.headers().count(), MAX_HEADERS);
        let (map, body) = reply.host_form();
        assert!(body.is_empty());
        assert_eq!(
            Headers::from_serialized(map).unwrap().all("x").count(),
            MAX_HEADERS
        );
    }
}
