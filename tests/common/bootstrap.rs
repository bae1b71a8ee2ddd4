//! What Envoy is started with: [`EnvoyOptions`], and the bootstrap and LDS files built from
//! them as JSON values (Envoy reads a file not named `.yaml` as JSON).

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::access_log;

const WASM_FILTER: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";
const CORS_FILTER: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors";
const CORS_POLICY: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy";

/// `PluginConfig.failure_policy`: what Envoy does when the wasm VM fails.
#[allow(clippy::enum_variant_names)] // Envoy's names
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Requests get 503: a crashing VM shows up in tests. Test default.
    FailClosed,
    /// Requests bypass the filter (the shipped config's choice).
    FailOpen,
    /// The VM is reloaded.
    FailReload,
}

impl FailurePolicy {
    fn envoy_name(self) -> &'static str {
        match self {
            FailurePolicy::FailClosed => "FAIL_CLOSED",
            FailurePolicy::FailOpen => "FAIL_OPEN",
            FailurePolicy::FailReload => "FAIL_RELOAD",
        }
    }
}

/// How to run Envoy. Start from [`EnvoyOptions::new`] /
/// [`EnvoyOptions::without_filter`] and override fields with `..`.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    /// The filter's configuration, given to it as a JSON string.
    pub plugin_config: Value,
    /// If set, given to the filter verbatim instead of `plugin_config`
    /// (e.g. malformed JSON).
    pub plugin_config_raw: Option<String>,
    /// The upstream cluster: 127.0.0.1:<upstream_port>.
    pub upstream_port: u16,
    /// False: no wasm filter at all (control runs).
    pub with_filter: bool,
    /// HCM `use_remote_address`; false = client address from X-Forwarded-For.
    pub use_remote_address: bool,
    /// HCM `skip_xff_append`: Envoy does not append to X-Forwarded-For (for a loopback peer it
    /// would append its own host address), so a test's chain reaches the filter as written.
    pub skip_xff_append: bool,
    /// Merged ([`merge`]) into the one virtual host, e.g. a `typed_per_filter_config` with
    /// Envoy's CORS policy.
    pub virtual_host_extra: Value,
    pub failure_policy: FailurePolicy,
    /// `vm_config.environment_variables.key_values`.
    pub vm_env: Vec<(String, String)>,
    /// HTTP filters placed in `http_filters` before the wasm filter.
    pub extra_http_filters: Vec<Value>,
    /// Clusters added to `static_resources.clusters`.
    pub extra_clusters: Vec<Value>,
    /// `--component-log-level`, e.g. `"wasm:debug"`.
    pub component_log_level: Option<String>,
    /// `--concurrency` (worker threads).
    pub concurrency: u32,
    /// Serve the listener through LDS from a file in the Envoy's temp dir
    /// instead of `static_resources`, so that `Envoy::reconfigure` can
    /// change the filter's configuration while Envoy runs (same VM, same
    /// shared data). Also sets `--drain-time-s 1`.
    pub dynamic_listener: bool,
    /// Load this wasm file instead of negcache's (`NEGCACHE_WASM`), e.g. a benchmark floor
    /// filter. Same filter name, `root_id` and `vm_id`.
    pub wasm: Option<PathBuf>,
    /// Envoy answers every request itself with this status and body (the route's
    /// `direct_response`) instead of routing to the upstream.
    pub direct_response: Option<(u16, String)>,
    /// The JSON access log (default on); off for benchmarks, where writing it would be a
    /// large part of the per-request cost.
    pub access_log: bool,
    /// Merged ([`merge`]) into the listener, e.g.
    /// `json!({"connection_balance_config": {"exact_balance": {}}})`.
    pub listener_extra: Value,
    /// Merged ([`merge`]) into the HTTP connection manager, e.g.
    /// `json!({"max_request_headers_kb": 96})`.
    pub connection_manager_extra: Value,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        EnvoyOptions {
            plugin_config: json!({}),
            plugin_config_raw: None,
            upstream_port: 0,
            with_filter: true,
            use_remote_address: true,
            skip_xff_append: false,
            virtual_host_extra: json!({}),
            failure_policy: FailurePolicy::FailClosed,
            vm_env: Vec::new(),
            extra_http_filters: Vec::new(),
            extra_clusters: Vec::new(),
            component_log_level: None,
            concurrency: 2,
            dynamic_listener: false,
            wasm: None,
            direct_response: None,
            access_log: true,
            listener_extra: json!({}),
            connection_manager_extra: json!({}),
        }
    }
}

impl EnvoyOptions {
    /// The filter with `plugin_config`, in front of the upstream.
    pub fn new(upstream_port: u16, plugin_config: Value) -> EnvoyOptions {
        EnvoyOptions {
            plugin_config,
            upstream_port,
            ..EnvoyOptions::default()
        }
    }

    /// Plain Envoy, no wasm filter.
    pub fn without_filter(upstream_port: u16) -> EnvoyOptions {
        EnvoyOptions {
            upstream_port,
            with_filter: false,
            ..EnvoyOptions::default()
        }
    }

    /// Envoy's own CORS filter in front of negcache, allowing `origin` (GET and POST with
    /// `authorization`, exposing `retry-after` and `x-negcache`): the second CORS set-up the
    /// README describes.
    pub fn with_envoy_cors(mut self, origin: &str) -> EnvoyOptions {
        self.extra_http_filters.push(json!({
            "name": "envoy.filters.http.cors",
            "typed_config": {"@type": CORS_FILTER}
        }));
        merge(
            &mut self.virtual_host_extra,
            json!({"typed_per_filter_config": {"envoy.filters.http.cors": {
                "@type": CORS_POLICY,
                "allow_origin_string_match": [{"exact": origin}],
                "allow_methods": "GET, POST",
                "allow_headers": "authorization",
                "expose_headers": "retry-after, x-negcache"
            }}}),
        );
        self
    }

    /// What the filter is given as its configuration.
    pub fn plugin_json(&self) -> String {
        self.plugin_config_raw
            .clone()
            .unwrap_or_else(|| self.plugin_config.to_string())
    }
}

/// Merges `patch` into `target` as a JSON merge patch (RFC 7386): objects member by member,
/// recursively; `null` removes a member; anything else replaces what was there.
pub fn merge(target: &mut Value, patch: Value) {
    let Value::Object(patch) = patch else {
        *target = patch;
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(&key);
            } else {
                merge(target.entry(key).or_insert(Value::Null), value);
            }
        }
    }
}

/// The file holding the listener (an LDS `DiscoveryResponse`) when
/// [`EnvoyOptions::dynamic_listener`] is set, in the Envoy's own dir.
pub fn lds_path(dir: &Path) -> PathBuf {
    dir.join("listeners.json")
}

fn wasm_filter(opts: &EnvoyOptions, wasm: &Path) -> Value {
    let mut vm_config = json!({
        "vm_id": "negcache",
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": wasm.to_string_lossy()}}
    });
    if !opts.vm_env.is_empty() {
        let key_values: Map<String, Value> = opts
            .vm_env
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        vm_config["environment_variables"] = json!({"key_values": key_values});
    }
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": WASM_FILTER,
            "config": {
                "name": "negcache",
                "root_id": "negcache",
                "failure_policy": opts.failure_policy.envoy_name(),
                "configuration": {"@type": STRING_VALUE, "value": opts.plugin_json()},
                "vm_config": vm_config
            }
        }
    })
}

/// The `ingress` listener (an `envoy.config.listener.v3.Listener`): 127.0.0.1:`listener_port`,
/// all paths and authorities to the upstream cluster, `opts.extra_http_filters` then the filter
/// loaded from `wasm` (absolute path) with `opts`' plugin configuration, a JSON access log at
/// `access_log`. The one definition of the listener: [`bootstrap`] puts it in
/// `static_resources`, [`lds`] in an LDS response.
pub fn listener(opts: &EnvoyOptions, listener_port: u16, wasm: &Path, access_log: &Path) -> Value {
    let mut http_filters = opts.extra_http_filters.clone();
    if opts.with_filter {
        http_filters.push(wasm_filter(opts, wasm));
    }
    http_filters
        .push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}));
    let route = match &opts.direct_response {
        Some((status, body)) => json!({
            "match": {"prefix": "/"},
            "direct_response": {"status": status, "body": {"inline_string": body}}
        }),
        None => json!({"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}),
    };
    let mut virtual_host = json!({"name": "all", "domains": ["*"], "routes": [route]});
    merge(&mut virtual_host, opts.virtual_host_extra.clone());
    let mut connection_manager = json!({
        "@type": HCM,
        "stat_prefix": "ingress_http",
        "use_remote_address": opts.use_remote_address,
        "skip_xff_append": opts.skip_xff_append,
        "normalize_path": true,
        "merge_slashes": true,
        "route_config": {"name": "all", "virtual_hosts": [virtual_host]},
        "http_filters": http_filters
    });
    merge(
        &mut connection_manager,
        opts.connection_manager_extra.clone(),
    );
    if opts.access_log {
        connection_manager["access_log"] = json!([access_log::config(access_log)]);
    }
    let mut listener = json!({
        "name": "ingress",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": connection_manager
        }]}]
    });
    merge(&mut listener, opts.listener_extra.clone());
    listener
}

/// The LDS file's content: a `DiscoveryResponse` with `version_info` and the [`listener`] as
/// its one resource.
pub fn lds(
    opts: &EnvoyOptions,
    listener_port: u16,
    wasm: &Path,
    access_log: &Path,
    version: u64,
) -> Value {
    let mut resource = listener(opts, listener_port, wasm, access_log);
    resource["@type"] = json!(LISTENER);
    json!({"version_info": version.to_string(), "resources": [resource]})
}

/// The Envoy bootstrap for `opts`: the [`listener`], admin on `admin_port`, the upstream
/// cluster (and `opts.extra_clusters`). The listener is in `static_resources`, or with
/// `opts.dynamic_listener` served by LDS from [`lds_path`] in `access_log`'s directory (the
/// Envoy's temp dir, watched for files moved into it; LDS also needs a `node`); write that
/// file with [`lds`].
pub fn bootstrap(
    opts: &EnvoyOptions,
    listener_port: u16,
    admin_port: u16,
    wasm: &Path,
    access_log: &Path,
) -> Value {
    let mut clusters = vec![json!({
        "name": "upstream",
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": "upstream",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1",
                "port_value": opts.upstream_port
            }}}}]}]
        }
    })];
    clusters.extend(opts.extra_clusters.iter().cloned());
    let mut bootstrap = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"clusters": clusters}
    });
    if opts.dynamic_listener {
        let dir = access_log.parent().unwrap_or(Path::new("."));
        bootstrap["node"] = json!({"id": "negcache-test", "cluster": "negcache-test"});
        bootstrap["dynamic_resources"] = json!({"lds_config": {
            "resource_api_version": "V3",
            "path_config_source": {
                "path": lds_path(dir).to_string_lossy(),
                "watched_directory": {"path": dir.to_string_lossy()}
            }
        }});
    } else {
        bootstrap["static_resources"]["listeners"] =
            json!([listener(opts, listener_port, wasm, access_log)]);
    }
    bootstrap
}

/// The configuration the negcache filter of a listener is given, parsed; `None` when the
/// listener has no such filter or the configuration is not JSON.
pub fn plugin_config_of(listener: &Value) -> Option<Value> {
    let chains = listener["filter_chains"].as_array()?;
    chains
        .iter()
        .filter_map(|chain| chain["filters"].as_array())
        .flatten()
        .filter_map(|filter| filter["typed_config"]["http_filters"].as_array())
        .flatten()
        .find(|filter| filter["name"] == "envoy.filters.http.wasm")
        .and_then(|filter| {
            filter["typed_config"]["config"]["configuration"]["value"]
                .as_str()
                .and_then(|text| serde_json::from_str(text).ok())
        })
}
