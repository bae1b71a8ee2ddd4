//! Drives exchanges the way the host adapter does (`host::http`), against the in-memory store,
//! a clock that counts its reads and a fake peer, and records what a client, the upstream and
//! the access log would have seen.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use prost::Message;

use crate::clock::Clock;
use crate::cluster::rls::{RateLimitRequest, RateLimitResponse};
use crate::config::Config;
use crate::exchange::{Decision, Exchange, Host, Report, Tally, Verdict};
use crate::filter_config::FilterConfig;
use crate::metrics::{Metric, PendingCounts};
use crate::request::Headers;
use crate::slots::memory::MemoryStore;

pub const T0: u64 = 1_700_000_000_000;
pub const PEER: &str = "192.0.2.1:40000";

thread_local! {
    static NOW: Cell<u64> = const { Cell::new(T0) };
    static CLOCK_READS: Cell<usize> = const { Cell::new(0) };
}

fn read_clock() -> u64 {
    CLOCK_READS.with(|reads| reads.set(reads.get() + 1));
    NOW.with(Cell::get)
}

pub struct FakeHost {
    pub store: MemoryStore,
    pub peer: Option<String>,
    pub peer_reads: Cell<usize>,
}

impl Host for FakeHost {
    type Store = MemoryStore;

    fn store(&self) -> &MemoryStore {
        &self.store
    }

    fn clock(&self) -> Clock {
        Clock::new(read_clock)
    }

    fn source_address(&self) -> Option<Vec<u8>> {
        self.peer_reads.set(self.peer_reads.get() + 1);
        self.peer.as_ref().map(|peer| peer.as_bytes().to_vec())
    }
}

/// A request's headers.
#[derive(Clone, Default)]
pub struct Req(Vec<(String, String)>);

pub fn get(path: &str) -> Req {
    Req::default()
        .header(":method", "GET")
        .header(":authority", "api.example.com")
        .header(":path", path)
}

impl Req {
    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.0.retain(|(n, _)| n != name);
        self.0.push((name.to_string(), value.to_string()));
        self
    }

    pub fn view(&self) -> Headers<'_> {
        Headers::from_pairs(&self.0)
    }

    /// Adds a line of `name`, keeping the ones already there (a header sent twice).
    pub fn another(mut self, name: &str, value: &str) -> Req {
        self.0.push((name.to_string(), value.to_string()));
        self
    }

    pub fn token(self, token: &str) -> Req {
        self.header("authorization", &format!("Bearer {token}"))
    }

    pub fn method(self, method: &str) -> Req {
        self.header(":method", method)
    }
}

/// What the upstream answers.
#[derive(Clone)]
pub struct Upstream {
    status: u16,
    headers: Vec<(String, String)>,
    chunks: Vec<Vec<u8>>,
    trailers: bool,
}

pub fn upstream(status: u16) -> Upstream {
    Upstream {
        status,
        headers: Vec::new(),
        chunks: Vec::new(),
        trailers: false,
    }
}

impl Upstream {
    pub fn header(mut self, name: &str, value: &str) -> Upstream {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// One more chunk of body.
    pub fn chunk(mut self, bytes: &[u8]) -> Upstream {
        self.chunks.push(bytes.to_vec());
        self
    }

    pub fn trailers(mut self) -> Upstream {
        self.trailers = true;
        self
    }
}

/// One exchange as seen from outside the filter.
#[derive(Debug, Default)]
pub struct Seen {
    /// What the client got: 0 when the stream was reset.
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub reached_upstream: bool,
    /// What the access log shows.
    pub decision: Option<Decision>,
    pub client: Option<String>,
    /// Body chunks the filter asked the host for.
    pub chunks_read: usize,
    /// The filter asked for the full response header map.
    pub full_maps_read: bool,
    /// The upstream's response was cut off after this many chunks (a reset mid-body).
    cut_after: Option<usize>,
    /// The response waited for the rate limit service's answer.
    pub held: bool,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A request under way: its headers went through the filter, its response has not.
pub struct Flight {
    exchange: Exchange,
    req: Req,
    seen: Seen,
}

impl Flight {
    /// An exchange whose request headers never reached this filter (another filter answered).
    pub fn unseen() -> Flight {
        Flight {
            exchange: Exchange::default(),
            req: Req::default(),
            seen: Seen::default(),
        }
    }

    pub fn verdict_was_reply(&self) -> bool {
        self.seen.status != 0
    }

    pub fn seen(&self) -> &Seen {
        &self.seen
    }
}

/// A rate limit service as Limitador runs one limit: a fixed window per descriptor value is
/// left out (tests advance no further than one window), a hit over the limit is answered
/// `OVER_LIMIT` and not counted. `down`: every call fails. Shared by the replicas of a test.
#[derive(Default)]
pub struct FakeRls {
    pub limit: u32,
    pub down: bool,
    pub counts: HashMap<String, u32>,
    /// Every request received, decoded.
    pub requests: Vec<RateLimitRequest>,
}

impl FakeRls {
    /// The answer's bytes, or `None` for a failed call.
    fn answer(&mut self, message: &[u8]) -> Option<Vec<u8>> {
        let request = RateLimitRequest::decode(message).unwrap();
        let value = request.descriptors[0].entries[0].value.clone();
        self.requests.push(request);
        if self.down {
            return None;
        }
        let count = self.counts.entry(value).or_default();
        let code = if *count >= self.limit {
            2
        } else {
            *count += 1;
            1
        };
        Some(RateLimitResponse { overall_code: code }.encode_to_vec())
    }
}

pub struct Proxy {
    pub filter: FilterConfig,
    pub host: FakeHost,
    /// The rate limit service cluster mode calls, answering at once.
    pub rls: Rc<RefCell<FakeRls>>,
    /// Every metric update so far.
    counts: PendingCounts,
}

impl Proxy {
    /// A proxy with this plugin configuration, its tables created, the clock at `T0`.
    pub fn new(json: &str) -> Proxy {
        NOW.with(|now| now.set(T0));
        CLOCK_READS.with(|reads| reads.set(0));
        let config = Config::parse(json.as_bytes()).unwrap();
        let filter = FilterConfig::new(config, b"test secret, long enough");
        let host = FakeHost {
            store: MemoryStore::default(),
            peer: Some(PEER.to_string()),
            peer_reads: Cell::new(0),
        };
        filter.tables.records.create_slots(&host.store).unwrap();
        filter.clients.create_slots(&host.store).unwrap();
        crate::cluster::breaker::create(&host.store).unwrap();
        Proxy {
            filter,
            host,
            rls: Rc::new(RefCell::new(FakeRls::default())),
            counts: PendingCounts::default(),
        }
    }

    /// Another replica: the same configuration, its own shared data (another Envoy process),
    /// the same rate limit service. The clock is shared (one thread-local).
    pub fn replica(&self, json: &str) -> Proxy {
        let now = NOW.with(Cell::get);
        let mut replica = Proxy::new(json);
        NOW.with(|clock| clock.set(now));
        replica.rls = self.rls.clone();
        replica
    }

    pub fn advance(&self, ms: u64) {
        NOW.with(|now| now.set(now.get() + ms));
    }

    pub fn clock_reads(&self) -> usize {
        CLOCK_READS.with(Cell::get)
    }

    pub fn count(&self, metric: Metric) -> u64 {
        self.counts.get(metric)
    }

    pub fn store_writes(&self) -> usize {
        self.host.store.writes.get()
    }

    pub fn store_reads(&self) -> usize {
        self.host.store.reads.get()
    }

    /// A whole exchange: the request, then (if it reached the upstream) `response`.
    pub fn send(&mut self, req: &Req, response: Upstream) -> Seen {
        let flight = self.start(req);
        self.finish(flight, Some(response))
    }

    /// The request's turn, as `on_http_request_headers`.
    pub fn start(&mut self, req: &Req) -> Flight {
        let mut flight = Flight {
            exchange: Exchange::default(),
            req: req.clone(),
            seen: Seen::default(),
        };
        let headers = Headers::from_pairs(&req.0);
        let mut report = Report::default();
        let step = flight
            .exchange
            .request(&self.filter, &self.host, Some(&headers), &mut report);
        flight.seen.client = flight.exchange.client_label().map(str::to_string);
        self.tally(&mut flight.exchange, step.tally, &mut report);
        if let Verdict::Reply(mut local) = step.verdict {
            flight.seen.status = local.status;
            // Read back from the bytes the host is handed, as Envoy reads them.
            let (headers, body) = local.host_form();
            flight.seen.headers = Headers::from_serialized(headers)
                .unwrap()
                .lines()
                .map(|(name, value)| {
                    (
                        String::from_utf8(name.to_vec()).unwrap(),
                        String::from_utf8(value.to_vec()).unwrap(),
                    )
                })
                .collect();
            flight.seen.body = body.to_vec();
        }
        self.record(&mut flight.seen, report);
        flight
    }

    /// The rest of the exchange: the response (the filter's own reply goes through the
    /// response callbacks too, as in Envoy; `None`: the stream ends without one), then the end.
    pub fn finish(&mut self, mut flight: Flight, response: Option<Upstream>) -> Seen {
        let response = if flight.verdict_was_reply() {
            let own = std::mem::take(&mut flight.seen);
            let mut reply = upstream(own.status).chunk(&own.body);
            reply.headers = own.headers;
            flight.seen = Seen {
                client: own.client,
                decision: own.decision,
                ..Seen::default()
            };
            Some(reply)
        } else {
            flight.seen.reached_upstream = response.is_some();
            response
        };
        if let Some(response) = response {
            self.respond(&mut flight, response);
        }
        let mut report = Report::default();
        let tally = flight.exchange.end(&self.filter, &self.host, &mut report);
        self.tally(&mut flight.exchange, tally, &mut report);
        self.record(&mut flight.seen, report);
        flight.seen
    }

    /// Like `finish`, but the stream is reset after `chunks` chunks of the response body.
    pub fn finish_cut(&mut self, mut flight: Flight, response: Upstream, chunks: usize) -> Seen {
        flight.seen.cut_after = Some(chunks);
        self.finish(flight, Some(response))
    }

    /// `on_http_response_headers`, `_body` and `_trailers`.
    fn respond(&mut self, flight: &mut Flight, response: Upstream) {
        let mut headers = vec![(":status".to_string(), response.status.to_string())];
        headers.extend(response.headers.iter().cloned());
        let chunks = match flight.seen.cut_after {
            Some(cut) => &response.chunks[..cut],
            None => &response.chunks[..],
        };
        let end_of_stream = response.chunks.is_empty() && !response.trailers;
        let exchange = &mut flight.exchange;
        let plan = exchange.response(&self.filter, end_of_stream, |name| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone().into_bytes())
        });
        let mut report = Report::default();
        if let Some(tally) = plan.tally {
            let outcome = exchange.count(&self.filter, &self.host, tally, &mut report);
            let call = exchange.cluster_call(&self.filter, &self.host, tally, outcome, &mut report);
            if let Some(call) = call {
                flight.seen.held = call.holds();
                let answer = self.rls.borrow_mut().answer(&call.message);
                exchange.cluster_answer(&self.filter, &self.host, answer.as_deref(), &mut report);
            }
        }
        if plan.needs_headers() {
            flight.seen.full_maps_read = true;
            let map = Headers::from_pairs(&headers);
            let request = Headers::from_pairs(&flight.req.0);
            exchange.respond(
                &self.filter,
                &self.host,
                &plan,
                Some(&map),
                Some(&request),
                &mut report,
            );
        }
        // As the adapter does: a client first resolved to store an entry keyed on it is logged.
        if flight.seen.client.is_none() {
            flight.seen.client = exchange.client_label().map(str::to_string);
        }
        for name in plan.remove() {
            headers.retain(|(n, _)| n != name);
        }
        if let Some((name, value)) = plan.add {
            headers.push((name.to_string(), value.to_string()));
        }
        self.record(&mut flight.seen, report);
        let cut = flight.seen.cut_after.is_some();
        for (index, chunk) in chunks.iter().enumerate() {
            let last = !cut && index + 1 == chunks.len() && !response.trailers;
            flight.seen.body.extend_from_slice(chunk);
            if !flight.exchange.captures_body() {
                continue;
            }
            let mut report = Report::default();
            let mut read = 0;
            flight.exchange.body(
                &self.filter,
                &self.host,
                chunk.len(),
                last,
                || {
                    read += 1;
                    Some(chunk.clone())
                },
                &mut report,
            );
            flight.seen.chunks_read += read;
            self.record(&mut flight.seen, report);
        }
        if response.trailers && !cut && flight.exchange.captures_body() {
            let mut report = Report::default();
            flight
                .exchange
                .trailers(&self.filter, &self.host, &mut report);
            self.record(&mut flight.seen, report);
        }
        flight.seen.status = if cut { 0 } else { response.status };
        headers.retain(|(n, _)| n != ":status");
        flight.seen.headers = headers;
    }

    fn tally(&self, exchange: &mut Exchange, tally: Option<Tally>, report: &mut Report) {
        if let Some(tally) = tally {
            let _ = exchange.count(&self.filter, &self.host, tally, report);
        }
    }

    fn record(&mut self, seen: &mut Seen, mut report: Report) {
        if report.decision.is_some() {
            seen.decision = report.decision;
        }
        for (metric, value) in report.counts.take() {
            self.counts.add(metric, value);
        }
    }
}
