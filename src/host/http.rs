//! The HTTP context: reads what the exchange carried from Envoy, hands it to the core
//! (`exchange::Exchange`), and writes back what the core decided.

use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use super::ffi;
use super::metrics::Metrics;
use super::store::EnvoyStore;
use crate::clock::Clock;
use crate::cluster::rls;
use crate::exchange::{Exchange, Host, Report, Tally, Verdict};
use crate::filter_config::FilterConfig;
use crate::reply::LocalReply;
use crate::request::Headers;

const DECISION: &str = "negcache_decision";
const CLIENT: &str = "negcache_client";

pub struct NegcacheHttp {
    filter: Option<Rc<FilterConfig>>,
    metrics: Rc<Metrics>,
    exchange: Exchange,
    /// The request's headers as the host serialized them, kept for the rare response that
    /// needs the request line again (an entry to store, a purge), so a request copies nothing.
    request_headers: Vec<u8>,
    /// The response waits for the rate limit service's answer (cluster mode). Pausing at the
    /// response headers stops the whole response: Envoy's wasm host turns it into
    /// StopAllIterationAndWatermark, so the body is buffered up to the buffer limit, then
    /// the upstream is no longer read, and no body callback runs until the response goes on.
    held: bool,
    /// The client is in filter state for the access log (written once, when a step first
    /// needs it: the request, or the response that stores an entry keyed on it).
    client_logged: bool,
}

/// What the core asks of Envoy.
struct Envoy;

impl Host for Envoy {
    type Store = EnvoyStore;

    fn store(&self) -> &EnvoyStore {
        &EnvoyStore
    }

    fn clock(&self) -> Clock {
        Clock::new(now_ms)
    }

    fn source_address(&self) -> Option<Vec<u8>> {
        ffi::source_address()
    }
}

impl NegcacheHttp {
    pub fn new(filter: Option<Rc<FilterConfig>>, metrics: Rc<Metrics>) -> Self {
        NegcacheHttp {
            filter,
            metrics,
            exchange: Exchange::default(),
            request_headers: Vec::new(),
            held: false,
            client_logged: false,
        }
    }

    /// Writes a step's report: the decision to filter state, the counts to the VM's sums.
    fn record(&self, mut report: Report) {
        if let Some(decision) = report.decision {
            ffi::set_filter_state(DECISION, decision.as_str().as_bytes());
        }
        self.metrics.absorb(&mut report.counts);
    }

    /// Writes the client to filter state once a step has resolved it.
    fn log_client(&mut self) {
        if self.client_logged {
            return;
        }
        if let Some(client) = self.exchange.client_label() {
            ffi::set_filter_state(CLIENT, client.as_bytes());
            self.client_logged = true;
        }
    }

    /// Tells the limiter how the request ended, when a step handed out a tally.
    fn count(&mut self, filter: &FilterConfig, tally: Option<Tally>, report: &mut Report) {
        if let Some(tally) = tally {
            let _ = self.exchange.count(filter, &Envoy, tally, report);
        }
    }

    /// Counts a response's failure, then (cluster mode) sends it to the rate limit service;
    /// returns whether the response waits for the answer.
    fn count_response(
        &mut self,
        filter: &FilterConfig,
        tally: Option<Tally>,
        report: &mut Report,
    ) -> bool {
        let Some(tally) = tally else {
            return false;
        };
        let outcome = self.exchange.count(filter, &Envoy, tally, report);
        let Some(call) = self
            .exchange
            .cluster_call(filter, &Envoy, tally, outcome, report)
        else {
            return false;
        };
        let dispatched = self.dispatch_grpc_call(
            &call.cluster.rls_cluster,
            rls::SERVICE,
            rls::METHOD,
            Vec::new(),
            Some(&call.message),
            Duration::from_millis(call.cluster.timeout_ms),
        );
        if dispatched.is_err() {
            // No such cluster, or the host refused the call: a failed call, answered now.
            self.exchange.cluster_answer(filter, &Envoy, None, report);
            return false;
        }
        call.holds()
    }

    /// Lets a held response go on.
    fn release(&mut self) {
        if std::mem::take(&mut self.held) {
            let _ = hostcalls::resume_http_response();
        }
    }
}

/// Sends one of the filter's own replies; `false` when the host refused it.
fn send(local: &mut LocalReply) -> bool {
    let status = local.status;
    let (headers, body) = local.host_form();
    ffi::send_local_response(status, headers, body)
}

impl Context for NegcacheHttp {
    fn on_grpc_call_response(&mut self, _token_id: u32, status_code: u32, response_size: usize) {
        let Some(filter) = self.filter.clone() else {
            return;
        };
        let body = (status_code == 0).then(|| {
            hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, response_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        });
        let mut report = Report::default();
        self.exchange
            .cluster_answer(&filter, &Envoy, body.as_deref(), &mut report);
        self.record(report);
        self.release();
    }
}

impl HttpContext for NegcacheHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(filter) = self.filter.clone() else {
            return Action::Continue;
        };
        let map = ffi::header_map(MapType::HttpRequestHeaders);
        let mut report = Report::default();
        let headers = map.as_deref().and_then(Headers::from_serialized);
        // Only in the build the VM-failure tests load (feature `test-fault`): a request naming
        // this header kills the VM, as a bug would, so Envoy's failure_policy takes over.
        #[cfg(feature = "test-fault")]
        if headers
            .as_ref()
            .is_some_and(|h| h.contains("x-negcache-test-fault"))
        {
            std::process::abort();
        }
        let step = self
            .exchange
            .request(&filter, &Envoy, headers.as_ref(), &mut report);
        // The view borrows the map, which is kept for the response.
        drop(headers);
        self.request_headers = map.unwrap_or_default();
        self.log_client();
        self.count(&filter, step.tally, &mut report);
        let action = match step.verdict {
            Verdict::Continue => Action::Continue,
            Verdict::Reply(mut local) => {
                if send(&mut local) {
                    Action::Pause
                } else {
                    self.exchange.reply_failed(&mut report);
                    Action::Continue
                }
            }
        };
        self.record(report);
        action
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(filter) = self.filter.clone() else {
            return Action::Continue;
        };
        let plan = self.exchange.response(&filter, end_of_stream, |name| {
            ffi::header_value(MapType::HttpResponseHeaders, name)
        });
        let mut report = Report::default();
        self.held = self.count_response(&filter, plan.tally, &mut report);
        if plan.needs_headers() {
            let map = ffi::header_map(MapType::HttpResponseHeaders);
            let response = map.as_deref().and_then(Headers::from_serialized);
            let request = Headers::from_serialized(&self.request_headers);
            self.exchange.respond(
                &filter,
                &Envoy,
                &plan,
                response.as_ref(),
                request.as_ref(),
                &mut report,
            );
        }
        self.log_client();
        // After `respond`: the purge header's values are read from the map first.
        for name in plan.remove() {
            let _ = hostcalls::remove_map_value(MapType::HttpResponseHeaders, name);
        }
        if let Some((name, value)) = plan.add {
            let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value);
        }
        self.record(report);
        if self.held {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.exchange.captures_body() {
            return Action::Continue;
        }
        let Some(filter) = self.filter.clone() else {
            return Action::Continue;
        };
        let mut report = Report::default();
        let read = || match hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size) {
            Ok(chunk) => Some(chunk.unwrap_or_default()),
            Err(_) => None,
        };
        self.exchange
            .body(&filter, &Envoy, body_size, end_of_stream, read, &mut report);
        self.record(report);
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        if let Some(filter) = self.filter.clone() {
            let mut report = Report::default();
            self.exchange.trailers(&filter, &Envoy, &mut report);
            self.record(report);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let Some(filter) = self.filter.clone() else {
            return;
        };
        let mut report = Report::default();
        let tally = self.exchange.end(&filter, &Envoy, &mut report);
        self.count(&filter, tally, &mut report);
        self.record(report);
    }
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}
