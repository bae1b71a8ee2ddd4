//! Benchmark floor filters (see `benches/envoy.rs`).
//!
//! The plugin configuration picks the behaviour:
//!
//! - empty, `{}` or `{"mode":"noop"}`: a filter that does nothing. Envoy still creates its
//!   context and calls it for every request; that is the cost of any wasm filter.
//! - `{"mode":"reply"}`: answers every request with a fixed small 401 from
//!   `on_http_request_headers` (`send_http_response`), the cost of a wasm local reply.
//!
//! Anything else is refused (`on_configure` returns false), so a mistyped bench configuration
//! cannot silently measure the wrong floor.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

/// The 401 body of the reply floor: as short as a typical JSON error.
const REPLY_BODY: &[u8] = br#"{"error":"invalid token"}"#;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FloorRoot { reply: false }) });
}}

struct FloorRoot {
    reply: bool,
}

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let compact: Vec<u8> = raw
            .into_iter()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        match compact.as_slice() {
            b"" | b"{}" | br#"{"mode":"noop"}"# => self.reply = false,
            br#"{"mode":"reply"}"# => self.reply = true,
            other => {
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
        Some(Box::new(FloorHttp { reply: self.reply }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct FloorHttp {
    reply: bool,
}

impl Context for FloorHttp {}

impl HttpContext for FloorHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.reply {
            return Action::Continue;
        }
        self.send_http_response(
            401,
            vec![("content-type", "application/json")],
            Some(REPLY_BODY),
        );
        Action::Pause
    }
}
