//! A read-only view of request or response headers as the host hands them over: every line,
//! in order, names lower-case, values as raw bytes (they need not be UTF-8). The view borrows
//! the host's serialized map, so reading a request's headers is one copy, not two per line.

use std::borrow::Cow;

use arrayvec::ArrayVec;

/// What a single-valued header holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Single<'a> {
    Absent,
    One(&'a [u8]),
    /// Present on several lines: ambiguous, so it is never trusted.
    Many,
}

/// Lines kept on the stack for a map of up to this many headers (Envoy adds a few to a
/// client's); a larger one goes to the heap. Every request reads a map, and the decision
/// allocates nothing it does not need (src/exchange/tests/allocations.rs).
const INLINE_LINES: usize = 32;

type Line<'a> = (&'a [u8], &'a [u8]);

pub struct Headers<'a> {
    lines: Lines<'a>,
}

// Large on purpose: the lines on the stack are the allocation a boxed variant would bring back.
#[allow(clippy::large_enum_variant)]
enum Lines<'a> {
    Few(ArrayVec<Line<'a>, INLINE_LINES>),
    Many(Vec<Line<'a>>),
}

impl<'a> Lines<'a> {
    fn with_capacity(count: usize) -> Self {
        if count <= INLINE_LINES {
            Lines::Few(ArrayVec::new())
        } else {
            Lines::Many(Vec::with_capacity(count))
        }
    }

    fn push(&mut self, line: Line<'a>) {
        match self {
            Lines::Few(few) => {
                if let Err(full) = few.try_push(line) {
                    let mut many = Vec::with_capacity(INLINE_LINES * 2);
                    many.extend(few.drain(..));
                    many.push(full.element());
                    *self = Lines::Many(many);
                }
            }
            Lines::Many(many) => many.push(line),
        }
    }

    fn as_slice(&self) -> &[Line<'a>] {
        match self {
            Lines::Few(few) => few,
            Lines::Many(many) => many,
        }
    }
}

impl<'a> Headers<'a> {
    /// From name/value pairs (tests, benchmarks).
    pub fn from_pairs<N: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &'a [(N, V)]) -> Self {
        let mut lines = Lines::with_capacity(pairs.len());
        for (name, value) in pairs {
            lines.push((name.as_ref(), value.as_ref()));
        }
        Headers { lines }
    }

    /// From the proxy-wasm serialized map: a little-endian `u32` count, then a `u32` name
    /// length and a `u32` value length per line, then each name and value followed by a NUL.
    /// `None` when the bytes do not have that shape.
    pub fn from_serialized(bytes: &'a [u8]) -> Option<Self> {
        let read_u32 = |at: usize| -> Option<usize> {
            let word = bytes.get(at..at + 4)?;
            Some(u32::from_le_bytes([word[0], word[1], word[2], word[3]]) as usize)
        };
        if bytes.is_empty() {
            return Some(Headers {
                lines: Lines::with_capacity(0),
            });
        }
        let count = read_u32(0)?;
        let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
        if data > bytes.len() {
            return None;
        }
        let mut lines = Lines::with_capacity(count);
        for index in 0..count {
            let name_len = read_u32(4 + index * 8)?;
            let value_len = read_u32(8 + index * 8)?;
            let name = bytes.get(data..data.checked_add(name_len)?)?;
            data += name_len + 1;
            let value = bytes.get(data..data.checked_add(value_len)?)?;
            data += value_len + 1;
            lines.push((name, value));
        }
        Some(Headers { lines })
    }

    /// Every line, in order.
    pub fn lines(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + '_ {
        self.lines.as_slice().iter().copied()
    }

    /// Every line of `name` (lower-case), in order.
    pub fn all<'n>(&'n self, name: &'n str) -> impl DoubleEndedIterator<Item = &'a [u8]> + 'n {
        self.lines
            .as_slice()
            .iter()
            .filter(move |(key, _)| *key == name.as_bytes())
            .map(|(_, value)| *value)
    }

    pub fn single(&self, name: &str) -> Single<'a> {
        let mut values = self.all(name);
        match (values.next(), values.next()) {
            (None, _) => Single::Absent,
            (Some(value), None) => Single::One(value),
            (Some(_), Some(_)) => Single::Many,
        }
    }

    /// The first line of `name`, for headers the proxy itself guarantees to be single
    /// (pseudo-headers, `:status`).
    pub fn first(&self, name: &str) -> Option<&'a [u8]> {
        self.all(name).next()
    }

    pub fn first_str(&self, name: &str) -> Option<&'a str> {
        self.first(name)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.all(name).next().is_some()
    }
}

/// What a request asks for, borrowed from its headers: nothing is copied unless it has to be
/// changed (an `:authority` with capitals, a path or method that is not UTF-8).
pub struct RequestLine<'a> {
    /// `:authority`, lower-cased.
    pub authority: Cow<'a, [u8]>,
    pub method: Cow<'a, str>,
    /// `:path` with its query; `/` when absent.
    pub raw_path: Cow<'a, str>,
}

impl<'a> RequestLine<'a> {
    pub fn of(headers: &Headers<'a>) -> RequestLine<'a> {
        let authority = headers.first(":authority").unwrap_or_default();
        RequestLine {
            authority: if authority.iter().any(u8::is_ascii_uppercase) {
                Cow::Owned(authority.to_ascii_lowercase())
            } else {
                Cow::Borrowed(authority)
            },
            method: String::from_utf8_lossy(headers.first(":method").unwrap_or_default()),
            raw_path: String::from_utf8_lossy(headers.first(":path").unwrap_or(b"/")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local_reply::LocalReply;

    /// The host's layout of `pairs`, as the filter writes it for its own replies.
    fn serialize(pairs: &[(&'static str, &[u8])]) -> Vec<u8> {
        let mut reply = LocalReply::new(200, &[]);
        for (name, value) in pairs {
            reply.push_parts(name, &[value]);
        }
        reply.host_form().0.to_vec()
    }

    #[test]
    fn the_request_line_is_borrowed_unless_it_must_change() {
        let plain: &[(&str, &[u8])] = &[
            (":authority", b"api.example.com"),
            (":method", b"GET"),
            (":path", b"/a?b=1"),
        ];
        let headers = Headers::from_pairs(plain);
        let line = RequestLine::of(&headers);
        assert!(matches!(line.authority, Cow::Borrowed(b"api.example.com")));
        assert!(matches!(line.method, Cow::Borrowed("GET")));
        assert!(matches!(line.raw_path, Cow::Borrowed("/a?b=1")));

        let odd: &[(&str, &[u8])] = &[(":authority", b"API.Example.com"), (":path", b"/\xff")];
        let headers = Headers::from_pairs(odd);
        let line = RequestLine::of(&headers);
        assert_eq!(&*line.authority, b"api.example.com");
        assert_eq!(line.method, "");
        assert_eq!(line.raw_path, "/\u{fffd}");
        assert_eq!(
            RequestLine::of(&Headers::from_pairs::<&str, &[u8]>(&[])).raw_path,
            "/"
        );
    }

    #[test]
    fn single_distinguishes_absent_one_and_many() {
        let owned: &[(&str, &[u8])] = &[("a", b"1"), ("b", b"2"), ("b", b"3"), ("c", b"\xff")];
        let headers = Headers::from_pairs(owned);
        assert_eq!(headers.single("x"), Single::Absent);
        assert_eq!(headers.single("a"), Single::One(b"1"));
        assert_eq!(headers.single("b"), Single::Many);
        assert_eq!(headers.all("b").collect::<Vec<_>>(), vec![b"2", b"3"]);
        assert_eq!(headers.first_str("c"), None);
        assert_eq!(headers.first("c"), Some(&b"\xff"[..]));
        assert!(headers.contains("a") && !headers.contains("z"));
    }

    #[test]
    fn a_map_of_more_lines_than_kept_on_the_stack_reads_the_same() {
        let pairs: Vec<(String, String)> = (0..INLINE_LINES * 2 + 3)
            .map(|n| (format!("h{}", n % 7), n.to_string()))
            .collect();
        let headers = Headers::from_pairs(&pairs);
        assert_eq!(headers.lines().count(), pairs.len());
        let sixes: Vec<&[u8]> = headers.all("h6").collect();
        let expected: Vec<String> = (0..pairs.len())
            .filter(|n| n % 7 == 6)
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            sixes,
            expected.iter().map(String::as_bytes).collect::<Vec<_>>()
        );
        assert_eq!(
            headers.all("h6").next_back(),
            expected.last().map(String::as_bytes)
        );
        assert_eq!(headers.single("h0"), Single::Many);
    }

    #[test]
    fn the_hosts_serialized_map_is_read_in_place() {
        let bytes = serialize(&[
            (":path", b"/x"),
            ("cookie", b"a=1"),
            ("cookie", b""),
            ("k", b"\x00\xff"),
        ]);
        let headers = Headers::from_serialized(&bytes).unwrap();
        assert_eq!(headers.first(":path"), Some(&b"/x"[..]));
        assert_eq!(
            headers.all("cookie").collect::<Vec<_>>(),
            vec![&b"a=1"[..], &b""[..]]
        );
        assert_eq!(headers.first("k"), Some(&b"\x00\xff"[..]));
        assert!(Headers::from_serialized(b"").unwrap().first("x").is_none());
    }

    #[test]
    fn malformed_serialized_maps_are_refused() {
        let good = serialize(&[("name", b"value")]);
        for cut in 1..good.len() - 1 {
            assert!(
                Headers::from_serialized(&good[..cut]).is_none(),
                "cut at {cut}"
            );
        }
        let mut huge_count = good.clone();
        huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Headers::from_serialized(&huge_count).is_none());
        let mut huge_len = good;
        huge_len[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Headers::from_serialized(&huge_len).is_none());
    }
}
