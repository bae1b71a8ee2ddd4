//! What a decision allocates: on the paths `make bench` measures, only what the host hands over
//! (the peer's address, a slot's value, `:status`), the filter's own reply, in one buffer, and a
//! limiter's write. Counted per thread by this test binary's allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use super::harness::{get, upstream, Proxy, Req};
use crate::exchange::{Decision, Exchange, Report};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn counted() {
    // `try_with`: the allocator also runs while a thread's locals are torn down.
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted();
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        counted();
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counted();
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// The allocations `step` makes on this thread.
fn allocations<T>(step: impl FnOnce() -> T) -> (usize, T) {
    let before = ALLOCATIONS.with(Cell::get);
    let result = step();
    (ALLOCATIONS.with(Cell::get) - before, result)
}

/// The request step of `req`, as `on_http_request_headers` runs it: its allocations, the
/// decision and the exchange.
fn request(proxy: &Proxy, req: &Req) -> (usize, Option<Decision>, Exchange) {
    let headers = req.view();
    let mut exchange = Exchange::default();
    let mut report = Report::default();
    let (count, _) = allocations(|| {
        let step = exchange.request(&proxy.filter, &proxy.host, Some(&headers), &mut report);
        if let Some(tally) = step.tally {
            let _ = exchange.count(&proxy.filter, &proxy.host, tally, &mut report);
        }
        step
    });
    (count, report.decision, exchange)
}

const CACHE_401: &str = r#""negative_cache": {"statuses": {"401": {"ttl_seconds": 3600}}}"#;
const TRUSTED: &str = r#""client_ip": {"trusted_proxies": ["192.0.2.0/24"]}"#;

fn failed_once(json: &str, req: &Req) -> Proxy {
    let mut proxy = Proxy::new(json);
    proxy.send(
        req,
        upstream(401)
            .header("www-authenticate", "Bearer")
            .chunk(b"{}"),
    );
    proxy
}

#[test]
fn a_hit_allocates_its_slots_value_and_its_reply() {
    let json = format!(r#"{{"rate_limit": {{"enabled": false}}, {CACHE_401}}}"#);
    let req = get("/a").token("dead");
    let proxy = failed_once(&json, &req);
    let (count, decision, _) = request(&proxy, &req);
    assert_eq!(decision, Some(Decision::Hit));
    assert_eq!(
        count, 2,
        "the slot's value as the host hands it over, and the reply"
    );
}

#[test]
fn a_block_allocates_the_peer_the_clients_slot_and_its_reply() {
    let json = format!(
        r#"{{{TRUSTED}, "rate_limit": {{"max_failures": 0, "block_seconds": 3600}}, {CACHE_401}}}"#
    );
    let client = "198.51.100.7";
    let proxy = failed_once(
        &json,
        &get("/a").token("dead").header("x-forwarded-for", client),
    );
    let good = get("/a").token("good").header("x-forwarded-for", client);
    let (count, decision, _) = request(&proxy, &good);
    assert_eq!(decision, Some(Decision::Blocked));
    assert_eq!(
        count, 3,
        "the peer's address and the client's slot as the host hands them over, and the reply"
    );
}

#[test]
fn a_good_request_allocates_only_what_the_host_hands_over() {
    let json = format!(r#"{{{TRUSTED}, {CACHE_401}}}"#);
    let proxy = Proxy::new(&json);
    let good = get("/a")
        .token("good")
        .header("x-forwarded-for", "198.51.100.8");
    let (count, decision, mut exchange) = request(&proxy, &good);
    assert_eq!(decision, Some(Decision::Miss));
    // The slots it reads are empty here, so the host hands over nothing for them.
    assert_eq!(count, 1, "the peer's address");

    let mut report = Report::default();
    let (count, ()) = allocations(|| {
        let plan = exchange.response(&proxy.filter, true, |name| {
            (name == ":status").then(|| b"200".to_vec())
        });
        if let Some(tally) = plan.tally {
            let _ = exchange.count(&proxy.filter, &proxy.host, tally, &mut report);
        }
        if let Some(tally) = exchange.end(&proxy.filter, &proxy.host, &mut report) {
            let _ = exchange.count(&proxy.filter, &proxy.host, tally, &mut report);
        }
    });
    assert_eq!(count, 1, "`:status` as the host hands it over");
}

#[test]
fn a_hit_with_the_rate_limit_on_adds_the_clients_slot_and_its_one_write() {
    let json = format!(r#"{{{TRUSTED}, {CACHE_401}}}"#);
    let req = get("/a")
        .token("dead")
        .header("x-forwarded-for", "198.51.100.9");
    let proxy = failed_once(&json, &req);
    let writes = proxy.store_writes();
    let (count, decision, _) = request(&proxy, &req);
    assert_eq!(decision, Some(Decision::Hit));
    let writes = proxy.store_writes() - writes;
    assert_eq!(writes, 1);
    // The fake store copies each written key and value into its map.
    assert_eq!(
        count - 2 * writes,
        6,
        "the peer's address, the client's and the entry's slots as the host hands them over, \
         the client's record and its bucket written back, and the reply"
    );
}
