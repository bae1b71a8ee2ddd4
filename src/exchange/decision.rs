//! What the filter did with a request, for the access log.

/// The decision written to filter state `negcache_decision`; a later step's decision replaces
/// an earlier one (a miss whose response is stored logs `stored`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Hit,
    Miss,
    /// The upstream's answer was cached.
    Stored,
    ShadowHit,
    /// The rate limit answered 429.
    Blocked,
    ShadowBlocked,
    Exempt,
    Preflight,
    /// A host error or contention beyond its bound; the request went to the upstream.
    Error,
}

impl Decision {
    /// The access log's word for it (`%FILTER_STATE(wasm.negcache_decision:PLAIN)%`).
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Hit => "hit",
            Decision::Miss => "miss",
            Decision::Stored => "stored",
            Decision::ShadowHit => "shadow-hit",
            Decision::Blocked => "blocked",
            Decision::ShadowBlocked => "shadow-blocked",
            Decision::Exempt => "exempt",
            Decision::Preflight => "preflight",
            Decision::Error => "error",
        }
    }
}
