#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Smoke tests of the end-to-end harness itself, mostly with a plain Envoy
//! (no wasm filter): if these fail, the filter's end-to-end tests prove
//! nothing. The last one reconfigures the real filter on a running Envoy.

mod common;

use common::{Envoy, EnvoyOptions, Response, Upstream};
use serde_json::json;

#[test]
fn request_reaches_upstream_and_connections_spread_over_both_workers() {
    let upstream = Upstream::start(|req| {
        if req.path_only() == "/healthz" {
            Response::ok().text("ok")
        } else {
            Response::new(401)
                .header("www-authenticate", "Bearer")
                .json(r#"{"error":"invalid token"}"#)
        }
    });
    let envoy = Envoy::start(EnvoyOptions::without_filter(upstream.port()));

    let resp = envoy.get("/api/me?x=1", &[("authorization", "Bearer wrong")]);
    assert_eq!(resp.status, 401);
    assert!(resp.complete);
    assert_eq!(resp.header("WWW-Authenticate"), Some("Bearer"));
    assert_eq!(resp.json()["error"], "invalid token");
    upstream.assert_count(1);
    let seen = &upstream.requests()[0];
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.path, "/api/me?x=1");
    assert_eq!(seen.header("authorization"), Some("Bearer wrong"));

    // A fresh connection per request: the kernel spreads them over the
    // workers' listen sockets.
    for _ in 0..40 {
        assert_eq!(envoy.get("/healthz", &[]).status, 200);
    }
    upstream.assert_count(41);
    assert_eq!(upstream.count_where(|r| r.path == "/healthz"), 40);
    let (w0, w1) = envoy.worker_connections();
    assert!(
        w0 > 0 && w1 > 0,
        "connections per worker: {w0} and {w1}, expected both > 0"
    );
    assert_eq!(envoy.stat("http.ingress_http.downstream_rq_total"), 41);

    let entries = envoy.wait_access_log(41);
    assert_eq!(entries[0].method, "GET");
    assert_eq!(entries[0].path, "/api/me?x=1");
    assert_eq!(entries[0].status, 401);
    assert_eq!(entries[0].decision, None, "no filter, no decision");
}

#[test]
fn upstream_bodies_chunks_and_early_end_reach_the_client() {
    let upstream = Upstream::start(|req| match req.path.as_str() {
        "/echo" => Response::ok().body(req.body.clone()),
        "/chunked" => Response::ok().text("").chunked(&["one,", "two,", "three"]),
        "/truncated" => Response::ok().body("only part").truncated(1000),
        _ => Response::new(404),
    });
    let envoy = Envoy::start(EnvoyOptions::without_filter(upstream.port()));

    let resp = envoy.request_with_body("POST", "/echo", &[], b"hello body");
    assert_eq!((resp.status, resp.body_str().as_str()), (200, "hello body"));
    assert_eq!(upstream.requests()[0].body, b"hello body");

    let resp = envoy.get("/chunked", &[]);
    assert_eq!(resp.status, 200);
    assert!(resp.complete);
    assert_eq!(resp.body_str(), "one,two,three");

    let resp = envoy.get("/truncated", &[]);
    assert_eq!(resp.status, 200);
    assert!(!resp.complete, "body should end early: {resp:?}");

    // Keep-alive on the client side too.
    let mut conn = envoy.connect();
    assert_eq!(conn.get("/echo", &[]).status, 200);
    assert_eq!(conn.get("/nope", &[]).status, 404);
}

#[test]
fn reconfigure_replaces_the_plugin_configuration_and_keeps_the_vm() {
    let upstream = Upstream::always(Response::new(401).json(r#"{"error":"invalid token"}"#));
    let envoy = Envoy::start(EnvoyOptions {
        dynamic_listener: true,
        ..EnvoyOptions::new(upstream.port(), json!({"rate_limit": {"enabled": false}}))
    });
    assert!(!envoy.bootstrap().to_string().contains("filter_chains"));
    assert_eq!(
        envoy.listener_plugin_config(),
        json!({"rate_limit": {"enabled": false}})
    );
    let auth = [("authorization", "Bearer t1")];

    let first = envoy.get("/", &auth);
    assert_eq!((first.status, first.negcache()), (401, None));
    let hit = envoy.get("/", &auth);
    assert_eq!((hit.status, hit.negcache()), (401, Some("hit")));
    upstream.assert_count(1);
    envoy.wait_metric("negcache_stores_total", 1);

    // A new cache epoch: entries stored before no longer answer.
    envoy.reconfigure(json!({
        "rate_limit": {"enabled": false},
        "negative_cache": {"epoch": 1}
    }));
    assert_eq!(envoy.listener_plugin_config()["negative_cache"]["epoch"], 1);
    let miss = envoy.get("/", &auth);
    assert_eq!((miss.status, miss.negcache()), (401, None));
    upstream.assert_count(2);
    let hit = envoy.get("/", &auth);
    assert_eq!((hit.status, hit.negcache()), (401, Some("hit")));
    upstream.assert_count(2);
    // Same VM: the process-wide metric went on counting.
    envoy.wait_metric("negcache_stores_total", 2);
    assert_eq!(envoy.stat("listener_manager.lds.update_success"), 2);

    // on_configure refuses this: the update is rejected, the epoch-1
    // configuration keeps serving.
    let log = envoy
        .try_reconfigure(json!({"negative_cache": {"capacity": 0}}))
        .expect_err("capacity 0 must be rejected");
    assert!(log.contains("capacity"), "log tail:\n{log}");
    assert_eq!(envoy.stat("listener_manager.lds.update_rejected"), 1);
    let still = envoy.get("/", &auth);
    assert_eq!((still.status, still.negcache()), (401, Some("hit")));
    upstream.assert_count(2);

    // A valid configuration after the rejected one is taken.
    envoy.reconfigure(json!({
        "rate_limit": {"enabled": false},
        "negative_cache": {"epoch": 2}
    }));
    let miss = envoy.get("/", &auth);
    assert_eq!((miss.status, miss.negcache()), (401, None));
    upstream.assert_count(3);
    let hit = envoy.get("/", &auth);
    assert_eq!((hit.status, hit.negcache()), (401, Some("hit")));
    upstream.assert_count(3);
}

#[test]
fn a_lean_upstream_answers_by_path_prefix_and_listener_fields_are_merged() {
    let upstream = Upstream::lean(&[
        (
            "/fail",
            Response::new(401).json(r#"{"error":"invalid token"}"#),
        ),
        ("/ok", Response::ok().text("ok")),
    ]);
    // Connections handed to the worker with the fewest, instead of the kernel's hashing.
    let envoy = Envoy::start(EnvoyOptions {
        listener_extra: json!({"connection_balance_config": {"exact_balance": {}}}),
        ..EnvoyOptions::without_filter(upstream.port())
    });
    assert_eq!(
        envoy.bootstrap()["static_resources"]["listeners"][0]["connection_balance_config"],
        json!({"exact_balance": {}})
    );

    let fail = envoy.get("/fail/x", &[]);
    assert_eq!(
        (fail.status, fail.json()),
        (401, json!({"error": "invalid token"}))
    );
    assert_eq!(envoy.get("/other", &[]).status, 404);
    // Four connections open at once: two per worker.
    let (w0, w1) = envoy.worker_connections();
    let mut connections: Vec<_> = (0..4).map(|_| envoy.connect()).collect();
    for connection in &mut connections {
        let ok = connection.get("/ok", &[]);
        assert_eq!((ok.status, ok.body_str().as_str()), (200, "ok"));
        let posted = connection.request("POST", "/ok", &[], b"a body");
        assert_eq!(posted.status, 200);
    }
    assert_eq!(envoy.worker_connections(), (w0 + 2, w1 + 2));
    upstream.assert_count(10);
    assert!(upstream.requests().is_empty(), "counted, not recorded");
}
