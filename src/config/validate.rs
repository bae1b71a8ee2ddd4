//! From the configuration as written (`raw`) to the runtime types: every bound, name and
//! combination checked. Each conversion names a bad field relative to the value it converts;
//! its caller puts the enclosing field in front (`ConfigError::within`), as Envoy turns a proto
//! into a filter config.

use ipnet::IpNet;

use crate::client_ip::{self, MappedTooWide};

use super::raw::{self, KeyPart};
use super::{
    BreakerConfig, ClientIpConfig, ClientIpHeader, ClusterConfig, Config, ConfigError,
    CredentialSource, Escalation, InactiveRule, KeyShape, NegativeCacheConfig, RateLimitConfig,
    SecretSource, StatusRule,
};
use crate::cors::{CorsConfig, OriginPattern};
use crate::header_name::is_valid_header_name;

impl TryFrom<raw::Config> for Config {
    type Error = ConfigError;

    fn try_from(raw: raw::Config) -> Result<Config, ConfigError> {
        Ok(Config {
            credentials: each(raw.credentials, CredentialSource::try_from)
                .map_err(|e| e.within("credentials"))?,
            exempt_paths: each(raw.exempt_paths, exempt_path)
                .map_err(|e| e.within("exempt_paths"))?,
            secret: secret(raw.hash_secret, raw.hash_secret_env)?,
            negative_cache: NegativeCacheConfig::try_from(raw.negative_cache)
                .map_err(|e| e.within("negative_cache"))?,
            client_ip: ClientIpConfig::try_from(raw.client_ip)
                .map_err(|e| e.within("client_ip"))?,
            rate_limit: RateLimitConfig::try_from(raw.rate_limit)
                .map_err(|e| e.within("rate_limit"))?,
            cors: CorsConfig::try_from(raw.cors).map_err(|e| e.within("cors"))?,
        })
    }
}

impl TryFrom<raw::Credential> for CredentialSource {
    type Error = ConfigError;

    fn try_from(raw: raw::Credential) -> Result<CredentialSource, ConfigError> {
        Ok(match raw {
            raw::Credential::Header(name) => {
                CredentialSource::Header(header_name(&name).map_err(|e| e.within("header"))?)
            }
            raw::Credential::Cookie(name) if is_valid_header_name(&name) => {
                CredentialSource::Cookie(name)
            }
            raw::Credential::Cookie(name) => {
                return Err(ConfigError::new(
                    "cookie",
                    format!("{} is not a valid cookie name", quoted(&name)),
                ))
            }
            raw::Credential::Query(name) if name.is_empty() || name.contains(['&', '=', '#']) => {
                return Err(ConfigError::new(
                    "query",
                    format!("{} is not a valid query parameter name", quoted(&name)),
                ))
            }
            raw::Credential::Query(name) => CredentialSource::Query(name),
            raw::Credential::PathSegment(index) => CredentialSource::PathSegment(
                bounded(index, 0, raw::MAX_PATH_SEGMENT).map_err(|e| e.within("path_segment"))?,
            ),
        })
    }
}

fn exempt_path(path: String) -> Result<String, ConfigError> {
    if !path.starts_with('/') || path.contains(['?', '#']) {
        return Err(ConfigError::new(
            "",
            format!(
                "{} must be a path starting with '/' and without query",
                quoted(&path)
            ),
        ));
    }
    Ok(crate::path::normalize(&path))
}

fn secret(inline: Option<String>, env: Option<String>) -> Result<SecretSource, ConfigError> {
    match (inline, env) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            "hash_secret_env",
            "give either hash_secret or hash_secret_env, not both",
        )),
        (Some(secret), None) if secret.len() < raw::MIN_SECRET_BYTES => Err(ConfigError::new(
            "hash_secret",
            format!("must be at least {} bytes long", raw::MIN_SECRET_BYTES),
        )),
        (Some(secret), None) => Ok(SecretSource::Inline(secret.into_bytes())),
        (None, Some(name)) if name.is_empty() => Err(ConfigError::new(
            "hash_secret_env",
            "must name an environment variable",
        )),
        (None, Some(name)) => Ok(SecretSource::Env(name)),
        (None, None) => Ok(SecretSource::Generated),
    }
}

impl TryFrom<raw::NegativeCache> for NegativeCacheConfig {
    type Error = ConfigError;

    fn try_from(raw: raw::NegativeCache) -> Result<NegativeCacheConfig, ConfigError> {
        let statuses = raw
            .statuses
            .0
            .into_iter()
            .map(|(status, rule)| status_rule(&status, rule).map_err(|e| e.within(&status)))
            .collect::<Result<_, _>>()
            .map_err(|e| e.within("statuses"))?;
        let inactive = raw
            .inactive
            .map(|rule| {
                Ok(InactiveRule {
                    header: header_name(&rule.header).map_err(|e| e.within("header"))?,
                    ttl_ms: ttl_ms(rule.ttl_seconds).map_err(|e| e.within("ttl_seconds"))?,
                })
            })
            .transpose()
            .map_err(|e: ConfigError| e.within("inactive"))?;
        Ok(NegativeCacheConfig {
            enabled: raw.enabled,
            shadow: raw.shadow,
            statuses,
            inactive,
            cache_anonymous: raw.cache_anonymous,
            capacity: bounded(raw.capacity, 1, raw::MAX_CAPACITY)
                .map_err(|e| e.within("capacity"))?,
            max_body_bytes: bounded(raw.max_body_bytes, 0, raw::MAX_BODY_BYTES)
                .map_err(|e| e.within("max_body_bytes"))?,
            epoch: bounded(raw.epoch, 0, raw::MAX_EPOCH).map_err(|e| e.within("epoch"))?,
        })
    }
}

/// The rule for the status written as `status` (an error names a field of the rule).
fn status_rule(status: &str, rule: raw::StatusRule) -> Result<StatusRule, ConfigError> {
    let status = client_error(status)
        .ok_or_else(|| ConfigError::new("", "only statuses 400-499 can be cached"))?;
    Ok(StatusRule {
        status,
        ttl_ms: ttl_ms(rule.ttl_seconds).map_err(|e| e.within("ttl_seconds"))?,
        shape: key_shape(&rule.key).map_err(|e| e.within("key"))?,
    })
}

/// A status 400-499 written as three digits, as the schema's `propertyNames` has it.
fn client_error(text: &str) -> Option<u16> {
    if text.len() != 3 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse()
        .ok()
        .filter(|status| raw::CLIENT_ERRORS.contains(status))
}

fn key_shape(parts: &[KeyPart]) -> Result<KeyShape, ConfigError> {
    // Slots are addressed by identity, so every key starts from it.
    if !parts.contains(&KeyPart::Identity) {
        return Err(ConfigError::new("", "must include \"identity\""));
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

impl TryFrom<raw::ClientIp> for ClientIpConfig {
    type Error = ConfigError;

    fn try_from(raw: raw::ClientIp) -> Result<ClientIpConfig, ConfigError> {
        Ok(ClientIpConfig {
            trusted_proxies: each(raw.trusted_proxies, network)
                .map_err(|e| e.within("trusted_proxies"))?,
            headers: each(raw.headers, ClientIpHeader::try_from)
                .map_err(|e| e.within("headers"))?,
            ipv6_prefix: bounded(raw.ipv6_prefix, 1, 128).map_err(|e| e.within("ipv6_prefix"))?,
        })
    }
}

impl TryFrom<raw::ClientIpHeader> for ClientIpHeader {
    type Error = ConfigError;

    fn try_from(raw: raw::ClientIpHeader) -> Result<ClientIpHeader, ConfigError> {
        let name = header_name(&raw.name).map_err(|e| e.within("name"))?;
        let from = match raw.from {
            None => None,
            Some(_) if name == "x-forwarded-for" => {
                return Err(ConfigError::new(
                    "from",
                    "x-forwarded-for is walked through trusted_proxies; \"from\" applies to single-address headers",
                ))
            }
            Some(list) => Some(each(list, network).map_err(|e| e.within("from"))?),
        };
        Ok(ClientIpHeader { name, from })
    }
}

impl TryFrom<raw::RateLimit> for RateLimitConfig {
    type Error = ConfigError;

    fn try_from(raw: raw::RateLimit) -> Result<RateLimitConfig, ConfigError> {
        let failure_statuses = each(raw.failure_statuses, |status| {
            u16::try_from(status)
                .ok()
                .filter(|status| raw::CLIENT_ERRORS.contains(status))
                .ok_or_else(|| {
                    ConfigError::new(
                        "",
                        format!("only statuses 400-499 can count as failures, got {status}"),
                    )
                })
        })
        .map_err(|e| e.within("failure_statuses"))?;
        let block_ms = ttl_ms(raw.block_seconds).map_err(|e| e.within("block_seconds"))?;
        let escalation = match raw.escalation {
            Some(None) => None,
            None => {
                // Left out: the defaults, the cap raised to block_seconds when that is longer.
                let mut defaults = escalation(raw::Escalation::default(), 0)?;
                defaults.max_block_ms = defaults.max_block_ms.max(block_ms);
                Some(defaults)
            }
            Some(Some(given)) => {
                Some(escalation(given, block_ms).map_err(|e| e.within("escalation"))?)
            }
        };
        Ok(RateLimitConfig {
            enabled: raw.enabled,
            shadow: raw.shadow,
            failure_statuses,
            count_anonymous: raw.count_anonymous,
            max_failures: bounded(raw.max_failures, 0, raw::MAX_FAILURES)
                .map_err(|e| e.within("max_failures"))?,
            window_ms: ttl_ms(raw.window_seconds).map_err(|e| e.within("window_seconds"))?,
            block_ms,
            escalation,
            exempt_cidrs: each(raw.exempt_cidrs, network).map_err(|e| e.within("exempt_cidrs"))?,
            ratelimit_headers: raw.ratelimit_headers,
            capacity: bounded(raw.capacity, 1, raw::MAX_CAPACITY)
                .map_err(|e| e.within("capacity"))?,
            epoch: bounded(raw.epoch, 0, raw::MAX_EPOCH).map_err(|e| e.within("epoch"))?,
            cluster: match raw.cluster {
                None => None,
                Some(_) if !raw.enabled => {
                    return Err(ConfigError::new(
                        "cluster",
                        "cluster mode counts the rate limit's failures: it needs \
                         rate_limit.enabled (leave cluster out, or enable the rate limit)",
                    ))
                }
                Some(cluster) => {
                    Some(ClusterConfig::try_from(cluster).map_err(|e| e.within("cluster"))?)
                }
            },
        })
    }
}

impl TryFrom<raw::Cluster> for ClusterConfig {
    type Error = ConfigError;

    fn try_from(raw: raw::Cluster) -> Result<ClusterConfig, ConfigError> {
        if raw.rls_cluster.is_empty() {
            return Err(ConfigError::new(
                "rls_cluster",
                "is required: the name of the Envoy cluster that reaches the rate limit service",
            ));
        }
        Ok(ClusterConfig {
            rls_cluster: cluster_name(raw.rls_cluster).map_err(|e| e.within("rls_cluster"))?,
            domain: cluster_name(raw.domain).map_err(|e| e.within("domain"))?,
            timeout_ms: bounded(raw.timeout_ms, 1, raw::MAX_CLUSTER_TIMEOUT_MS)
                .map_err(|e| e.within("timeout_ms"))?,
            breaker: BreakerConfig {
                consecutive_errors: bounded(
                    raw.breaker.consecutive_errors,
                    1,
                    raw::MAX_BREAKER_ERRORS,
                )
                .map_err(|e| e.within("breaker.consecutive_errors"))?,
                open_ms: bounded::<u64>(raw.breaker.open_seconds, 1, raw::MAX_BREAKER_OPEN_SECONDS)
                    .map_err(|e| e.within("breaker.open_seconds"))?
                    * 1000,
            },
        })
    }
}

/// A cluster name or domain: 1 to 255 printable ASCII characters (Envoy's and Istio's cluster
/// names, RLS domains); an empty domain is answered `UNKNOWN` by the service.
fn cluster_name(name: String) -> Result<String, ConfigError> {
    let printable = name.bytes().all(|b| b.is_ascii_graphic());
    if name.is_empty() || name.len() as u64 > raw::MAX_CLUSTER_NAME || !printable {
        return Err(ConfigError::new(
            "",
            format!(
                "must be 1 to {} printable ASCII characters without spaces, got {}",
                raw::MAX_CLUSTER_NAME,
                quoted(&name)
            ),
        ));
    }
    Ok(name)
}

fn escalation(raw: raw::Escalation, block_ms: u64) -> Result<Escalation, ConfigError> {
    let factor =
        bounded(raw.factor, 1, raw::MAX_ESCALATION_FACTOR).map_err(|e| e.within("factor"))?;
    let max_block_ms = ttl_ms(raw.max_block_seconds).map_err(|e| e.within("max_block_seconds"))?;
    if max_block_ms < block_ms {
        return Err(ConfigError::new(
            "max_block_seconds",
            "must be at least block_seconds",
        ));
    }
    Ok(Escalation {
        factor,
        max_block_ms,
    })
}

impl TryFrom<raw::Cors> for CorsConfig {
    type Error = ConfigError;

    fn try_from(raw: raw::Cors) -> Result<CorsConfig, ConfigError> {
        let allow_credentials = raw.allow_credentials;
        let allowed_origins = each(raw.allowed_origins, |entry| {
            let pattern = OriginPattern::parse(entry.trim()).ok_or_else(|| {
                ConfigError::new(
                    "",
                    format!(
                        "{} is not an origin: use \"https://host[:port]\", \"https://*.domain\", \"null\" or \"*\"",
                        quoted(&entry)
                    ),
                )
            })?;
            if pattern == OriginPattern::Any && allow_credentials {
                return Err(ConfigError::new(
                    "",
                    "\"*\" cannot be combined with allow_credentials: true (any site could read \
                     credentialed replies); list the origins instead",
                ));
            }
            Ok(pattern)
        })
        .map_err(|e| e.within("allowed_origins"))?;
        let expose_headers = each(raw.expose_headers, |name| header_name(&name))
            .map_err(|e| e.within("expose_headers"))?;
        Ok(CorsConfig {
            allowed_origins,
            allow_credentials,
            expose_headers: expose_headers.join(", "),
        })
    }
}

/// Each item converted; an error is named by the item's index.
fn each<T, U>(
    items: Vec<T>,
    convert: impl FnMut(T) -> Result<U, ConfigError>,
) -> Result<Vec<U>, ConfigError> {
    let mut convert = convert;
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| convert(item).map_err(|e| e.within(&format!("[{index}]"))))
        .collect()
}

/// `value` if within `min..=max` (which `T` holds).
fn bounded<T: TryFrom<u64>>(value: u64, min: u64, max: u64) -> Result<T, ConfigError> {
    let out_of_range = || {
        let reason = if min == 0 {
            format!("must be at most {max}, got {value}")
        } else {
            format!("must be between {min} and {max}, got {value}")
        };
        ConfigError::new("", reason)
    };
    if !(min..=max).contains(&value) {
        return Err(out_of_range());
    }
    T::try_from(value).map_err(|_| out_of_range())
}

fn ttl_ms(seconds: u64) -> Result<u64, ConfigError> {
    if seconds == 0 || seconds > raw::MAX_SECONDS {
        return Err(ConfigError::new(
            "",
            format!(
                "must be between 1 and {} seconds (7 days), got {seconds}",
                raw::MAX_SECONDS
            ),
        ));
    }
    Ok(seconds * 1000)
}

fn header_name(name: &str) -> Result<String, ConfigError> {
    if !is_valid_header_name(name) {
        return Err(ConfigError::new(
            "",
            format!("{} is not a valid HTTP header name", quoted(name)),
        ));
    }
    Ok(name.to_ascii_lowercase())
}

/// A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a bare address (a /32 or /128), in the form
/// addresses are compared in: `::ffff:10.0.0.0/104` is `10.0.0.0/8` (see
/// `client_ip::canonical_network`).
fn network(entry: String) -> Result<IpNet, ConfigError> {
    let text = entry.trim();
    let parsed = if text.contains('/') {
        text.parse::<IpNet>().ok()
    } else {
        text.parse::<std::net::IpAddr>().ok().map(IpNet::from)
    };
    let Some(net) = parsed else {
        return Err(ConfigError::new(
            "",
            format!("{} is not an IP address or CIDR", quoted(&entry)),
        ));
    };
    client_ip::canonical_network(net).map_err(|MappedTooWide| {
        ConfigError::new(
            "",
            format!(
                "{} is an IPv4-mapped network shorter than /96, which has no IPv4 equivalent: \
                 write the IPv4 network (::ffff:a.b.c.d/p is a.b.c.d/(p - 96))",
                quoted(&entry)
            ),
        )
    })
}

/// `text` in double quotes, its quotes, backslashes and control characters escaped.
fn quoted(text: &str) -> String {
    format!("{text:?}")
}
