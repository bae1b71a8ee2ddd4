//! The plugin configuration: the runtime types the filter reads, and `Config::parse`.
//!
//! The JSON is read into the serde types of `raw` (their `Default`s are the documented
//! defaults), then checked and converted by `validate`, so every value in a `Config` is valid.
//! A refused configuration names the field's path (`negative_cache.capacity: ...`) and why.

use std::fmt;

use crate::cors::CorsConfig;
use ipnet::IpNet;

mod de;
mod raw;
#[cfg(feature = "schema")]
mod schema;
mod validate;

#[cfg(feature = "schema")]
pub use schema::schema_json;

/// Why a configuration was refused: the field's path and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error seen from the enclosing value, whose field at `parent` held the bad one:
    /// `capacity` within `negative_cache` is `negative_cache.capacity`; `parent` may be an
    /// index (`[2]`).
    fn within(self, parent: &str) -> Self {
        let field = if self.field.is_empty() {
            parent.to_string()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        ConfigError { field, ..self }
    }
}

/// One log line, whatever the configuration holds: control characters in the field's path or
/// the reason (a key, a value quoted back) are escaped.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("negcache: invalid configuration: ")?;
        if !self.field.is_empty() {
            write!(f, "{}: ", one_line(&self.field))?;
        }
        f.write_str(&one_line(&self.reason))
    }
}

fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Where a request's identity comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    Header(String),
    Cookie(String),
    Query(String),
    PathSegment(u32),
}

impl CredentialSource {
    /// A stable name, used for domain separation in the fingerprint.
    pub fn label(&self) -> String {
        match self {
            CredentialSource::Header(name) => format!("header:{name}"),
            CredentialSource::Cookie(name) => format!("cookie:{name}"),
            CredentialSource::Query(name) => format!("query:{name}"),
            CredentialSource::PathSegment(n) => format!("path_segment:{n}"),
        }
    }
}

/// The request attributes an entry is keyed on, besides authority and identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyShape {
    pub method: bool,
    pub path: bool,
    pub query: bool,
    pub client_ip: bool,
}

impl KeyShape {
    pub const IDENTITY_ONLY: KeyShape = KeyShape {
        method: false,
        path: false,
        query: false,
        client_ip: false,
    };

    pub fn to_bits(self) -> u8 {
        u8::from(self.method)
            | u8::from(self.path) << 1
            | u8::from(self.query) << 2
            | u8::from(self.client_ip) << 3
    }

    /// Anonymous entries are always per request line: one logged-out 401 must not answer
    /// every other anonymous request from the same address.
    pub fn for_anonymous(self) -> KeyShape {
        KeyShape {
            method: true,
            path: true,
            query: true,
            client_ip: self.client_ip,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRule {
    pub status: u16,
    pub ttl_ms: u64,
    pub shape: KeyShape,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InactiveRule {
    pub header: String,
    pub ttl_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegativeCacheConfig {
    pub enabled: bool,
    pub shadow: bool,
    pub statuses: Vec<StatusRule>,
    pub inactive: Option<InactiveRule>,
    pub cache_anonymous: bool,
    pub capacity: u32,
    pub max_body_bytes: u32,
    pub epoch: u32,
}

impl NegativeCacheConfig {
    pub fn rule_for(&self, status: u16) -> Option<&StatusRule> {
        self.statuses.iter().find(|rule| rule.status == status)
    }
}

/// Where the fingerprint key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Inline(Vec<u8>),
    Env(String),
    /// Made once per Envoy process and shared by every VM through shared data.
    Generated,
}

/// A header that may name the client, and which edges it is believed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIpHeader {
    pub name: String,
    /// `None`: believed whenever the peer is a trusted proxy.
    pub from: Option<Vec<IpNet>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIpConfig {
    pub trusted_proxies: Vec<IpNet>,
    pub headers: Vec<ClientIpHeader>,
    pub ipv6_prefix: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Escalation {
    pub factor: u32,
    pub max_block_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub enabled: bool,
    pub shadow: bool,
    pub failure_statuses: Vec<u16>,
    pub count_anonymous: bool,
    pub max_failures: u32,
    pub window_ms: u64,
    pub block_ms: u64,
    pub escalation: Option<Escalation>,
    pub exempt_cidrs: Vec<IpNet>,
    pub ratelimit_headers: bool,
    pub capacity: u32,
    pub epoch: u32,
    pub cluster: Option<ClusterConfig>,
}

/// Cluster mode: where the rate limit service is, and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub rls_cluster: String,
    pub domain: String,
    pub timeout_ms: u64,
    pub breaker: BreakerConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    pub consecutive_errors: u32,
    pub open_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub credentials: Vec<CredentialSource>,
    pub exempt_paths: Vec<String>,
    pub secret: SecretSource,
    pub negative_cache: NegativeCacheConfig,
    pub client_ip: ClientIpConfig,
    pub rate_limit: RateLimitConfig,
    pub cors: CorsConfig,
}

impl Config {
    /// Parses and validates the plugin configuration. Empty input means `{}`.
    pub fn parse(json: &[u8]) -> Result<Config, ConfigError> {
        let json = if json.iter().all(u8::is_ascii_whitespace) {
            &b"{}"[..]
        } else {
            json
        };
        Config::try_from(de::from_json(json)?)
    }
}

#[cfg(test)]
mod tests;
