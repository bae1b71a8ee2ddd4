#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Configuration as Envoy sees it: `envoy --mode validate` runs the filter's `on_configure`, so
//! a bad configuration is refused before it is ever deployed, with one line naming the field.

mod common;

use common::{validate_plugin_config, Envoy, EnvoyOptions, Response, Upstream};
use serde_json::json;

#[test]
fn bad_configurations_are_refused_with_a_line_naming_the_field() {
    let cases = [
        (
            r#"{"negative_cache": {"capacity": 0}}"#,
            "negative_cache.capacity: must be between 1 and 1048576",
        ),
        (
            r#"{"negative_cache": {"statuses": {"200": {"ttl_seconds": 5}}}}"#,
            "negative_cache.statuses.200: only statuses 400-499",
        ),
        (
            r#"{"negative_cache": {"statuses": {"401": {"ttl_seconds": 0}}}}"#,
            "negative_cache.statuses.401.ttl_seconds: must be between 1 and 604800",
        ),
        (
            r#"{"negative_cache": {"max_body_bytes": 100000}}"#,
            "negative_cache.max_body_bytes: must be at most 65536",
        ),
        (
            r#"{"hash_secret": "too-short"}"#,
            "hash_secret: must be at least 16 bytes",
        ),
        (
            r#"{"credentials": [{"header": "bad header"}]}"#,
            "credentials[0].header: \"bad header\" is not a valid HTTP header name",
        ),
        (
            r#"{"negative_cache": {"enabeld": true}}"#,
            "negative_cache.enabeld: unknown field `enabeld`",
        ),
        (
            r#"{"negative_cache": {"capacity": "lots"}}"#,
            "negative_cache.capacity: invalid type: string \"lots\"",
        ),
        (
            r#"{"credentials": "#,
            "negcache: invalid configuration: not valid JSON: EOF while parsing a value",
        ),
    ];
    for (config, message) in cases {
        let (accepted, output) = validate_plugin_config(config);
        assert!(!accepted, "{config} was accepted:\n{output}");
        let line = output
            .lines()
            .find(|line| line.contains("negcache: invalid configuration"))
            .unwrap_or_else(|| panic!("no configuration error for {config}:\n{output}"));
        assert!(
            line.contains(message),
            "{config}: expected {message:?} in\n{line}"
        );
    }
}

#[test]
fn the_documented_configurations_are_accepted() {
    let documented = r#"{
      "credentials": [{"header": "authorization"}, {"header": "x-api-key"},
        {"cookie": "sessionid"}, {"query": "api_key"}, {"path_segment": 0}],
      "exempt_paths": ["/healthz"], "hash_secret": null, "hash_secret_env": null,
      "negative_cache": {"enabled": true, "shadow": false,
        "statuses": {"401": {"ttl_seconds": 60},
          "403": {"ttl_seconds": 10, "key": ["identity", "method", "path"]},
          "429": {"ttl_seconds": 10, "key": ["identity", "client_ip"]}},
        "inactive": {"header": "x-negcache-inactive", "ttl_seconds": 3600},
        "cache_anonymous": false, "capacity": 16384, "max_body_bytes": 2048, "epoch": 0}
    }"#;
    for config in ["{}", "", documented] {
        let (accepted, output) = validate_plugin_config(config);
        assert!(accepted, "{config:?} was refused:\n{output}");
    }
}

#[test]
fn envoy_refuses_to_start_with_a_bad_configuration() {
    let upstream = Upstream::always(Response::ok());
    let refused = Envoy::try_start(EnvoyOptions {
        plugin_config_raw: Some(r#"{"negative_cache": {"capacity": 2000000}}"#.to_string()),
        ..EnvoyOptions::new(upstream.port(), json!({}))
    });
    let log = refused.err().expect("Envoy must not start");
    assert!(
        log.contains("negcache: invalid configuration: negative_cache.capacity"),
        "{log}"
    );
}

#[test]
fn the_secret_can_come_from_the_vm_environment() {
    let upstream = Upstream::always(Response::new(401).json("{}"));
    let config = json!({"hash_secret_env": "NEGCACHE_SECRET"});
    let envoy = Envoy::start(EnvoyOptions {
        vm_env: vec![("NEGCACHE_SECRET".into(), "a-secret-of-enough-bytes".into())],
        ..EnvoyOptions::new(upstream.port(), config.clone())
    });
    envoy.miss_then_hit("/", &[("authorization", "Bearer x")]);
    assert!(!envoy.log().contains("a-secret-of-enough-bytes"));

    let missing = Envoy::try_start(EnvoyOptions::new(upstream.port(), config));
    let log = missing.err().expect("a missing secret variable is refused");
    assert!(
        log.contains("hash_secret_env: environment variable NEGCACHE_SECRET is not set"),
        "{log}"
    );
}

#[test]
fn debug_logs_name_credentials_by_fingerprint_only() {
    let upstream = Upstream::start(|req| {
        if req.path_only() == "/signup" {
            Response::ok().header("x-negcache-purge", "Bearer tok-purge-me")
        } else {
            Response::new(401).json("{}")
        }
    });
    let envoy = Envoy::start(EnvoyOptions {
        component_log_level: Some("wasm:debug".into()),
        ..EnvoyOptions::new(upstream.port(), json!({}))
    });
    for token in ["tok-alpha-123", "tok-purge-me"] {
        let auth = format!("Bearer {token}");
        envoy.get("/", &[("authorization", &auth)]);
        envoy.get("/", &[("authorization", &auth)]);
    }
    envoy.get("/signup", &[]);
    let log = envoy.wait_log_contains("negcache: purged");
    assert!(
        log.contains("negcache: stored 401 for "),
        "debug lines are on"
    );
    assert!(log.contains("negcache: hit 401 for "));
    for token in ["tok-alpha-123", "tok-purge-me"] {
        assert!(!log.contains(token), "{token} in the log");
    }
}
