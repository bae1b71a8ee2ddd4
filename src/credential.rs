//! Where a request's identity comes from: the first configured source the request carries.
//!
//! A source that is present but unusable (a header on several lines or blank, a repeated or
//! empty cookie or query parameter) ends the search: the request then has no identity, and the
//! next source is not tried. Otherwise a request carrying a bad value in the first source and a
//! victim's key in a later one would be keyed on the victim's key, while an upstream reading the
//! first source answers 401, and the victim's key would be cached as failing.

use std::borrow::Cow;

use crate::config::CredentialSource;
use crate::path;
use crate::request::{Headers, Single};

/// A credential found on a request: which configured source, and its value (canonical where
/// HTTP says the difference means nothing, see `canonical`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential<'a> {
    pub source: usize,
    pub value: Cow<'a, [u8]>,
}

/// What a request presents in the configured sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented<'a> {
    /// No configured source is present.
    Nothing,
    /// The first present source holds exactly one non-empty value.
    Credential(Credential<'a>),
    /// The first present source is ambiguous or blank: the request tried to authenticate, but
    /// nothing can be looked up or stored for it.
    Unusable,
}

impl<'a> Presented<'a> {
    pub fn credential(self) -> Option<Credential<'a>> {
        match self {
            Presented::Credential(credential) => Some(credential),
            Presented::Nothing | Presented::Unusable => None,
        }
    }

    /// Whether the request presented a credential at all, usable or not (for failure counting).
    pub fn is_presented(&self) -> bool {
        !matches!(self, Presented::Nothing)
    }
}

/// A source's value: absent, one usable value, or present but unusable.
enum Found<'a> {
    Absent,
    One(Cow<'a, [u8]>),
    Unusable,
}

impl<'a> From<Option<Option<Cow<'a, [u8]>>>> for Found<'a> {
    /// `None`: absent; `Some(None)`: present but unusable; `Some(Some(v))`: one usable value
    /// (empty counts as unusable).
    fn from(value: Option<Option<Cow<'a, [u8]>>>) -> Self {
        match value {
            None => Found::Absent,
            Some(Some(value)) if !value.is_empty() => Found::One(value),
            Some(_) => Found::Unusable,
        }
    }
}

pub fn extract<'a>(
    sources: &'a [CredentialSource],
    headers: &Headers<'a>,
    raw_path: &'a str,
) -> Presented<'a> {
    for (index, source) in sources.iter().enumerate() {
        let found = match source {
            CredentialSource::Header(name) => match headers.single(name) {
                Single::Absent => Found::Absent,
                Single::One(value) if !value.iter().all(u8::is_ascii_whitespace) => {
                    Found::One(canonical(source, value))
                }
                Single::One(_) | Single::Many => Found::Unusable,
            },
            CredentialSource::Cookie(name) => cookie(headers, name).into(),
            CredentialSource::Query(name) => {
                query_parameter(path::query_only(raw_path), name).into()
            }
            CredentialSource::PathSegment(n) => match path::segment(raw_path, *n as usize) {
                Some(segment) => Found::One(Cow::Borrowed(segment.as_bytes())),
                None => Found::Absent,
            },
        };
        match found {
            Found::Absent => continue,
            Found::One(value) => {
                return Presented::Credential(Credential {
                    source: index,
                    value,
                })
            }
            Found::Unusable => return Presented::Unusable,
        }
    }
    Presented::Nothing
}

/// The value of `source` as the identity is computed from it. For `Authorization` and
/// `Proxy-Authorization` the scheme is case-insensitive and the spaces after it are one
/// separator (RFC 9110 11.4, 11.6.2), so `bearer  T` and `Bearer T` are one credential: the
/// scheme is written with a capital initial and the rest in lower case, the form nearly every
/// client sends (`Bearer`, `Basic`), so the usual value is used as it is, without a copy; the
/// separator becomes one space. The token itself and every other source are kept byte for byte.
/// Used both for a request's credential and for the values of `x-negcache-purge`, so a purge
/// finds the entry whatever the case of its scheme.
pub fn canonical<'v>(source: &CredentialSource, value: &'v [u8]) -> Cow<'v, [u8]> {
    let CredentialSource::Header(name) = source else {
        return Cow::Borrowed(value);
    };
    if name != "authorization" && name != "proxy-authorization" {
        return Cow::Borrowed(value);
    }
    // HTTP's optional whitespace is spaces and tabs only: anything else belongs to the value.
    let is_ows = |b: &u8| matches!(b, b' ' | b'\t');
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |at| at + 1);
    let value = &value[start..end];
    let Some(end) = value.iter().position(is_ows) else {
        return Cow::Borrowed(value);
    };
    let (scheme, rest) = value.split_at(end);
    let token = &rest[rest.iter().position(|b| !is_ows(b)).unwrap_or(rest.len())..];
    let Some((initial, tail)) = scheme.split_first() else {
        return Cow::Borrowed(value);
    };
    let one_space = rest.len() == token.len() + 1 && rest[0] == b' ';
    if one_space && !initial.is_ascii_lowercase() && !tail.iter().any(u8::is_ascii_uppercase) {
        return Cow::Borrowed(value);
    }
    let mut out = Vec::with_capacity(scheme.len() + 1 + token.len());
    out.push(initial.to_ascii_uppercase());
    out.extend(tail.iter().map(u8::to_ascii_lowercase));
    out.push(b' ');
    out.extend_from_slice(token);
    Cow::Owned(out)
}

/// Cookie `name` across all `cookie` lines: `None` when absent, `Some(None)` when repeated.
fn cookie<'a>(headers: &Headers<'a>, name: &str) -> Option<Option<Cow<'a, [u8]>>> {
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
                return Some(None);
            }
            found = Some(pair[eq + 1..].trim_ascii());
        }
    }
    found.map(|value| Some(Cow::Borrowed(value)))
}

/// The percent-decoded query parameter `name`: `None` when absent, `Some(None)` when repeated.
fn query_parameter<'a>(query: &'a str, name: &str) -> Option<Option<Cow<'a, [u8]>>> {
    let mut found: Option<Cow<'a, [u8]>> = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if decode_component(key).as_ref() != name.as_bytes() {
            continue;
        }
        if found.is_some() {
            return Some(None);
        }
        found = Some(decode_component(value));
    }
    found.map(Some)
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

    /// What `extract` saw, owned, for comparing.
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Nothing,
        Unusable,
        Found(usize, Vec<u8>),
    }
    use Seen::{Found, Nothing, Unusable};

    fn found(source: usize, value: &[u8]) -> Seen {
        Found(source, value.to_vec())
    }

    /// Request headers, path, and what is expected.
    type Case<'a> = (Vec<(&'a str, &'a [u8])>, &'a str, Seen);

    fn sources() -> Vec<CredentialSource> {
        vec![
            CredentialSource::Header("authorization".into()),
            CredentialSource::Header("x-api-key".into()),
            CredentialSource::Cookie("sessionid".into()),
            CredentialSource::Query("api_key".into()),
            CredentialSource::PathSegment(0),
        ]
    }

    fn find(pairs: &[(&str, &[u8])], path: &str) -> Seen {
        let headers = Headers::from_pairs(pairs);
        let only_query_and_header: Vec<CredentialSource> = sources()[..4].to_vec();
        let list = if path.starts_with("/seg") {
            sources()
        } else {
            only_query_and_header
        };
        match extract(&list, &headers, path) {
            Presented::Nothing => Nothing,
            Presented::Unusable => Unusable,
            Presented::Credential(c) => Found(c.source, c.value.into_owned()),
        }
    }

    fn check(cases: Vec<Case>) {
        for (headers, path, expected) in cases {
            assert_eq!(find(&headers, path), expected, "{headers:?} {path}");
        }
    }

    #[test]
    fn sources_are_tried_in_order_and_first_present_wins() {
        check(vec![
            (
                vec![("authorization", b"Bearer a")],
                "/",
                found(0, b"Bearer a"),
            ),
            (
                vec![("x-api-key", b"k"), ("authorization", b"Basic dTpw")],
                "/",
                found(0, b"Basic dTpw"),
            ),
            (vec![("x-api-key", b"k")], "/", found(1, b"k")),
            (
                vec![("cookie", b"a=1; sessionid=s1; b=2")],
                "/",
                found(2, b"s1"),
            ),
            (vec![], "/x?api_key=q%31&y=2", found(3, b"q1")),
            (vec![], "/x?api_key=a+b", found(3, b"a b")),
            (vec![], "/seg1/manifest.json", found(4, b"seg1")),
            (vec![], "/", Nothing),
            // Absent sources are skipped.
            (vec![("cookie", b"other=1")], "/x?api_key=q", found(3, b"q")),
        ]);
    }

    #[test]
    fn an_ambiguous_or_blank_first_source_ends_the_search() {
        check(vec![
            // The victim's key in a later source is never used when the first source present
            // is ambiguous or blank.
            (
                vec![
                    ("authorization", b"a"),
                    ("authorization", b"b"),
                    ("x-api-key", b"victim"),
                ],
                "/",
                Unusable,
            ),
            (
                vec![("authorization", b""), ("x-api-key", b"victim")],
                "/",
                Unusable,
            ),
            (vec![("authorization", b"   ")], "/", Unusable),
            (
                vec![("cookie", b"sessionid=a"), ("cookie", b"sessionid=b")],
                "/x?api_key=victim",
                Unusable,
            ),
            (vec![("cookie", b"sessionid=")], "/", Unusable),
            (
                vec![("cookie", b"sessionidx=a; xsessionid=b")],
                "/",
                Nothing,
            ),
            (vec![("cookie", b";;=;sessionid")], "/", Nothing),
            (vec![], "/x?api_key=a&api_key=b", Unusable),
            (vec![], "/x?api_key=", Unusable),
            (vec![], "/x?api_key", Unusable),
            (vec![], "/x?API_KEY=a", Nothing),
            (vec![], "/x?api_key=%zz", found(3, b"%zz")),
        ]);
    }

    #[test]
    fn binary_values_are_kept_as_bytes() {
        let value: &[u8] = b"Bearer \xff\xfe";
        assert_eq!(
            find(&[("authorization", value)], "/"),
            found(0, b"Bearer \xff\xfe")
        );
        let key: &[u8] = b"\x80 \xff";
        assert_eq!(find(&[("x-api-key", key)], "/"), found(1, key));
    }

    #[test]
    fn the_authorization_scheme_and_its_separator_are_canonical_and_nothing_else() {
        let authorization = CredentialSource::Header("authorization".into());
        for raw in [
            &b"Bearer T0k3n"[..],
            b"bearer T0k3n",
            b"BEARER T0k3n",
            b"Bearer   T0k3n",
            b"Bearer\tT0k3n",
            b" bearer T0k3n ",
        ] {
            assert_eq!(&*canonical(&authorization, raw), b"Bearer T0k3n", "{raw:?}");
        }
        // The token stays case-sensitive; a value without a scheme stays as it is.
        assert_eq!(
            &*canonical(&authorization, b"bearer t0k3n"),
            b"Bearer t0k3n"
        );
        assert_eq!(&*canonical(&authorization, b"T0K3N"), b"T0K3N");
        assert_eq!(
            &*canonical(&authorization, b"basic dTpw=="),
            b"Basic dTpw=="
        );
        // Already canonical: borrowed, no copy.
        assert!(matches!(
            canonical(&authorization, b"Bearer T"),
            Cow::Borrowed(_)
        ));
        // Only spaces and tabs are HTTP whitespace: a form feed is part of the token.
        assert_eq!(
            &*canonical(&authorization, b"Bearer \x0cT"),
            b"Bearer \x0cT"
        );
        let proxy = CredentialSource::Header("proxy-authorization".into());
        assert_eq!(&*canonical(&proxy, b"basic  X"), b"Basic X");
        // Other sources are byte for byte.
        let key = CredentialSource::Header("x-api-key".into());
        assert_eq!(&*canonical(&key, b"Bearer T"), b"Bearer T");
        assert_eq!(
            &*canonical(&CredentialSource::Cookie("s".into()), b"A  B"),
            b"A  B"
        );
        assert_eq!(
            find(&[("authorization", b"BEARER   abc")], "/"),
            found(0, b"Bearer abc")
        );
    }
}
