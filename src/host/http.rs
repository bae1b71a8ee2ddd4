//! The HTTP context: read the request, decide (preflight, exempt, blocked, hit, miss), reply or
//! continue; read the response, strip the filter's private headers, count failures and store
//! what is cacheable.

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::UNIX_EPOCH;

use log::{debug, info};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use super::ffi;
use super::metrics::Metrics;
use super::store::EnvoyStore;
use crate::client_ip;
use crate::clock::Clock;
use crate::config::KeyShape;
use crate::credential;
use crate::fingerprint::{Fingerprint, KeyParts, Who};
use crate::metrics::Metric;
use crate::negative_cache::{self, Record, ReplayBody, StoreOutcome};
use crate::path;
use crate::rate_limit::{self, Admission};
use crate::reply::{self, LocalReply};
use crate::request::{Headers, RequestLine};
use crate::runtime::Runtime;

/// An upstream names a credential that is good now; the header carries it raw, so it never
/// reaches the client.
const PURGE_HEADER: &str = "x-negcache-purge";
const DECISION: &str = "negcache_decision";
const CLIENT: &str = "negcache_client";

/// The header-derived-peer notice is logged once per VM, not once per request.
static HEADER_DERIVED_PEER_LOGGED: AtomicBool = AtomicBool::new(false);

pub struct NegcacheHttp {
    runtime: Option<Rc<Runtime>>,
    metrics: Rc<Metrics>,
    /// `None` until the request headers pass through this filter: a response to a request the
    /// filter never saw (another filter answered first) is left alone.
    request: Option<SeenRequest>,
    /// The request's headers as the host serialized them, kept for the rare response that
    /// needs the request line again (an entry to store, a purge), so a request copies nothing.
    request_headers: Vec<u8>,
    /// The response being encoded is this filter's own reply.
    replied_locally: bool,
    pending: Option<PendingStore>,
}

struct SeenRequest {
    /// Preflight or exempt path: the filter takes no part in it.
    bypass: bool,
    head: bool,
    shadow_hit: bool,
    has_credential: bool,
    subject: Option<Subject>,
    /// The resolved client, grouped (`None`: unresolved).
    client: Option<String>,
    /// The rate limiter tracks this client (resolved, not exempt, limiter on).
    limited: Option<Fingerprint>,
    /// The start of the failure window this request holds a place in.
    reservation: Option<u64>,
    /// The request's `Origin`, kept only when CORS is configured, for the filter's own replies.
    origin: Option<Vec<u8>>,
}

/// Who the request is, for the cache, when it is eligible for caching at all.
#[derive(Clone, Copy)]
struct Subject {
    identity: Fingerprint,
    anonymous: bool,
}

/// A cacheable response whose body is still streaming past.
struct PendingStore {
    record: Record,
    replay: ReplayBody,
    captured: Vec<u8>,
    overflowed: bool,
}

impl NegcacheHttp {
    pub fn new(runtime: Option<Rc<Runtime>>, metrics: Rc<Metrics>) -> Self {
        NegcacheHttp {
            runtime,
            metrics,
            request: None,
            request_headers: Vec::new(),
            replied_locally: false,
            pending: None,
        }
    }
}

impl Context for NegcacheHttp {}

impl HttpContext for NegcacheHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(runtime) = self.runtime.clone() else {
            return Action::Continue;
        };
        let Some(map) = ffi::header_map(MapType::HttpRequestHeaders) else {
            self.error();
            return Action::Continue;
        };
        let action = match Headers::from_serialized(&map) {
            Some(headers) => self.on_request(&runtime, &headers),
            None => {
                self.error();
                Action::Continue
            }
        };
        self.request_headers = map;
        action
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.replied_locally || self.request.is_none() {
            return Action::Continue;
        }
        let Some(runtime) = self.runtime.clone() else {
            return Action::Continue;
        };
        if !self.response_needs_headers(&runtime) {
            // A response that changes nothing: release the request's place with the limiter.
            self.count_outcome(&runtime, false);
            return Action::Continue;
        }
        let map = ffi::header_map(MapType::HttpResponseHeaders);
        let Some(headers) = map.as_deref().and_then(Headers::from_serialized) else {
            self.error();
            return Action::Continue;
        };
        self.on_response(&runtime, &headers, end_of_stream);
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(pending) = self.pending.as_mut() else {
            return Action::Continue;
        };
        let limit = self
            .runtime
            .as_ref()
            .map_or(0, |r| r.config.negative_cache.max_body_bytes as usize);
        if body_size > 0 && !pending.overflowed {
            if pending.captured.len() + body_size > limit {
                pending.overflowed = true;
                pending.captured = Vec::new();
            } else {
                match hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size) {
                    Ok(Some(chunk)) => pending.captured.extend_from_slice(&chunk),
                    Ok(None) => {}
                    Err(_) => {
                        pending.overflowed = true;
                        pending.captured = Vec::new();
                    }
                }
            }
        }
        if end_of_stream {
            self.finish_pending(true);
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.finish_pending(true);
        Action::Continue
    }

    fn on_log(&mut self) {
        // The stream ended before the body did: keep the entry, not the partial body.
        self.finish_pending(false);
        // Ended without a response this filter saw (reset, timeout): give the place back.
        if let Some(runtime) = self.runtime.clone() {
            self.count_outcome(&runtime, false);
        }
    }
}

impl NegcacheHttp {
    fn on_request(&mut self, runtime: &Runtime, headers: &Headers) -> Action {
        let config = &runtime.config;
        let line = RequestLine::of(headers);
        let credential_identity = credential::extract(&config.credentials, headers, &line.raw_path)
            .map(|found| {
                runtime.hasher.identity(
                    &line.authority,
                    Who::Credential {
                        source: &runtime.source_labels[found.source],
                        value: &found.value,
                    },
                )
            });
        let mut seen = SeenRequest {
            bypass: false,
            head: line.method == "HEAD",
            shadow_hit: false,
            has_credential: credential_identity.is_some(),
            subject: None,
            client: None,
            limited: None,
            reservation: None,
            origin: if config.cors.allowed_origins.is_empty() {
                None
            } else {
                headers.first("origin").map(<[u8]>::to_vec)
            },
        };

        // Browsers send no credentials on a preflight; answering, counting or blocking it would
        // hide the real 401/429 from the web app.
        if line.method == "OPTIONS"
            && !seen.has_credential
            && headers.contains("origin")
            && headers.contains("access-control-request-method")
        {
            seen.bypass = true;
            self.request = Some(seen);
            decide("preflight");
            return Action::Continue;
        }
        if !config.exempt_paths.is_empty() {
            let normalized = path::normalize(&line.raw_path);
            if config
                .exempt_paths
                .iter()
                .any(|prefix| path::is_under(&normalized, prefix))
            {
                seen.bypass = true;
                self.request = Some(seen);
                decide("exempt");
                return Action::Continue;
            }
        }

        let cache = &config.negative_cache;
        let limit = &config.rate_limit;
        if !cache.enabled && !limit.enabled {
            self.request = Some(seen);
            return Action::Continue;
        }
        // The client is resolved only for what uses it (a host call and a header walk saved on
        // every request of a cache-only set-up): the limiter, anonymous entries, entries keyed
        // on the client IP.
        let needs_client = limit.enabled
            || (cache.enabled
                && (cache.keys_use_client_ip() || (!seen.has_credential && cache.cache_anonymous)));
        let client = if needs_client {
            let client = self.resolve_client(runtime, headers);
            seen.client = client.map(|ip| client_ip::group(ip, config.client_ip.ipv6_prefix));
            ffi::set_filter_state(
                CLIENT,
                seen.client.as_deref().unwrap_or("unresolved").as_bytes(),
            );
            client
        } else {
            None
        };

        let clock = Clock::new(now_ms);
        if limit.enabled {
            if let (Some(ip), Some(key)) = (client, seen.client.as_deref()) {
                if !client_ip::contains(&limit.exempt_cidrs, ip) {
                    seen.limited = Some(runtime.hasher.client(key));
                }
            }
            if let Some(refusal) = self.admit(runtime, &mut seen, &clock) {
                self.request = Some(seen);
                return self.send(runtime, refusal);
            }
        }

        if !cache.enabled {
            self.request = Some(seen);
            return Action::Continue;
        }
        seen.subject = match credential_identity {
            Some(identity) => Some(Subject {
                identity,
                anonymous: false,
            }),
            None if cache.cache_anonymous => seen.client.as_deref().map(|client| Subject {
                identity: runtime
                    .hasher
                    .identity(&line.authority, Who::Anonymous { client_ip: client }),
                anonymous: true,
            }),
            None => None,
        };
        let Some(subject) = seen.subject else {
            self.request = Some(seen);
            return Action::Continue;
        };

        let found = negative_cache::lookup(
            &EnvoyStore,
            &runtime.tables,
            cache,
            &subject.identity,
            &clock,
            |shape| seen.entry_key(runtime, &subject, shape, &line),
        );
        let action = match found {
            Err(_) => {
                self.error();
                Action::Continue
            }
            Ok(found) => {
                self.metrics.add(Metric::Errors, u64::from(found.corrupt));
                match found.hit {
                    Some(_) if cache.shadow => {
                        seen.shadow_hit = true;
                        self.metrics.inc(Metric::ShadowHits);
                        decide("shadow-hit");
                        Action::Continue
                    }
                    Some((index, record)) => {
                        self.request = Some(seen);
                        let action = self.replay(runtime, index, &record, clock.now_ms());
                        return action;
                    }
                    None => {
                        self.metrics.inc(Metric::Misses);
                        decide("miss");
                        Action::Continue
                    }
                }
            }
        };
        self.request = Some(seen);
        action
    }

    /// The rate limiter's check at the start of a request: `Some(reply)` when it refuses it.
    fn admit(
        &mut self,
        runtime: &Runtime,
        seen: &mut SeenRequest,
        clock: &Clock,
    ) -> Option<LocalReply> {
        let client = seen.limited?;
        let limit = &runtime.config.rate_limit;
        let admission =
            match rate_limit::admit(&EnvoyStore, &runtime.clients, limit, &client, clock) {
                Ok(admission) => admission,
                Err(_) => {
                    self.error();
                    return None;
                }
            };
        let retry_after = match admission {
            Admission::Pass => return None,
            Admission::Reserved { window_start_ms } => {
                if seen.has_credential || limit.count_anonymous {
                    seen.reservation = Some(window_start_ms);
                } else {
                    // Requests that can never count as failures do not hold a place.
                    let _ = rate_limit::finish(
                        &EnvoyStore,
                        &runtime.clients,
                        limit,
                        &client,
                        clock.now_ms(),
                        false,
                        Some(window_start_ms),
                    );
                }
                return None;
            }
            Admission::Blocked { until_ms } => reply::seconds_until(until_ms, clock.now_ms()),
            Admission::InflightFull => 1,
        };
        let who = seen.client.as_deref().unwrap_or("unresolved");
        if limit.shadow {
            self.metrics.inc(Metric::RateLimitShadowRejected);
            info!("negcache: shadow: would answer 429 to {who} (retry after {retry_after} s)");
            decide("shadow-blocked");
            return None;
        }
        self.metrics.inc(Metric::RateLimitRejected);
        decide("blocked");
        let policy = limit
            .ratelimit_headers
            .then_some((limit.max_failures, limit.window_ms / 1000));
        Some(reply::rate_limited(retry_after, policy))
    }

    fn replay(&mut self, runtime: &Runtime, index: u32, record: &Record, now: u64) -> Action {
        match negative_cache::load_body(&EnvoyStore, &runtime.tables, index, record) {
            Ok(Some(body)) => {
                self.metrics.inc(Metric::Hits);
                decide("hit");
                debug!(
                    "negcache: hit {} for {}",
                    record.status,
                    record.identity.short()
                );
                // A client retrying a dead credential is still failing.
                if runtime
                    .config
                    .rate_limit
                    .failure_statuses
                    .contains(&record.status)
                {
                    self.count_outcome(runtime, true);
                }
                self.send(runtime, reply::cache_hit(record, body, now))
            }
            // Its body belongs to a newer entry being written right now: ask the upstream.
            Ok(None) => {
                self.metrics.inc(Metric::Misses);
                decide("miss");
                Action::Continue
            }
            Err(_) => {
                self.error();
                Action::Continue
            }
        }
    }

    /// Sends one of the filter's own replies, with the CORS headers configured for the
    /// request's origin, so a web app can read it.
    fn send(&mut self, runtime: &Runtime, mut local: LocalReply) -> Action {
        let origin = self.request.as_ref().and_then(|r| r.origin.as_deref());
        local
            .headers
            .extend(runtime.config.cors.headers_for(origin));
        let headers: Vec<(&str, &str)> = local
            .headers
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        self.replied_locally = true;
        if hostcalls::send_http_response(u32::from(local.status), headers, Some(&local.body))
            .is_err()
        {
            self.replied_locally = false;
            self.error();
            return Action::Continue;
        }
        Action::Pause
    }

    fn resolve_client(&self, runtime: &Runtime, headers: &Headers) -> Option<IpAddr> {
        let address = ffi::source_address();
        let address = address
            .as_deref()
            .and_then(|bytes| std::str::from_utf8(bytes).ok());
        let resolution = client_ip::resolve(&runtime.config.client_ip, address, headers);
        if resolution.header_derived_peer {
            self.metrics.inc(Metric::ClientIpHeaderDerivedPeer);
            if !HEADER_DERIVED_PEER_LOGGED.swap(true, Ordering::Relaxed) {
                info!(
                    "negcache: the downstream address has port 0: Envoy took it from \
                     X-Forwarded-For (use_remote_address: false), which a client can write; \
                     see the README for safe set-ups"
                );
            }
        }
        self.metrics.add(
            Metric::ClientIpUntrustedHeader,
            u64::from(resolution.untrusted_header),
        );
        if resolution.client.is_none() {
            self.metrics.inc(Metric::ClientIpUnresolved);
        }
        resolution.client
    }

    /// Whether this response is one the filter acts on (strips a private header, counts a
    /// failure, may store it, marks a shadow hit), from `:status` and the private headers'
    /// presence alone: two or three header reads instead of the whole map for a good response.
    fn response_needs_headers(&self, runtime: &Runtime) -> bool {
        let config = &runtime.config;
        let private = |name: &str| ffi::header_value(MapType::HttpResponseHeaders, name).is_some();
        if private(PURGE_HEADER)
            || config
                .negative_cache
                .inactive
                .as_ref()
                .is_some_and(|rule| private(&rule.header))
        {
            return true;
        }
        let status = ffi::header_value(MapType::HttpResponseHeaders, ":status")
            .and_then(|value| std::str::from_utf8(&value).ok()?.parse::<u16>().ok());
        let Some(status) = status else {
            // Not a status this filter can read: the full path reports it.
            return true;
        };
        let request = self.request.as_ref();
        let cacheable = config.negative_cache.enabled
            && negative_cache::may_store(status)
            && request.is_some_and(|r| r.subject.is_some() && !r.bypass);
        let counted = request.is_some_and(|r| r.limited.is_some())
            && config.rate_limit.failure_statuses.contains(&status);
        counted || cacheable || request.is_some_and(|r| r.shadow_hit)
    }

    fn on_response(&mut self, runtime: &Runtime, headers: &Headers, end_of_stream: bool) {
        let cache = &runtime.config.negative_cache;

        if headers.contains(PURGE_HEADER) {
            let _ = hostcalls::remove_map_value(MapType::HttpResponseHeaders, PURGE_HEADER);
            if cache.enabled {
                self.purge(runtime, headers.all(PURGE_HEADER));
            }
        }
        let inactive_marker = match &cache.inactive {
            Some(rule) if headers.contains(&rule.header) => {
                let _ = hostcalls::remove_map_value(MapType::HttpResponseHeaders, &rule.header);
                true
            }
            _ => false,
        };
        let Some(status) = headers
            .first_str(":status")
            .and_then(|s| s.parse::<u16>().ok())
        else {
            return;
        };

        let failed = runtime.config.rate_limit.failure_statuses.contains(&status);
        self.count_outcome(runtime, failed);

        let Some(request) = self.request.as_mut() else {
            return;
        };
        if request.shadow_hit {
            let _ =
                hostcalls::add_map_value(MapType::HttpResponseHeaders, "x-negcache", "shadow-hit");
            // A real hit would not have refreshed the entry; neither does its shadow.
            return;
        }
        let Some(subject) = request.subject else {
            return;
        };
        if !cache.enabled || request.bypass || !negative_cache::may_store(status) {
            return;
        }
        let now = now_ms();
        let Some(plan) = negative_cache::plan_store(
            cache,
            status,
            inactive_marker,
            subject.anonymous,
            headers.first("retry-after"),
            now,
        ) else {
            return;
        };
        let Some(key) = Headers::from_serialized(&self.request_headers).and_then(|headers| {
            request.entry_key(runtime, &subject, plan.shape, &RequestLine::of(&headers))
        }) else {
            return;
        };
        let record = Record {
            inactive: plan.inactive,
            anonymous: subject.anonymous,
            status,
            shape: plan.shape.to_bits(),
            epoch: cache.epoch,
            stored_ms: now,
            expires_ms: plan.expires_ms,
            reset_ms: plan.reset_ms,
            identity: subject.identity,
            key,
        };
        let mut replay = ReplayBody {
            key,
            stored_ms: now,
            content_type: headers.first("content-type").map(<[u8]>::to_vec),
            www_authenticate: headers.first("www-authenticate").map(<[u8]>::to_vec),
            body: None,
        };
        let limit = cache.max_body_bytes as usize;
        let declared_length = headers
            .first_str("content-length")
            .and_then(|s| s.trim().parse::<usize>().ok());
        let capturable = !request.head
            && !headers.contains("content-encoding")
            && declared_length.is_none_or(|length| length <= limit);
        if end_of_stream || !capturable {
            if capturable {
                replay.body = Some(Vec::new());
            }
            self.store(runtime, &record, &replay);
        } else {
            self.pending = Some(PendingStore {
                record,
                replay,
                captured: Vec::new(),
                overflowed: false,
            });
        }
    }

    /// Tells the rate limiter how a request ended: counts a failure of a request that carried a
    /// credential (or any, with `count_anonymous`), and gives back its reserved place. Runs at
    /// most once per request.
    fn count_outcome(&mut self, runtime: &Runtime, failed: bool) {
        let Some(request) = self.request.as_mut() else {
            return;
        };
        let Some(client) = request.limited.take() else {
            return;
        };
        let limit = &runtime.config.rate_limit;
        let failed = failed && (request.has_credential || limit.count_anonymous);
        let reservation = request.reservation.take();
        if !failed && reservation.is_none() {
            return;
        }
        let now = now_ms();
        match rate_limit::finish(
            &EnvoyStore,
            &runtime.clients,
            limit,
            &client,
            now,
            failed,
            reservation,
        ) {
            Ok(outcome) => {
                self.metrics
                    .add(Metric::RateLimitFailures, u64::from(outcome.counted));
                self.metrics
                    .add(Metric::RateLimitSlotsUsed, u64::from(outcome.newly_used));
                if let Some(block_ms) = outcome.block_ms {
                    self.metrics.inc(Metric::RateLimitBlocks);
                    info!(
                        "negcache: blocking client {} for {} s after repeated authentication failures",
                        request.client.as_deref().unwrap_or("unresolved"),
                        block_ms / 1000
                    );
                }
            }
            Err(_) => self.error(),
        }
    }

    /// Stores the pending entry: with the captured body when the stream completed within the
    /// limit, else with the filter's own body standing in.
    fn finish_pending(&mut self, completed: bool) {
        let Some(mut pending) = self.pending.take() else {
            return;
        };
        let Some(runtime) = self.runtime.clone() else {
            return;
        };
        if completed && !pending.overflowed {
            pending.replay.body = Some(pending.captured);
        }
        self.store(&runtime, &pending.record, &pending.replay);
    }

    fn store(&self, runtime: &Runtime, record: &Record, replay: &ReplayBody) {
        match negative_cache::store(&EnvoyStore, &runtime.tables, record, replay) {
            Ok(outcome) => {
                let StoreOutcome {
                    evicted,
                    newly_used,
                    corrupt,
                } = outcome;
                self.metrics.inc(Metric::Stores);
                self.metrics.add(Metric::Evictions, u64::from(evicted));
                self.metrics.add(Metric::SlotsUsed, u64::from(newly_used));
                self.metrics.add(Metric::Errors, u64::from(corrupt));
                decide("stored");
                debug!(
                    "negcache: stored {} for {} ({} s)",
                    record.status,
                    record.identity.short(),
                    record.expires_ms.saturating_sub(record.stored_ms) / 1000
                );
            }
            Err(_) => self.error(),
        }
    }

    fn purge<'a>(&self, runtime: &Runtime, values: impl Iterator<Item = &'a [u8]>) {
        let Some(headers) = Headers::from_serialized(&self.request_headers) else {
            return;
        };
        let authority = RequestLine::of(&headers).authority;
        let cache = &runtime.config.negative_cache;
        let now = now_ms();
        for value in values {
            let value = value.trim_ascii();
            if value.is_empty() {
                continue;
            }
            for label in &runtime.source_labels {
                let identity = runtime.hasher.identity(
                    &authority,
                    Who::Credential {
                        source: label,
                        value,
                    },
                );
                match negative_cache::purge(
                    &EnvoyStore,
                    &runtime.tables,
                    &identity,
                    cache.epoch,
                    now,
                ) {
                    Ok(removed) => {
                        self.metrics.add(Metric::Purges, u64::from(removed));
                        if removed > 0 {
                            debug!("negcache: purged {removed} entries of {}", identity.short());
                        }
                    }
                    Err(_) => self.error(),
                }
            }
        }
    }

    fn error(&self) {
        self.metrics.inc(Metric::Errors);
        decide("error");
    }
}

impl SeenRequest {
    /// The entry key of this request under `shape`; `None` when the shape needs a client IP
    /// that could not be resolved.
    fn entry_key(
        &self,
        runtime: &Runtime,
        subject: &Subject,
        shape: KeyShape,
        line: &RequestLine,
    ) -> Option<Fingerprint> {
        let client_ip = if shape.client_ip {
            self.client.as_deref()?
        } else {
            ""
        };
        let parts = KeyParts {
            method: &line.method,
            path: path::path_only(&line.raw_path),
            query: path::query_only(&line.raw_path),
            client_ip,
        };
        Some(runtime.hasher.entry(&subject.identity, shape, &parts))
    }
}

fn decide(decision: &str) {
    ffi::set_filter_state(DECISION, decision.as_bytes());
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}
