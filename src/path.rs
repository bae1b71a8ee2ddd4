//! Request paths: normalization for exemption checks, segments for credentials.

/// Resolves percent-encoded unreserved characters and dot-segments (RFC 3986 6.2.2), and drops
/// the query and fragment, so `/healthz/../login` and `/%68ealthz` compare as what they mean.
pub fn normalize(raw: &str) -> String {
    let path = path_only(raw);
    let decoded = decode_unreserved(path);
    remove_dot_segments(&decoded)
}

/// The path without query string or fragment.
pub fn path_only(raw: &str) -> &str {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    &raw[..end]
}

/// The query string without the `?`, if any.
pub fn query_only(raw: &str) -> &str {
    let without_fragment = &raw[..raw.find('#').unwrap_or(raw.len())];
    match without_fragment.find('?') {
        Some(index) => &without_fragment[index + 1..],
        None => "",
    }
}

/// True when `path` (already normalized) is `prefix` or lies below it, segment-wise:
/// `/healthz` covers `/healthz` and `/healthz/live`, not `/healthzX`.
pub fn is_under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Whether a request for `raw` skips the filter under one of `exempt` (normalized prefixes).
///
/// Only a path that no later decoding can turn into another one is exempt: an upstream or
/// framework that decodes `%2F` or `%5C` into a separator, `%2E` into a dot segment, `%25` a
/// second time, or cuts a segment at `;` (matrix parameters) could read `/healthz/..%2Flogin` as
/// `/login`, and the exemption would then be a way around a block.
pub fn is_exempt(raw: &str, exempt: &[String]) -> bool {
    if exempt.is_empty() {
        return false;
    }
    let path = path_only(raw);
    if may_decode_into_another_path(path.as_bytes()) {
        return false;
    }
    let normalized = normalize(path);
    exempt.iter().any(|prefix| is_under(&normalized, prefix))
}

/// A `;`, a `\`, a NUL, an empty segment (`//`: resolved strictly, `/a//../b` is `/a/b`, but an
/// upstream that merges slashes first reads `/b`), or a percent-escape of `/`, `\`, `.`, `;`,
/// `%` or NUL (any case).
fn may_decode_into_another_path(path: &[u8]) -> bool {
    path.iter().enumerate().any(|(at, &byte)| match byte {
        b';' | b'\\' | 0 => true,
        b'/' => path.get(at + 1) == Some(&b'/'),
        b'%' => matches!(
            percent_byte(path, at),
            Some(b'/' | b'\\' | b'.' | b';' | b'%' | 0)
        ),
        _ => false,
    })
}

/// The `index`-th segment of the path (0 = first after the leading `/`), if present and non-empty.
pub fn segment(raw: &str, index: usize) -> Option<&str> {
    let path = path_only(raw);
    let path = path.strip_prefix('/').unwrap_or(path);
    path.split('/').nth(index).filter(|s| !s.is_empty())
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` into a byte, or `None` when it is not a valid escape.
pub fn percent_byte(bytes: &[u8], at: usize) -> Option<u8> {
    if bytes.get(at) != Some(&b'%') {
        return None;
    }
    let high = hex_value(*bytes.get(at + 1)?)?;
    let low = hex_value(*bytes.get(at + 2)?)?;
    Some(high << 4 | low)
}

fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(b) = percent_byte(bytes, i) {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(b));
                i += 3;
                continue;
            }
        }
        let ch_len = path[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&path[i..i + ch_len]);
        i += ch_len;
    }
    out
}

fn remove_dot_segments(path: &str) -> String {
    let mut output: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (index, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {
                if index == last {
                    output.push("");
                }
            }
            ".." => {
                if output.len() > 1 {
                    output.pop();
                }
                if index == last {
                    output.push("");
                }
            }
            other => output.push(other),
        }
    }
    let joined = output.join("/");
    if joined.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_resolves_what_the_upstream_would() {
        let cases = [
            ("/healthz", "/healthz"),
            ("/healthz?x=1", "/healthz"),
            ("/healthz/../login", "/login"),
            ("/a/./b/../c", "/a/c"),
            ("/../../etc", "/etc"),
            ("/%68ealthz", "/healthz"),
            ("/%2e%2e/login", "/login"),
            ("/healthz/%2E%2E/login", "/login"),
            ("/a%2Fb", "/a%2Fb"),
            ("/a/b/..", "/a/"),
            ("/", "/"),
            ("", "/"),
            ("/caf\u{e9}/x", "/caf\u{e9}/x"),
            ("/%zz/%4", "/%zz/%4"),
        ];
        for (raw, expected) in cases {
            assert_eq!(normalize(raw), expected, "{raw}");
        }
    }

    #[test]
    fn exemption_matches_whole_segments() {
        assert!(is_under("/healthz", "/healthz"));
        assert!(is_under("/healthz/live", "/healthz"));
        assert!(is_under("/healthz/live", "/healthz/"));
        assert!(!is_under("/healthzX", "/healthz"));
        assert!(!is_under("/login", "/healthz"));
        assert!(is_under("/anything", "/"));
    }

    #[test]
    fn a_path_that_later_decoding_could_change_is_never_exempt() {
        let exempt = vec![normalize("/healthz")];
        for raw in [
            "/healthz",
            "/healthz/live",
            "/healthz?probe=a%2Fb;c",
            "/%68ealthz/live",
        ] {
            assert!(is_exempt(raw, &exempt), "{raw} should be exempt");
        }
        for raw in [
            "/healthz/..%2Flogin",
            "/healthz/..%2flogin",
            "/healthz%2F..%2F..%2Flogin",
            "/healthz/..%5Clogin",
            "/healthz/..%5clogin",
            "/healthz/..\\login",
            "/healthz/%2E%2E/login",
            "/healthz/%2e./login",
            "/healthz/..%252Flogin",
            "/healthz/..;/login",
            "/healthz;x=1/../login",
            "/healthz/%3B/../login",
            "/healthz/%3b",
            "/healthz/%00",
            "/healthz/\0",
            "/healthz/../login",
            "/healthz//../login",
            "/healthz/x//../../login",
            "//healthz",
            "/healthzX",
        ] {
            assert!(!is_exempt(raw, &exempt), "{raw} must not be exempt");
        }
        assert!(!is_exempt("/healthz", &[]));
    }

    #[test]
    fn segments_and_query() {
        assert_eq!(segment("/tok123/manifest.json", 0), Some("tok123"));
        assert_eq!(
            segment("/tok123/manifest.json?x=1", 1),
            Some("manifest.json")
        );
        assert_eq!(segment("/tok123", 1), None);
        assert_eq!(segment("//x", 0), None);
        assert_eq!(segment("/", 0), None);
        assert_eq!(query_only("/a?b=1&c=2#frag"), "b=1&c=2");
        assert_eq!(query_only("/a"), "");
        assert_eq!(path_only("/a?b"), "/a");
    }
}
