//! One HTTP exchange through the filter, decided without the proxy. The host adapter reads
//! what the exchange carried, calls one step per proxy callback, and writes back what the step
//! returns; every step also fills a `Report` (access-log decision, metric updates).
//!
//! 1. `request`: continue, or reply locally (a cache hit, the limiter's 429).
//! 2. `response`: from `:status` and the private headers' presence alone, the plan: headers to
//!    remove or add, the limiter's tally, and whether the full header maps are needed; then
//!    `respond` with them when the plan says so (purge, store).
//! 3. `body` per chunk of a response being stored, `trailers`, and `end` when the stream is
//!    done (with or without a response).
//!
//! The limiter hears how a request ended through a `Tally` that a step hands out (a hit that
//! replays a failure, a response, the end of the stream) and the adapter passes to `count`:
//! the count is a step of its own. In cluster mode `cluster_call` then says whether a counted
//! failure goes to the rate limit service, and `cluster_answer` applies its answer.

mod body;
mod client;
mod cluster;
mod decision;
mod host;
mod report;
mod request;
mod response;
mod store;
mod tally;

#[cfg(test)]
mod tests;

pub use cluster::ClusterCall;
pub use decision::Decision;
pub use host::Host;
pub use report::Report;
pub use request::{RequestStep, Verdict};
pub use response::{ResponsePlan, PURGE_HEADER};
pub use tally::Tally;

use crate::client_ip::ClientGroup;
use crate::config::KeyShape;
use crate::filter_config::FilterConfig;
use crate::fingerprint::{Fingerprint, KeyParts};
use crate::path;
use crate::request::{Headers, RequestLine};
use crate::slots::Bucket;

/// One request and its response, as far as the filter is concerned. `Default` is an exchange
/// whose request the filter has not seen (yet).
#[derive(Default)]
pub struct Exchange {
    /// The request headers passed through this filter: a response to a request the filter
    /// never saw (another filter answered first) is left alone.
    seen: bool,
    head: bool,
    has_credential: bool,
    /// Who the request is for the cache, when it is eligible for caching at all.
    subject: Option<Subject>,
    /// Something used the client: its label goes to the access log.
    client_needed: bool,
    /// The resolved client, grouped (`None`: unresolved).
    client: Option<ClientGroup>,
    /// The rate limiter tracks this client (resolved, not exempt, limiter on); taken by the
    /// tally, so the limiter hears about a request once.
    limited: Option<Fingerprint>,
    /// The client's bucket as the admission read it, for the one write this request makes
    /// to it: its place (`hold_place`), or the failure a hit replays (`count`).
    client_read: Option<Bucket>,
    /// The start of the failure window this request holds a place in.
    reservation: Option<u64>,
    shadow_hit: bool,
    /// The request's `Origin`, kept only when CORS is configured, for the filter's own replies.
    origin: Option<Vec<u8>>,
    /// The response being encoded is this filter's own reply.
    replied_locally: bool,
    /// A response being stored whose body is still streaming past.
    capture: Option<body::Capture>,
    /// A call to the rate limit service under way (cluster mode).
    pending_call: Option<cluster::PendingCall>,
}

#[derive(Clone, Copy)]
struct Subject {
    identity: Fingerprint,
    anonymous: bool,
}

impl Exchange {
    /// What the access log shows as the client (`negcache_client`): `None` when nothing needed
    /// it, else its group or `unresolved`.
    pub fn client_label(&self) -> Option<&str> {
        self.client_needed
            .then(|| self.client.as_deref().unwrap_or("unresolved"))
    }

    /// The entry key of this request (`headers`, `line`) under `shape`; `None` when the shape
    /// needs a client IP that could not be resolved.
    fn entry_key<H: Host>(
        &mut self,
        filter: &FilterConfig,
        host: &H,
        (headers, line): (&Headers, &RequestLine),
        subject: &Subject,
        shape: KeyShape,
        report: &mut Report,
    ) -> Option<Fingerprint> {
        let client_ip = if shape.client_ip {
            self.client_for_key(filter, host, headers, report)?
        } else {
            ""
        };
        let parts = KeyParts {
            method: &line.method,
            path: path::path_only(&line.raw_path),
            query: path::query_only(&line.raw_path),
            client_ip,
        };
        Some(filter.hasher.entry(&subject.identity, shape, &parts))
    }
}
