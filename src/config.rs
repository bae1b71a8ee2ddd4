//! The plugin configuration: JSON types, defaults and validation.
//!
//! Parsing goes through `serde_path_to_error` so a bad field is reported by its path
//! (`negative_cache.capacity: ...`); validation then checks ranges serde cannot express.
//! `Config` is the only thing the rest of the filter sees: every value in it is valid.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

use crate::cors::{CorsConfig, OriginPattern};
use crate::header_name::is_valid_header_name;
use ipnet::IpNet;

const MAX_TTL_SECONDS: u64 = 7 * 24 * 3600;
const MAX_CAPACITY: u32 = 1_048_576;
const MAX_BODY_BYTES: u32 = 65_536;
const MIN_SECRET_BYTES: usize = 16;
const MAX_PATH_SEGMENT: u32 = 64;

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
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "negcache: invalid configuration: {}", self.reason)
        } else {
            write!(
                f,
                "negcache: invalid configuration: {}: {}",
                self.field, self.reason
            )
        }
    }
}

/// Where a request's identity comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
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

/// A part of a negative-cache key beyond the request's authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyPart {
    Identity,
    Method,
    Path,
    Query,
    ClientIp,
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
        if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ConfigError::new("", "must be a JSON object"));
        }
        let mut deserializer = serde_json::Deserializer::from_slice(json);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            ConfigError::new(field, strip_position(&e.inner().to_string()))
        })?;
        raw.validate()
    }
}

/// serde_json appends "at line 1 column 42" to its messages; the field path says more.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_string(),
        None => message.to_string(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_credentials")]
    credentials: Vec<CredentialSource>,
    #[serde(default)]
    exempt_paths: Vec<String>,
    #[serde(default)]
    hash_secret: Option<String>,
    #[serde(default)]
    hash_secret_env: Option<String>,
    #[serde(default)]
    negative_cache: RawNegativeCache,
    #[serde(default)]
    client_ip: RawClientIp,
    #[serde(default)]
    rate_limit: RawRateLimit,
    #[serde(default)]
    cors: RawCors,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCors {
    allowed_origins: Vec<String>,
    allow_credentials: bool,
    expose_headers: Vec<String>,
}

impl Default for RawCors {
    fn default() -> Self {
        RawCors {
            allowed_origins: Vec::new(),
            allow_credentials: false,
            expose_headers: ["retry-after", "ratelimit", "ratelimit-policy", "x-negcache"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl RawCors {
    fn validate(self) -> Result<CorsConfig, ConfigError> {
        let mut allowed_origins = Vec::with_capacity(self.allowed_origins.len());
        for (index, entry) in self.allowed_origins.iter().enumerate() {
            let pattern = OriginPattern::parse(entry.trim()).ok_or_else(|| {
                ConfigError::new(
                    format!("cors.allowed_origins[{index}]"),
                    format!(
                        "{entry:?} is not an origin: use \"https://host[:port]\", \"https://*.domain\", \"null\" or \"*\""
                    ),
                )
            })?;
            if pattern == OriginPattern::Any && self.allow_credentials {
                return Err(ConfigError::new(
                    format!("cors.allowed_origins[{index}]"),
                    "\"*\" cannot be combined with allow_credentials: true (any site could read \
                     credentialed replies); list the origins instead",
                ));
            }
            allowed_origins.push(pattern);
        }
        let mut expose = Vec::with_capacity(self.expose_headers.len());
        for (index, name) in self.expose_headers.iter().enumerate() {
            expose.push(check_header_name(
                format!("cors.expose_headers[{index}]"),
                name,
            )?);
        }
        Ok(CorsConfig {
            allowed_origins,
            allow_credentials: self.allow_credentials,
            expose_headers: expose.join(", "),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawClientIp {
    trusted_proxies: Vec<String>,
    headers: Vec<RawClientIpHeader>,
    ipv6_prefix: u8,
}

impl Default for RawClientIp {
    fn default() -> Self {
        RawClientIp {
            trusted_proxies: Vec::new(),
            headers: vec![RawClientIpHeader {
                name: "x-forwarded-for".to_string(),
                from: None,
            }],
            ipv6_prefix: 64,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientIpHeader {
    name: String,
    #[serde(default)]
    from: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRateLimit {
    enabled: bool,
    shadow: bool,
    failure_statuses: Vec<u16>,
    count_anonymous: bool,
    max_failures: u32,
    window_seconds: u64,
    block_seconds: u64,
    escalation: Option<RawEscalation>,
    exempt_cidrs: Vec<String>,
    ratelimit_headers: bool,
    capacity: u32,
    epoch: u32,
}

impl Default for RawRateLimit {
    fn default() -> Self {
        RawRateLimit {
            enabled: true,
            shadow: false,
            failure_statuses: vec![401],
            count_anonymous: false,
            max_failures: 10,
            window_seconds: 60,
            block_seconds: 300,
            escalation: Some(RawEscalation {
                factor: 2,
                max_block_seconds: 86_400,
            }),
            exempt_cidrs: Vec::new(),
            ratelimit_headers: false,
            capacity: 65_536,
            epoch: 0,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEscalation {
    factor: u32,
    max_block_seconds: u64,
}

fn default_credentials() -> Vec<CredentialSource> {
    vec![
        CredentialSource::Header("authorization".to_string()),
        CredentialSource::Header("x-api-key".to_string()),
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawNegativeCache {
    enabled: bool,
    shadow: bool,
    statuses: BTreeMap<String, RawStatusRule>,
    inactive: Option<RawInactive>,
    cache_anonymous: bool,
    capacity: u32,
    max_body_bytes: u32,
    epoch: u32,
}

impl Default for RawNegativeCache {
    fn default() -> Self {
        let rule = |ttl_seconds, key: Option<Vec<KeyPart>>| RawStatusRule { ttl_seconds, key };
        RawNegativeCache {
            enabled: true,
            shadow: false,
            statuses: BTreeMap::from([
                ("401".to_string(), rule(60, None)),
                (
                    "403".to_string(),
                    rule(
                        10,
                        Some(vec![KeyPart::Identity, KeyPart::Method, KeyPart::Path]),
                    ),
                ),
                (
                    "429".to_string(),
                    rule(10, Some(vec![KeyPart::Identity, KeyPart::ClientIp])),
                ),
            ]),
            inactive: Some(RawInactive::default()),
            cache_anonymous: false,
            capacity: 16_384,
            max_body_bytes: 2_048,
            epoch: 0,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatusRule {
    ttl_seconds: u64,
    #[serde(default)]
    key: Option<Vec<KeyPart>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawInactive {
    header: String,
    ttl_seconds: u64,
}

impl Default for RawInactive {
    fn default() -> Self {
        RawInactive {
            header: "x-negcache-inactive".to_string(),
            ttl_seconds: 3600,
        }
    }
}

fn check_ttl(field: String, ttl_seconds: u64) -> Result<u64, ConfigError> {
    if ttl_seconds == 0 || ttl_seconds > MAX_TTL_SECONDS {
        return Err(ConfigError::new(
            field,
            format!("must be between 1 and {MAX_TTL_SECONDS} seconds (7 days), got {ttl_seconds}"),
        ));
    }
    Ok(ttl_seconds * 1000)
}

fn check_header_name(field: String, name: &str) -> Result<String, ConfigError> {
    if !is_valid_header_name(name) {
        return Err(ConfigError::new(
            field,
            format!("{name:?} is not a valid HTTP header name"),
        ));
    }
    Ok(name.to_ascii_lowercase())
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let mut credentials = Vec::with_capacity(self.credentials.len());
        for (index, source) in self.credentials.into_iter().enumerate() {
            let field = format!("credentials[{index}]");
            credentials.push(match source {
                CredentialSource::Header(name) => {
                    CredentialSource::Header(check_header_name(format!("{field}.header"), &name)?)
                }
                CredentialSource::Cookie(name) => {
                    if !is_valid_header_name(&name) {
                        return Err(ConfigError::new(
                            format!("{field}.cookie"),
                            format!("{name:?} is not a valid cookie name"),
                        ));
                    }
                    CredentialSource::Cookie(name)
                }
                CredentialSource::Query(name) => {
                    if name.is_empty() || name.contains(['&', '=', '#']) {
                        return Err(ConfigError::new(
                            format!("{field}.query"),
                            format!("{name:?} is not a valid query parameter name"),
                        ));
                    }
                    CredentialSource::Query(name)
                }
                CredentialSource::PathSegment(n) => {
                    if n > MAX_PATH_SEGMENT {
                        return Err(ConfigError::new(
                            format!("{field}.path_segment"),
                            format!("must be at most {MAX_PATH_SEGMENT}, got {n}"),
                        ));
                    }
                    CredentialSource::PathSegment(n)
                }
            });
        }

        for (index, path) in self.exempt_paths.iter().enumerate() {
            if !path.starts_with('/') || path.contains(['?', '#']) {
                return Err(ConfigError::new(
                    format!("exempt_paths[{index}]"),
                    format!("{path:?} must be a path starting with '/' and without query"),
                ));
            }
        }
        let exempt_paths = self
            .exempt_paths
            .iter()
            .map(|path| crate::path::normalize(path))
            .collect();

        let secret = match (self.hash_secret, self.hash_secret_env) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "hash_secret_env",
                    "give either hash_secret or hash_secret_env, not both",
                ))
            }
            (Some(secret), None) => {
                if secret.len() < MIN_SECRET_BYTES {
                    return Err(ConfigError::new(
                        "hash_secret",
                        format!("must be at least {MIN_SECRET_BYTES} bytes long"),
                    ));
                }
                SecretSource::Inline(secret.into_bytes())
            }
            (None, Some(name)) => {
                if name.is_empty() {
                    return Err(ConfigError::new(
                        "hash_secret_env",
                        "must name an environment variable",
                    ));
                }
                SecretSource::Env(name)
            }
            (None, None) => SecretSource::Generated,
        };

        let negative_cache = self.negative_cache.validate()?;
        let client_ip = self.client_ip.validate()?;
        let rate_limit = self.rate_limit.validate()?;
        let cors = self.cors.validate()?;
        Ok(Config {
            credentials,
            exempt_paths,
            secret,
            negative_cache,
            client_ip,
            rate_limit,
            cors,
        })
    }
}

impl RawNegativeCache {
    fn validate(self) -> Result<NegativeCacheConfig, ConfigError> {
        let mut statuses = Vec::with_capacity(self.statuses.len());
        for (status_text, rule) in self.statuses {
            let field = format!("negative_cache.statuses.{status_text}");
            let status = match status_text.parse::<u16>() {
                Ok(status) if (400..=499).contains(&status) => status,
                _ => {
                    return Err(ConfigError::new(
                        field,
                        "only statuses 400-499 can be cached",
                    ))
                }
            };
            let ttl_ms = check_ttl(format!("{field}.ttl_seconds"), rule.ttl_seconds)?;
            let shape = match rule.key {
                None => KeyShape::IDENTITY_ONLY,
                Some(parts) => shape_from_parts(&format!("{field}.key"), &parts)?,
            };
            statuses.push(StatusRule {
                status,
                ttl_ms,
                shape,
            });
        }

        let inactive = match self.inactive {
            None => None,
            Some(raw) => Some(InactiveRule {
                header: check_header_name("negative_cache.inactive.header".into(), &raw.header)?,
                ttl_ms: check_ttl(
                    "negative_cache.inactive.ttl_seconds".into(),
                    raw.ttl_seconds,
                )?,
            }),
        };

        if self.capacity == 0 || self.capacity > MAX_CAPACITY {
            return Err(ConfigError::new(
                "negative_cache.capacity",
                format!(
                    "must be between 1 and {MAX_CAPACITY}, got {}",
                    self.capacity
                ),
            ));
        }
        if self.max_body_bytes > MAX_BODY_BYTES {
            return Err(ConfigError::new(
                "negative_cache.max_body_bytes",
                format!(
                    "must be at most {MAX_BODY_BYTES}, got {}",
                    self.max_body_bytes
                ),
            ));
        }

        Ok(NegativeCacheConfig {
            enabled: self.enabled,
            shadow: self.shadow,
            statuses,
            inactive,
            cache_anonymous: self.cache_anonymous,
            capacity: self.capacity,
            max_body_bytes: self.max_body_bytes,
            epoch: self.epoch,
        })
    }
}

/// Parses CIDRs (`10.0.0.0/8`, `2001:db8::/32`) and bare addresses (a /32 or /128).
fn parse_networks(field: &str, entries: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let text = entry.trim();
            let parsed = if text.contains('/') {
                text.parse::<IpNet>().ok()
            } else {
                text.parse::<std::net::IpAddr>().ok().map(IpNet::from)
            };
            parsed.map(|net| net.trunc()).ok_or_else(|| {
                ConfigError::new(
                    format!("{field}[{index}]"),
                    format!("{entry:?} is not an IP address or CIDR"),
                )
            })
        })
        .collect()
}

impl RawClientIp {
    fn validate(self) -> Result<ClientIpConfig, ConfigError> {
        let trusted_proxies = parse_networks("client_ip.trusted_proxies", &self.trusted_proxies)?;
        let mut headers = Vec::with_capacity(self.headers.len());
        for (index, header) in self.headers.into_iter().enumerate() {
            let field = format!("client_ip.headers[{index}]");
            let name = check_header_name(format!("{field}.name"), &header.name)?;
            let from = match header.from {
                None => None,
                Some(_) if name == "x-forwarded-for" => {
                    return Err(ConfigError::new(
                        format!("{field}.from"),
                        "x-forwarded-for is walked through trusted_proxies; \"from\" applies to single-address headers",
                    ))
                }
                Some(list) => Some(parse_networks(&format!("{field}.from"), &list)?),
            };
            headers.push(ClientIpHeader { name, from });
        }
        if !(1..=128).contains(&self.ipv6_prefix) {
            return Err(ConfigError::new(
                "client_ip.ipv6_prefix",
                format!("must be between 1 and 128, got {}", self.ipv6_prefix),
            ));
        }
        Ok(ClientIpConfig {
            trusted_proxies,
            headers,
            ipv6_prefix: self.ipv6_prefix,
        })
    }
}

impl RawRateLimit {
    fn validate(self) -> Result<RateLimitConfig, ConfigError> {
        for (index, status) in self.failure_statuses.iter().enumerate() {
            if !(400..=499).contains(status) {
                return Err(ConfigError::new(
                    format!("rate_limit.failure_statuses[{index}]"),
                    format!("only statuses 400-499 can count as failures, got {status}"),
                ));
            }
        }
        if self.max_failures > 1_000_000 {
            return Err(ConfigError::new(
                "rate_limit.max_failures",
                format!("must be at most 1000000, got {}", self.max_failures),
            ));
        }
        let window_ms = check_ttl("rate_limit.window_seconds".into(), self.window_seconds)?;
        let block_ms = check_ttl("rate_limit.block_seconds".into(), self.block_seconds)?;
        let escalation = match self.escalation {
            None => None,
            Some(raw) => {
                if !(1..=1000).contains(&raw.factor) {
                    return Err(ConfigError::new(
                        "rate_limit.escalation.factor",
                        format!("must be between 1 and 1000, got {}", raw.factor),
                    ));
                }
                let max_block_ms = check_ttl(
                    "rate_limit.escalation.max_block_seconds".into(),
                    raw.max_block_seconds,
                )?;
                if max_block_ms < block_ms {
                    return Err(ConfigError::new(
                        "rate_limit.escalation.max_block_seconds",
                        "must be at least block_seconds",
                    ));
                }
                Some(Escalation {
                    factor: raw.factor,
                    max_block_ms,
                })
            }
        };
        if self.capacity == 0 || self.capacity > MAX_CAPACITY {
            return Err(ConfigError::new(
                "rate_limit.capacity",
                format!(
                    "must be between 1 and {MAX_CAPACITY}, got {}",
                    self.capacity
                ),
            ));
        }
        Ok(RateLimitConfig {
            enabled: self.enabled,
            shadow: self.shadow,
            failure_statuses: self.failure_statuses,
            count_anonymous: self.count_anonymous,
            max_failures: self.max_failures,
            window_ms,
            block_ms,
            escalation,
            exempt_cidrs: parse_networks("rate_limit.exempt_cidrs", &self.exempt_cidrs)?,
            ratelimit_headers: self.ratelimit_headers,
            capacity: self.capacity,
            epoch: self.epoch,
        })
    }
}

fn shape_from_parts(field: &str, parts: &[KeyPart]) -> Result<KeyShape, ConfigError> {
    // Slots are addressed by identity, so every key starts from it.
    if !parts.contains(&KeyPart::Identity) {
        return Err(ConfigError::new(field, "must include \"identity\""));
    }
    let mut shape = KeyShape::IDENTITY_ONLY;
    for part in parts {
        match part {
            KeyPart::Identity => {}
            KeyPart::Method => shape.method = true,
            KeyPart::Path => shape.path = true,
            KeyPart::Query => shape.query = true,
            KeyPart::ClientIp => shape.client_ip = true,
        }
    }
    Ok(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Config, ConfigError> {
        Config::parse(json.as_bytes())
    }

    #[test]
    fn empty_config_gives_documented_defaults() {
        for input in ["", "{}", "  \n"] {
            let config = parse(input).unwrap();
            assert_eq!(config.credentials, default_credentials());
            assert!(config.exempt_paths.is_empty());
            assert_eq!(config.secret, SecretSource::Generated);
            let cache = &config.negative_cache;
            assert!(cache.enabled && !cache.shadow && !cache.cache_anonymous);
            assert_eq!(cache.capacity, 16_384);
            assert_eq!(cache.max_body_bytes, 2_048);
            assert_eq!(cache.rule_for(401).unwrap().ttl_ms, 60_000);
            assert_eq!(cache.rule_for(401).unwrap().shape, KeyShape::IDENTITY_ONLY);
            let forbidden = cache.rule_for(403).unwrap();
            assert_eq!(forbidden.ttl_ms, 10_000);
            assert!(forbidden.shape.method && forbidden.shape.path && !forbidden.shape.client_ip);
            let throttled = cache.rule_for(429).unwrap();
            assert_eq!(throttled.ttl_ms, 10_000);
            assert!(throttled.shape.client_ip && !throttled.shape.path);
            let inactive = cache.inactive.as_ref().unwrap();
            assert_eq!(inactive.header, "x-negcache-inactive");
            assert_eq!(inactive.ttl_ms, 3_600_000);
        }
    }

    #[test]
    fn the_documented_example_parses() {
        let config = parse(
            r#"{
              "credentials": [{"header": "Authorization"}, {"header": "x-api-key"},
                {"cookie": "sessionid"}, {"query": "api_key"}, {"path_segment": 0}],
              "exempt_paths": ["/healthz"],
              "hash_secret": null, "hash_secret_env": null,
              "negative_cache": {"enabled": true, "shadow": false,
                "statuses": {"401": {"ttl_seconds": 60},
                  "403": {"ttl_seconds": 10, "key": ["identity", "method", "path"]},
                  "429": {"ttl_seconds": 10, "key": ["identity", "client_ip"]}},
                "inactive": {"header": "x-negcache-inactive", "ttl_seconds": 3600},
                "cache_anonymous": false, "capacity": 16384, "max_body_bytes": 2048, "epoch": 0}
            }"#,
        )
        .unwrap();
        assert_eq!(config.credentials.len(), 5);
        assert_eq!(
            config.credentials[0],
            CredentialSource::Header("authorization".into())
        );
        assert_eq!(config.credentials[4], CredentialSource::PathSegment(0));
    }

    #[test]
    fn client_ip_and_rate_limit_defaults() {
        let config = parse("{}").unwrap();
        assert!(config.client_ip.trusted_proxies.is_empty());
        assert_eq!(
            config.client_ip.headers,
            vec![ClientIpHeader {
                name: "x-forwarded-for".into(),
                from: None
            }]
        );
        assert_eq!(config.client_ip.ipv6_prefix, 64);
        let limit = config.rate_limit;
        assert!(limit.enabled && !limit.shadow && !limit.count_anonymous);
        assert_eq!(limit.failure_statuses, vec![401]);
        assert_eq!(limit.max_failures, 10);
        assert_eq!((limit.window_ms, limit.block_ms), (60_000, 300_000));
        assert_eq!(
            limit.escalation,
            Some(Escalation {
                factor: 2,
                max_block_ms: 86_400_000
            })
        );
        assert_eq!(limit.capacity, 65_536);
    }

    #[test]
    fn networks_parse_as_cidrs_or_addresses() {
        let config = parse(
            r#"{"client_ip": {"trusted_proxies": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7", "10.1.2.3/8"],
                "headers": [{"name": "CF-Connecting-IP", "from": ["173.245.48.0/20"]}, {"name": "x-forwarded-for"}],
                "ipv6_prefix": 128},
              "rate_limit": {"escalation": null, "exempt_cidrs": ["::1"]}}"#,
        )
        .unwrap();
        let trusted: Vec<String> = config
            .client_ip
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            trusted,
            ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32", "10.0.0.0/8"]
        );
        assert_eq!(config.client_ip.headers[0].name, "cf-connecting-ip");
        assert!(config.client_ip.headers[0].from.is_some());
        assert_eq!(config.rate_limit.escalation, None);
        assert_eq!(config.rate_limit.exempt_cidrs[0].to_string(), "::1/128");
    }

    #[test]
    fn cors_defaults_add_nothing_and_expose_the_filters_headers() {
        let config = parse("{}").unwrap();
        assert!(config.cors.allowed_origins.is_empty());
        assert!(!config.cors.allow_credentials);
        assert_eq!(
            config.cors.expose_headers,
            "retry-after, ratelimit, ratelimit-policy, x-negcache"
        );
        let listed = parse(r#"{"cors": {"allowed_origins": ["https://app.example.com", "https://*.example.com", "null"], "allow_credentials": true}}"#).unwrap();
        assert_eq!(listed.cors.allowed_origins.len(), 3);
    }

    #[test]
    fn statuses_replace_the_default_map() {
        let config =
            parse(r#"{"negative_cache": {"statuses": {"404": {"ttl_seconds": 30}}}}"#).unwrap();
        let cache = config.negative_cache;
        assert_eq!(cache.statuses.len(), 1);
        assert_eq!(cache.rule_for(404).unwrap().ttl_ms, 30_000);
        assert!(cache.rule_for(401).is_none());
    }

    #[test]
    fn inactive_can_be_turned_off() {
        let config = parse(r#"{"negative_cache": {"inactive": null}}"#).unwrap();
        assert!(config.negative_cache.inactive.is_none());
    }

    #[test]
    fn secrets_from_config_or_environment() {
        let inline = parse(r#"{"hash_secret": "0123456789abcdef"}"#).unwrap();
        assert_eq!(
            inline.secret,
            SecretSource::Inline(b"0123456789abcdef".to_vec())
        );
        let env = parse(r#"{"hash_secret_env": "NEGCACHE_SECRET"}"#).unwrap();
        assert_eq!(env.secret, SecretSource::Env("NEGCACHE_SECRET".into()));
    }

    #[test]
    fn every_bad_field_is_named_with_its_reason() {
        let cases: &[(&str, &str, &str)] = &[
            (r#"{"bogus": 1}"#, "bogus", "unknown field `bogus`"),
            (
                r#"{"negative_cache": {"capacity": "big"}}"#,
                "negative_cache.capacity",
                "invalid type",
            ),
            (
                r#"{"negative_cache": {"capacity": 0}}"#,
                "negative_cache.capacity",
                "between 1 and 1048576",
            ),
            (
                r#"{"negative_cache": {"capacity": 1048577}}"#,
                "negative_cache.capacity",
                "between 1 and 1048576",
            ),
            (
                r#"{"negative_cache": {"statuses": {"200": {"ttl_seconds": 5}}}}"#,
                "negative_cache.statuses.200",
                "400-499",
            ),
            (
                r#"{"negative_cache": {"statuses": {"abc": {"ttl_seconds": 5}}}}"#,
                "negative_cache.statuses.abc",
                "400-499",
            ),
            (
                r#"{"negative_cache": {"statuses": {"401": {"ttl_seconds": 0}}}}"#,
                "negative_cache.statuses.401.ttl_seconds",
                "between 1 and 604800",
            ),
            (
                r#"{"negative_cache": {"statuses": {"401": {"ttl_seconds": 604801}}}}"#,
                "negative_cache.statuses.401.ttl_seconds",
                "7 days",
            ),
            (
                r#"{"negative_cache": {"statuses": {"401": {"ttl_seconds": 5, "key": ["path"]}}}}"#,
                "negative_cache.statuses.401.key",
                "identity",
            ),
            (
                r#"{"negative_cache": {"statuses": {"401": {"ttl_seconds": 5, "key": ["host"]}}}}"#,
                "negative_cache.statuses.401.key[0]",
                "unknown variant `host`",
            ),
            (
                r#"{"negative_cache": {"max_body_bytes": 65537}}"#,
                "negative_cache.max_body_bytes",
                "at most 65536",
            ),
            (
                r#"{"hash_secret": "short"}"#,
                "hash_secret",
                "at least 16 bytes",
            ),
            (
                r#"{"hash_secret": "0123456789abcdef", "hash_secret_env": "X"}"#,
                "hash_secret_env",
                "not both",
            ),
            (
                r#"{"credentials": [{"header": "bad header"}]}"#,
                "credentials[0].header",
                "not a valid HTTP header name",
            ),
            (
                r#"{"credentials": [{"header": ""}]}"#,
                "credentials[0].header",
                "not a valid HTTP header name",
            ),
            (
                r#"{"credentials": [{"smoke_signal": "x"}]}"#,
                "credentials[0]",
                "unknown variant `smoke_signal`",
            ),
            (
                r#"{"credentials": [{"path_segment": 65}]}"#,
                "credentials[0].path_segment",
                "at most 64",
            ),
            (
                r#"{"negative_cache": {"inactive": {"header": "x:y"}}}"#,
                "negative_cache.inactive.header",
                "not a valid HTTP header name",
            ),
            (
                r#"{"exempt_paths": ["healthz"]}"#,
                "exempt_paths[0]",
                "starting with '/'",
            ),
            (
                r#"{"client_ip": {"trusted_proxies": ["10.0.0.0/33"]}}"#,
                "client_ip.trusted_proxies[0]",
                "not an IP address or CIDR",
            ),
            (
                r#"{"client_ip": {"trusted_proxies": ["proxy.local"]}}"#,
                "client_ip.trusted_proxies[0]",
                "not an IP address or CIDR",
            ),
            (
                r#"{"client_ip": {"headers": [{"name": "x-forwarded-for", "from": ["1.2.3.4"]}]}}"#,
                "client_ip.headers[0].from",
                "single-address headers",
            ),
            (
                r#"{"client_ip": {"ipv6_prefix": 0}}"#,
                "client_ip.ipv6_prefix",
                "between 1 and 128",
            ),
            (
                r#"{"client_ip": {"ipv6_prefix": 300}}"#,
                "client_ip.ipv6_prefix",
                "invalid value",
            ),
            (
                r#"{"rate_limit": {"failure_statuses": [200]}}"#,
                "rate_limit.failure_statuses[0]",
                "400-499",
            ),
            (
                r#"{"rate_limit": {"window_seconds": 0}}"#,
                "rate_limit.window_seconds",
                "between 1 and",
            ),
            (
                r#"{"rate_limit": {"escalation": {"factor": 0, "max_block_seconds": 600}}}"#,
                "rate_limit.escalation.factor",
                "between 1 and 1000",
            ),
            (
                r#"{"rate_limit": {"escalation": {"factor": 2, "max_block_seconds": 60}}}"#,
                "rate_limit.escalation.max_block_seconds",
                "at least block_seconds",
            ),
            (
                r#"{"rate_limit": {"capacity": 0}}"#,
                "rate_limit.capacity",
                "between 1 and 1048576",
            ),
            (
                r#"{"rate_limit": {"exempt_cidrs": ["x"]}}"#,
                "rate_limit.exempt_cidrs[0]",
                "not an IP address or CIDR",
            ),
            (
                r#"{"cors": {"allowed_origins": ["*"], "allow_credentials": true}}"#,
                "cors.allowed_origins[0]",
                "cannot be combined with allow_credentials",
            ),
            (
                r#"{"cors": {"allowed_origins": ["app.example.com"]}}"#,
                "cors.allowed_origins[0]",
                "is not an origin",
            ),
            (
                r#"{"cors": {"expose_headers": ["retry after"]}}"#,
                "cors.expose_headers[0]",
                "not a valid HTTP header name",
            ),
            (r#"[1, 2]"#, "", "must be a JSON object"),
            ("\"x\"", "", "must be a JSON object"),
            (r#"{"negative_cache": "#, "negative_cache", "EOF"),
        ];
        for (json, field, reason) in cases {
            let error = parse(json).expect_err(json);
            assert_eq!(&error.field, field, "{json}: {error}");
            assert!(
                error.reason.contains(reason),
                "{json}: expected {reason:?} in {error}"
            );
            let line = error.to_string();
            assert!(line.starts_with("negcache: invalid configuration: "));
            assert!(!line.contains('\n'));
        }
    }
}
