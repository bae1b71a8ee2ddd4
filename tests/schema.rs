#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The committed JSON Schema (schema/negcache.schema.json) is the one the configuration types
//! generate, and it agrees with the filter (`Config::parse`): every configuration the repository
//! ships passes both, and values at and just past each bound are judged alike by both.
//! Rules that span fields (a secret given twice, `*` with credentials, the escalation cap
//! below `block_seconds`) and the syntax of addresses and origins are the filter's alone.

mod common;

use std::fs;
use std::path::PathBuf;

use common::istio_documents;
use jsonschema::Validator;
use negcache::config::{schema_json, Config};
use serde_json::{json, Value};

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn committed_schema() -> Value {
    let path = repository().join("schema/negcache.schema.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn validator() -> Validator {
    jsonschema::validator_for(&committed_schema()).expect("the committed schema is a JSON Schema")
}

/// The schema's complaints about `config`, one per line; empty when it is valid.
fn schema_errors(validator: &Validator, config: &Value) -> String {
    validator
        .iter_errors(config)
        .map(|error| format!("{}: {error}", error.instance_path()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_committed_schema_is_the_generated_one() {
    let generated: Value = serde_json::from_str(&schema_json()).unwrap();
    assert!(
        generated == committed_schema(),
        "schema/negcache.schema.json is stale: run `make schema`"
    );
}

/// The text of the section under `heading` in README.md, up to the next heading of its level.
fn readme_section(heading: &str) -> String {
    let readme = fs::read_to_string(repository().join("README.md")).unwrap();
    let level = heading.split(' ').next().unwrap();
    let start = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README.md has no `{heading}`"));
    let body = &readme[start + heading.len() + 2..];
    let end = body
        .lines()
        .scan(0, |offset, line| {
            let at = *offset;
            *offset += line.len() + 1;
            Some((at, line))
        })
        .find(|(_, line)| {
            line.split(' ').next().is_some_and(|marks| {
                marks.len() <= level.len() && !marks.is_empty() && marks.chars().all(|c| c == '#')
            })
        })
        .map_or(body.len(), |(at, _)| at);
    body[..end].to_string()
}

/// The first fenced block of `language` in `text`.
fn fenced_block(text: &str, language: &str) -> String {
    fenced_blocks(text, language)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no ```{language} block"))
}

/// Every fenced block of `language` in `text`, in order.
fn fenced_blocks(text: &str, language: &str) -> Vec<String> {
    let open = format!("```{language}\n");
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(&open) {
        let start = at + open.len();
        let end = rest[start..].find("\n```").expect("an unclosed block") + start;
        blocks.push(rest[start..=end].to_string());
        rest = &rest[end..];
    }
    blocks
}

/// The negcache plugin configurations in an Envoy bootstrap: the `configuration.value` of
/// every Wasm filter whose `root_id` is `negcache`.
fn envoy_plugin_configs(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if map.get("root_id") == Some(&json!("negcache")) {
                let text = map
                    .get("configuration")
                    .and_then(|c| c.get("value"))
                    .and_then(Value::as_str)
                    .expect("a negcache filter with configuration.value");
                found.push(text.to_string());
            }
            map.values().for_each(|v| envoy_plugin_configs(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| envoy_plugin_configs(v, found)),
        _ => {}
    }
}

/// Every plugin configuration the repository ships, with where it comes from.
fn shipped_configs() -> Vec<(String, Value)> {
    let mut configs = Vec::new();
    let mut envoy_files: Vec<PathBuf> = fs::read_dir(repository().join("envoy"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    envoy_files.sort();
    for path in envoy_files {
        let text = fs::read_to_string(&path).unwrap();
        let mut found = Vec::new();
        for document in serde_norway::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            envoy_plugin_configs(&value, &mut found);
        }
        for (index, json) in found.into_iter().enumerate() {
            let config = serde_json::from_str(&json)
                .unwrap_or_else(|e| panic!("{} #{index}: {e}", path.display()));
            configs.push((format!("{} #{index}", path.display()), config));
        }
    }
    assert!(
        configs
            .iter()
            .any(|(name, _)| name.ends_with("envoy.yaml #0")),
        "no negcache configuration found in envoy/envoy.yaml"
    );

    let configuration = fenced_block(&readme_section("## Configuration"), "json");
    configs.push((
        "README.md, Configuration".to_string(),
        serde_json::from_str(&configuration).unwrap(),
    ));

    // The Istio WasmPlugins, and the README's per-environment patches of one (each a
    // configuration of its own: every field is optional).
    let mut plugins = istio_documents();
    let istio_section = readme_section("### Istio");
    for (index, block) in fenced_blocks(&istio_section, "yaml")
        .into_iter()
        .enumerate()
    {
        let value: Value = serde_norway::from_str(&block).unwrap();
        plugins.push((format!("README.md, Istio, yaml block {index}"), value));
    }
    let before = configs.len();
    for (name, document) in plugins {
        if document["kind"] == "WasmPlugin" {
            let plugin_config = document
                .pointer("/spec/pluginConfig")
                .unwrap_or_else(|| panic!("{name}: a WasmPlugin without spec.pluginConfig"))
                .clone();
            configs.push((format!("{name}, WasmPlugin pluginConfig"), plugin_config));
        }
    }
    assert!(
        configs[before..]
            .iter()
            .any(|(name, _)| name.contains("envoy/istio/wasmplugin.yaml #0")),
        "no WasmPlugin found in envoy/istio/wasmplugin.yaml"
    );
    configs
}

#[test]
fn every_shipped_configuration_passes_the_schema_and_the_filter() {
    let validator = validator();
    let configs = shipped_configs();
    for (name, config) in &configs {
        let errors = schema_errors(&validator, config);
        assert!(errors.is_empty(), "{name} fails the schema:\n{errors}");
        let text = serde_json::to_vec(config).unwrap();
        if let Err(error) = Config::parse(&text) {
            panic!("{name} is refused by the filter: {error}");
        }
    }
    // The full configuration in README.md spells out every field: the schema knows them all.
    let (_, documented) = configs
        .iter()
        .find(|(name, _)| name == "README.md, Configuration")
        .unwrap();
    let schema = committed_schema();
    for (section, fields) in documented.as_object().unwrap() {
        assert!(schema["properties"].get(section).is_some(), "{section}");
        if let Some(fields) = fields.as_object() {
            let definition = schema["properties"][section]["$ref"]
                .as_str()
                .and_then(|pointer| schema.pointer(pointer.trim_start_matches('#')))
                .unwrap_or_else(|| panic!("{section} has no definition"));
            for field in fields.keys() {
                assert!(
                    definition["properties"].get(field).is_some(),
                    "{section}.{field} is not in the schema"
                );
            }
        }
    }
}

/// Values at and just past each bound, accepted (`true`) or refused by both.
#[test]
fn the_schema_and_the_filter_agree_on_bounds_names_and_shapes() {
    let cases = [
        (json!({}), true),
        (json!({"bogus": 1}), false),
        (json!({"negative_cache": {"capacity": 1}}), true),
        (json!({"negative_cache": {"capacity": 1_048_576}}), true),
        (json!({"negative_cache": {"capacity": 0}}), false),
        (json!({"negative_cache": {"capacity": 1_048_577}}), false),
        (json!({"negative_cache": {"capacity": -1}}), false),
        (json!({"negative_cache": {"capacity": 1.5}}), false),
        (json!({"negative_cache": {"capacity": "big"}}), false),
        (json!({"negative_cache": {"max_body_bytes": 65_536}}), true),
        (json!({"negative_cache": {"max_body_bytes": 65_537}}), false),
        (
            json!({"negative_cache": {"epoch": 4_294_967_295_u64}}),
            true,
        ),
        (
            json!({"negative_cache": {"epoch": 4_294_967_296_u64}}),
            false,
        ),
        (json!({"negative_cache": {"enabeld": true}}), false),
        (json!({"negative_cache": null}), false),
        (json!({"negative_cache": []}), false),
        (json!({"negative_cache": {"statuses": null}}), true),
        (
            json!({"negative_cache": {"statuses": {"400": {"ttl_seconds": 1}}}}),
            true,
        ),
        (
            json!({"negative_cache": {"statuses": {"499": {"ttl_seconds": 604_800}}}}),
            true,
        ),
        (
            json!({"negative_cache": {"statuses": {"401": {"ttl_seconds": 0}}}}),
            false,
        ),
        (
            json!({"negative_cache": {"statuses": {"401": {"ttl_seconds": 604_801}}}}),
            false,
        ),
        (json!({"negative_cache": {"statuses": {"401": {}}}}), false),
        (
            json!({"negative_cache": {"statuses": {"399": {"ttl_seconds": 5}}}}),
            false,
        ),
        (
            json!({"negative_cache": {"statuses": {"500": {"ttl_seconds": 5}}}}),
            false,
        ),
        (
            json!({"negative_cache": {"statuses": {"0401": {"ttl_seconds": 5}}}}),
            false,
        ),
        (
            json!({"negative_cache": {"statuses": {"abc": {"ttl_seconds": 5}}}}),
            false,
        ),
        (
            json!({"negative_cache": {"statuses": {"401": {"ttl_seconds": 5, "key": ["client_ip", "identity"]}}}}),
            true,
        ),
        (
            json!({"negative_cache": {"statuses": {"401": {"ttl_seconds": 5, "key": ["path"]}}}}),
            false,
        ),
        (
            json!({"negative_cache": {"statuses": {"401": {"ttl_seconds": 5, "key": ["identity", "host"]}}}}),
            false,
        ),
        (json!({"negative_cache": {"inactive": null}}), true),
        (
            json!({"negative_cache": {"inactive": {"header": "x:y"}}}),
            false,
        ),
        (
            json!({"negative_cache": {"inactive": {"ttl_seconds": 0}}}),
            false,
        ),
        (
            json!({"credentials": [{"header": "X-Token"}, {"cookie": "sid"}]}),
            true,
        ),
        (
            json!({"credentials": [{"query": "key"}, {"path_segment": 64}]}),
            true,
        ),
        (json!({"credentials": [{"path_segment": 65}]}), false),
        (json!({"credentials": [{"header": "bad header"}]}), false),
        (json!({"credentials": [{"header": ""}]}), false),
        (json!({"credentials": [{"cookie": "a;b"}]}), false),
        (json!({"credentials": [{"query": "a=b"}]}), false),
        (
            json!({"credentials": [{"header": "a", "cookie": "b"}]}),
            false,
        ),
        (json!({"credentials": [{}]}), false),
        (json!({"credentials": [{"smoke_signal": "x"}]}), false),
        (json!({"credentials": null}), false),
        (json!({"exempt_paths": ["/healthz"]}), true),
        (json!({"exempt_paths": ["healthz"]}), false),
        (json!({"exempt_paths": ["/a?b"]}), false),
        (json!({"hash_secret": "0123456789abcdef"}), true),
        (json!({"hash_secret": "0123456789abcde"}), false),
        (json!({"hash_secret": null, "hash_secret_env": null}), true),
        (json!({"hash_secret_env": ""}), false),
        (json!({"client_ip": {"ipv6_prefix": 1}}), true),
        (json!({"client_ip": {"ipv6_prefix": 128}}), true),
        (json!({"client_ip": {"ipv6_prefix": 0}}), false),
        (json!({"client_ip": {"ipv6_prefix": 129}}), false),
        (
            json!({"client_ip": {"headers": [{"name": "x-real-ip"}]}}),
            true,
        ),
        (json!({"client_ip": {"headers": [{}]}}), false),
        (json!({"client_ip": {"headers": [{"name": "a b"}]}}), false),
        (
            json!({"rate_limit": {"failure_statuses": [400, 499]}}),
            true,
        ),
        (json!({"rate_limit": {"failure_statuses": [399]}}), false),
        (json!({"rate_limit": {"failure_statuses": [500]}}), false),
        (json!({"rate_limit": {"max_failures": 1_000_000}}), true),
        (json!({"rate_limit": {"max_failures": 1_000_001}}), false),
        (json!({"rate_limit": {"window_seconds": 0}}), false),
        (json!({"rate_limit": {"block_seconds": 604_801}}), false),
        (json!({"rate_limit": {"capacity": 0}}), false),
        (json!({"rate_limit": {"escalation": null}}), true),
        (json!({"rate_limit": {"escalation": {"factor": 1}}}), true),
        (
            json!({"rate_limit": {"escalation": {"factor": 1000}}}),
            true,
        ),
        (json!({"rate_limit": {"escalation": {"factor": 0}}}), false),
        (
            json!({"rate_limit": {"escalation": {"factor": 1001}}}),
            false,
        ),
        (json!({"rate_limit": {"enabled": 1}}), false),
        (json!({"rate_limit": {"cluster": null}}), true),
        (json!({"rate_limit": {"cluster": {}}}), false),
        (
            json!({"rate_limit": {"cluster": {"rls_cluster": "rls"}}}),
            true,
        ),
        (
            json!({"rate_limit": {"cluster": {"rls_cluster": "outbound|8081||limitador.kuadrant-system.svc.cluster.local"}}}),
            true,
        ),
        (
            json!({"rate_limit": {"cluster": {"rls_cluster": "a b"}}}),
            false,
        ),
        (
            json!({"rate_limit": {"cluster": {"rls_cluster": ""}}}),
            false,
        ),
        (
            json!({"rate_limit": {"cluster": {"rls_cluster": "r", "domain": "x".repeat(256)}}}),
            false,
        ),
        (
            json!({"rate_limit": {"cluster": {"rls_cluster": "r", "timeout_ms": 10_000}}}),
            true,
        ),
        (
            json!({"rate_limit": {"cluster": {"rls_cluster": "r", "timeout_ms": 10_001}}}),
            false,
        ),
        (
            json!({"rate_limit": {"cluster": {"rls_cluster": "r", "breaker": {"open_seconds": 0}}}}),
            false,
        ),
        (
            json!({"rate_limit": {"cluster": {"rls_cluster": "r", "breaker": {"consecutive_errors": 1000}}}}),
            true,
        ),
        (
            json!({"rate_limit": {"cluster": {"rls_cluster": "r", "breaker": {"consecutive_errors": 1001}}}}),
            false,
        ),
        (
            json!({"rate_limit": {"cluster": {"rls_cluster": "r", "retries": 1}}}),
            false,
        ),
        (json!({"cors": {"expose_headers": ["retry-after"]}}), true),
        (json!({"cors": {"expose_headers": ["retry after"]}}), false),
        (json!({"cors": {"allow_credentials": "yes"}}), false),
    ];
    let validator = validator();
    for (config, accepted) in cases {
        let errors = schema_errors(&validator, &config);
        let parsed = Config::parse(config.to_string().as_bytes());
        assert_eq!(errors.is_empty(), accepted, "schema on {config}: {errors}");
        assert_eq!(parsed.is_ok(), accepted, "filter on {config}: {parsed:?}");
    }
}
