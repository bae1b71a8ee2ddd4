//! CORS on the filter's own replies: origin matching and the headers that let a web app read a
//! 401 or 429 instead of seeing an opaque CORS failure.

/// One configured origin: `*`, `null`, an exact origin, or `scheme://*.domain[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    Any,
    Null,
    Exact(Origin),
    /// Any subdomain of `suffix` (never `suffix` itself), same scheme and port.
    Subdomains(Origin),
}

/// A serialized origin, normalized: scheme and host lower-case, the default port made explicit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// Parses `scheme://host[:port]` as browsers send it: no path, query, fragment or userinfo.
    pub fn parse(text: &str) -> Option<Origin> {
        let (scheme, rest) = text.split_once("://")?;
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        {
            return None;
        }
        let scheme = scheme.to_ascii_lowercase();
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ', '\\']) {
            return None;
        }
        let (host, port) = split_port(rest)?;
        let port = match port {
            Some(port) => port,
            None => default_port(&scheme)?,
        };
        let host = host.to_ascii_lowercase();
        let valid_host = if let Some(v6) = host.strip_prefix('[') {
            v6.strip_suffix(']')
                .is_some_and(|inner| inner.parse::<std::net::Ipv6Addr>().is_ok())
        } else {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*'))
        };
        valid_host.then_some(Origin { scheme, host, port })
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "https" | "wss" => Some(443),
        "http" | "ws" => Some(80),
        _ => None,
    }
}

/// Splits `host[:port]`, `[v6][:port]`.
fn split_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        match rest.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if rest.is_empty() => (host, None),
            None => return None,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => None,
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            Some(digits.parse::<u16>().ok()?)
        }
        Some(_) => return None,
    };
    Some((host, port))
}

impl OriginPattern {
    /// Parses a configured entry; `None` when it is not one of the accepted forms.
    pub fn parse(entry: &str) -> Option<OriginPattern> {
        match entry {
            "*" => return Some(OriginPattern::Any),
            "null" => return Some(OriginPattern::Null),
            _ => {}
        }
        let origin = Origin::parse(entry)?;
        match origin.host.strip_prefix("*.") {
            Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => {
                Some(OriginPattern::Subdomains(Origin {
                    host: suffix.to_string(),
                    ..origin
                }))
            }
            Some(_) => None,
            None if origin.host.contains('*') => None,
            None => Some(OriginPattern::Exact(origin)),
        }
    }

    fn matches(&self, raw: &str, parsed: Option<&Origin>) -> bool {
        match self {
            OriginPattern::Null => raw == "null",
            OriginPattern::Any => parsed.is_some(),
            OriginPattern::Exact(origin) => parsed == Some(origin),
            OriginPattern::Subdomains(parent) => parsed.is_some_and(|origin| {
                origin.scheme == parent.scheme
                    && origin.port == parent.port
                    && origin
                        .host
                        .strip_suffix(parent.host.as_str())
                        .is_some_and(|label| label.len() > 1 && label.ends_with('.'))
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CorsConfig {
    pub allowed_origins: Vec<OriginPattern>,
    pub allow_credentials: bool,
    /// Joined once, at configuration: the value of `access-control-expose-headers`.
    pub expose_headers: String,
}

impl CorsConfig {
    /// The CORS headers for a reply to a request with this `Origin`; none when the origin is
    /// absent or not allowed, or nothing is configured. Borrowed from the origin and the
    /// configuration: a reply copies them once, into its own headers.
    pub fn headers_for<'a>(
        &'a self,
        origin: Option<&'a [u8]>,
    ) -> impl Iterator<Item = (&'static str, &'a str)> {
        let credentials = self.allow_credentials.then_some("true");
        let expose = (!self.expose_headers.is_empty()).then_some(self.expose_headers.as_str());
        self.allow_origin(origin)
            .into_iter()
            .flat_map(move |allow_origin| {
                [
                    ("access-control-allow-origin", Some(allow_origin)),
                    ("access-control-allow-credentials", credentials),
                    ("access-control-expose-headers", expose),
                    ("vary", Some("origin")),
                ]
            })
            .filter_map(|(name, value)| Some((name, value?)))
    }

    /// The `access-control-allow-origin` value for this `Origin`, when it is allowed.
    fn allow_origin<'a>(&self, origin: Option<&'a [u8]>) -> Option<&'a str> {
        let raw = std::str::from_utf8(origin?).ok()?.trim();
        let parsed = Origin::parse(raw);
        let pattern = self
            .allowed_origins
            .iter()
            .find(|pattern| pattern.matches(raw, parsed.as_ref()))?;
        Some(
            if *pattern == OriginPattern::Any && !self.allow_credentials {
                "*"
            } else {
                raw
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], allow_credentials: bool) -> CorsConfig {
        CorsConfig {
            allowed_origins: origins
                .iter()
                .map(|o| OriginPattern::parse(o).unwrap())
                .collect(),
            allow_credentials,
            expose_headers: "retry-after, x-negcache".to_string(),
        }
    }

    fn allow_origin(config: &CorsConfig, origin: &str) -> Option<String> {
        config
            .headers_for(Some(origin.as_bytes()))
            .find(|(k, _)| *k == "access-control-allow-origin")
            .map(|(_, v)| v.to_string())
    }

    #[test]
    fn origins_match_exactly_case_insensitively_and_by_port() {
        let config = cors(&["https://app.example.com", "http://localhost:3000"], false);
        let cases = [
            ("https://app.example.com", true),
            ("HTTPS://App.Example.COM", true),
            ("https://app.example.com:443", true),
            ("https://app.example.com:8443", false),
            ("http://app.example.com", false),
            ("https://app.example.com.evil.com", false),
            ("https://evilapp.example.com", false),
            ("http://localhost:3000", true),
            ("http://localhost", false),
            ("http://localhost:3001", false),
        ];
        for (origin, allowed) in cases {
            assert_eq!(allow_origin(&config, origin).is_some(), allowed, "{origin}");
        }
        assert_eq!(
            allow_origin(&config, "HTTPS://App.Example.COM").as_deref(),
            Some("HTTPS://App.Example.COM"),
            "the request's own origin is echoed"
        );
    }

    #[test]
    fn wildcards_cover_subdomains_only() {
        let config = cors(&["https://*.example.com"], false);
        let cases = [
            ("https://app.example.com", true),
            ("https://a.b.example.com", true),
            ("https://example.com", false),
            ("http://app.example.com", false),
            ("https://app.example.com:8443", false),
            ("https://appexample.com", false),
            ("https://.example.com", false),
            ("null", false),
        ];
        for (origin, allowed) in cases {
            assert_eq!(allow_origin(&config, origin).is_some(), allowed, "{origin}");
        }
    }

    #[test]
    fn null_matches_only_an_explicit_null() {
        assert!(allow_origin(&cors(&["*"], false), "null").is_none());
        assert!(allow_origin(&cors(&["https://*.example.com"], false), "null").is_none());
        assert_eq!(
            allow_origin(&cors(&["null"], false), "null").as_deref(),
            Some("null")
        );
    }

    #[test]
    fn any_origin_is_a_star_unless_credentials_are_allowed() {
        assert_eq!(
            allow_origin(&cors(&["*"], false), "https://x.test").as_deref(),
            Some("*")
        );
        let with_credentials = CorsConfig {
            allowed_origins: vec![OriginPattern::parse("https://x.test").unwrap()],
            allow_credentials: true,
            expose_headers: String::new(),
        };
        let headers: Vec<_> = with_credentials
            .headers_for(Some(b"https://x.test"))
            .collect();
        assert_eq!(
            headers,
            vec![
                ("access-control-allow-origin", "https://x.test"),
                ("access-control-allow-credentials", "true"),
                ("vary", "origin"),
            ]
        );
    }

    #[test]
    fn the_full_header_set_for_an_allowed_origin() {
        let config = cors(&["https://app.example.com"], false);
        let headers: Vec<_> = config
            .headers_for(Some(b"https://app.example.com"))
            .collect();
        assert_eq!(
            headers,
            vec![
                ("access-control-allow-origin", "https://app.example.com"),
                ("access-control-expose-headers", "retry-after, x-negcache"),
                ("vary", "origin"),
            ]
        );
    }

    #[test]
    fn absent_malformed_or_unlisted_origins_get_nothing() {
        let config = cors(&["*"], false);
        for origin in [
            "",
            "app.example.com",
            "https://",
            "https://app.example.com/path",
            "https://user@app.example.com",
            "https://app.example.com:99999",
            "https://app.example.com:",
            "https://app .example.com",
            "javascript:alert(1)",
            "https://[::1",
        ] {
            assert!(
                config.headers_for(Some(origin.as_bytes())).next().is_none(),
                "{origin:?}"
            );
        }
        assert!(config.headers_for(None).next().is_none());
        assert!(config.headers_for(Some(b"\xff\xfe")).next().is_none());
        assert!(CorsConfig::default()
            .headers_for(Some(b"https://app.example.com"))
            .next()
            .is_none());
        assert!(allow_origin(&config, "https://[::1]:8443").is_some());
    }

    #[test]
    fn configured_entries_are_validated() {
        for good in [
            "*",
            "null",
            "https://a.b",
            "https://*.b.c",
            "http://localhost:8080",
            "https://[::1]",
        ] {
            assert!(OriginPattern::parse(good).is_some(), "{good}");
        }
        for bad in [
            "",
            "a.b",
            "https://*",
            "https://*.",
            "https://a.*.b",
            "https://*.*.b",
            "https://a.b/",
            "ftp://a.b",
            "https://a.b:x",
        ] {
            assert!(OriginPattern::parse(bad).is_none(), "{bad}");
        }
    }
}
