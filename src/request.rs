//! A read-only view of request or response headers as the host hands them over: every line,
//! in order, names lower-case, values as raw bytes (they need not be UTF-8).

pub type HeaderLines = Vec<(String, Vec<u8>)>;

/// What a single-valued header holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Single<'a> {
    Absent,
    One(&'a [u8]),
    /// Present on several lines: ambiguous, so it is never trusted.
    Many,
}

pub struct Headers<'a> {
    lines: &'a [(String, Vec<u8>)],
}

impl<'a> Headers<'a> {
    pub fn new(lines: &'a [(String, Vec<u8>)]) -> Self {
        Headers { lines }
    }

    /// Every line of `name` (lower-case), in order.
    pub fn all(&self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let lines = self.lines;
        lines
            .iter()
            .filter(move |(key, _)| key.as_str() == name)
            .map(|(_, value)| value.as_slice())
    }

    pub fn single(&self, name: &'a str) -> Single<'a> {
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
        self.lines
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_slice())
    }

    pub fn first_str(&self, name: &str) -> Option<&'a str> {
        self.first(name)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.lines.iter().any(|(key, _)| key == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(pairs: &[(&str, &[u8])]) -> HeaderLines {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect()
    }

    #[test]
    fn single_distinguishes_absent_one_and_many() {
        let owned = lines(&[("a", b"1"), ("b", b"2"), ("b", b"3"), ("c", b"\xff")]);
        let headers = Headers::new(&owned);
        assert_eq!(headers.single("x"), Single::Absent);
        assert_eq!(headers.single("a"), Single::One(b"1"));
        assert_eq!(headers.single("b"), Single::Many);
        assert_eq!(headers.all("b").collect::<Vec<_>>(), vec![b"2", b"3"]);
        assert_eq!(headers.first_str("c"), None);
        assert_eq!(headers.first("c"), Some(&b"\xff"[..]));
        assert!(headers.contains("a") && !headers.contains("z"));
    }
}
