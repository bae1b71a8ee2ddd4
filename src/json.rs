//! A small JSON reader for the plugin configuration (RFC 8259). The filter reads one document
//! per configuration load and needs no serializer, floats or derive machinery; this is a tenth
//! of the `.wasm` that a general JSON crate costs. Objects keep their order, and a key given
//! twice is an error rather than a silent choice.

/// A JSON value. Numbers are kept only as what the configuration can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Json {
    Null,
    Bool(bool),
    /// A non-negative integer that fits in `u64`.
    Unsigned(u64),
    /// Any other number: negative, fractional, exponent, or too large.
    OtherNumber,
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

/// Nesting deeper than this is refused, so hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 64;

impl Json {
    pub fn parse(text: &[u8]) -> Result<Json, String> {
        let mut parser = Parser { text, at: 0 };
        let value = parser.value(0)?;
        parser.skip_whitespace();
        if parser.at != text.len() {
            return Err(parser.error("trailing characters"));
        }
        Ok(value)
    }

    /// The value of `key` in an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> String {
        format!("{what} at byte {}", self.at)
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn literal(&mut self, literal: &str) -> Result<(), String> {
        if self.text[self.at..].starts_with(literal.as_bytes()) {
            self.at += literal.len();
            Ok(())
        } else {
            Err(self.error("expected a value"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, String> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        self.skip_whitespace();
        match self.peek() {
            None => Err(self.error("unexpected end of input")),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(Json::String),
            Some(b't') => self.literal("true").map(|()| Json::Bool(true)),
            Some(b'f') => self.literal("false").map(|()| Json::Bool(false)),
            Some(b'n') => self.literal("null").map(|()| Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("expected a value")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json, String> {
        self.at += 1;
        let mut fields: Vec<(String, Json)> = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Json::Object(fields));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a field name"));
            }
            let key = self.string()?;
            if fields.iter().any(|(k, _)| *k == key) {
                return Err(self.error(&format!("field `{key}` given twice")));
            }
            self.skip_whitespace();
            if self.peek() != Some(b':') {
                return Err(self.error("expected `:`"));
            }
            self.at += 1;
            let value = self.value(depth + 1)?;
            fields.push((key, value));
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Json::Object(fields));
                }
                None => return Err(self.error("unexpected end of input")),
                Some(_) => return Err(self.error("expected `,` or `}`")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json, String> {
        self.at += 1;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Json::Array(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Json::Array(items));
                }
                None => return Err(self.error("unexpected end of input")),
                Some(_) => return Err(self.error("expected `,` or `]`")),
            }
        }
    }

    fn number(&mut self) -> Result<Json, String> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let digits = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        if self.at == digits || (self.text[digits] == b'0' && self.at - digits > 1) {
            return Err(self.error("invalid number"));
        }
        let mut integer = self.text[start] != b'-';
        if self.peek() == Some(b'.') {
            integer = false;
            self.at += 1;
            let fraction = self.at;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.at += 1;
            }
            if self.at == fraction {
                return Err(self.error("invalid number"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            integer = false;
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            let exponent = self.at;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.at += 1;
            }
            if self.at == exponent {
                return Err(self.error("invalid number"));
            }
        }
        let parsed = integer
            .then(|| {
                std::str::from_utf8(&self.text[start..self.at])
                    .ok()?
                    .parse::<u64>()
                    .ok()
            })
            .flatten();
        Ok(parsed.map_or(Json::OtherNumber, Json::Unsigned))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self
            .text
            .get(self.at..self.at + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u32::from_str_radix(d, 16).ok())
            .ok_or_else(|| self.error("invalid \\u escape"))?;
        self.at += 4;
        Ok(digits)
    }

    fn string(&mut self) -> Result<String, String> {
        self.at += 1;
        let mut out = Vec::new();
        loop {
            let Some(byte) = self.peek() else {
                return Err(self.error("unterminated string"));
            };
            self.at += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    let Some(escape) = self.peek() else {
                        return Err(self.error("unterminated string"));
                    };
                    self.at += 1;
                    let simple = match escape {
                        b'"' => Some(b'"'),
                        b'\\' => Some(b'\\'),
                        b'/' => Some(b'/'),
                        b'b' => Some(8),
                        b'f' => Some(12),
                        b'n' => Some(b'\n'),
                        b'r' => Some(b'\r'),
                        b't' => Some(b'\t'),
                        b'u' => None,
                        _ => return Err(self.error("invalid escape")),
                    };
                    if let Some(b) = simple {
                        out.push(b);
                        continue;
                    }
                    let mut code = self.hex4()?;
                    if (0xD800..0xDC00).contains(&code) {
                        if !self.text[self.at..].starts_with(b"\\u") {
                            return Err(self.error("unpaired surrogate"));
                        }
                        self.at += 2;
                        let low = self.hex4()?;
                        if !(0xDC00..0xE000).contains(&low) {
                            return Err(self.error("unpaired surrogate"));
                        }
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                    }
                    let c = char::from_u32(code).ok_or_else(|| self.error("unpaired surrogate"))?;
                    let mut buffer = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
                }
                0..=0x1f => return Err(self.error("control character in string")),
                _ => out.push(byte),
            }
        }
        String::from_utf8(out).map_err(|_| self.error("invalid UTF-8 in string"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_parse_into_values() {
        let value = Json::parse(
            br#" {"a": [1, 18446744073709551615, -1, 1.5, 2e3, 0], "b": {"c": null, "d": true, "e": false},
                "s": "x\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00", "empty": {}, "none": []} "#,
        )
        .unwrap();
        assert_eq!(
            value.get("a"),
            Some(&Json::Array(vec![
                Json::Unsigned(1),
                Json::Unsigned(u64::MAX),
                Json::OtherNumber,
                Json::OtherNumber,
                Json::OtherNumber,
                Json::Unsigned(0),
            ]))
        );
        assert_eq!(
            value.get("b").and_then(|b| b.get("d")),
            Some(&Json::Bool(true))
        );
        assert_eq!(
            value.get("s"),
            Some(&Json::String(
                "x\"\\/\u{8}\u{c}\n\r\t\u{e9}\u{1f600}".to_string()
            ))
        );
        assert_eq!(value.get("empty"), Some(&Json::Object(Vec::new())));
        assert_eq!(value.get("none"), Some(&Json::Array(Vec::new())));
        assert_eq!(
            Json::parse(b"18446744073709551616").unwrap(),
            Json::OtherNumber
        );
    }

    #[test]
    fn malformed_documents_are_refused_with_a_position() {
        let deep = "[".repeat(100) + &"]".repeat(100);
        let cases: &[(&[u8], &str)] = &[
            (b"", "unexpected end of input"),
            (b"{", "expected a field name"),
            (br#"{"a" 1}"#, "expected `:`"),
            (br#"{"a": 1,}"#, "expected a field name"),
            (br#"{"a": 1 "b": 2}"#, "expected `,` or `}`"),
            (br#"[1 2]"#, "expected `,` or `]`"),
            (br#"{"a": 1, "a": 2}"#, "field `a` given twice"),
            (br#""abc"#, "unterminated string"),
            (b"\"a\x01\"", "control character"),
            (br#""\x""#, "invalid escape"),
            (br#""\u12""#, "invalid \\u escape"),
            (br#""\ud800""#, "unpaired surrogate"),
            (br#""\udc00""#, "unpaired surrogate"),
            (b"\"\xff\"", "invalid UTF-8"),
            (b"01", "invalid number"),
            (b"1.", "invalid number"),
            (b"-", "invalid number"),
            (b"1e", "invalid number"),
            (b"tru", "expected a value"),
            (b"{} x", "trailing characters"),
            (deep.as_bytes(), "nested too deeply"),
        ];
        for (input, expected) in cases {
            let error = Json::parse(input).unwrap_err();
            assert!(
                error.contains(expected),
                "{:?}: {error}",
                String::from_utf8_lossy(input)
            );
            assert!(error.contains(" at byte "));
        }
    }
}
