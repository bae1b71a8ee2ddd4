//! A read-only view of request or response headers as the host hands them over: every line,
//! in order, names lower-case, values as raw bytes (they need not be UTF-8). The view borrows
//! the host's serialized map, so reading a request's headers is one copy, not two per line.

use std::borrow::Cow;

/// What a single-valued header holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Single<'a> {
    Absent,
    One(&'a [u8]),
    /// Present on several lines: ambiguous, so it is never trusted.
    Many,
}

/// `pairs` in the proxy-wasm serialized map layout that `Headers::from_serialized` reads (the
/// layout a local reply's headers are handed to the host in).
pub fn serialize<N: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(name, value)| 10 + name.as_ref().len() + value.as_ref().len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    let length = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&length(pairs.len()));
    for (name, value) in pairs {
        out.extend_from_slice(&length(name.as_ref().len()));
        out.extend_from_slice(&length(value.as_ref().len()));
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_ref());
        out.push(0);
        out.extend_from_slice(value.as_ref());
        out.push(0);
    }
    out
}

pub struct Headers<'a> {
    lines: Vec<(&'a [u8], &'a [u8])>,
}

impl<'a> Headers<'a> {
    /// From name/value pairs (tests, benchmarks).
    pub fn from_pairs<N: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &'a [(N, V)]) -> Self {
        Headers {
            lines: pairs
                .iter()
                .map(|(name, value)| (name.as_ref(), value.as_ref()))
                .collect(),
        }
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
            return Some(Headers { lines: Vec::new() });
        }
        let count = read_u32(0)?;
        let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
        if data > bytes.len() {
            return None;
        }
        let mut lines = Vec::with_capacity(count);
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

    /// Every line of `name` (lower-case), in order.
    pub fn all<'n>(&'n self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + 'n {
        self.lines
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
    fn the_hosts_serialized_map_is_read_in_place() {
        let pairs: &[(&str, &[u8])] = &[
            (":path", b"/x"),
            ("cookie", b"a=1"),
            ("cookie", b""),
            ("k", b"\x00\xff"),
        ];
        let bytes = serialize(pairs);
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
