//! Metric names: part of the filter's contract (`/stats` shows them as `wasmcustom.<name>`,
//! `/stats/prometheus` as `<name>`).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// Declares `Metric` from one list: each metric's variant, name and kind, written once.
macro_rules! metrics {
    ($($variant:ident => $name:literal, $kind:ident;)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Metric {
            $($variant,)*
        }

        impl Metric {
            /// Every metric, in declaration order (`index` is the position here).
            pub const ALL: &'static [Metric] = &[$(Metric::$variant,)*];

            pub fn name(self) -> &'static str {
                match self {
                    $(Metric::$variant => $name,)*
                }
            }

            pub fn kind(self) -> Kind {
                match self {
                    $(Metric::$variant => Kind::$kind,)*
                }
            }
        }
    };
}

metrics! {
    Hits => "negcache_hits_total", Counter;
    Misses => "negcache_misses_total", Counter;
    Stores => "negcache_stores_total", Counter;
    Evictions => "negcache_evictions_total", Counter;
    ShadowHits => "negcache_shadow_hits_total", Counter;
    Purges => "negcache_purges_total", Counter;
    Errors => "negcache_errors_total", Counter;
    SlotsUsed => "negcache_slots_used", Gauge;
    RateLimitFailures => "negcache_ratelimit_failures_total", Counter;
    RateLimitBlocks => "negcache_ratelimit_blocks_total", Counter;
    RateLimitRejected => "negcache_ratelimit_rejected_total", Counter;
    RateLimitShadowRejected => "negcache_ratelimit_shadow_rejected_total", Counter;
    RateLimitSlotsUsed => "negcache_ratelimit_slots_used", Gauge;
    ClientIpUntrustedHeader => "negcache_client_ip_untrusted_header_total", Counter;
    ClientIpUnresolved => "negcache_client_ip_unresolved_total", Counter;
    ClientIpHeaderDerivedPeer => "negcache_client_ip_header_derived_peer_total", Counter;
    ClusterCalls => "negcache_cluster_calls_total", Counter;
    ClusterOverLimit => "negcache_cluster_over_limit_total", Counter;
    ClusterErrors => "negcache_cluster_errors_total", Counter;
    ClusterBreakerOpen => "negcache_cluster_breaker_open_total", Counter;
    ClusterSkipped => "negcache_cluster_skipped_total", Counter;
}

impl Metric {
    /// Position in `ALL` (the declaration order).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Metric updates not yet handed on: a request's own, or a VM's. Adding is free; the VM hands
/// its sums to the host once a second, so a counter in `/stats` lags by at most that, and a
/// request pays for no metric host call.
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
            .iter()
            .copied()
            .zip(counts)
            .filter(|(_, count)| *count > 0)
    }

    /// The sum of `metric` so far.
    pub fn get(&self, metric: Metric) -> u64 {
        self.counts.get(metric.index()).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_sits_at_its_index_under_a_unique_name() {
        for (position, metric) in Metric::ALL.iter().enumerate() {
            assert_eq!(metric.index(), position, "{}", metric.name());
            assert!(metric.name().starts_with("negcache_"), "{}", metric.name());
        }
        let mut names: Vec<_> = Metric::ALL.iter().map(|m| m.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Metric::ALL.len());
        assert_eq!(Metric::SlotsUsed.kind(), Kind::Gauge);
        assert_eq!(Metric::Hits.kind(), Kind::Counter);
    }

    #[test]
    fn pending_counts_sum_per_metric_and_empty_when_taken() {
        let mut pending = PendingCounts::default();
        pending.add(Metric::Misses, 1);
        pending.add(Metric::Misses, 2);
        pending.add(Metric::SlotsUsed, 1);
        pending.add(Metric::Hits, 0);
        assert_eq!(pending.get(Metric::Misses), 3);
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
