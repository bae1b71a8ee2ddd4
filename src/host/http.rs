//! The HTTP context: read the request, decide (exempt, hit, miss), reply or continue; read the
//! response, strip the filter's private headers, and store what is cacheable.

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use log::debug;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use super::ffi;
use super::metrics::Metrics;
use super::store::EnvoyStore;
use crate::client_ip;
use crate::credential;
use crate::fingerprint::{Fingerprint, KeyParts, Who};
use crate::metrics::Metric;
use crate::negative_cache::{self, Record, ReplayBody, StoreOutcome};
use crate::path;
use crate::reply;
use crate::request::{HeaderLines, Headers};
use crate::runtime::Runtime;

/// An upstream names a credential that is good now; the header carries it raw, so it never
/// reaches the client.
const PURGE_HEADER: &str = "x-negcache-purge";
const DECISION: &str = "negcache_decision";

pub struct NegcacheHttp {
    runtime: Option<Rc<Runtime>>,
    metrics: Rc<Metrics>,
    /// `None` until the request headers pass through this filter: a response to a request the
    /// filter never saw (another filter answered first) is left alone.
    request: Option<SeenRequest>,
    /// The response being encoded is this filter's own reply.
    replied_locally: bool,
    pending: Option<PendingStore>,
}

struct SeenRequest {
    exempt: bool,
    head: bool,
    shadow_hit: bool,
    authority: Vec<u8>,
    method: String,
    raw_path: String,
    subject: Option<Subject>,
    /// Read on first use only: most requests never need it.
    client_ip: Option<Option<String>>,
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
        let Ok(lines) = hostcalls::get_map_bytes(MapType::HttpRequestHeaders) else {
            self.error();
            return Action::Continue;
        };
        self.on_request(&runtime, &lines)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.replied_locally {
            return Action::Continue;
        }
        let Some(runtime) = self.runtime.clone() else {
            return Action::Continue;
        };
        if self.request.is_none() {
            return Action::Continue;
        }
        let Ok(lines) = hostcalls::get_map_bytes(MapType::HttpResponseHeaders) else {
            self.error();
            return Action::Continue;
        };
        self.on_response(&runtime, &lines, end_of_stream);
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
    }
}

impl NegcacheHttp {
    fn on_request(&mut self, runtime: &Runtime, lines: &HeaderLines) -> Action {
        let headers = Headers::new(lines);
        let raw_path = String::from_utf8_lossy(headers.first(":path").unwrap_or(b"/")).into_owned();
        let method =
            String::from_utf8_lossy(headers.first(":method").unwrap_or_default()).into_owned();
        let mut seen = SeenRequest {
            exempt: false,
            head: method == "HEAD",
            shadow_hit: false,
            authority: headers
                .first(":authority")
                .unwrap_or_default()
                .to_ascii_lowercase(),
            method,
            raw_path,
            subject: None,
            client_ip: None,
        };

        if !runtime.config.exempt_paths.is_empty() {
            let normalized = path::normalize(&seen.raw_path);
            if runtime
                .config
                .exempt_paths
                .iter()
                .any(|prefix| path::is_under(&normalized, prefix))
            {
                seen.exempt = true;
                self.request = Some(seen);
                decide("exempt");
                return Action::Continue;
            }
        }

        let cache = &runtime.config.negative_cache;
        if !cache.enabled {
            self.request = Some(seen);
            return Action::Continue;
        }

        let credential = credential::extract(&runtime.config.credentials, &headers, &seen.raw_path);
        seen.subject = match credential {
            Some(found) => Some(Subject {
                identity: runtime.hasher.identity(
                    &seen.authority,
                    Who::Credential {
                        source: &runtime.source_labels[found.source],
                        value: &found.value,
                    },
                ),
                anonymous: false,
            }),
            None if cache.cache_anonymous => seen.client_ip().map(|ip| Subject {
                identity: runtime
                    .hasher
                    .identity(&seen.authority, Who::Anonymous { client_ip: &ip }),
                anonymous: true,
            }),
            None => None,
        };
        let Some(subject) = seen.subject else {
            self.request = Some(seen);
            return Action::Continue;
        };

        let now = now_ms();
        let found = negative_cache::lookup(
            &EnvoyStore,
            &runtime.tables,
            cache,
            &subject.identity,
            now,
            |shape| seen.entry_key(runtime, &subject, shape),
        );
        let action = match found {
            Err(_) => {
                self.error();
                Action::Continue
            }
            Ok(found) => {
                if found.corrupt {
                    self.metrics.inc(Metric::Errors);
                }
                match found.hit {
                    Some((_, _)) if cache.shadow => {
                        seen.shadow_hit = true;
                        self.metrics.inc(Metric::ShadowHits);
                        decide("shadow-hit");
                        Action::Continue
                    }
                    Some((index, record)) => self.replay(runtime, index, &record, now),
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

    fn replay(&mut self, runtime: &Runtime, index: u32, record: &Record, now: u64) -> Action {
        match negative_cache::load_body(&EnvoyStore, &runtime.tables, index, record) {
            Ok(Some(body)) => {
                let local = reply::cache_hit(record, &body, now);
                let headers: Vec<(&str, &str)> = local
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                self.replied_locally = true;
                self.metrics.inc(Metric::Hits);
                decide("hit");
                debug!(
                    "negcache: hit {} for {}",
                    record.status,
                    record.identity.short()
                );
                if hostcalls::send_http_response(
                    u32::from(local.status),
                    headers,
                    Some(&local.body),
                )
                .is_err()
                {
                    self.replied_locally = false;
                    self.error();
                    return Action::Continue;
                }
                Action::Pause
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

    fn on_response(&mut self, runtime: &Runtime, lines: &HeaderLines, end_of_stream: bool) {
        let headers = Headers::new(lines);
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
        if !cache.enabled || request.exempt {
            return;
        }
        let Some(status) = headers
            .first_str(":status")
            .and_then(|s| s.parse::<u16>().ok())
        else {
            return;
        };
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
        let Some(key) = request.entry_key(runtime, &subject, plan.shape) else {
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
        let Some(request) = self.request.as_ref() else {
            return;
        };
        let cache = &runtime.config.negative_cache;
        let now = now_ms();
        for value in values {
            let value = value.trim_ascii();
            if value.is_empty() {
                continue;
            }
            for label in &runtime.source_labels {
                let identity = runtime.hasher.identity(
                    &request.authority,
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
    fn client_ip(&mut self) -> Option<String> {
        self.client_ip
            .get_or_insert_with(|| {
                let address = hostcalls::get_property(vec!["source", "address"]).ok()??;
                let address = std::str::from_utf8(&address).ok()?;
                client_ip::parse_peer(address).map(|peer| peer.ip.to_string())
            })
            .clone()
    }

    /// The entry key of this request under `shape`; `None` when the shape needs a client IP
    /// that cannot be resolved.
    fn entry_key(
        &mut self,
        runtime: &Runtime,
        subject: &Subject,
        shape: crate::config::KeyShape,
    ) -> Option<Fingerprint> {
        let client_ip = if shape.client_ip {
            self.client_ip()?
        } else {
            String::new()
        };
        let parts = KeyParts {
            method: &self.method,
            path: path::path_only(&self.raw_path),
            query: path::query_only(&self.raw_path),
            client_ip: &client_ip,
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
