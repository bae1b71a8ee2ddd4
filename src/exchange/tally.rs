//! How a request ended, told to the rate limiter: the one place that says what counts as a
//! failure, and the step that writes it.

use log::info;

use super::{Exchange, Host, Report};
use crate::config::RateLimitConfig;
use crate::filter_config::FilterConfig;
use crate::fingerprint::Fingerprint;
use crate::metrics::Metric;
use crate::rate_limit::{self, Outcome};

/// What the limiter must hear about one request: whether it failed, and the place it reserved
/// in its client's window. A step hands it out at most once per exchange; `Exchange::count`
/// writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub(super) client: Fingerprint,
    failed: bool,
    reservation: Option<u64>,
}

impl Tally {
    /// The request counts as a failure of its client.
    pub fn failed(&self) -> bool {
        self.failed
    }
}

/// Whether an answer with this status is an authentication failure of its client.
pub(super) fn is_failure(limit: &RateLimitConfig, status: u16) -> bool {
    limit.failure_statuses.contains(&status)
}

impl Exchange {
    /// Whether this request's failures count: it carried a credential, or the configuration
    /// counts anonymous ones.
    pub(super) fn countable(&self, limit: &RateLimitConfig) -> bool {
        self.has_credential || limit.count_anonymous
    }

    /// The request ended (`failed`: with a failure status). `None` when the limiter has
    /// nothing to hear: the client is not tracked, the request was told already, or it neither
    /// failed nor holds a place (a good request: nothing written, no clock read).
    pub(super) fn settle(&mut self, filter: &FilterConfig, failed: bool) -> Option<Tally> {
        let client = self.limited.take()?;
        let failed = failed && self.countable(&filter.config.rate_limit);
        let reservation = self.reservation.take();
        (failed || reservation.is_some()).then_some(Tally {
            client,
            failed,
            reservation,
        })
    }

    /// Writes a tally: gives the reserved place back and counts the failure, which may start a
    /// block. `None` when the store failed (counted as an error).
    pub fn count<H: Host>(
        &mut self,
        filter: &FilterConfig,
        host: &H,
        tally: Tally,
        report: &mut Report,
    ) -> Option<Outcome> {
        let (store, table, limit) = (host.store(), &filter.clients, &filter.config.rate_limit);
        let now_ms = host.clock().now_ms();
        let outcome = match self.client_read.take() {
            // A hit replaying a failure: no place was taken, and the bucket read at admission
            // serves the one write.
            Some(read) if tally.failed && tally.reservation.is_none() => {
                rate_limit::count_failure_from(store, table, limit, &tally.client, now_ms, read)
            }
            _ => rate_limit::finish(
                store,
                table,
                limit,
                &tally.client,
                now_ms,
                tally.failed,
                tally.reservation,
            ),
        };
        let Ok(outcome) = outcome else {
            report.error();
            return None;
        };
        report.add(Metric::RateLimitFailures, u64::from(outcome.counted));
        report.add(Metric::RateLimitSlotsUsed, u64::from(outcome.newly_used));
        if let Some(block_ms) = outcome.block_ms {
            report.inc(Metric::RateLimitBlocks);
            info!(
                "negcache: blocking client {} for {} s after repeated authentication failures",
                self.client.as_deref().unwrap_or("unresolved"),
                block_ms / 1000
            );
        }
        Some(outcome)
    }
}
