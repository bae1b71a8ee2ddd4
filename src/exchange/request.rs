//! The request's turn: preflight, exempt path, the limiter's admission, the cache lookup.

use log::{debug, info};

use super::tally::is_failure;
use super::{Decision, Exchange, Host, Report, Subject, Tally};
use crate::clock::Clock;
use crate::credential;
use crate::filter_config::FilterConfig;
use crate::fingerprint::Who;
use crate::metrics::Metric;
use crate::negative_cache::{self, Hit};
use crate::path;
use crate::rate_limit::{self, Admission};
use crate::reply::{self, LocalReply};
use crate::request::{Headers, RequestLine};

/// What the host does with the request.
// A reply is carried by value (a few hundred bytes, once per request): boxing it would add an
// allocation to every reply.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// On to the upstream.
    Continue,
    /// Answer it with this reply (CORS headers included); the upstream never sees it.
    Reply(LocalReply),
}

#[derive(Debug, PartialEq, Eq)]
pub struct RequestStep {
    pub verdict: Verdict,
    /// A hit replaying a failure: the client is failing again, to be counted.
    pub tally: Option<Tally>,
}

impl RequestStep {
    const CONTINUE: RequestStep = RequestStep {
        verdict: Verdict::Continue,
        tally: None,
    };
}

impl Exchange {
    /// Decides the request from its headers (`None`: the host could not hand them over, an
    /// error, and the request goes on untouched).
    pub fn request<H: Host>(
        &mut self,
        filter: &FilterConfig,
        host: &H,
        headers: Option<&Headers>,
        report: &mut Report,
    ) -> RequestStep {
        let Some(headers) = headers else {
            report.error();
            return RequestStep::CONTINUE;
        };
        let config = &filter.config;
        let line = RequestLine::of(headers);
        let presented = credential::extract(&config.credentials, headers, &line.raw_path);
        // An unusable credential (ambiguous or blank) is still an attempt to authenticate: its
        // failures count, but nothing is looked up or stored for it.
        self.has_credential = presented.is_presented();
        self.seen = true;
        self.head = line.method == "HEAD";
        if !config.cors.allowed_origins.is_empty() {
            self.origin = headers.first("origin").map(<[u8]>::to_vec);
        }

        // Browsers send no credentials on a preflight; answering, counting or blocking it would
        // hide the real 401/429 from the web app.
        if line.method == "OPTIONS"
            && !self.has_credential
            && headers.contains("origin")
            && headers.contains("access-control-request-method")
        {
            report.decide(Decision::Preflight);
            return RequestStep::CONTINUE;
        }
        if path::is_exempt(&line.raw_path, &config.exempt_paths) {
            report.decide(Decision::Exempt);
            return RequestStep::CONTINUE;
        }

        let cache = &config.negative_cache;
        let limit = &config.rate_limit;
        if !cache.enabled && !limit.enabled {
            return RequestStep::CONTINUE;
        }
        let client_ip = if self.needs_client(filter) {
            self.resolve_client(filter, host, headers, report)
        } else {
            None
        };
        let clock = host.clock();
        if limit.enabled {
            if let (Some(ip), Some(group)) = (client_ip, self.client.as_deref()) {
                if !crate::client_ip::contains(&limit.exempt_cidrs, ip) {
                    self.limited = Some(filter.hasher.client(group));
                }
            }
            if let Some(refusal) = self.admit(filter, host, &clock, report) {
                return self.reply(filter, refusal, None);
            }
        }
        let step = self.consult_cache(filter, host, (headers, &line), presented, &clock, report);
        if matches!(step.verdict, Verdict::Reply(_)) {
            return step;
        }
        match self.hold_place(filter, host, &clock, report) {
            Some(refusal) => self.reply(filter, refusal, None),
            None => step,
        }
    }

    /// The cache's part of the request: a hit replays the stored answer.
    fn consult_cache<H: Host>(
        &mut self,
        filter: &FilterConfig,
        host: &H,
        (headers, line): (&Headers, &RequestLine),
        presented: credential::Presented,
        clock: &Clock,
        report: &mut Report,
    ) -> RequestStep {
        let cache = &filter.config.negative_cache;
        if !cache.enabled {
            return RequestStep::CONTINUE;
        }
        // Hashed only now: a request the limiter refuses never needs its identity.
        let identity = presented.credential().and_then(|found| {
            let source = filter.source_labels.get(found.source)?;
            Some(filter.hasher.identity(
                &line.authority,
                Who::Credential {
                    source,
                    value: &found.value,
                },
            ))
        });
        self.subject = match identity {
            Some(identity) => Some(Subject {
                identity,
                anonymous: false,
            }),
            None if cache.cache_anonymous && !self.has_credential => {
                self.client.as_deref().map(|client| Subject {
                    identity: filter
                        .hasher
                        .identity(&line.authority, Who::Anonymous { client_ip: client }),
                    anonymous: true,
                })
            }
            None => None,
        };
        let Some(subject) = self.subject else {
            return RequestStep::CONTINUE;
        };
        let found = negative_cache::lookup(
            host.store(),
            &filter.tables,
            cache,
            &subject.identity,
            clock,
            |shape| self.entry_key(filter, host, (headers, line), &subject, shape, report),
        );
        let Ok(found) = found else {
            report.error();
            return RequestStep::CONTINUE;
        };
        report.add(Metric::Errors, u64::from(found.corrupt));
        match found.hit {
            Some(_) if cache.shadow => {
                self.shadow_hit = true;
                report.inc(Metric::ShadowHits);
                report.decide(Decision::ShadowHit);
                RequestStep::CONTINUE
            }
            Some(hit) => self.replay(filter, host, &hit, clock, report),
            None => {
                report.inc(Metric::Misses);
                report.decide(Decision::Miss);
                RequestStep::CONTINUE
            }
        }
    }

    /// The host could not send the reply the request step returned: the request goes on to the
    /// upstream, and its response is this filter's to handle after all.
    pub fn reply_failed(&mut self, report: &mut Report) {
        self.replied_locally = false;
        report.error();
    }

    /// The rate limiter's check at the start of a request: `Some(reply)` when it refuses it.
    /// A client with recent failures is only read here: its request holds a place once the
    /// cache has answered (`hold_place`), unless a hit replaying a failure counts it instead, in
    /// the same one write of the bucket this read found.
    fn admit<H: Host>(
        &mut self,
        filter: &FilterConfig,
        host: &H,
        clock: &Clock,
        report: &mut Report,
    ) -> Option<LocalReply> {
        let client = self.limited?;
        let limit = &filter.config.rate_limit;
        let Ok((admission, read)) =
            rate_limit::check(host.store(), &filter.clients, limit, &client, clock)
        else {
            report.error();
            return None;
        };
        // Requests that can never count as failures hold no place.
        if matches!(admission, Admission::Reserved { .. }) && self.countable(limit) {
            self.client_read = Some(read);
        }
        self.refusal(filter, admission, clock, report)
    }

    /// A request of a client with recent failures, going on to the upstream, holds a place in
    /// its window, written from the read `admit` made. `Some(reply)` when another request
    /// blocked the client, or took its last place, in between.
    fn hold_place<H: Host>(
        &mut self,
        filter: &FilterConfig,
        host: &H,
        clock: &Clock,
        report: &mut Report,
    ) -> Option<LocalReply> {
        let read = self.client_read.take()?;
        let client = self.limited?;
        let limit = &filter.config.rate_limit;
        let Ok(admission) =
            rate_limit::reserve(host.store(), &filter.clients, limit, &client, clock, read)
        else {
            report.error();
            return None;
        };
        if let Admission::Reserved { window_start_ms } = admission {
            self.reservation = Some(window_start_ms);
        }
        self.refusal(filter, admission, clock, report)
    }

    /// The 429 for an admission that refuses the request (`None`: it may go on); in shadow
    /// mode only logged and counted.
    fn refusal(
        &self,
        filter: &FilterConfig,
        admission: Admission,
        clock: &Clock,
        report: &mut Report,
    ) -> Option<LocalReply> {
        let limit = &filter.config.rate_limit;
        let retry_after = match admission {
            Admission::Pass | Admission::Reserved { .. } => return None,
            Admission::Blocked { until_ms } => reply::seconds_until(until_ms, clock.now_ms()),
            Admission::InflightFull => 1,
        };
        if limit.shadow {
            report.inc(Metric::RateLimitShadowRejected);
            info!(
                "negcache: shadow: would answer 429 to {} (retry after {retry_after} s)",
                self.client.as_deref().unwrap_or("unresolved")
            );
            report.decide(Decision::ShadowBlocked);
            return None;
        }
        report.inc(Metric::RateLimitRejected);
        report.decide(Decision::Blocked);
        let policy = limit
            .ratelimit_headers
            .then_some((limit.max_failures, limit.window_ms / 1000));
        Some(reply::rate_limited(retry_after, policy))
    }

    /// Answers from the cache; a large body that belongs to a newer entry being written right
    /// now makes it a miss.
    fn replay<H: Host>(
        &mut self,
        filter: &FilterConfig,
        host: &H,
        hit: &Hit,
        clock: &Clock,
        report: &mut Report,
    ) -> RequestStep {
        let record = &hit.record;
        match hit.replay(host.store(), &filter.tables) {
            Ok(Some(replayed)) => {
                report.inc(Metric::Hits);
                report.decide(Decision::Hit);
                debug!(
                    "negcache: hit {} for {}",
                    record.status,
                    record.identity.short()
                );
                // A client retrying a dead credential is still failing.
                let tally = if is_failure(&filter.config.rate_limit, record.status) {
                    self.settle(filter, true)
                } else {
                    None
                };
                let reply = reply::cache_hit(record, replayed.parts(), clock.now_ms());
                self.reply(filter, reply, tally)
            }
            Ok(None) => {
                report.inc(Metric::Misses);
                report.decide(Decision::Miss);
                RequestStep::CONTINUE
            }
            Err(_) => {
                report.error();
                RequestStep::CONTINUE
            }
        }
    }

    /// One of the filter's own replies, with the CORS headers configured for the request's
    /// origin, so a web app can read it.
    fn reply(
        &mut self,
        filter: &FilterConfig,
        mut local: LocalReply,
        tally: Option<Tally>,
    ) -> RequestStep {
        for (name, value) in filter.config.cors.headers_for(self.origin.as_deref()) {
            local.push(name, value);
        }
        self.replied_locally = true;
        RequestStep {
            verdict: Verdict::Reply(local),
            tally,
        }
    }
}
