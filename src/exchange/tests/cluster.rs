//! Cluster mode: failures counted by a rate limit service every replica shares, its answer
//! blocking the client here, the breaker in front of it, and what waits for it.

use super::harness::{get, upstream, FakeRls, Proxy, Upstream, PEER};
use crate::cluster::rls::CLIENT_KEY;
use crate::exchange::Decision;
use crate::metrics::Metric;

fn unauthorized() -> Upstream {
    upstream(401)
        .header("content-length", "25")
        .chunk(b"{\"error\":\"invalid token\"}")
}

fn config(max_failures: u32, cluster: &str) -> String {
    format!(
        r#"{{"negative_cache": {{"enabled": false}},
            "rate_limit": {{"max_failures": {max_failures}, "block_seconds": 60{cluster}}}}}"#
    )
}

const CLUSTER: &str = r#", "cluster": {"rls_cluster": "ratelimit",
    "breaker": {"consecutive_errors": 3, "open_seconds": 10}}"#;

fn cluster_proxy(max_failures: u32) -> Proxy {
    let proxy = Proxy::new(&config(max_failures, CLUSTER));
    *proxy.rls.borrow_mut() = FakeRls {
        limit: max_failures,
        ..FakeRls::default()
    };
    proxy
}

#[test]
fn good_requests_and_requests_without_a_failure_make_no_call() {
    let mut proxy = cluster_proxy(3);
    for n in 0..5 {
        let seen = proxy.send(&get("/").token(&format!("good{n}")), upstream(200));
        assert_eq!(seen.status, 200);
        assert!(!seen.held);
    }
    proxy.send(&get("/").token("t"), upstream(403));
    assert!(proxy.rls.borrow().requests.is_empty());
    assert_eq!(proxy.count(Metric::ClusterCalls), 0);
}

#[test]
fn each_counted_failure_is_one_call_for_the_domain_and_the_grouped_client() {
    let mut proxy = Proxy::new(
        r#"{"negative_cache": {"enabled": false}, "client_ip": {"ipv6_prefix": 48},
            "rate_limit": {"cluster": {"rls_cluster": "rls", "domain": "edge-eu"}}}"#,
    );
    proxy.rls.borrow_mut().limit = 100;
    proxy.send(&get("/").token("a"), unauthorized());
    proxy.host.peer = Some("[2001:db8:7:1::9]:443".to_string());
    proxy.send(&get("/").token("b"), unauthorized());
    proxy.host.peer = Some("[::ffff:198.51.100.4]:443".to_string());
    proxy.send(&get("/").token("c"), unauthorized());
    let rls = proxy.rls.borrow();
    let sent: Vec<_> = rls
        .requests
        .iter()
        .map(|request| {
            assert_eq!(request.domain, "edge-eu");
            assert_eq!(request.hits_addend, 1);
            assert_eq!(request.descriptors.len(), 1);
            let entries = &request.descriptors[0].entries;
            assert_eq!(entries.len(), 1);
            assert_eq!(entries[0].key, CLIENT_KEY);
            entries[0].value.clone()
        })
        .collect();
    assert_eq!(sent, ["192.0.2.1", "2001:db8:7::/48", "198.51.100.4"]);
    assert_eq!(proxy.count(Metric::ClusterCalls), 3);
}

#[test]
fn over_limit_blocks_the_client_here_before_its_next_request() {
    let mut proxy = cluster_proxy(3);
    // The fleet has already seen three failures of this client elsewhere.
    proxy.rls.borrow_mut().counts.insert("192.0.2.1".into(), 3);
    let seen = proxy.send(&get("/").token("t1"), unauthorized());
    assert_eq!(seen.status, 401);
    assert!(seen.held, "the failing response waits for the answer");
    assert_eq!(proxy.count(Metric::ClusterOverLimit), 1);
    assert_eq!(proxy.count(Metric::RateLimitBlocks), 1);
    proxy.advance(1_000);
    let blocked = proxy.send(&get("/").token("t2"), upstream(200));
    assert_eq!(blocked.status, 429);
    assert!(!blocked.reached_upstream);
    assert_eq!(blocked.decision, Some(Decision::Blocked));
    assert_eq!(blocked.header("retry-after"), Some("59"));
    // Refused locally: no call for a blocked client.
    assert_eq!(proxy.rls.borrow().requests.len(), 1);
    // Another client is not blocked.
    proxy.host.peer = Some("198.51.100.9:1".into());
    assert_eq!(proxy.send(&get("/").token("t"), upstream(200)).status, 200);
}

/// Failures of one client arriving one after another, alternating between replicas; returns
/// how many reached an upstream.
fn failures_reaching_upstreams(replicas: &mut [Proxy], attempts: usize) -> usize {
    let mut reached = 0;
    for n in 0..attempts {
        let replica = &mut replicas[n % replicas.len()];
        let seen = replica.send(&get("/").token(&format!("guess{n}")), unauthorized());
        if seen.reached_upstream {
            reached += 1;
        }
        replica.advance(10);
    }
    reached
}

#[test]
fn across_replicas_failures_reach_the_upstreams_at_most_max_failures_plus_replicas_times() {
    const MAX: u32 = 3;
    for replicas in [2usize, 3] {
        let first = cluster_proxy(MAX);
        let mut fleet: Vec<Proxy> = (0..replicas)
            .map(|_| first.replica(&config(MAX, CLUSTER)))
            .collect();
        let reached = failures_reaching_upstreams(&mut fleet, 40);
        assert_eq!(reached, MAX as usize + replicas, "{replicas} replicas");

        // The same pattern with each replica counting alone.
        let local = Proxy::new(&config(MAX, ""));
        let mut fleet: Vec<Proxy> = (0..replicas)
            .map(|_| local.replica(&config(MAX, "")))
            .collect();
        let reached = failures_reaching_upstreams(&mut fleet, 40);
        assert_eq!(
            reached,
            (MAX as usize + 1) * replicas,
            "{replicas} replicas, local"
        );
    }
}

#[test]
fn a_failed_call_counts_locally_and_the_breaker_opens_then_lets_one_trial_through() {
    let mut proxy = cluster_proxy(100);
    proxy.rls.borrow_mut().down = true;
    for n in 0..3 {
        let seen = proxy.send(&get("/").token(&format!("t{n}")), unauthorized());
        assert_eq!(seen.status, 401);
    }
    assert_eq!(proxy.count(Metric::ClusterErrors), 3);
    assert_eq!(proxy.count(Metric::ClusterBreakerOpen), 1);
    assert_eq!(proxy.count(Metric::RateLimitFailures), 3);
    // Open: failures are not sent and nothing waits.
    for n in 0..4 {
        let seen = proxy.send(&get("/").token(&format!("u{n}")), unauthorized());
        assert!(!seen.held);
    }
    assert_eq!(proxy.rls.borrow().requests.len(), 3);
    assert_eq!(proxy.count(Metric::ClusterSkipped), 4);
    assert_eq!(proxy.count(Metric::ClusterCalls), 3);

    // Open time over, the service still down: one trial, which opens it again.
    proxy.advance(10_000);
    proxy.send(&get("/").token("v"), unauthorized());
    proxy.send(&get("/").token("w"), unauthorized());
    assert_eq!(proxy.rls.borrow().requests.len(), 4);
    assert_eq!(proxy.count(Metric::ClusterBreakerOpen), 2);

    // The service is back: the next trial closes it, and calls resume.
    proxy.rls.borrow_mut().down = false;
    proxy.advance(10_000);
    proxy.send(&get("/").token("x"), unauthorized());
    proxy.send(&get("/").token("y"), unauthorized());
    assert_eq!(proxy.rls.borrow().requests.len(), 6);
    assert_eq!(proxy.count(Metric::ClusterBreakerOpen), 2);
}

#[test]
fn the_breaker_is_shared_by_the_workers_of_a_process() {
    let mut worker = cluster_proxy(100);
    worker.rls.borrow_mut().down = true;
    for n in 0..3 {
        worker.send(&get("/").token(&format!("t{n}")), unauthorized());
    }
    // Another exchange on the same shared data (another worker) finds it open.
    let seen = worker.send(&get("/").token("z"), unauthorized());
    assert!(!seen.held);
    assert_eq!(worker.count(Metric::ClusterSkipped), 1);
}

#[test]
fn every_failing_response_waits_for_the_answer_whatever_its_body() {
    let mut proxy = cluster_proxy(100);
    let no_body = proxy.send(&get("/").token("a"), upstream(401));
    assert!(no_body.held);
    let big = "x".repeat(200_000);
    let large = proxy.send(&get("/").token("c"), upstream(401).chunk(big.as_bytes()));
    assert!(large.held);
    assert_eq!(large.body.len(), 200_000);
    assert_eq!(proxy.rls.borrow().requests.len(), 2);
}

#[test]
fn a_failure_that_blocks_locally_is_sent_but_does_not_wait() {
    let mut proxy = cluster_proxy(0);
    proxy.rls.borrow_mut().limit = 100;
    let seen = proxy.send(&get("/").token("a"), unauthorized());
    assert_eq!(proxy.count(Metric::RateLimitBlocks), 1);
    assert!(!seen.held);
    assert_eq!(proxy.rls.borrow().requests.len(), 1);
}

#[test]
fn replayed_failures_are_counted_locally_only() {
    let mut proxy = Proxy::new(&format!(
        r#"{{"rate_limit": {{"max_failures": 100{CLUSTER}}}}}"#
    ));
    proxy.rls.borrow_mut().limit = 100;
    proxy.send(&get("/").token("dead"), unauthorized());
    for _ in 0..3 {
        let hit = proxy.send(&get("/").token("dead"), upstream(200));
        assert_eq!(hit.decision, Some(Decision::Hit));
    }
    assert_eq!(proxy.count(Metric::RateLimitFailures), 4);
    assert_eq!(proxy.rls.borrow().requests.len(), 1);
}

#[test]
fn an_unresolved_client_is_neither_counted_nor_sent() {
    let mut proxy = cluster_proxy(3);
    proxy.host.peer = None;
    proxy.send(&get("/").token("a"), unauthorized());
    assert!(proxy.rls.borrow().requests.is_empty());
    proxy.host.peer = Some(PEER.into());
}
