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
