//! The replies the filter sends itself, in one place.

use crate::decimal;
pub use crate::local_reply::LocalReply;
#[cfg(test)]
use crate::negative_cache::ReplayBody;
use crate::negative_cache::{Record, ReplayParts};

/// Seconds left until `reset_ms`, rounded up and never 0: a client told "0" retries at once.
pub fn seconds_until(reset_ms: u64, now_ms: u64) -> u64 {
    reset_ms.saturating_sub(now_ms).div_ceil(1000).max(1)
}

/// A cache hit: the stored status, body, `content-type` and `www-authenticate`, plus `x-negcache:
/// hit`, `age`, and `retry-after` counting down to the upstream's reset time. When the upstream's
/// body was not kept, a short JSON body of the filter's own stands in for it.
pub fn cache_hit(record: &Record, replay: ReplayParts<'_>, now_ms: u64) -> LocalReply {
    let status = decimal::digits(u64::from(record.status));
    let mut reply = match replay.body {
        Some(body) => {
            let mut reply = LocalReply::new(record.status, &[body]);
            if let Some(content_type) = text(replay.content_type) {
                reply.push("content-type", content_type);
            }
            reply
        }
        None => {
            let own = [
                &b"{\"error\":\"cached upstream response\",\"status\":"[..],
                status.as_bytes(),
                b"}",
            ];
            let mut reply = LocalReply::new(record.status, &own);
            reply.push("content-type", "application/json");
            reply
        }
    };
    if let Some(challenge) = text(replay.www_authenticate) {
        reply.push("www-authenticate", challenge);
    }
    reply.push("x-negcache", "hit");
    reply.push_decimal("age", now_ms.saturating_sub(record.stored_ms) / 1000);
    if record.reset_ms != 0 {
        // Never past the entry's own end, whoever wrote the record.
        let reset_ms = record.reset_ms.min(record.expires_ms);
        reply.push_decimal("retry-after", seconds_until(reset_ms, now_ms));
    }
    reply
}

/// The limiter's 429: JSON body with `error` and `retry_after`, `Retry-After`, and with
/// `ratelimit_headers` the `RateLimit-Policy` / `RateLimit` fields of
/// draft-ietf-httpapi-ratelimit-headers (policy `auth-failures`: `q` failures per `w` seconds).
pub fn rate_limited(retry_after: u64, policy: Option<(u32, u64)>) -> LocalReply {
    let seconds = decimal::digits(retry_after);
    let seconds = seconds.as_bytes();
    let body = [
        &b"{\"error\":\"too many failed authentication attempts\",\"retry_after\":"[..],
        seconds,
        b"}",
    ];
    let mut reply = LocalReply::new(429, &body);
    reply.push("content-type", "application/json");
    reply.push_parts("retry-after", &[seconds]);
    if let Some((quota, window_seconds)) = policy {
        reply.push_parts(
            "ratelimit-policy",
            &[
                b"\"auth-failures\";q=",
                decimal::digits(u64::from(quota)).as_bytes(),
                b";w=",
                decimal::digits(window_seconds).as_bytes(),
            ],
        );
        reply.push_parts("ratelimit", &[b"\"auth-failures\";r=0;t=", seconds]);
    }
    reply
}

/// Header values are replayed only when they are printable text.
fn text(value: Option<&[u8]>) -> Option<&str> {
    let value = std::str::from_utf8(value?).ok()?;
    value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
        .then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Fingerprint;

    const NOW: u64 = 1_700_000_000_000;

    fn record(reset_ms: u64) -> Record {
        Record {
            inactive: false,
            anonymous: false,
            status: 401,
            shape: 0,
            epoch: 0,
            stored_ms: NOW - 2_500,
            expires_ms: NOW + 60_000,
            reset_ms,
            identity: Fingerprint([1; 16]),
            key: Fingerprint([2; 16]),
        }
    }

    fn header<'a>(reply: &'a LocalReply, name: &str) -> Option<&'a str> {
        reply.header(name)
    }

    #[test]
    fn a_hit_replays_what_was_stored() {
        let replay = ReplayBody {
            content_type: Some(b"application/problem+json".to_vec()),
            www_authenticate: Some(b"Bearer realm=\"api\"".to_vec()),
            body: Some(b"{\"detail\":\"bad token\"}".to_vec()),
            ..ReplayBody::default()
        };
        let reply = cache_hit(&record(0), replay.parts(), NOW);
        assert_eq!(reply.status, 401);
        assert_eq!(reply.body(), b"{\"detail\":\"bad token\"}");
        assert_eq!(
            header(&reply, "content-type"),
            Some("application/problem+json")
        );
        assert_eq!(
            header(&reply, "www-authenticate"),
            Some("Bearer realm=\"api\"")
        );
        assert_eq!(header(&reply, "x-negcache"), Some("hit"));
        assert_eq!(header(&reply, "age"), Some("2"));
        assert_eq!(header(&reply, "retry-after"), None);
    }

    #[test]
    fn retry_after_counts_down_and_never_says_zero() {
        let replay = ReplayBody::default();
        let at = |reset: u64| {
            let reply = cache_hit(&record(reset), replay.parts(), NOW);
            header(&reply, "retry-after").map(str::to_string)
        };
        assert_eq!(at(NOW + 10_000).as_deref(), Some("10"));
        assert_eq!(at(NOW + 9_001).as_deref(), Some("10"));
        assert_eq!(at(NOW + 1).as_deref(), Some("1"));
        assert_eq!(at(NOW - 5_000).as_deref(), Some("1"));
        // The record expires at NOW + 60 s: a later reset is replayed as the entry's end.
        assert_eq!(at(NOW + 3_600_000).as_deref(), Some("60"));
        assert_eq!(at(u64::MAX).as_deref(), Some("60"));
    }

    #[test]
    fn a_body_not_kept_is_replaced_by_the_filters_own() {
        let replay = ReplayBody {
            content_type: Some(b"text/html".to_vec()),
            ..ReplayBody::default()
        };
        let reply = cache_hit(&record(0), replay.parts(), NOW);
        assert_eq!(header(&reply, "content-type"), Some("application/json"));
        let body: serde_json::Value = serde_json::from_slice(reply.body()).unwrap();
        assert_eq!(body["status"], 401);
        assert_eq!(body["error"], "cached upstream response");
    }

    #[test]
    fn the_limiters_429_says_when_to_come_back() {
        let reply = rate_limited(42, None);
        assert_eq!(reply.status, 429);
        assert_eq!(header(&reply, "retry-after"), Some("42"));
        assert_eq!(header(&reply, "ratelimit"), None);
        let body: serde_json::Value = serde_json::from_slice(reply.body()).unwrap();
        assert_eq!(body["retry_after"], 42);
        assert!(body["error"].is_string());
        let with_policy = rate_limited(7, Some((10, 60)));
        assert_eq!(
            header(&with_policy, "ratelimit-policy"),
            Some("\"auth-failures\";q=10;w=60")
        );
        assert_eq!(
            header(&with_policy, "ratelimit"),
            Some("\"auth-failures\";r=0;t=7")
        );
    }

    #[test]
    fn unprintable_header_values_are_dropped() {
        let replay = ReplayBody {
            www_authenticate: Some(b"Bearer\x01".to_vec()),
            content_type: Some(b"\xff".to_vec()),
            body: Some(Vec::new()),
            ..ReplayBody::default()
        };
        let reply = cache_hit(&record(0), replay.parts(), NOW);
        assert_eq!(header(&reply, "www-authenticate"), None);
        assert_eq!(header(&reply, "content-type"), None);
    }
}
