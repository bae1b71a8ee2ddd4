//! Benchmark floor filters (see `benches/envoy.rs`).
//!
//! The plugin configuration picks the behaviour:
//!
//! - empty, `{}` or `{"mode":"noop"}`: a filter that does nothing. Envoy still creates its
//!   context and calls it for every request; that is the cost of any wasm filter.
//! - `{"mode":"reply"}`: answers every request with a fixed small 401 from
//!   `on_http_request_headers` (`send_http_response`), the cost of a wasm local reply.
//! - `{"mode":"probe","op":OP}`: does nothing but one host call `PROBE_TIMES` times per request
//!   (OP: `headers` all request headers, `header` one header, `property` `source.address`,
//!   `set_property` filter state, `shared_get` a shared-data read of 68 bytes, `shared_set` a
//!   shared-data write, `metric` a counter increment, `time` the clock), so the bench can say
//!   what one call of each kind costs.
//!
//! Anything else is refused (`on_configure` returns false), so a mistyped bench configuration
//! cannot silently measure the wrong floor.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};

/// Calls per request in probe mode: enough to stand out of the per-request noise.
pub const PROBE_TIMES: usize = 10;

const PROBE_OPS: [&str; 8] = [
    "headers",
    "header",
    "property",
    "set_property",
    "shared_get",
    "shared_set",
    "metric",
    "time",
];

/// The 401 body of the reply floor: as short as a typical JSON error.
const REPLY_BODY: &[u8] = br#"{"error":"invalid token"}"#;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FloorRoot { mode: Mode::Noop }) });
}}

#[derive(Clone, Copy)]
enum Mode {
    Noop,
    Reply,
    Probe { op: usize, metric: u32 },
}

struct FloorRoot {
    mode: Mode,
}

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let compact: Vec<u8> = raw
            .into_iter()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let probe = PROBE_OPS
            .iter()
            .position(|op| compact == format!(r#"{{"mode":"probe","op":"{op}"}}"#).into_bytes());
        match (compact.as_slice(), probe) {
            (_, Some(op)) => {
                let metric =
                    hostcalls::define_metric(MetricType::Counter, "floor_probe").unwrap_or(0);
                // A 68-byte value, the size of a negcache cache record.
                let _ = hostcalls::set_shared_data("floor/probe", Some(&[7u8; 68]), None);
                self.mode = Mode::Probe { op, metric };
            }
            (b"" | b"{}" | br#"{"mode":"noop"}"#, None) => self.mode = Mode::Noop,
            (br#"{"mode":"reply"}"#, None) => self.mode = Mode::Reply,
            (other, None) => {
                let _ = proxy_wasm::hostcalls::log(
                    LogLevel::Error,
                    &format!(
                        "floor: unknown configuration {:?}",
                        String::from_utf8_lossy(other)
                    ),
                );
                return false;
            }
        }
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(FloorHttp { mode: self.mode }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct FloorHttp {
    mode: Mode,
}

impl Context for FloorHttp {}

impl HttpContext for FloorHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.mode {
            Mode::Noop => return Action::Continue,
            Mode::Probe { op, metric } => {
                for _ in 0..PROBE_TIMES {
                    probe(op, metric);
                }
                return Action::Continue;
            }
            Mode::Reply => {}
        }
        self.send_http_response(
            401,
            vec![("content-type", "application/json")],
            Some(REPLY_BODY),
        );
        Action::Pause
    }
}

/// One host call of the kind `op` names (an index into `PROBE_OPS`).
fn probe(op: usize, metric: u32) {
    match op {
        0 => {
            let _ = hostcalls::get_map_bytes(MapType::HttpRequestHeaders);
        }
        1 => {
            let _ = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":path");
        }
        2 => {
            let _ = hostcalls::get_property(vec!["source", "address"]);
        }
        3 => {
            let _ = hostcalls::set_property(vec!["floor_probe"], Some(b"miss"));
        }
        4 => {
            let _ = hostcalls::get_shared_data("floor/probe");
        }
        5 => {
            let _ = hostcalls::set_shared_data("floor/probe", Some(&[7u8; 68]), None);
        }
        6 => {
            let _ = hostcalls::increment_metric(metric, 1);
        }
        _ => {
            let _ = hostcalls::get_current_time();
        }
    }
}
