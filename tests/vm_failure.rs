#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! What a client gets when the filter's VM fails, under each of Envoy's `failure_policy` values.
//! The filter is the `test-fault` build: a request carrying `x-negcache-test-fault` kills its VM
//! as a bug would. One worker, so the VM that died is the one every later request meets.

mod common;

use common::{Envoy, EnvoyOptions, FailurePolicy, Request, Response, Upstream, WAIT};
use serde_json::json;

const BAD: [(&str, &str); 1] = [("authorization", "Bearer bad")];
const FAULT: [(&str, &str); 2] = [
    ("authorization", "Bearer good"),
    ("x-negcache-test-fault", "1"),
];

/// An Envoy whose filter has cached `Bearer bad`'s 401, then had its VM killed.
fn failed_vm(policy: FailurePolicy) -> (Upstream, Envoy) {
    let upstream = Upstream::start(|req: &Request| {
        if req.header("authorization") == Some("Bearer good") {
            Response::ok().json(r#"{"user":"good"}"#)
        } else {
            Response::new(401).json(r#"{"error":"invalid token"}"#)
        }
    });
    let envoy = Envoy::start(EnvoyOptions {
        failure_policy: policy,
        wasm: Some(common::fault_wasm_path()),
        concurrency: 1,
        ..EnvoyOptions::new(upstream.port(), json!({}))
    });
    envoy.miss_then_hit("/api/me", &BAD);
    let count = upstream.count();
    // Under every policy the request the VM dies on is answered 503 by Envoy.
    let fault = envoy.get("/api/me", &FAULT);
    assert_eq!(fault.status, 503, "{policy:?}: {fault:?}");
    assert_eq!(upstream.count(), count, "{policy:?}");
    (upstream, envoy)
}

#[test]
fn fail_open_lets_every_later_request_through_unfiltered() {
    let (upstream, envoy) = failed_vm(FailurePolicy::FailOpen);
    let count = upstream.count();
    for _ in 0..3 {
        let bad = envoy.get("/api/me", &BAD);
        assert_eq!((bad.status, bad.negcache()), (401, None), "{bad:?}");
        assert_eq!(envoy.get("/api/me", &FAULT).status, 200);
    }
    assert_eq!(
        upstream.count(),
        count + 6,
        "the upstream answers everything"
    );
}

#[test]
fn fail_closed_refuses_every_later_request() {
    let (upstream, envoy) = failed_vm(FailurePolicy::FailClosed);
    let count = upstream.count();
    for _ in 0..3 {
        assert_eq!(envoy.get("/api/me", &BAD).status, 503);
        let good = envoy.get("/api/me", &[("authorization", "Bearer good")]);
        assert_eq!(good.status, 503, "{good:?}");
    }
    assert_eq!(upstream.count(), count, "nothing reaches the upstream");
}

#[test]
fn fail_reload_refuses_until_a_new_vm_serves_with_the_cache_intact() {
    let (_upstream, envoy) = failed_vm(FailurePolicy::FailReload);
    // Envoy reloads the VM after a back-off; until then requests are refused. The entries
    // live in shared data, which outlives the VM: the new VM answers from them.
    common::wait_until("a reloaded VM answering from the cache", WAIT, || {
        let answer = envoy.get("/api/me", &BAD);
        assert!(
            answer.status == 503 || (answer.status, answer.negcache()) == (401, Some("hit")),
            "{answer:?}"
        );
        answer.status == 401
    });
    assert!(envoy.stat("wasm.negcache.vm_reload_success") >= 1);
    let good = envoy.get("/api/me", &[("authorization", "Bearer good")]);
    assert_eq!(good.status, 200);
}
