//! Where a request's identity comes from: the first configured source that holds exactly one
//! non-empty value. Ambiguous values (a header on several lines, a repeated cookie or query
//! parameter) count as absent, so a request cannot be made to look like someone else's.

use std::borrow::Cow;

use crate::config::CredentialSource;
use crate::path;
use crate::request::{Headers, Single};

/// A credential found on a request: which configured source, and its raw value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential<'a> {
    pub source: usize,
    pub value: Cow<'a, [u8]>,
}

pub fn extract<'a>(
    sources: &'a [CredentialSource],
    headers: &Headers<'a>,
    raw_path: &'a str,
) -> Option<Credential<'a>> {
    sources.iter().enumerate().find_map(|(index, source)| {
        let value = match source {
            CredentialSource::Header(name) => match headers.single(name) {
                Single::One(value) if !value.iter().all(u8::is_ascii_whitespace) => {
                    Some(Cow::Borrowed(value))
                }
                _ => None,
            },
            CredentialSource::Cookie(name) => cookie(headers, name),
            CredentialSource::Query(name) => query_parameter(path::query_only(raw_path), name),
            CredentialSource::PathSegment(n) => path::segment(raw_path, *n as usize)
                .map(|segment| Cow::Borrowed(segment.as_bytes())),
        }?;
        Some(Credential {
            source: index,
            value,
        })
    })
}

/// The value of cookie `name` across all `cookie` lines; absent when empty or repeated.
fn cookie<'a>(headers: &Headers<'a>, name: &str) -> Option<Cow<'a, [u8]>> {
    let mut found: Option<&'a [u8]> = None;
    for line in headers.all("cookie") {
        for pair in line.split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if pair[..eq].trim_ascii() != name.as_bytes() {
                continue;
            }
            if found.is_some() {
                return None;
            }
            found = Some(pair[eq + 1..].trim_ascii());
        }
    }
    found.filter(|value| !value.is_empty()).map(Cow::Borrowed)
}

/// The percent-decoded value of query parameter `name`; absent when empty or repeated.
fn query_parameter<'a>(query: &'a str, name: &str) -> Option<Cow<'a, [u8]>> {
    let mut found: Option<Cow<'a, [u8]>> = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if decode_component(key).as_ref() != name.as_bytes() {
            continue;
        }
        if found.is_some() {
            return None;
        }
        found = Some(decode_component(value));
    }
    found.filter(|value| !value.is_empty())
}

/// Query components decode the way web frameworks read them: `%XX` and `+` as space.
fn decode_component(raw: &str) -> Cow<'_, [u8]> {
    if !raw.contains(['%', '+']) {
        return Cow::Borrowed(raw.as_bytes());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(b) = path::percent_byte(bytes, i) {
            out.push(b);
            i += 3;
        } else {
            out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Request headers, path, and the (source, value) expected.
    type Case<'a> = (Vec<(&'a str, &'a [u8])>, &'a str, Option<(usize, &'a [u8])>);

    fn sources() -> Vec<CredentialSource> {
        vec![
            CredentialSource::Header("authorization".into()),
            CredentialSource::Header("x-api-key".into()),
            CredentialSource::Cookie("sessionid".into()),
            CredentialSource::Query("api_key".into()),
            CredentialSource::PathSegment(0),
        ]
    }

    fn find(pairs: &[(&str, &[u8])], path: &str) -> Option<(usize, Vec<u8>)> {
        let headers = Headers::from_pairs(pairs);
        let only_query_and_header: Vec<CredentialSource> = sources()[..4].to_vec();
        let list = if path.starts_with("/seg") {
            sources()
        } else {
            only_query_and_header
        };
        extract(&list, &headers, path).map(|c| (c.source, c.value.into_owned()))
    }

    #[test]
    fn sources_are_tried_in_order_and_first_present_wins() {
        let cases: Vec<Case> = vec![
            (
                vec![("authorization", b"Bearer a")],
                "/",
                Some((0, b"Bearer a")),
            ),
            (
                vec![("x-api-key", b"k"), ("authorization", b"Basic dTpw")],
                "/",
                Some((0, b"Basic dTpw")),
            ),
            (vec![("x-api-key", b"k")], "/", Some((1, b"k"))),
            (
                vec![("cookie", b"a=1; sessionid=s1; b=2")],
                "/",
                Some((2, b"s1")),
            ),
            (vec![], "/x?api_key=q%31&y=2", Some((3, b"q1"))),
            (vec![], "/x?api_key=a+b", Some((3, b"a b"))),
            (vec![], "/seg1/manifest.json", Some((4, b"seg1"))),
            (vec![], "/", None),
        ];
        for (headers, path, expected) in cases {
            let expected = expected.map(|(i, v)| (i, v.to_vec()));
            assert_eq!(find(&headers, path), expected, "{headers:?} {path}");
        }
    }

    #[test]
    fn ambiguous_or_empty_values_count_as_absent() {
        let cases: Vec<Case> = vec![
            // A header on two lines is skipped; the next source is used.
            (
                vec![
                    ("authorization", b"a"),
                    ("authorization", b"b"),
                    ("x-api-key", b"k"),
                ],
                "/",
                Some((1, b"k")),
            ),
            (vec![("authorization", b"")], "/", None),
            (vec![("authorization", b"   ")], "/", None),
            (
                vec![("cookie", b"sessionid=a"), ("cookie", b"sessionid=b")],
                "/",
                None,
            ),
            (vec![("cookie", b"sessionid=")], "/", None),
            (vec![("cookie", b"sessionidx=a; xsessionid=b")], "/", None),
            (vec![("cookie", b";;=;sessionid")], "/", None),
            (vec![], "/x?api_key=a&api_key=b", None),
            (vec![], "/x?api_key=", None),
            (vec![], "/x?api_key", None),
            (vec![], "/x?API_KEY=a", None),
            (vec![], "/x?api_key=%zz", Some((3, b"%zz"))),
        ];
        for (headers, path, expected) in cases {
            let expected = expected.map(|(i, v)| (i, v.to_vec()));
            assert_eq!(find(&headers, path), expected, "{headers:?} {path}");
        }
    }

    #[test]
    fn binary_values_are_kept_as_bytes() {
        let value: &[u8] = b"Bearer \xff\xfe";
        assert_eq!(
            find(&[("authorization", value)], "/"),
            Some((0, value.to_vec()))
        );
    }
}
