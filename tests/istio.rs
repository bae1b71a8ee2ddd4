#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The Istio resources under envoy/istio/ are what Istio accepts and what the filter accepts.
//!
//! - Every `WasmPlugin` passes Istio's own CRD (`../shared/vendor/istio/wasmplugin-crd.yaml`,
//!   relative to the repository): its OpenAPI v3 schema, read as Kubernetes reads a structural
//!   schema (unknown fields refused, `nullable`, int-or-string), plus the rules the CRD states in
//!   CEL (`x-kubernetes-validations`), which are checked here by hand, each under its message.
//!   Broken plugins (Envoy's spelling `FAIL_CLOSED`, an unknown field, a prefixed digest, ...)
//!   are refused, so the check can fail. Without the CRD file these trials report themselves
//!   ignored, except under CI (`CI` set), where they fail.
//! - Its `pluginConfig` passes `envoy --mode validate` with the built filter, given to the VM as
//!   Istio gives it (JSON, `vmConfig.env` with `valueFrom: HOST` as `host_env_keys`), and is
//!   refused when the gateway lacks the secret's variable. tests/schema.rs checks it against
//!   schema/negcache.schema.json.
//!
//! libtest cannot decide at run time that a test is ignored, so this file is its own test
//! harness (`harness = false`, libtest-mimic).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::trials::{needing, plain, Needs};
use common::{envoy_bin, istio_documents, merge, write_plugin_bootstrap, TempDir};
use jsonschema::Validator;
use libtest_mimic::{Arguments, Trial};
use serde_json::{json, Map, Value};

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `$ISTIO_WASMPLUGIN_CRD`, else `../shared/vendor/istio/wasmplugin-crd.yaml` next to the
/// repository.
fn crd_path() -> PathBuf {
    std::env::var_os("ISTIO_WASMPLUGIN_CRD").map_or_else(
        || repository().join("../shared/vendor/istio/wasmplugin-crd.yaml"),
        PathBuf::from,
    )
}

fn wasm_plugins() -> Vec<(String, Value)> {
    let plugins: Vec<_> = istio_documents()
        .into_iter()
        .filter(|(_, document)| document["kind"] == "WasmPlugin")
        .collect();
    assert!(!plugins.is_empty(), "no WasmPlugin under envoy/istio/");
    plugins
}

// -- Istio's CRD as a JSON Schema -------------------------------------------------------------

/// The JSON Schema a resource of the CRD's served version must pass: its `openAPIV3Schema`,
/// made structural ([`structural`]), with the fields every Kubernetes object has.
fn crd_schema(crd: &Value) -> Value {
    let group = crd["spec"]["group"].as_str().unwrap();
    let kind = crd["spec"]["names"]["kind"].as_str().unwrap();
    let versions = crd["spec"]["versions"].as_array().unwrap();
    let served: Vec<&str> = versions
        .iter()
        .filter(|v| v["served"] == true)
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    let version = versions
        .iter()
        .find(|v| v["storage"] == true)
        .expect("a storage version");
    let mut schema = version["schema"]["openAPIV3Schema"].clone();
    structural(&mut schema);
    let api_versions: Vec<Value> = served
        .iter()
        .map(|v| json!(format!("{group}/{v}")))
        .collect();
    let properties = schema["properties"].as_object_mut().unwrap();
    properties.insert("apiVersion".into(), json!({"enum": api_versions}));
    properties.insert("kind".into(), json!({"const": kind}));
    // A name is a DNS subdomain; labels and annotations are free.
    properties.insert(
        "metadata".into(),
        json!({
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {
                    "type": "string",
                    "maxLength": 253,
                    "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
                },
                "namespace": {
                    "type": "string",
                    "maxLength": 63,
                    "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
                }
            }
        }),
    );
    schema["required"] = json!(["apiVersion", "kind", "metadata", "spec"]);
    schema
}

/// Reads an OpenAPI v3 schema node as the API server does: an object with `properties` and no
/// `x-kubernetes-preserve-unknown-fields` has no other fields (the server drops or, with strict
/// field validation, refuses them), `nullable` admits `null`, `format: int32` bounds an
/// integer; the `x-kubernetes-*` keys themselves are removed (int-or-string already comes with
/// its `anyOf`).
fn structural(node: &mut Value) {
    let Value::Object(map) = node else {
        if let Value::Array(items) = node {
            items.iter_mut().for_each(structural);
        }
        return;
    };
    let preserves = map.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    if map.contains_key("properties") && !preserves && !map.contains_key("additionalProperties") {
        map.insert("additionalProperties".into(), json!(false));
    }
    if map.remove("nullable") == Some(json!(true)) {
        if let Some(Value::String(kind)) = map.get("type").cloned() {
            map.insert("type".into(), json!([kind, "null"]));
        }
    }
    if map.get("format") == Some(&json!("int32")) {
        map.entry("minimum").or_insert(json!(i32::MIN));
        map.entry("maximum").or_insert(json!(i32::MAX));
    }
    map.retain(|key, _| !key.starts_with("x-kubernetes-"));
    for (key, value) in map.iter_mut() {
        // `properties` maps field names to schemas: recurse into the schemas, not the map.
        if key == "properties" {
            if let Value::Object(fields) = value {
                fields.values_mut().for_each(structural);
            }
        } else if key != "enum" && key != "required" {
            structural(value);
        }
    }
}

/// The messages of every CEL rule (`x-kubernetes-validations`) in the CRD.
fn cel_messages(node: &Value, found: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::Array(rules)) = map.get("x-kubernetes-validations") {
                for rule in rules {
                    found.push(rule["message"].as_str().unwrap().to_string());
                }
            }
            map.values().for_each(|v| cel_messages(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| cel_messages(v, found)),
        _ => {}
    }
}

const LABEL_VALUE_WILDCARD: &str = "wildcard not allowed in label value match";
const LABEL_KEY_WILDCARD: &str = "wildcard not allowed in label key match";
const LABEL_KEY_EMPTY: &str = "key must not be empty";
const CROSS_NAMESPACE: &str = "cross namespace referencing is not currently supported";
const URL_SCHEME: &str = "url must have schema one of [http, https, file, oci]";
const VALUE_WITH_HOST: &str = "value may only be set when valueFrom is INLINE";
const ONE_TARGET: &str = "only one of targetRefs or selector can be set";

/// The CRD's CEL rules, written out: the messages of those `plugin` breaks.
fn cel_errors(plugin: &Value) -> Vec<&'static str> {
    let spec = &plugin["spec"];
    let mut errors = Vec::new();
    if let Some(labels) = spec["selector"]["matchLabels"].as_object() {
        if labels
            .values()
            .any(|v| v.as_str().is_some_and(|v| v.contains('*')))
        {
            errors.push(LABEL_VALUE_WILDCARD);
        }
        if labels.keys().any(|k| k.contains('*')) {
            errors.push(LABEL_KEY_WILDCARD);
        }
        if labels.keys().any(String::is_empty) {
            errors.push(LABEL_KEY_EMPTY);
        }
    }
    let refs = spec["targetRefs"].as_array().cloned().unwrap_or_default();
    if refs
        .iter()
        .chain(std::iter::once(&spec["targetRef"]))
        .any(|r| r["namespace"].as_str().is_some_and(|n| !n.is_empty()))
    {
        errors.push(CROSS_NAMESPACE);
    }
    // `isURL(self) ? scheme in [...] : http://self`: a URL with a scheme must use one of these;
    // anything else is read as a host and path over HTTP.
    if let Some((scheme, _)) = spec["url"].as_str().and_then(|url| url.split_once("://")) {
        if !["http", "https", "oci", "file"].contains(&scheme) {
            errors.push(URL_SCHEME);
        }
    }
    let env = spec["vmConfig"]["env"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if env
        .iter()
        .any(|e| e["valueFrom"] == "HOST" && e.get("value").is_some())
    {
        errors.push(VALUE_WITH_HOST);
    }
    let targets = ["selector", "targetRef", "targetRefs"]
        .iter()
        .filter(|field| spec.get(**field).is_some())
        .count();
    if targets > 1 {
        errors.push(ONE_TARGET);
    }
    errors
}

struct Crd {
    validator: Validator,
    cel_messages: Vec<String>,
}

impl Crd {
    fn load(path: &Path) -> Crd {
        let text = fs::read_to_string(path).unwrap();
        let crd: Value = serde_norway::from_str(&text).unwrap();
        assert_eq!(crd["kind"], "CustomResourceDefinition");
        assert_eq!(crd["spec"]["names"]["kind"], "WasmPlugin");
        let schema = crd_schema(&crd);
        let validator = jsonschema::validator_for(&schema)
            .unwrap_or_else(|e| panic!("the CRD's schema, made structural: {e}"));
        let mut messages = Vec::new();
        cel_messages(&crd, &mut messages);
        Crd {
            validator,
            cel_messages: messages,
        }
    }

    /// What Istio's CRD refuses in `plugin`, one complaint a line; empty when it passes.
    fn errors(&self, plugin: &Value) -> String {
        self.validator
            .iter_errors(plugin)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .chain(cel_errors(plugin).into_iter().map(str::to_string))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn every_wasm_plugin_passes_istios_crd(crd: &Crd) {
    for (name, plugin) in wasm_plugins() {
        let errors = crd.errors(&plugin);
        assert!(errors.is_empty(), "{name} fails Istio's CRD:\n{errors}");
    }
}

fn broken_wasm_plugins_are_refused_by_istios_crd(crd: &Crd) {
    let (_, shipped) = wasm_plugins().remove(0);
    let digest = "0123456789abcdef".repeat(4);
    let cases = [
        // Envoy's spelling of Istio's FAIL_CLOSE.
        (
            json!({"spec": {"failStrategy": "FAIL_CLOSED"}}),
            "/spec/failStrategy",
        ),
        (
            json!({"spec": {"failurePolicy": "FAIL_OPEN"}}),
            "failurePolicy",
        ),
        (json!({"spec": {"phase": "AUTHENTICATION"}}), "/spec/phase"),
        (
            json!({"spec": {"url": null}}),
            "\"url\" is a required property",
        ),
        (
            json!({"spec": {"url": "ftp://registry.example.com/negcache"}}),
            URL_SCHEME,
        ),
        (
            json!({"spec": {"sha256": format!("sha256:{digest}")}}),
            "/spec/sha256",
        ),
        (
            json!({"spec": {"sha256": digest.to_uppercase()}}),
            "/spec/sha256",
        ),
        (json!({"spec": {"priority": "high"}}), "/spec/priority"),
        (
            json!({"spec": {"priority": 4_294_967_296_u64}}),
            "/spec/priority",
        ),
        (
            json!({"spec": {"pluginConfig": "{}"}}),
            "/spec/pluginConfig",
        ),
        (
            json!({"spec": {"imagePullPolicy": "IfNotPresnt"}}),
            "/spec/imagePullPolicy",
        ),
        (
            json!({"spec": {"vmConfig": {"env": [{"name": "NEGCACHE_SECRET", "valueFrom": "SECRET"}]}}}),
            "/spec/vmConfig/env/0/valueFrom",
        ),
        (
            json!({"spec": {"vmConfig": {"env": [{"name": "NEGCACHE_SECRET", "valueFrom": "HOST", "value": "x"}]}}}),
            VALUE_WITH_HOST,
        ),
        (
            json!({"spec": {"selector": {"matchLabels": {"istio": "ingress*"}}}}),
            LABEL_VALUE_WILDCARD,
        ),
        (
            json!({"spec": {"targetRefs": [{"kind": "Gateway", "name": "public"}]}}),
            ONE_TARGET,
        ),
        (json!({"metadata": {"name": "NegCache"}}), "/metadata/name"),
        (
            json!({"apiVersion": "extensions.istio.io/v1"}),
            "/apiVersion",
        ),
        (json!({"kind": "WasmPlugins"}), "/kind"),
    ];
    for (patch, expected) in cases {
        let mut plugin = shipped.clone();
        merge(&mut plugin, patch.clone());
        let errors = crd.errors(&plugin);
        assert!(
            errors.contains(expected),
            "{patch} should be refused with {expected:?}, got:\n{errors}"
        );
    }
    // The same patches that break nothing pass, so the refusals above are about the fields.
    let mut fine = shipped.clone();
    merge(
        &mut fine,
        json!({"spec": {"failStrategy": "FAIL_RELOAD", "sha256": digest, "priority": 10,
            "url": "file:///var/local/negcache.wasm"}}),
    );
    let errors = crd.errors(&fine);
    assert!(errors.is_empty(), "{errors}");
}

fn the_test_checks_every_rule_the_crd_states_in_cel(crd: &Crd) {
    let checked = [
        LABEL_VALUE_WILDCARD,
        LABEL_KEY_WILDCARD,
        LABEL_KEY_EMPTY,
        CROSS_NAMESPACE,
        URL_SCHEME,
        VALUE_WITH_HOST,
        ONE_TARGET,
    ];
    for message in &crd.cel_messages {
        assert!(
            checked.contains(&message.as_str()),
            "the CRD has a CEL rule this test does not check: {message:?}"
        );
    }
    for message in checked {
        assert!(
            crd.cel_messages.iter().any(|m| m == message),
            "the CRD no longer states {message:?}"
        );
    }
}

// -- the plugin configuration in a real Envoy --------------------------------------------------

const TEST_SECRET: &str = "a-gateway-secret-of-32-bytes-...";

/// `envoy --mode validate` on a bootstrap whose negcache filter gets `plugin`'s pluginConfig as
/// Istio passes it (JSON text) and its `vmConfig.env` as Istio maps it (`HOST`: the variable
/// read from Envoy's own environment, `host_env_keys`; otherwise the inline value), Envoy's
/// environment holding `secret` under each HOST name. (accepted, Envoy's output).
fn validate_as_istio_would(plugin: &Value, secret: Option<&str>) -> (bool, String) {
    let spec = &plugin["spec"];
    let dir = TempDir::new("negcache-istio");
    let path = write_plugin_bootstrap(dir.path(), &spec["pluginConfig"].to_string());
    let mut bootstrap: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let mut host_keys = Vec::new();
    let mut key_values = Map::new();
    for variable in spec["vmConfig"]["env"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let name = variable["name"].as_str().unwrap().to_string();
        if variable["valueFrom"] == "HOST" {
            host_keys.push(json!(name));
        } else {
            key_values.insert(name, variable["value"].clone());
        }
    }
    let filter = &mut bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
        [0]["typed_config"]["http_filters"][0];
    assert_eq!(filter["typed_config"]["config"]["root_id"], "negcache");
    filter["typed_config"]["config"]["vm_config"]["environment_variables"] =
        json!({"host_env_keys": host_keys, "key_values": key_values});
    fs::write(&path, serde_json::to_string_pretty(&bootstrap).unwrap()).unwrap();

    let mut command = Command::new(envoy_bin());
    command
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .args(["--disable-hot-restart", "--log-level", "info"])
        .current_dir(dir.path())
        .stdin(Stdio::null());
    for key in &host_keys {
        let key = key.as_str().unwrap();
        match secret {
            Some(secret) => command.env(key, secret),
            None => command.env_remove(key),
        };
    }
    let output = command.output().expect("run envoy --mode validate");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn the_plugin_configuration_is_accepted_by_the_filter_in_envoy() {
    for (name, plugin) in wasm_plugins() {
        let (accepted, output) = validate_as_istio_would(&plugin, Some(TEST_SECRET));
        assert!(
            accepted,
            "{name}: Envoy refuses its pluginConfig:\n{output}"
        );
        assert!(
            !output.contains("negcache: invalid configuration"),
            "{output}"
        );
    }
}

fn a_gateway_without_the_secret_refuses_the_plugin() {
    for (name, plugin) in wasm_plugins() {
        let Some(variable) = plugin["spec"]["pluginConfig"]["hash_secret_env"].as_str() else {
            continue;
        };
        let (accepted, output) = validate_as_istio_would(&plugin, None);
        assert!(!accepted, "{name}: accepted without {variable}:\n{output}");
        assert!(
            output.contains(&format!(
                "negcache: invalid configuration: hash_secret_env: environment variable {variable} is not set"
            )),
            "{name}: no line naming {variable}:\n{output}"
        );
        let (accepted, output) = validate_as_istio_would(&plugin, Some("too-short"));
        assert!(!accepted, "{name}: accepted a 9-byte secret:\n{output}");
        assert!(output.contains("must hold at least 16 bytes"), "{output}");
    }
}

/// `make dist` tags the image with the crate's version: the shipped plugin pulls that one.
fn the_wasm_plugin_pulls_the_image_of_this_version() {
    for (name, plugin) in wasm_plugins() {
        let url = plugin["spec"]["url"].as_str().unwrap();
        let tag = url
            .strip_prefix("oci://")
            .and_then(|image| image.rsplit_once(':'))
            .map(|(_, tag)| tag)
            .unwrap_or_else(|| panic!("{name}: {url} is not an oci:// image with a tag"));
        assert_eq!(tag, env!("CARGO_PKG_VERSION"), "{name}: {url}");
    }
}

fn every_istio_manifest_is_a_kind_it_documents() {
    let documents = istio_documents();
    assert!(!documents.is_empty());
    for (name, document) in documents {
        let kind = (
            document["apiVersion"].as_str().unwrap_or_default(),
            document["kind"].as_str().unwrap_or_default(),
        );
        assert!(
            matches!(
                kind,
                ("extensions.istio.io/v1alpha1", "WasmPlugin")
                    | ("networking.istio.io/v1", "ServiceEntry")
            ),
            "{name}: unexpected {kind:?}"
        );
        assert!(document["metadata"]["name"].is_string(), "{name}");
    }
}

fn main() {
    let args = Arguments::from_args();
    let crd_file = crd_path();
    let crd: Needs<PathBuf> = if crd_file.is_file() {
        Ok(crd_file)
    } else {
        Err(format!("no Istio CRD at {}", crd_file.display()))
    };
    type CrdTest = fn(&Crd);
    let crd_tests: [(&str, CrdTest); 3] = [
        (
            "every_wasm_plugin_passes_istios_crd",
            every_wasm_plugin_passes_istios_crd,
        ),
        (
            "broken_wasm_plugins_are_refused_by_istios_crd",
            broken_wasm_plugins_are_refused_by_istios_crd,
        ),
        (
            "the_test_checks_every_rule_the_crd_states_in_cel",
            the_test_checks_every_rule_the_crd_states_in_cel,
        ),
    ];
    let mut trials: Vec<Trial> = crd_tests
        .into_iter()
        .map(|(name, body)| needing(name, &crd, move |file: PathBuf| body(&Crd::load(&file))))
        .collect();
    let plain_tests: [(&str, fn()); 4] = [
        (
            "the_plugin_configuration_is_accepted_by_the_filter_in_envoy",
            the_plugin_configuration_is_accepted_by_the_filter_in_envoy,
        ),
        (
            "a_gateway_without_the_secret_refuses_the_plugin",
            a_gateway_without_the_secret_refuses_the_plugin,
        ),
        (
            "the_wasm_plugin_pulls_the_image_of_this_version",
            the_wasm_plugin_pulls_the_image_of_this_version,
        ),
        (
            "every_istio_manifest_is_a_kind_it_documents",
            every_istio_manifest_is_a_kind_it_documents,
        ),
    ];
    trials.extend(
        plain_tests
            .into_iter()
            .map(|(name, body)| plain(name, body)),
    );
    libtest_mimic::run(&args, trials).exit();
}
