//! The plugin configuration as written: the serde types it is read into, their bounds and
//! their defaults (each `Default` here is the documented default, and the only place it is
//! written). `validate` checks them and builds the runtime types; with the `schema` feature the
//! same types, bounds and defaults give the JSON Schema.

use serde::Deserialize;

use super::de::{self, Keyed};

#[cfg(feature = "schema")]
use schemars::JsonSchema;
#[cfg(feature = "schema")]
use serde::Serialize;

/// Longest TTL, window or block: 7 days.
pub const MAX_SECONDS: u64 = 7 * 24 * 3600;
/// Most slots in a shared table.
pub const MAX_CAPACITY: u64 = 1_048_576;
pub const MAX_BODY_BYTES: u64 = 65_536;
pub const MIN_SECRET_BYTES: usize = 16;
pub const MAX_PATH_SEGMENT: u64 = 64;
pub const MAX_FAILURES: u64 = 1_000_000;
pub const MAX_ESCALATION_FACTOR: u64 = 1000;
pub const MAX_EPOCH: u64 = u32::MAX as u64;
/// Longest wait for the rate limit service: a failing response is held that long at most.
pub const MAX_CLUSTER_TIMEOUT_MS: u64 = 10_000;
pub const MAX_BREAKER_ERRORS: u64 = 1000;
/// Longest time the breaker stays open: 1 hour.
pub const MAX_BREAKER_OPEN_SECONDS: u64 = 3600;
/// Longest cluster name or domain: Istio's `outbound|PORT|SUBSET|HOST` names fit.
pub const MAX_CLUSTER_NAME: u64 = 255;
/// Statuses that can be cached or counted as failures.
pub const CLIENT_ERRORS: std::ops::RangeInclusive<u16> = 400..=499;

/// An RFC 9110 token, as `header_name::is_valid_header_name` accepts it.
#[cfg(feature = "schema")]
const TOKEN: &str = r"^[0-9A-Za-z!#$%&'*+.^_`|~-]+$";
/// Printable ASCII without spaces: cluster names and RLS domains.
#[cfg(feature = "schema")]
const PRINTABLE: &str = "^[!-~]+$";
/// Status keys the filter accepts: exactly three digits, 400-499.
#[cfg(feature = "schema")]
const CLIENT_ERROR_STATUS: &str = "^4[0-9][0-9]$";

/// negcache plugin configuration. Every field is optional; `{}` gives the defaults.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(Serialize, JsonSchema))]
#[cfg_attr(feature = "schema", schemars(title = "negcache"))]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the identity comes from, in order: the first source the request carries decides.
    pub credentials: Vec<Credential>,
    /// Paths never looked up, stored or answered locally (whole segments of the normalized path).
    #[cfg_attr(feature = "schema", schemars(inner(regex(pattern = "^/[^?#]*$"))))]
    pub exempt_paths: Vec<String>,
    /// Key of the credential fingerprint, at least 16 bytes.
    // minLength counts characters, so a secret of 16+ bytes in fewer non-ASCII characters
    // passes the filter but not the schema; no ASCII secret is judged differently.
    #[cfg_attr(feature = "schema", schemars(length(min = MIN_SECRET_BYTES)))]
    pub hash_secret: Option<String>,
    /// Environment variable holding the key (without either, a random key per Envoy process).
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub hash_secret_env: Option<String>,
    #[serde(deserialize_with = "de::object")]
    pub negative_cache: NegativeCache,
    #[serde(deserialize_with = "de::object")]
    pub client_ip: ClientIp,
    #[serde(deserialize_with = "de::object")]
    pub rate_limit: RateLimit,
    #[serde(deserialize_with = "de::object")]
    pub cors: Cors,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            credentials: vec![
                Credential::Header("authorization".to_string()),
                Credential::Header("x-api-key".to_string()),
            ],
            exempt_paths: Vec::new(),
            hash_secret: None,
            hash_secret_env: None,
            negative_cache: NegativeCache::default(),
            client_ip: ClientIp::default(),
            rate_limit: RateLimit::default(),
            cors: Cors::default(),
        }
    }
}

/// One source of the identity: an object naming exactly one kind of source.
// Deserialized by hand in `de`, which says so when an object names two.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(Serialize, JsonSchema))]
#[cfg_attr(feature = "schema", serde(rename_all = "snake_case"))]
pub enum Credential {
    /// A request header, whole value (scheme included).
    Header(#[cfg_attr(feature = "schema", schemars(regex(pattern = TOKEN)))] String),
    /// A cookie.
    Cookie(#[cfg_attr(feature = "schema", schemars(regex(pattern = TOKEN)))] String),
    /// A query parameter (percent-decoded).
    Query(#[cfg_attr(feature = "schema", schemars(regex(pattern = r"^[^&=#]+$")))] String),
    /// A path segment, 0 being the first.
    PathSegment(#[cfg_attr(feature = "schema", schemars(range(max = MAX_PATH_SEGMENT)))] u64),
}

/// The shared negative cache of upstream 4xx responses.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(Serialize, JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct NegativeCache {
    /// `false`: no lookups and no stores.
    pub enabled: bool,
    /// Look up and store, but answer nothing locally (`x-negcache: shadow-hit`).
    pub shadow: bool,
    /// Statuses cached (400-499), replacing the default map; `null` caches none.
    #[cfg_attr(
        feature = "schema",
        schemars(extend("propertyNames" = {"pattern": CLIENT_ERROR_STATUS}))
    )]
    pub statuses: Keyed<StatusRule>,
    /// A 4xx response carrying this header marks the credential inactive; `null` turns it off.
    #[serde(deserialize_with = "de::nullable_object")]
    pub inactive: Option<Inactive>,
    /// Cache responses to requests without a credential (keyed on the client IP and request line).
    pub cache_anonymous: bool,
    /// Slots in the shared table.
    #[serde(deserialize_with = "de::whole")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_CAPACITY)))]
    pub capacity: u64,
    /// Largest upstream body kept for replay.
    #[serde(deserialize_with = "de::whole")]
    #[cfg_attr(feature = "schema", schemars(range(max = MAX_BODY_BYTES)))]
    pub max_body_bytes: u64,
    /// Entries stored under another epoch are ignored: change it to clear the cache.
    #[serde(deserialize_with = "de::whole")]
    #[cfg_attr(feature = "schema", schemars(range(max = MAX_EPOCH)))]
    pub epoch: u64,
}

impl Default for NegativeCache {
    fn default() -> Self {
        let rule = |ttl_seconds, key: &[KeyPart]| StatusRule {
            ttl_seconds,
            key: key.to_vec(),
        };
        NegativeCache {
            enabled: true,
            shadow: false,
            statuses: Keyed(vec![
                ("401".to_string(), rule(60, &[KeyPart::Identity])),
                (
                    "403".to_string(),
                    rule(10, &[KeyPart::Identity, KeyPart::Method, KeyPart::Path]),
                ),
                (
                    "429".to_string(),
                    rule(10, &[KeyPart::Identity, KeyPart::ClientIp]),
                ),
            ]),
            inactive: Some(Inactive::default()),
            cache_anonymous: false,
            capacity: 16_384,
            max_body_bytes: 2_048,
            epoch: 0,
        }
    }
}

/// How long one status is cached, and what its entries are keyed on.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(Serialize, JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct StatusRule {
    #[serde(deserialize_with = "de::whole")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_SECONDS)))]
    pub ttl_seconds: u64,
    /// Parts of the key; `identity` is required. The request's authority is always part of it.
    #[serde(default = "StatusRule::identity_only")]
    #[cfg_attr(
        feature = "schema",
        schemars(extend("contains" = {"const": "identity"}))
    )]
    pub key: Vec<KeyPart>,
}

impl StatusRule {
    fn identity_only() -> Vec<KeyPart> {
        vec![KeyPart::Identity]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(Serialize, JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum KeyPart {
    Identity,
    Method,
    // Without query.
    Path,
    Query,
    ClientIp,
}

/// The header by which the upstream marks a credential inactive.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(Serialize, JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct Inactive {
    #[cfg_attr(feature = "schema", schemars(regex(pattern = TOKEN)))]
    pub header: String,
    #[serde(deserialize_with = "de::whole")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_SECONDS)))]
    pub ttl_seconds: u64,
}

impl Default for Inactive {
    fn default() -> Self {
        Inactive {
            header: "x-negcache-inactive".to_string(),
            ttl_seconds: 3600,
        }
    }
}

/// Where the client's address comes from.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(Serialize, JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct ClientIp {
    /// CIDRs or addresses of your own proxies; empty: no header is read.
    pub trusted_proxies: Vec<String>,
    /// Where the client may be read from when the peer is trusted, in order.
    #[serde(deserialize_with = "de::objects")]
    pub headers: Vec<ClientIpHeader>,
    /// IPv6 clients are counted per prefix of this length.
    #[serde(deserialize_with = "de::whole")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 128)))]
    pub ipv6_prefix: u64,
}

impl Default for ClientIp {
    fn default() -> Self {
        ClientIp {
            trusted_proxies: Vec::new(),
            headers: vec![ClientIpHeader {
                name: "x-forwarded-for".to_string(),
                from: None,
            }],
            ipv6_prefix: 64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(Serialize, JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ClientIpHeader {
    #[cfg_attr(feature = "schema", schemars(regex(pattern = TOKEN)))]
    pub name: String,
    /// Believe this single-address header only from these CIDRs (not for x-forwarded-for).
    #[serde(default)]
    #[cfg_attr(feature = "schema", serde(skip_serializing_if = "Option::is_none"))]
    pub from: Option<Vec<String>>,
}

/// The per-client failure rate limit.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(Serialize, JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct RateLimit {
    /// `false`: no counting, no blocking.
    pub enabled: bool,
    /// Count and decide, but answer nothing.
    pub shadow: bool,
    /// Statuses that count as a failure.
    #[serde(deserialize_with = "de::whole_numbers")]
    #[cfg_attr(
        feature = "schema",
        schemars(inner(range(min = *CLIENT_ERRORS.start(), max = *CLIENT_ERRORS.end())))
    )]
    pub failure_statuses: Vec<u64>,
    /// Count failures of requests without a credential.
    pub count_anonymous: bool,
    /// Failures allowed in a window.
    #[serde(deserialize_with = "de::whole")]
    #[cfg_attr(feature = "schema", schemars(range(max = MAX_FAILURES)))]
    pub max_failures: u64,
    /// Fixed window, anchored at the client's first failure.
    #[serde(deserialize_with = "de::whole")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_SECONDS)))]
    pub window_seconds: u64,
    /// Length of a first block.
    #[serde(deserialize_with = "de::whole")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_SECONDS)))]
    pub block_seconds: u64,
    /// Longer blocks for a client blocked again; `null` turns it off.
    // Left out (`None`): the defaults, the cap raised to `block_seconds` when that is longer.
    #[serde(deserialize_with = "de::given_nullable_object")]
    #[cfg_attr(feature = "schema", serde(skip_serializing_if = "Option::is_none"))]
    pub escalation: Option<Option<Escalation>>,
    /// Clients never counted or blocked (CIDRs or addresses).
    pub exempt_cidrs: Vec<String>,
    /// Add `RateLimit-Policy` / `RateLimit` to the 429.
    pub ratelimit_headers: bool,
    /// Client slots in shared data.
    #[serde(deserialize_with = "de::whole")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_CAPACITY)))]
    pub capacity: u64,
    /// Counters and blocks stored under another epoch are ignored: change it to unblock everyone.
    #[serde(deserialize_with = "de::whole")]
    #[cfg_attr(feature = "schema", schemars(range(max = MAX_EPOCH)))]
    pub epoch: u64,
    /// Cluster mode: failures are also counted by a rate limit service shared by every replica;
    /// absent or `null`, this Envoy counts alone.
    #[serde(deserialize_with = "de::nullable_object")]
    #[cfg_attr(feature = "schema", serde(skip_serializing_if = "Option::is_none"))]
    pub cluster: Option<Cluster>,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            enabled: true,
            shadow: false,
            failure_statuses: vec![401],
            count_anonymous: false,
            max_failures: 10,
            window_seconds: 60,
            block_seconds: 300,
            escalation: None,
            exempt_cidrs: Vec::new(),
            ratelimit_headers: false,
            capacity: 65_536,
            epoch: 0,
            cluster: None,
        }
    }
}

/// The rate limit service (Envoy's RLS v3 API, e.g. Limitador) counting failures fleet-wide.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(Serialize, JsonSchema))]
#[serde(default, deny_unknown_fields)]
// The one field without a default: left out, it reads as empty and validation names it.
#[cfg_attr(feature = "schema", schemars(extend("required" = ["rls_cluster"])))]
pub struct Cluster {
    /// The Envoy cluster that reaches the service over HTTP/2.
    #[cfg_attr(
        feature = "schema",
        serde(skip_serializing_if = "String::is_empty"),
        schemars(length(min = 1, max = MAX_CLUSTER_NAME), regex(pattern = PRINTABLE))
    )]
    pub rls_cluster: String,
    /// The service's domain (Limitador's namespace).
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1, max = MAX_CLUSTER_NAME), regex(pattern = PRINTABLE))
    )]
    pub domain: String,
    /// How long a failing response waits for the service's answer.
    #[serde(deserialize_with = "de::whole")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_CLUSTER_TIMEOUT_MS)))]
    pub timeout_ms: u64,
    #[serde(deserialize_with = "de::object")]
    pub breaker: Breaker,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            rls_cluster: String::new(),
            domain: "negcache".into(),
            timeout_ms: 20,
            breaker: Breaker::default(),
        }
    }
}

/// Stops calling a failing service for a while, so a dead one costs no latency.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(Serialize, JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct Breaker {
    /// Failed calls in a row that open it.
    #[serde(deserialize_with = "de::whole")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_BREAKER_ERRORS)))]
    pub consecutive_errors: u64,
    /// How long it stays open before one trial call.
    #[serde(deserialize_with = "de::whole")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_BREAKER_OPEN_SECONDS)))]
    pub open_seconds: u64,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            consecutive_errors: 5,
            open_seconds: 10,
        }
    }
}

/// A client blocked again within `max_block_seconds` gets the last block times `factor`.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(Serialize, JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct Escalation {
    #[serde(deserialize_with = "de::whole")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_ESCALATION_FACTOR)))]
    pub factor: u64,
    /// At least `block_seconds`.
    #[serde(deserialize_with = "de::whole")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_SECONDS)))]
    pub max_block_seconds: u64,
}

impl Default for Escalation {
    fn default() -> Self {
        Escalation {
            factor: 2,
            max_block_seconds: 86_400,
        }
    }
}

/// CORS headers on negcache's own replies.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(Serialize, JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct Cors {
    /// `https://host[:port]`, `https://*.domain`, `null` or `*`; empty: no CORS headers.
    pub allowed_origins: Vec<String>,
    /// Send `access-control-allow-credentials: true` (not with `*`).
    pub allow_credentials: bool,
    /// Value of `access-control-expose-headers`.
    #[cfg_attr(feature = "schema", schemars(inner(regex(pattern = TOKEN))))]
    pub expose_headers: Vec<String>,
}

impl Default for Cors {
    fn default() -> Self {
        Cors {
            allowed_origins: Vec::new(),
            allow_credentials: false,
            expose_headers: ["retry-after", "ratelimit", "ratelimit-policy", "x-negcache"]
                .map(String::from)
                .to_vec(),
        }
    }
}
