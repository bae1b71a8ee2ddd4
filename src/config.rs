//! The plugin configuration: JSON types, defaults and validation.
//!
//! Every field is read through `config_reader`, so a bad one is reported by its path
//! (`negative_cache.capacity: ...`) together with why.
//! `Config` is the only thing the rest of the filter sees: every value in it is valid.

use crate::json::Json as Value;
use std::fmt;

use crate::config_reader::{quoted, string, unsigned, Nested, Object};
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

    /// Whether a request carrying a credential needs its client IP for the cache: only when
    /// some status keys its entries on it.
    pub fn keys_use_client_ip(&self) -> bool {
        self.statuses.iter().any(|rule| rule.shape.client_ip)
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
        let value =
            Value::parse(json).map_err(|e| ConfigError::new("", format!("not valid JSON: {e}")))?;
        if !matches!(value, Value::Object(_)) {
            return Err(ConfigError::new("", "must be a JSON object"));
        }
        let root = Object::new(
            String::new(),
            &value,
            &[
                "credentials",
                "exempt_paths",
                "hash_secret",
                "hash_secret_env",
                "negative_cache",
                "client_ip",
                "rate_limit",
                "cors",
            ],
        )?;
        Ok(Config {
            credentials: parse_credentials(&root)?,
            exempt_paths: parse_exempt_paths(&root)?,
            secret: parse_secret(&root)?,
            negative_cache: parse_negative_cache(&root)?,
            client_ip: parse_client_ip(&root)?,
            rate_limit: parse_rate_limit(&root)?,
            cors: parse_cors(&root)?,
        })
    }
}

/// The section at `key`, or an empty one (all defaults) when absent.
fn section<'a>(root: &Object<'a>, key: &str, fields: &[&str]) -> Result<Object<'a>, ConfigError> {
    static EMPTY: Value = Value::Object(Vec::new());
    match root.object(key, fields)? {
        Nested::Present(object) => Ok(object),
        Nested::Absent => Object::new(root.path_of(key), &EMPTY, fields),
        Nested::Null => Err(ConfigError::new(
            root.path_of(key),
            "must be an object (leave it out for the defaults)",
        )),
    }
}

fn default_credentials() -> Vec<CredentialSource> {
    vec![
        CredentialSource::Header("authorization".to_string()),
        CredentialSource::Header("x-api-key".to_string()),
    ]
}

fn parse_credentials(root: &Object) -> Result<Vec<CredentialSource>, ConfigError> {
    let Some(items) = root.array("credentials")? else {
        return Ok(default_credentials());
    };
    let mut credentials = Vec::with_capacity(items.len());
    for (path, item) in items {
        let source = Object::new(
            path.clone(),
            item,
            &["header", "cookie", "query", "path_segment"],
        )?;
        let mut fields = source.entries();
        let (Some((field, kind, value)), None) = (fields.next(), fields.next()) else {
            return Err(ConfigError::new(
                path,
                "must name exactly one of header, cookie, query, path_segment",
            ));
        };
        credentials.push(match kind.as_str() {
            "header" => {
                CredentialSource::Header(check_header_name(field.clone(), string(field, value)?)?)
            }
            "cookie" => {
                let name = string(field.clone(), value)?;
                if !is_valid_header_name(name) {
                    return Err(ConfigError::new(
                        field,
                        format!("{} is not a valid cookie name", quoted(name)),
                    ));
                }
                CredentialSource::Cookie(name.to_string())
            }
            "query" => {
                let name = string(field.clone(), value)?;
                if name.is_empty() || name.contains(['&', '=', '#']) {
                    return Err(ConfigError::new(
                        field,
                        format!("{} is not a valid query parameter name", quoted(name)),
                    ));
                }
                CredentialSource::Query(name.to_string())
            }
            _ => {
                let n = unsigned(field.clone(), value)?;
                if n > u64::from(MAX_PATH_SEGMENT) {
                    return Err(ConfigError::new(
                        field,
                        format!("must be at most {MAX_PATH_SEGMENT}, got {n}"),
                    ));
                }
                CredentialSource::PathSegment(n as u32)
            }
        });
    }
    Ok(credentials)
}

fn parse_exempt_paths(root: &Object) -> Result<Vec<String>, ConfigError> {
    let paths = root.strings("exempt_paths")?.unwrap_or_default();
    let mut normalized = Vec::with_capacity(paths.len());
    for (index, path) in paths.into_iter().enumerate() {
        if !path.starts_with('/') || path.contains(['?', '#']) {
            return Err(ConfigError::new(
                format!("exempt_paths[{index}]"),
                format!(
                    "{} must be a path starting with '/' and without query",
                    quoted(path)
                ),
            ));
        }
        normalized.push(crate::path::normalize(path));
    }
    Ok(normalized)
}

fn parse_secret(root: &Object) -> Result<SecretSource, ConfigError> {
    match (
        root.optional_str("hash_secret")?,
        root.optional_str("hash_secret_env")?,
    ) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            "hash_secret_env",
            "give either hash_secret or hash_secret_env, not both",
        )),
        (Some(secret), None) if secret.len() < MIN_SECRET_BYTES => Err(ConfigError::new(
            "hash_secret",
            format!("must be at least {MIN_SECRET_BYTES} bytes long"),
        )),
        (Some(secret), None) => Ok(SecretSource::Inline(secret.as_bytes().to_vec())),
        (None, Some("")) => Err(ConfigError::new(
            "hash_secret_env",
            "must name an environment variable",
        )),
        (None, Some(name)) => Ok(SecretSource::Env(name.to_string())),
        (None, None) => Ok(SecretSource::Generated),
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
            format!("{} is not a valid HTTP header name", quoted(name)),
        ));
    }
    Ok(name.to_ascii_lowercase())
}

fn check_capacity(field: String, capacity: u32) -> Result<u32, ConfigError> {
    if capacity == 0 || capacity > MAX_CAPACITY {
        return Err(ConfigError::new(
            field,
            format!("must be between 1 and {MAX_CAPACITY}, got {capacity}"),
        ));
    }
    Ok(capacity)
}

fn parse_negative_cache(root: &Object) -> Result<NegativeCacheConfig, ConfigError> {
    let cache = section(
        root,
        "negative_cache",
        &[
            "enabled",
            "shadow",
            "statuses",
            "inactive",
            "cache_anonymous",
            "capacity",
            "max_body_bytes",
            "epoch",
        ],
    )?;
    let statuses = match cache.get("statuses") {
        None => vec![
            StatusRule {
                status: 401,
                ttl_ms: 60_000,
                shape: KeyShape::IDENTITY_ONLY,
            },
            StatusRule {
                status: 403,
                ttl_ms: 10_000,
                shape: KeyShape {
                    method: true,
                    path: true,
                    ..KeyShape::IDENTITY_ONLY
                },
            },
            StatusRule {
                status: 429,
                ttl_ms: 10_000,
                shape: KeyShape {
                    client_ip: true,
                    ..KeyShape::IDENTITY_ONLY
                },
            },
        ],
        Some(Value::Null) => Vec::new(),
        Some(Value::Object(map)) => parse_statuses(&cache.path_of("statuses"), map)?,
        Some(other) => {
            return Err(crate::config_reader::invalid_type(
                cache.path_of("statuses"),
                other,
                "an object keyed by status",
            ))
        }
    };
    let inactive = match cache.object("inactive", &["header", "ttl_seconds"])? {
        Nested::Null => None,
        Nested::Absent => Some(InactiveRule {
            header: "x-negcache-inactive".to_string(),
            ttl_ms: 3_600_000,
        }),
        Nested::Present(rule) => Some(InactiveRule {
            header: check_header_name(
                rule.path_of("header"),
                rule.optional_str("header")?
                    .unwrap_or("x-negcache-inactive"),
            )?,
            ttl_ms: check_ttl(rule.path_of("ttl_seconds"), rule.u64("ttl_seconds", 3600)?)?,
        }),
    };
    let max_body_bytes = cache.u32("max_body_bytes", 2_048)?;
    if max_body_bytes > MAX_BODY_BYTES {
        return Err(ConfigError::new(
            cache.path_of("max_body_bytes"),
            format!("must be at most {MAX_BODY_BYTES}, got {max_body_bytes}"),
        ));
    }
    Ok(NegativeCacheConfig {
        enabled: cache.bool("enabled", true)?,
        shadow: cache.bool("shadow", false)?,
        statuses,
        inactive,
        cache_anonymous: cache.bool("cache_anonymous", false)?,
        capacity: check_capacity(cache.path_of("capacity"), cache.u32("capacity", 16_384)?)?,
        max_body_bytes,
        epoch: cache.u32("epoch", 0)?,
    })
}

/// `statuses` given in the configuration replaces the default map.
fn parse_statuses(path: &str, map: &[(String, Value)]) -> Result<Vec<StatusRule>, ConfigError> {
    let mut statuses = Vec::with_capacity(map.len());
    for (status_text, value) in map {
        let field = format!("{path}.{status_text}");
        let status = match status_text.parse::<u16>() {
            Ok(status) if (400..=499).contains(&status) => status,
            _ => {
                return Err(ConfigError::new(
                    field,
                    "only statuses 400-499 can be cached",
                ))
            }
        };
        let rule = Object::new(field, value, &["ttl_seconds", "key"])?;
        let Some(ttl) = rule.get("ttl_seconds") else {
            return Err(ConfigError::new(rule.path_of("ttl_seconds"), "is required"));
        };
        let ttl_ms = check_ttl(
            rule.path_of("ttl_seconds"),
            unsigned(rule.path_of("ttl_seconds"), ttl)?,
        )?;
        let shape = match rule.strings("key")? {
            None => KeyShape::IDENTITY_ONLY,
            Some(parts) => shape_from_parts(&rule.path_of("key"), &parts)?,
        };
        statuses.push(StatusRule {
            status,
            ttl_ms,
            shape,
        });
    }
    Ok(statuses)
}

fn shape_from_parts(field: &str, parts: &[&str]) -> Result<KeyShape, ConfigError> {
    let mut shape = KeyShape::IDENTITY_ONLY;
    for (index, part) in parts.iter().enumerate() {
        match *part {
            "identity" => {}
            "method" => shape.method = true,
            "path" => shape.path = true,
            "query" => shape.query = true,
            "client_ip" => shape.client_ip = true,
            other => {
                return Err(ConfigError::new(
                    format!("{field}[{index}]"),
                    format!(
                        "unknown key part `{other}`, expected one of `identity`, `method`, `path`, `query`, `client_ip`"
                    ),
                ))
            }
        }
    }
    // Slots are addressed by identity, so every key starts from it.
    if !parts.contains(&"identity") {
        return Err(ConfigError::new(field, "must include \"identity\""));
    }
    Ok(shape)
}

/// Parses CIDRs (`10.0.0.0/8`, `2001:db8::/32`) and bare addresses (a /32 or /128).
fn parse_networks(field: &str, entries: &[&str]) -> Result<Vec<IpNet>, ConfigError> {
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
                    format!("{} is not an IP address or CIDR", quoted(entry)),
                )
            })
        })
        .collect()
}

fn parse_client_ip(root: &Object) -> Result<ClientIpConfig, ConfigError> {
    let client_ip = section(
        root,
        "client_ip",
        &["trusted_proxies", "headers", "ipv6_prefix"],
    )?;
    let trusted_proxies = parse_networks(
        &client_ip.path_of("trusted_proxies"),
        &client_ip.strings("trusted_proxies")?.unwrap_or_default(),
    )?;
    let headers = match client_ip.array("headers")? {
        None => vec![ClientIpHeader {
            name: "x-forwarded-for".to_string(),
            from: None,
        }],
        Some(items) => {
            let mut headers = Vec::with_capacity(items.len());
            for (path, item) in items {
                let header = Object::new(path, item, &["name", "from"])?;
                let Some(name) = header.optional_str("name")? else {
                    return Err(ConfigError::new(header.path_of("name"), "is required"));
                };
                let name = check_header_name(header.path_of("name"), name)?;
                let from = match header.strings("from")? {
                    None => None,
                    Some(_) if name == "x-forwarded-for" => {
                        return Err(ConfigError::new(
                            header.path_of("from"),
                            "x-forwarded-for is walked through trusted_proxies; \"from\" applies to single-address headers",
                        ))
                    }
                    Some(list) => Some(parse_networks(&header.path_of("from"), &list)?),
                };
                headers.push(ClientIpHeader { name, from });
            }
            headers
        }
    };
    let ipv6_prefix = client_ip.u64("ipv6_prefix", 64)?;
    if !(1..=128).contains(&ipv6_prefix) {
        return Err(ConfigError::new(
            client_ip.path_of("ipv6_prefix"),
            format!("must be between 1 and 128, got {ipv6_prefix}"),
        ));
    }
    Ok(ClientIpConfig {
        trusted_proxies,
        headers,
        ipv6_prefix: ipv6_prefix as u8,
    })
}

fn parse_rate_limit(root: &Object) -> Result<RateLimitConfig, ConfigError> {
    let limit = section(
        root,
        "rate_limit",
        &[
            "enabled",
            "shadow",
            "failure_statuses",
            "count_anonymous",
            "max_failures",
            "window_seconds",
            "block_seconds",
            "escalation",
            "exempt_cidrs",
            "ratelimit_headers",
            "capacity",
            "epoch",
        ],
    )?;
    let failure_statuses = match limit.array("failure_statuses")? {
        None => vec![401],
        Some(items) => {
            let mut statuses = Vec::with_capacity(items.len());
            for (path, item) in items {
                let status = unsigned(path.clone(), item)?;
                if !(400..=499).contains(&status) {
                    return Err(ConfigError::new(
                        path,
                        format!("only statuses 400-499 can count as failures, got {status}"),
                    ));
                }
                statuses.push(status as u16);
            }
            statuses
        }
    };
    let max_failures = limit.u32("max_failures", 10)?;
    if max_failures > 1_000_000 {
        return Err(ConfigError::new(
            limit.path_of("max_failures"),
            format!("must be at most 1000000, got {max_failures}"),
        ));
    }
    let window_ms = check_ttl(
        limit.path_of("window_seconds"),
        limit.u64("window_seconds", 60)?,
    )?;
    let block_ms = check_ttl(
        limit.path_of("block_seconds"),
        limit.u64("block_seconds", 300)?,
    )?;
    let escalation = match limit.object("escalation", &["factor", "max_block_seconds"])? {
        Nested::Null => None,
        Nested::Absent => Some(Escalation {
            factor: 2,
            max_block_ms: 86_400_000.max(block_ms),
        }),
        Nested::Present(raw) => {
            let factor = raw.u32("factor", 2)?;
            if !(1..=1000).contains(&factor) {
                return Err(ConfigError::new(
                    raw.path_of("factor"),
                    format!("must be between 1 and 1000, got {factor}"),
                ));
            }
            let max_block_ms = check_ttl(
                raw.path_of("max_block_seconds"),
                raw.u64("max_block_seconds", 86_400)?,
            )?;
            if max_block_ms < block_ms {
                return Err(ConfigError::new(
                    raw.path_of("max_block_seconds"),
                    "must be at least block_seconds",
                ));
            }
            Some(Escalation {
                factor,
                max_block_ms,
            })
        }
    };
    Ok(RateLimitConfig {
        enabled: limit.bool("enabled", true)?,
        shadow: limit.bool("shadow", false)?,
        failure_statuses,
        count_anonymous: limit.bool("count_anonymous", false)?,
        max_failures,
        window_ms,
        block_ms,
        escalation,
        exempt_cidrs: parse_networks(
            &limit.path_of("exempt_cidrs"),
            &limit.strings("exempt_cidrs")?.unwrap_or_default(),
        )?,
        ratelimit_headers: limit.bool("ratelimit_headers", false)?,
        capacity: check_capacity(limit.path_of("capacity"), limit.u32("capacity", 65_536)?)?,
        epoch: limit.u32("epoch", 0)?,
    })
}

fn parse_cors(root: &Object) -> Result<CorsConfig, ConfigError> {
    let cors = section(
        root,
        "cors",
        &["allowed_origins", "allow_credentials", "expose_headers"],
    )?;
    let allow_credentials = cors.bool("allow_credentials", false)?;
    let origins = cors.strings("allowed_origins")?.unwrap_or_default();
    let mut allowed_origins = Vec::with_capacity(origins.len());
    for (index, entry) in origins.into_iter().enumerate() {
        let field = format!("{}[{index}]", cors.path_of("allowed_origins"));
        let pattern = OriginPattern::parse(entry.trim()).ok_or_else(|| {
            ConfigError::new(
                field.clone(),
                format!(
                    "{} is not an origin: use \"https://host[:port]\", \"https://*.domain\", \"null\" or \"*\"",
                    quoted(entry)
                ),
            )
        })?;
        if pattern == OriginPattern::Any && allow_credentials {
            return Err(ConfigError::new(
                field,
                "\"*\" cannot be combined with allow_credentials: true (any site could read \
                 credentialed replies); list the origins instead",
            ));
        }
        allowed_origins.push(pattern);
    }
    let expose = match cors.strings("expose_headers")? {
        None => vec!["retry-after", "ratelimit", "ratelimit-policy", "x-negcache"],
        Some(names) => names,
    };
    let mut expose_headers = Vec::with_capacity(expose.len());
    for (index, name) in expose.into_iter().enumerate() {
        expose_headers.push(check_header_name(
            format!("{}[{index}]", cors.path_of("expose_headers")),
            name,
        )?);
    }
    Ok(CorsConfig {
        allowed_origins,
        allow_credentials,
        expose_headers: expose_headers.join(", "),
    })
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
            assert!(cache.keys_use_client_ip(), "429 entries are per client");
        }
        let identity_only =
            parse(r#"{"negative_cache": {"statuses": {"401": {"ttl_seconds": 5}}}}"#)
                .unwrap()
                .negative_cache;
        assert!(!identity_only.keys_use_client_ip());
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
                "unknown key part `host`",
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
                "credentials[0].smoke_signal",
                "unknown field `smoke_signal`, expected one of `header`",
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
                "between 1 and 128, got 300",
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
            (
                r#"{"negative_cache": "#,
                "",
                "not valid JSON: unexpected end of input at byte 19",
            ),
            (
                r#"{"credentials": [{"header": "a", "cookie": "b"}]}"#,
                "credentials[0]",
                "exactly one of",
            ),
            (
                r#"{"negative_cache": {"statuses": {"401": {}}}}"#,
                "negative_cache.statuses.401.ttl_seconds",
                "is required",
            ),
            (
                r#"{"negative_cache": {"capacity": 1.5}}"#,
                "negative_cache.capacity",
                "whole number",
            ),
            (
                r#"{"negative_cache": null}"#,
                "negative_cache",
                "must be an object",
            ),
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
