//! The test Envoy's access log: one JSON object per request, with negcache's decision and the
//! client it resolved (its filter state), and how those lines read back.

use std::path::Path;

use serde_json::{json, Value};

const FILE_ACCESS_LOG: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";

/// The connection manager's access log entry: JSON lines written to `path`.
pub fn config(path: &Path) -> Value {
    json!({
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": FILE_ACCESS_LOG,
            "path": path.to_string_lossy(),
            "log_format": {"json_format": {
                "method": "%REQ(:METHOD)%",
                "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                "status": "%RESPONSE_CODE%",
                "negcache": "%FILTER_STATE(wasm.negcache_decision:PLAIN)%",
                "client": "%FILTER_STATE(wasm.negcache_client:PLAIN)%",
                "downstream": "%DOWNSTREAM_REMOTE_ADDRESS%",
                "upstream_host": "%UPSTREAM_HOST%",
                "response_flags": "%RESPONSE_FLAGS%",
                "details": "%RESPONSE_CODE_DETAILS%"
            }}
        }
    })
}

/// One access log line.
#[derive(Clone, Debug)]
pub struct AccessLogEntry {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// `%FILTER_STATE(wasm.negcache_decision:PLAIN)%`, None when unset.
    pub decision: Option<String>,
    /// `%FILTER_STATE(wasm.negcache_client:PLAIN)%`, None when unset.
    pub client: Option<String>,
    /// The whole line, including `downstream`, `upstream_host`,
    /// `response_flags` and `details`.
    pub raw: Value,
}

impl AccessLogEntry {
    pub fn parse(line: &str) -> AccessLogEntry {
        let raw: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {line}"));
        let text = |key: &str| -> Option<String> {
            match &raw[key] {
                Value::String(s) if s != "-" => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        };
        AccessLogEntry {
            method: text("method").unwrap_or_default(),
            path: text("path").unwrap_or_default(),
            status: text("status").and_then(|s| s.parse().ok()).unwrap_or(0),
            decision: text("negcache"),
            client: text("client"),
            raw,
        }
    }
}
