//! `Config::parse` end to end: defaults, the documented example, and every way a field can be
//! refused.

use super::*;

fn parse(json: &str) -> Result<Config, ConfigError> {
    Config::parse(json.as_bytes())
}

#[test]
fn empty_config_gives_documented_defaults() {
    for input in ["", "{}", "  \n"] {
        let config = parse(input).unwrap();
        assert_eq!(
            config.credentials,
            [
                CredentialSource::Header("authorization".into()),
                CredentialSource::Header("x-api-key".into())
            ]
        );
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
fn ipv4_mapped_networks_become_the_ipv4_networks_they_carry() {
    let config = parse(
        r#"{"client_ip": {"trusted_proxies": ["::ffff:10.0.0.0/104", "::ffff:192.0.2.7"],
            "headers": [{"name": "cf-connecting-ip", "from": ["::ffff:173.245.48.0/116"]}]},
          "rate_limit": {"exempt_cidrs": ["::ffff:198.51.100.0/120"]}}"#,
    )
    .unwrap();
    let text = |nets: &[ipnet::IpNet]| nets.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(
        text(&config.client_ip.trusted_proxies),
        ["10.0.0.0/8", "192.0.2.7/32"]
    );
    let from = config.client_ip.headers[0].from.as_deref().unwrap();
    assert_eq!(text(from), ["173.245.48.0/20"]);
    assert_eq!(text(&config.rate_limit.exempt_cidrs), ["198.51.100.0/24"]);
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
            "unknown variant `host`, expected one of `identity`, `method`, `path`, `query`, `client_ip`",
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
            r#"{"client_ip": {"trusted_proxies": ["::ffff:10.0.0.0/95"]}}"#,
            "client_ip.trusted_proxies[0]",
            "IPv4-mapped network shorter than /96",
        ),
        (
            r#"{"rate_limit": {"exempt_cidrs": ["::ffff:0:0/64"]}}"#,
            "rate_limit.exempt_cidrs[0]",
            "IPv4-mapped network shorter than /96",
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
        (
            r#"[1, 2]"#,
            "",
            "invalid type: sequence, expected a JSON object",
        ),
        (
            "\"x\"",
            "",
            "invalid type: string \"x\", expected a JSON object",
        ),
        (
            r#"{"negative_cache": "#,
            "",
            "not valid JSON: EOF while parsing a value at line 1 column 19",
        ),
        (
            r#"{"credentials": [{"header": "a", "cookie": "b"}]}"#,
            "credentials[0]",
            "exactly one of",
        ),
        (
            r#"{"negative_cache": {"statuses": {"401": {}}}}"#,
            "negative_cache.statuses.401",
            "missing field `ttl_seconds`",
        ),
        (
            r#"{"negative_cache": {"capacity": 1.5}}"#,
            "negative_cache.capacity",
            "invalid type: floating point `1.5`, expected a whole number",
        ),
        (
            r#"{"negative_cache": null}"#,
            "negative_cache",
            "invalid type: null, expected an object",
        ),
        (
            r#"{"negative_cache": []}"#,
            "negative_cache",
            "invalid type: sequence, expected an object",
        ),
        (
            r#"{"client_ip": {"headers": [["x-real-ip"]]}}"#,
            "client_ip.headers[0]",
            "invalid type: sequence, expected an object",
        ),
        (
            r#"{"client_ip": {"headers": [{"from": ["10.0.0.1"]}]}}"#,
            "client_ip.headers[0]",
            "missing field `name`",
        ),
        (
            r#"{"credentials": null}"#,
            "credentials",
            "invalid type: null, expected a sequence",
        ),
        (
            r#"{"credentials": [{}]}"#,
            "credentials[0]",
            "must name exactly one of header, cookie, query, path_segment",
        ),
        (
            r#"{"credentials": [{"header": "a", "header": "b"}]}"#,
            "credentials[0]",
            "must name exactly one of",
        ),
        (
            r#"{"credentials": [{"cookie": "a;b"}]}"#,
            "credentials[0].cookie",
            "\"a;b\" is not a valid cookie name",
        ),
        (
            r#"{"credentials": [{"query": "a=b"}]}"#,
            "credentials[0].query",
            "\"a=b\" is not a valid query parameter name",
        ),
        (
            r#"{"cors": {}, "cors": {}}"#,
            "",
            "duplicate field `cors`",
        ),
        (
            r#"{"negative_cache": {"enabled": true, "enabled": false}}"#,
            "negative_cache",
            "duplicate field `enabled`",
        ),
        (
            r#"{"negative_cache": {"statuses": {"401": {"ttl_seconds": 5}, "401": {"ttl_seconds": 6}}}}"#,
            "negative_cache.statuses",
            "duplicate key `401`",
        ),
        (
            r#"{"negative_cache": {"statuses": {"0401": {"ttl_seconds": 5}}}}"#,
            "negative_cache.statuses.0401",
            "only statuses 400-499 can be cached",
        ),
        (
            r#"{"negative_cache": {"capacity": -1}}"#,
            "negative_cache.capacity",
            "invalid value: integer `-1`, expected a whole number",
        ),
        (
            r#"{"negative_cache": {"epoch": 4294967296}}"#,
            "negative_cache.epoch",
            "must be at most 4294967295, got 4294967296",
        ),
        (
            r#"{"rate_limit": {"max_failures": 1e3}}"#,
            "rate_limit.max_failures",
            "invalid type: floating point `1000.0`, expected a whole number",
        ),
        (
            r#"{"rate_limit": {"failure_statuses": [401, -401]}}"#,
            "rate_limit.failure_statuses[1]",
            "invalid value: integer `-401`, expected a whole number",
        ),
        (
            r#"{"rate_limit": {"enabled": 1}}"#,
            "rate_limit.enabled",
            "invalid type: integer `1`, expected a boolean",
        ),
        (
            r#"{"rate_limit": {"block_seconds": 600, "escalation": {"factor": 2, "max_block_seconds": 300}}}"#,
            "rate_limit.escalation.max_block_seconds",
            "must be at least block_seconds",
        ),
        (
            r#"{"hash_secret_env": ""}"#,
            "hash_secret_env",
            "must name an environment variable",
        ),
        (
            r#"{"rate_limit": {"cluster": {}}}"#,
            "rate_limit.cluster.rls_cluster",
            "is required",
        ),
        (
            r#"{"rate_limit": {"cluster": {"rls_cluster": "rls", "domian": "x"}}}"#,
            "rate_limit.cluster.domian",
            "unknown field `domian`",
        ),
        (
            r#"{"rate_limit": {"cluster": {"rls_cluster": "rate limit"}}}"#,
            "rate_limit.cluster.rls_cluster",
            "printable ASCII characters without spaces",
        ),
        (
            r#"{"rate_limit": {"cluster": {"rls_cluster": "rls", "domain": ""}}}"#,
            "rate_limit.cluster.domain",
            "1 to 255",
        ),
        (
            r#"{"rate_limit": {"cluster": {"rls_cluster": "rls", "timeout_ms": 0}}}"#,
            "rate_limit.cluster.timeout_ms",
            "between 1 and 10000",
        ),
        (
            r#"{"rate_limit": {"cluster": {"rls_cluster": "rls", "breaker": {"open_seconds": 3601}}}}"#,
            "rate_limit.cluster.breaker.open_seconds",
            "between 1 and 3600",
        ),
        (
            r#"{"rate_limit": {"cluster": {"rls_cluster": "rls", "breaker": {"consecutive_errors": 0}}}}"#,
            "rate_limit.cluster.breaker.consecutive_errors",
            "between 1 and 1000",
        ),
        (
            r#"{"rate_limit": {"enabled": false, "cluster": {"rls_cluster": "rls"}}}"#,
            "rate_limit.cluster",
            "needs rate_limit.enabled",
        ),
        ("{} x", "", "not valid JSON: trailing characters at line 1 column 4"),
        (r#"{"a\nb": 1}"#, "a\nb", "unknown field `a\nb`"),
        (
            r#"{"negative_cache": {"statuses": {"4\n1": {"ttl_seconds": 5}}}}"#,
            "negative_cache.statuses.4\n1",
            "only statuses 400-499",
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

#[test]
fn statuses_null_caches_nothing() {
    let config = parse(r#"{"negative_cache": {"statuses": null}}"#).unwrap();
    assert!(config.negative_cache.statuses.is_empty());
}

#[test]
fn escalation_left_out_is_capped_no_lower_than_the_block() {
    let config = parse(r#"{"rate_limit": {"block_seconds": 100000}}"#).unwrap();
    assert_eq!(
        config.rate_limit.escalation,
        Some(Escalation {
            factor: 2,
            max_block_ms: 100_000_000
        })
    );
    let off = parse(r#"{"rate_limit": {"escalation": null}}"#).unwrap();
    assert_eq!(off.rate_limit.escalation, None);
}

#[test]
fn cluster_mode_is_off_unless_given_and_fills_in_its_defaults() {
    assert_eq!(parse("{}").unwrap().rate_limit.cluster, None);
    assert_eq!(
        parse(r#"{"rate_limit": {"cluster": null}}"#)
            .unwrap()
            .rate_limit
            .cluster,
        None
    );
    let config = parse(r#"{"rate_limit": {"cluster": {"rls_cluster": "outbound|8081||limitador.kuadrant-system.svc.cluster.local"}}}"#)
        .unwrap();
    assert_eq!(
        config.rate_limit.cluster,
        Some(ClusterConfig {
            rls_cluster: "outbound|8081||limitador.kuadrant-system.svc.cluster.local".into(),
            domain: "negcache".into(),
            timeout_ms: 20,
            breaker: BreakerConfig {
                consecutive_errors: 5,
                open_ms: 10_000,
            },
        })
    );
}
