//! Benchmark floor filters (see `benches/envoy/main.rs`).
//!
//! The plugin configuration picks the behaviour:
//!
//! - empty, `{}` or `{"mode":"noop"}`: a filter that does nothing. Envoy still creates its
//!   context and calls it for every request; that is the cost of any wasm filter.
//! - `{"mode":"reply"}`: answers every request with a fixed small 401 from
//!   `on_http_request_headers` (`send_http_response`), the cost of a wasm local reply.
//! - `{"mode":"probe","op":OP}`: does nothing but one host call `PROBE_TIMES` times per request
//!   (OP: `headers` the request header map as one buffer, `header` one header, `property`
//!   `source.address`, `set_property` filter state, `shared_get` a shared-data read of 68 bytes, `shared_set` a
//!   shared-data write, `metric` a counter increment, `time` the clock), so the bench can say
//!   what one call of each kind costs (`header_missing`: a header the request lacks, so nothing
//!   is handed back; `set_property_new`: a new filter-state name on each call;
//!   `shared_get_missing`: a key that does not exist, so nothing is copied into the VM;
//!   `shared_get_large`: a 1,024-byte value; `alloc`: no host call, one 128-byte allocation in
//!   the VM, written and freed). With `"times":1` it makes the call once per request: against
//!   the `PROBE_TIMES` probe, what the first call of a kind in a request costs over the next.
//! - `{"mode":"mimic","variant":V}`: makes the host calls negcache makes on a good request and
//!   nothing else (request header map, `source.address`, two filter-state writes, two
//!   shared-data reads; on the response the purge and inactive headers and `:status`). V: `""`
//!   exactly those, `with_time` plus a clock read, `response_map` the response's whole header
//!   map instead, `without_property`, `without_set_property`, `without_response`. Two more
//!   make the calls of negcache's own replies instead, and send the same reply: `hit` (request
//!   header map, two shared-data reads, a clock read, one filter-state write, the cached 401
//!   with its four headers) and `block` (request header map, `source.address`, two filter-state
//!   writes, one shared-data read, a clock read, the 429 with `retry-after`). And the floors of
//!   the replies, the calls a correct reply cannot do without: `hit_min` (request header map,
//!   ONE shared-data read of a 140-byte value, the size of a bucket holding a cached 401 with
//!   its body, a clock read, the decision written to filter state, the same 401 with the same
//!   four headers as negcache's hit) and `block_min` (request header map, `source.address`,
//!   one shared-data read of a bucket of two client records, a clock read, the client and the
//!   decision written to filter state, the same 429 with `retry-after`).
//!
//! Anything else is refused (`on_configure` returns false), so a mistyped bench configuration
//! cannot silently measure the wrong floor.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};

/// Calls per request in probe mode: enough to stand out of the per-request noise.
pub const PROBE_TIMES: usize = 10;

const PROBE_OPS: [&str; 13] = [
    "headers",
    "header",
    "header_missing",
    "property",
    "set_property",
    "set_property_new",
    "shared_get",
    "shared_set",
    "metric",
    "time",
    "shared_get_missing",
    "shared_get_large",
    "alloc",
];

/// The shared-data values the probes and mimics read: a cache record (68 bytes), a bucket of
/// two (140), a bucket of two client records (116) and a large value.
const RECORD_KEY: &str = "floor/probe";
const BUCKET_KEY: &str = "floor/bucket";
const CLIENTS_KEY: &str = "floor/clients";
const LARGE_KEY: &str = "floor/large";
const MISSING_KEY: &str = "floor/missing";

/// The 401 body of the reply floor: as short as a typical JSON error.
const REPLY_BODY: &[u8] = br#"{"error":"invalid token"}"#;

/// The body of negcache's 429, as the block mimic sends it.
const BLOCK_BODY: &[u8] =
    br#"{"error":"too many failed authentication attempts","retry_after":3600}"#;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FloorRoot { mode: Mode::Noop }) });
}}

/// What the mimic changes in negcache's good-request host calls.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Same,
    WithTime,
    ResponseMap,
    WithoutProperty,
    WithoutSetProperty,
    WithoutResponse,
    Hit,
    Block,
    HitMin,
    BlockMin,
}

const VARIANTS: [(&str, Variant); 10] = [
    ("", Variant::Same),
    ("with_time", Variant::WithTime),
    ("response_map", Variant::ResponseMap),
    ("without_property", Variant::WithoutProperty),
    ("without_set_property", Variant::WithoutSetProperty),
    ("without_response", Variant::WithoutResponse),
    ("hit", Variant::Hit),
    ("block", Variant::Block),
    ("hit_min", Variant::HitMin),
    ("block_min", Variant::BlockMin),
];

#[derive(Clone, Copy)]
enum Mode {
    Noop,
    Reply,
    Probe {
        op: usize,
        metric: u32,
        times: usize,
    },
    /// negcache's host calls on a good request, and nothing else.
    Mimic(Variant),
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
        let probe = PROBE_OPS.iter().enumerate().find_map(|(op, name)| {
            let ten = format!(r#"{{"mode":"probe","op":"{name}"}}"#);
            let once = format!(r#"{{"mode":"probe","op":"{name}","times":1}}"#);
            if compact == ten.as_bytes() {
                Some((op, PROBE_TIMES))
            } else if compact == once.as_bytes() {
                Some((op, 1))
            } else {
                None
            }
        });
        // Values of the sizes negcache reads: every mode finds them in place.
        let _ = hostcalls::set_shared_data(RECORD_KEY, Some(&[7u8; 68]), None);
        let _ = hostcalls::set_shared_data(BUCKET_KEY, Some(&[7u8; 140]), None);
        let _ = hostcalls::set_shared_data(CLIENTS_KEY, Some(&[7u8; 116]), None);
        let _ = hostcalls::set_shared_data(LARGE_KEY, Some(&[7u8; 1024]), None);
        match (compact.as_slice(), probe) {
            (_, Some((op, times))) => {
                let metric =
                    hostcalls::define_metric(MetricType::Counter, "floor_probe").unwrap_or(0);
                self.mode = Mode::Probe { op, metric, times };
            }
            (b"" | b"{}" | br#"{"mode":"noop"}"#, None) => self.mode = Mode::Noop,
            (br#"{"mode":"reply"}"#, None) => self.mode = Mode::Reply,
            (mimic, None) if mimic_variant(mimic).is_some() => {
                self.mode = Mode::Mimic(mimic_variant(mimic).unwrap_or(Variant::Same));
            }
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
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Mode::Mimic(variant) = self.mode {
            match variant {
                // The reply is the filter's own: negcache reads nothing of it.
                Variant::WithoutResponse
                | Variant::Hit
                | Variant::Block
                | Variant::HitMin
                | Variant::BlockMin => {}
                Variant::ResponseMap => {
                    let _ = ffi_header_map(MapType::HttpResponseHeaders);
                }
                _ => {
                    for name in ["x-negcache-purge", "x-negcache-inactive", ":status"] {
                        let _ = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name);
                    }
                }
            }
        }
        Action::Continue
    }

    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.mode {
            Mode::Noop => return Action::Continue,
            Mode::Probe { op, metric, times } => {
                for call in 0..times {
                    probe(op, metric, call);
                }
                return Action::Continue;
            }
            Mode::Mimic(Variant::Hit) => return mimic_hit(self),
            Mode::Mimic(Variant::Block) => return mimic_block(self),
            Mode::Mimic(Variant::HitMin) => return hit_min(self),
            Mode::Mimic(Variant::BlockMin) => return block_min(self),
            Mode::Mimic(variant) => {
                let _ = ffi_header_map(MapType::HttpRequestHeaders);
                if variant != Variant::WithoutProperty {
                    let _ = hostcalls::get_property(vec!["source", "address"]);
                }
                if variant != Variant::WithoutSetProperty {
                    let _ = hostcalls::set_property(vec!["floor_client"], Some(b"198.51.100.7"));
                }
                if variant == Variant::WithTime {
                    let _ = hostcalls::get_current_time();
                }
                // A bucket of two cache records, a bucket of two client records.
                let _ = hostcalls::get_shared_data(BUCKET_KEY);
                let _ = hostcalls::get_shared_data(CLIENTS_KEY);
                if variant != Variant::WithoutSetProperty {
                    let _ = hostcalls::set_property(vec!["floor_decision"], Some(b"miss"));
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

/// negcache's 401 for a cache hit, with its headers.
fn send_hit(http: &mut FloorHttp) -> Action {
    http.send_http_response(
        401,
        vec![
            ("content-type", "application/json"),
            ("www-authenticate", "Bearer"),
            ("x-negcache", "hit"),
            ("age", "0"),
        ],
        Some(REPLY_BODY),
    );
    Action::Pause
}

/// negcache's 429 for a blocked client, with its headers.
fn send_block(http: &mut FloorHttp) -> Action {
    http.send_http_response(
        429,
        vec![
            ("content-type", "application/json"),
            ("retry-after", "3600"),
        ],
        Some(BLOCK_BODY),
    );
    Action::Pause
}

/// negcache's calls for a cache hit, and its reply.
fn mimic_hit(http: &mut FloorHttp) -> Action {
    let _ = ffi_header_map(MapType::HttpRequestHeaders);
    // The bucket holding the entry, then the entry's body.
    let _ = hostcalls::get_shared_data(BUCKET_KEY);
    let _ = hostcalls::get_shared_data(RECORD_KEY);
    let _ = hostcalls::get_current_time();
    let _ = hostcalls::set_property(vec!["floor_decision"], Some(b"hit"));
    send_hit(http)
}

/// negcache's calls for a blocked client, and its 429.
fn mimic_block(http: &mut FloorHttp) -> Action {
    let _ = ffi_header_map(MapType::HttpRequestHeaders);
    let _ = hostcalls::get_property(vec!["source", "address"]);
    let _ = hostcalls::set_property(vec!["floor_client"], Some(b"198.51.100.7"));
    let _ = hostcalls::get_current_time();
    let _ = hostcalls::get_shared_data(CLIENTS_KEY);
    let _ = hostcalls::set_property(vec!["floor_decision"], Some(b"blocked"));
    send_block(http)
}

/// The least a correct cache hit does: the request header map, one shared-data read (the
/// bucket holding the entry and its body), the clock (is it live, its age), the decision for
/// the access log, and negcache's 401 with its headers.
fn hit_min(http: &mut FloorHttp) -> Action {
    let _ = ffi_header_map(MapType::HttpRequestHeaders);
    let _ = hostcalls::get_shared_data(BUCKET_KEY);
    let _ = hostcalls::get_current_time();
    let _ = hostcalls::set_property(vec!["negcache_decision"], Some(b"hit"));
    send_hit(http)
}

/// The least a correct 429 to a blocked client does: the request header map, the peer (is it
/// a trusted proxy), one shared-data read (the client's bucket), the clock (is the block on,
/// until when), the client and the decision for the access log, and negcache's 429.
fn block_min(http: &mut FloorHttp) -> Action {
    let _ = ffi_header_map(MapType::HttpRequestHeaders);
    let _ = hostcalls::get_property(vec!["source", "address"]);
    let _ = hostcalls::get_shared_data(CLIENTS_KEY);
    let _ = hostcalls::get_current_time();
    let _ = hostcalls::set_property(vec!["negcache_client"], Some(b"203.0.113.7"));
    let _ = hostcalls::set_property(vec!["negcache_decision"], Some(b"blocked"));
    send_block(http)
}

/// The mimic variant a (whitespace-free) configuration names, if it is a mimic one.
fn mimic_variant(compact: &[u8]) -> Option<Variant> {
    VARIANTS.iter().find_map(|(name, variant)| {
        let expected = format!(r#"{{"mode":"mimic","variant":"{name}"}}"#);
        (compact == expected.as_bytes()).then_some(*variant)
    })
}

/// Filter-state names for `set_property_new`: a new one on each call of a request.
const NEW_PROPERTIES: [&str; PROBE_TIMES] = [
    "floor_probe_0",
    "floor_probe_1",
    "floor_probe_2",
    "floor_probe_3",
    "floor_probe_4",
    "floor_probe_5",
    "floor_probe_6",
    "floor_probe_7",
    "floor_probe_8",
    "floor_probe_9",
];

/// One host call of the kind `op` names (an index into `PROBE_OPS`); `call` counts the calls
/// of this request.
fn probe(op: usize, metric: u32, call: usize) {
    match op {
        // As negcache reads it: one buffer, not a list of pairs.
        0 => {
            let _ = ffi_header_map(MapType::HttpRequestHeaders);
        }
        1 => {
            let _ = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":path");
        }
        // The call itself, without a value to hand back (no allocation inside the VM).
        2 => {
            let _ = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-absent");
        }
        3 => {
            let _ = hostcalls::get_property(vec!["source", "address"]);
        }
        4 => {
            let _ = hostcalls::set_property(vec!["floor_probe"], Some(b"miss"));
        }
        5 => {
            let name = NEW_PROPERTIES[call % PROBE_TIMES];
            let _ = hostcalls::set_property(vec![name], Some(b"miss"));
        }
        6 => {
            let _ = hostcalls::get_shared_data(RECORD_KEY);
        }
        7 => {
            let _ = hostcalls::set_shared_data(RECORD_KEY, Some(&[7u8; 68]), None);
        }
        8 => {
            let _ = hostcalls::increment_metric(metric, 1);
        }
        9 => {
            let _ = hostcalls::get_current_time();
        }
        10 => {
            let _ = hostcalls::get_shared_data(MISSING_KEY);
        }
        11 => {
            let _ = hostcalls::get_shared_data(LARGE_KEY);
        }
        // What a request's allocation costs the VM: made, touched so it is not optimized away,
        // freed.
        _ => {
            let mut bytes: Vec<u8> = Vec::with_capacity(128);
            bytes.push(call as u8);
            std::hint::black_box(&mut bytes);
        }
    }
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> proxy_wasm::types::Status;
}

/// The serialized header map as one buffer, as negcache reads it (the SDK's wrapper would
/// also copy each line into its own strings).
fn ffi_header_map(map_type: MapType) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host allocates `size` bytes through this module's allocator and hands them
    // over; the Vec owns and frees them.
    unsafe {
        if proxy_get_header_map_pairs(map_type, &mut data, &mut size)
            != proxy_wasm::types::Status::Ok
            || data.is_null()
        {
            return None;
        }
        Some(Vec::from_raw_parts(data, size, size))
    }
}
