//! Metric names: part of the filter's contract (`/stats` shows them as `wasmcustom.<name>`,
//! `/stats/prometheus` as `<name>`).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Hits,
    Misses,
    Stores,
    Evictions,
    ShadowHits,
    Purges,
    Errors,
    SlotsUsed,
    RateLimitFailures,
    RateLimitBlocks,
    RateLimitRejected,
    RateLimitShadowRejected,
    RateLimitSlotsUsed,
    ClientIpUntrustedHeader,
    ClientIpUnresolved,
    ClientIpHeaderDerivedPeer,
}

impl Metric {
    pub const ALL: [Metric; 16] = [
        Metric::Hits,
        Metric::Misses,
        Metric::Stores,
        Metric::Evictions,
        Metric::ShadowHits,
        Metric::Purges,
        Metric::Errors,
        Metric::SlotsUsed,
        Metric::RateLimitFailures,
        Metric::RateLimitBlocks,
        Metric::RateLimitRejected,
        Metric::RateLimitShadowRejected,
        Metric::RateLimitSlotsUsed,
        Metric::ClientIpUntrustedHeader,
        Metric::ClientIpUnresolved,
        Metric::ClientIpHeaderDerivedPeer,
    ];

    /// Position in `ALL` (the declaration order).
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Metric::Hits => "negcache_hits_total",
            Metric::Misses => "negcache_misses_total",
            Metric::Stores => "negcache_stores_total",
            Metric::Evictions => "negcache_evictions_total",
            Metric::ShadowHits => "negcache_shadow_hits_total",
            Metric::Purges => "negcache_purges_total",
            Metric::Errors => "negcache_errors_total",
            Metric::SlotsUsed => "negcache_slots_used",
            Metric::RateLimitFailures => "negcache_ratelimit_failures_total",
            Metric::RateLimitBlocks => "negcache_ratelimit_blocks_total",
            Metric::RateLimitRejected => "negcache_ratelimit_rejected_total",
            Metric::RateLimitShadowRejected => "negcache_ratelimit_shadow_rejected_total",
            Metric::RateLimitSlotsUsed => "negcache_ratelimit_slots_used",
            Metric::ClientIpUntrustedHeader => "negcache_client_ip_untrusted_header_total",
            Metric::ClientIpUnresolved => "negcache_client_ip_unresolved_total",
            Metric::ClientIpHeaderDerivedPeer => "negcache_client_ip_header_derived_peer_total",
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            Metric::SlotsUsed | Metric::RateLimitSlotsUsed => Kind::Gauge,
            _ => Kind::Counter,
        }
    }
}

/// Metric updates made by one VM and not yet handed to the host. A request adds to them for
/// free; the VM hands the sums over once a second, so a counter in `/stats` lags by at most
/// that, and a request pays for no metric host call.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PendingCounts {
    counts: [u64; Metric::ALL.len()],
}

impl PendingCounts {
    pub fn add(&mut self, metric: Metric, value: u64) {
        if let Some(count) = self.counts.get_mut(metric.index()) {
            *count = count.saturating_add(value);
        }
    }

    /// The non-zero sums, emptied.
    pub fn take(&mut self) -> impl Iterator<Item = (Metric, u64)> {
        let counts = std::mem::take(&mut self.counts);
        Metric::ALL
            .into_iter()
            .zip(counts)
            .filter(|(_, count)| *count > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_sits_at_its_index() {
        for (position, metric) in Metric::ALL.into_iter().enumerate() {
            assert_eq!(metric.index(), position, "{}", metric.name());
        }
    }

    #[test]
    fn pending_counts_sum_per_metric_and_empty_when_taken() {
        let mut pending = PendingCounts::default();
        pending.add(Metric::Misses, 1);
        pending.add(Metric::Misses, 2);
        pending.add(Metric::SlotsUsed, 1);
        pending.add(Metric::Hits, 0);
        let taken: Vec<_> = pending.take().collect();
        assert_eq!(taken, vec![(Metric::Misses, 3), (Metric::SlotsUsed, 1)]);
        assert_eq!(pending.take().count(), 0);
        pending.add(Metric::Errors, u64::MAX);
        pending.add(Metric::Errors, 5);
        assert_eq!(
            pending.take().collect::<Vec<_>>(),
            vec![(Metric::Errors, u64::MAX)]
        );
    }
}
