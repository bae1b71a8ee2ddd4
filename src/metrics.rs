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
}

impl Metric {
    pub const ALL: [Metric; 8] = [
        Metric::Hits,
        Metric::Misses,
        Metric::Stores,
        Metric::Evictions,
        Metric::ShadowHits,
        Metric::Purges,
        Metric::Errors,
        Metric::SlotsUsed,
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
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            Metric::SlotsUsed => Kind::Gauge,
            _ => Kind::Counter,
        }
    }
}
