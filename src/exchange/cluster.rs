//! Cluster mode's steps. A failure the limiter has just counted (an upstream's failing answer)
//! also goes to the rate limit service, unless the breaker is open; the response waits for the
//! answer when it can (`ClusterCall::holds`), so an `OVER_LIMIT` blocks the client here before
//! its next request. Replayed failures (cache hits) are counted locally only: they never reach
//! an upstream.

use log::{info, warn};

use super::{Exchange, Host, Report, Tally};
use crate::cluster::breaker::{self, Permit, Transition};
use crate::cluster::rls::{self, Code};
use crate::config::ClusterConfig;
use crate::filter_config::FilterConfig;
use crate::fingerprint::Fingerprint;
use crate::metrics::Metric;
use crate::rate_limit::{self, Outcome};

/// A call to make: where to, the encoded `RateLimitRequest`, and whether the response should
/// wait.
#[derive(Debug, PartialEq, Eq)]
pub struct ClusterCall<'a> {
    pub cluster: &'a ClusterConfig,
    pub message: Vec<u8>,
    /// The local count did not block the client: the answer may.
    wait: bool,
}

impl ClusterCall<'_> {
    /// Whether the response is held until the answer (or `timeout_ms`): when the answer may
    /// block the client. Envoy buffers a held body up to the listener's buffer limit and then
    /// stops reading from the upstream until the response goes on, so a held body of any
    /// size reaches the client whole (tests/cluster.rs).
    pub fn holds(&self) -> bool {
        self.wait
    }
}

/// A call under way: whom its answer is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PendingCall {
    client: Fingerprint,
    trial: bool,
}

impl Exchange {
    /// After `count` wrote `tally` (`outcome`), the call to make, if any: cluster mode, a
    /// failure counted now, and a breaker that lets it through (else counted as skipped).
    pub fn cluster_call<'a, H: Host>(
        &mut self,
        filter: &'a FilterConfig,
        host: &H,
        tally: Tally,
        outcome: Option<Outcome>,
        report: &mut Report,
    ) -> Option<ClusterCall<'a>> {
        let cluster = filter.config.rate_limit.cluster.as_ref()?;
        let outcome = outcome.filter(|outcome| outcome.counted)?;
        let group = self.client.as_deref()?;
        let permit = breaker::permit(
            host.store(),
            &cluster.breaker,
            cluster.timeout_ms,
            host.clock().now_ms(),
        )
        // The breaker only saves latency: when its record cannot be read, the service is asked.
        .unwrap_or(Permit::Call);
        if permit == Permit::Skip {
            report.inc(Metric::ClusterSkipped);
            return None;
        }
        report.inc(Metric::ClusterCalls);
        self.pending_call = Some(PendingCall {
            client: tally.client,
            trial: permit == Permit::Trial,
        });
        Some(ClusterCall {
            cluster,
            message: rls::request(&cluster.domain, group),
            wait: outcome.block_ms.is_none(),
        })
    }

    /// The service's answer to the call under way: the response body of a call that succeeded,
    /// `None` for one that failed (unreachable, timed out, a gRPC error). `OVER_LIMIT` blocks
    /// the client as a local count would.
    pub fn cluster_answer<H: Host>(
        &mut self,
        filter: &FilterConfig,
        host: &H,
        answer: Option<&[u8]>,
        report: &mut Report,
    ) {
        let Some(cluster) = filter.config.rate_limit.cluster.as_ref() else {
            return;
        };
        let Some(call) = self.pending_call.take() else {
            return;
        };
        let verdict = answer.and_then(rls::verdict);
        let now_ms = host.clock().now_ms();
        let transition = breaker::record(
            host.store(),
            &cluster.breaker,
            now_ms,
            verdict.is_some(),
            call.trial,
        );
        match transition {
            Ok(Transition::Opened) => {
                report.inc(Metric::ClusterBreakerOpen);
                warn!(
                    "negcache: the rate limit service (cluster {}) failed {} calls in a row: \
                     failures are counted by this Envoy alone for {} s",
                    cluster.rls_cluster,
                    cluster.breaker.consecutive_errors,
                    cluster.breaker.open_ms / 1000
                );
            }
            Ok(Transition::Closed) => info!(
                "negcache: the rate limit service (cluster {}) answers again",
                cluster.rls_cluster
            ),
            Ok(Transition::None) => {}
            Err(_) => report.error(),
        }
        match verdict {
            None => report.inc(Metric::ClusterErrors),
            Some(Code::OverLimit) => {
                report.inc(Metric::ClusterOverLimit);
                self.fleet_block(filter, host, cluster, call.client, now_ms, report);
            }
            Some(Code::Ok | Code::Unknown) => {}
        }
    }

    fn fleet_block<H: Host>(
        &self,
        filter: &FilterConfig,
        host: &H,
        cluster: &ClusterConfig,
        client: Fingerprint,
        now_ms: u64,
        report: &mut Report,
    ) {
        let limit = &filter.config.rate_limit;
        match rate_limit::block(host.store(), &filter.clients, limit, &client, now_ms) {
            Ok(outcome) => {
                report.add(Metric::RateLimitSlotsUsed, u64::from(outcome.newly_used));
                if let Some(block_ms) = outcome.block_ms {
                    report.inc(Metric::RateLimitBlocks);
                    info!(
                        "negcache: blocking client {} for {} s: over the fleet's failure limit \
                         (domain {})",
                        self.client.as_deref().unwrap_or("unresolved"),
                        block_ms / 1000,
                        cluster.domain
                    );
                }
            }
            Err(_) => report.error(),
        }
    }
}
