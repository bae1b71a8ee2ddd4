#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The Grafana dashboard (envoy/grafana/negcache.json) and the Prometheus alerts
//! (envoy/prometheus/alerts.yaml) work on what Envoy really exports:
//!
//! - every metric name they use is in a real Envoy's `/stats/prometheus` under that exact name,
//!   with live values after traffic, and in `/stats` as `wasmcustom.<name>`; the dashboard
//!   shows every metric the filter defines;
//! - Istio's stats matcher (the prefixes its bootstrap always keeps, and the README's
//!   `proxyStatsMatcher`) keeps them, and a matcher on the Prometheus names drops them all;
//! - `promtool` accepts the rules and the dashboard's queries, and the rules' unit tests
//!   (alerts.test.yaml) pass, fire every alert in one case and keep it silent in another, and
//!   fail when an alert that should fire is expected not to.
//!
//! The promtool trials need `promtool` (Debian package `prometheus`): without it they report
//! themselves ignored, except under CI (`CI` set, where `.ci/run` installs it): there they fail.
//! libtest cannot decide at run time that a test is ignored, so this file is its own test
//! harness (`harness = false`, libtest-mimic).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::trials::{needing, plain, Needs};
use common::{
    api, envoy_bin, free_port, http_request, wait_until, write_plugin_bootstrap, Envoy,
    EnvoyOptions, TempDir, Upstream, WAIT,
};
use libtest_mimic::{Arguments, Trial};
use negcache::metrics::Metric;
use serde_json::{json, Value};

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = repository().join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const DASHBOARD: &str = "envoy/grafana/negcache.json";
const ALERTS: &str = "envoy/prometheus/alerts.yaml";
const ALERT_TESTS: &str = "envoy/prometheus/alerts.test.yaml";

/// Every `negcache_[a-z_]+` in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("negcache_") {
        let tail = &rest[at + "negcache_".len()..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        if len > 0 {
            names.insert(format!("negcache_{}", &tail[..len]));
        }
        rest = tail;
    }
    names
}

/// `/stats/prometheus` as name -> value (label-less series, as Envoy exports the filter's).
fn prometheus_samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

// -- the dashboard and the rules against a real Envoy -----------------------------------------

fn the_dashboard_and_the_alerts_use_only_metrics_envoy_exports() {
    // The limiter blocks at the third failure, so one client's four failing requests make a
    // miss, a store, hits, a block and a refusal.
    // Envoy does not append its own address to X-Forwarded-For (it would, for a loopback
    // peer), so only the request that sends the header carries one.
    let upstream = Upstream::start(api);
    let envoy = Envoy::start(EnvoyOptions {
        skip_xff_append: true,
        ..EnvoyOptions::new(upstream.port(), json!({"rate_limit": {"max_failures": 2}}))
    });
    // A client header from a peer that is not a trusted proxy: ignored and counted.
    envoy.get(
        "/api/me",
        &[
            ("authorization", "Bearer good"),
            ("x-forwarded-for", "203.0.113.9"),
        ],
    );
    for _ in 0..4 {
        envoy.get("/api/me", &[("authorization", "Bearer dead-token")]);
    }
    // Each worker's VM hands its counts over on its own tick: wait for all of them.
    for (name, value) in [
        ("negcache_misses_total", 2),
        ("negcache_stores_total", 1),
        ("negcache_hits_total", 2),
        ("negcache_ratelimit_blocks_total", 1),
        ("negcache_ratelimit_rejected_total", 1),
        ("negcache_client_ip_untrusted_header_total", 1),
    ] {
        envoy.wait_metric(name, value);
    }
    assert_eq!(
        upstream.count(),
        2,
        "the good request and the first failure"
    );

    let exported = prometheus_samples(&envoy.prometheus());
    let stats = envoy.stats_text();
    for (what, names) in [
        (DASHBOARD, metric_names(&read(DASHBOARD))),
        (ALERTS, metric_names(&read(ALERTS))),
    ] {
        assert!(names.len() > 5, "{what} uses {names:?}");
        for name in names {
            assert!(
                exported.contains_key(&name),
                "{what} uses {name}, which Envoy's /stats/prometheus does not have"
            );
            assert!(
                stats.contains(&format!("\nwasmcustom.{name}: ")),
                "/stats has no wasmcustom.{name}"
            );
        }
    }
    // The scraped values are the live ones.
    assert_eq!(
        exported["negcache_misses_total"], 2.0,
        "the good request and the first failure"
    );
    assert_eq!(exported["negcache_stores_total"], 1.0);
    assert_eq!(exported["negcache_hits_total"], 2.0);
    assert_eq!(exported["negcache_ratelimit_blocks_total"], 1.0);
    assert_eq!(exported["negcache_ratelimit_rejected_total"], 1.0);
    assert_eq!(exported["negcache_client_ip_untrusted_header_total"], 1.0);
    assert!(exported["negcache_slots_used"] >= 1.0);
}

fn the_dashboard_shows_every_metric_the_filter_defines() {
    let shown = metric_names(&read(DASHBOARD));
    for metric in Metric::ALL {
        assert!(
            shown.contains(metric.name()),
            "{DASHBOARD} does not show {}",
            metric.name()
        );
    }
}

/// Every panel of the dashboard (rows' own panels included).
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut found = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        found.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            found.extend(nested);
        }
    }
    found
}

/// The dashboard's queries with its variables replaced by their defaults (`$instance`: all),
/// and Grafana's own by sample values: (panel id and ref, PromQL).
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut values: Vec<(String, String)> = vec![
        ("$__rate_interval".into(), "1m".into()),
        ("$__range".into(), "1h".into()),
    ];
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        let name = variable["name"].as_str().unwrap();
        let value = match variable["type"].as_str().unwrap() {
            "textbox" | "constant" => variable["query"].as_str().unwrap().to_string(),
            "query" => variable["allValue"].as_str().unwrap().to_string(),
            _ => continue,
        };
        values.push((format!("${name}"), value));
    }
    // Longer names first, so `$capacity` does not replace the start of `$capacity_x`.
    values.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let mut queries = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let mut expr = target["expr"].as_str().unwrap().to_string();
            for (name, value) in &values {
                expr = expr.replace(name, value);
            }
            assert!(!expr.contains('$'), "an unknown variable in {expr}");
            queries.push((
                format!("{}_{}", panel["id"], target["refId"].as_str().unwrap()),
                expr,
            ));
        }
    }
    queries
}

fn the_dashboard_is_a_grafana_dashboard_over_a_prometheus_variable() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let datasource = variables
        .iter()
        .find(|v| v["name"] == "DS_PROMETHEUS")
        .expect("a DS_PROMETHEUS variable");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let mut ids = BTreeSet::new();
    let mut targets = 0;
    for panel in panels(&dashboard) {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "panel ids repeat"
        );
        assert!(panel["gridPos"]["w"].as_u64().unwrap() > 0);
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${DS_PROMETHEUS}",
            "{}",
            panel["title"]
        );
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}");
            assert!(target["expr"]
                .as_str()
                .is_some_and(|e| e.contains("negcache_")));
            targets += 1;
        }
    }
    assert_eq!(dashboard_queries(&dashboard).len(), targets);
}

// -- Istio's stats matcher --------------------------------------------------------------------

/// An Envoy started from `bootstrap` in `dir`, stopped when dropped.
struct PlainEnvoy {
    child: Child,
    admin_port: u16,
}

impl PlainEnvoy {
    fn start(dir: &Path, mut bootstrap: Value) -> PlainEnvoy {
        let admin_port = free_port();
        bootstrap["admin"]["address"]["socket_address"]["port_value"] = json!(admin_port);
        let path = dir.join("envoy-matcher.json");
        fs::write(&path, bootstrap.to_string()).unwrap();
        let log = fs::File::create(dir.join("envoy.log")).unwrap();
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&path)
            .args(["--concurrency", "1", "--disable-hot-restart"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start envoy");
        let mut envoy = PlainEnvoy { child, admin_port };
        wait_until("Envoy's admin /ready", WAIT, || {
            assert!(
                envoy.child.try_wait().unwrap().is_none(),
                "Envoy exited: {}",
                fs::read_to_string(dir.join("envoy.log")).unwrap_or_default()
            );
            TcpStream::connect(("127.0.0.1", admin_port)).is_ok() && envoy.admin("/ready").0 == 200
        });
        envoy
    }

    fn admin(&mut self, path: &str) -> (u16, String) {
        let response = http_request(self.admin_port, "GET", path, &[], b"");
        (response.status, response.body_str())
    }
}

impl Drop for PlainEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The filter's metrics an Envoy whose stats matcher keeps only `prefixes` exports, in
/// `/stats/prometheus` and in `/stats` (`wasmcustom.` removed).
fn kept_by_matcher(prefixes: &[String]) -> (BTreeSet<String>, BTreeSet<String>) {
    let dir = TempDir::new("negcache-stats-matcher");
    let path = write_plugin_bootstrap(dir.path(), "{}");
    let mut bootstrap: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let patterns: Vec<Value> = prefixes.iter().map(|p| json!({"prefix": p})).collect();
    bootstrap["stats_config"] =
        json!({"stats_matcher": {"inclusion_list": {"patterns": patterns}}});
    let mut envoy = PlainEnvoy::start(dir.path(), bootstrap);
    let (status, prometheus) = envoy.admin("/stats/prometheus");
    assert_eq!(status, 200);
    let (_, stats) = envoy.admin("/stats");
    let in_prometheus = prometheus_samples(&prometheus)
        .into_keys()
        .filter(|name| name.starts_with("negcache_"))
        .collect();
    let in_stats = stats
        .lines()
        .filter_map(|line| line.split(':').next()?.strip_prefix("wasmcustom."))
        .map(str::to_string)
        .collect();
    (in_prometheus, in_stats)
}

/// `inclusionPrefixes` of the `proxyStatsMatcher` the README's Istio section gives.
fn readme_inclusion_prefixes() -> Vec<String> {
    let readme = read("README.md");
    let start = readme
        .find("\n### Istio\n")
        .expect("README.md has `### Istio`");
    let section = &readme[start + 1..];
    let end = section[1..]
        .find("\n## ")
        .map_or(section.len(), |at| at + 1);
    let section = &section[..end];
    let block = section
        .split("```yaml\n")
        .skip(1)
        .map(|b| b.split("\n```").next().unwrap())
        .find(|b| b.contains("proxyStatsMatcher"))
        .expect("a ```yaml block with proxyStatsMatcher in README.md's Istio section");
    let value: Value = serde_norway::from_str(block).unwrap();
    fn find(value: &Value) -> Option<&Value> {
        match value {
            Value::Object(map) => map
                .get("inclusionPrefixes")
                .or_else(|| map.values().find_map(find)),
            _ => None,
        }
    }
    find(&value)
        .and_then(Value::as_array)
        .expect("inclusionPrefixes")
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

fn istios_stats_matcher_keeps_the_filters_metrics() {
    let all: BTreeSet<String> = Metric::ALL.iter().map(|m| m.name().to_string()).collect();
    let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // The prefixes Istio's bootstrap always keeps (pkg/bootstrap/config.go:
    // reporter=, the required ones, component, istio), without any of the user's.
    let istio_defaults = strings(&[
        "reporter=",
        "cluster_manager",
        "listener_manager",
        "server",
        "cluster.xds-grpc",
        "wasm",
        "component",
        "istio",
    ]);
    let readme = readme_inclusion_prefixes();
    assert!(!readme.is_empty());
    for (what, prefixes) in [("Istio's defaults", istio_defaults), ("README", readme)] {
        let (prometheus, stats) = kept_by_matcher(&prefixes);
        assert_eq!(prometheus, all, "{what}: /stats/prometheus");
        assert_eq!(stats, all, "{what}: /stats");
    }
    // The control: a matcher on the Prometheus names keeps none, so the matcher is applied,
    // and it sees the internal names.
    let (prometheus, stats) = kept_by_matcher(&strings(&["negcache_", "server"]));
    assert!(prometheus.is_empty(), "{prometheus:?}");
    assert!(stats.is_empty(), "{stats:?}");
}

// -- promtool ---------------------------------------------------------------------------------

fn promtool_available() -> bool {
    Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs promtool with `args` in the repository: (succeeded, stdout + stderr).
fn promtool(args: &[&str]) -> (bool, String) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(repository())
        .output()
        .expect("run promtool");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn the_alert_rules_pass_promtool_check() {
    let (ok, output) = promtool(&["check", "rules", ALERTS]);
    assert!(ok, "promtool check rules {ALERTS}:\n{output}");
}

/// Every alert of alerts.yaml.
fn alert_names() -> BTreeSet<String> {
    let rules: Value = serde_norway::from_str(&read(ALERTS)).unwrap();
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap())
        .filter_map(|rule| rule["alert"].as_str().map(str::to_string))
        .collect()
}

fn every_alert_fires_and_stays_silent_in_its_unit_tests() {
    let alerts = alert_names();
    assert!(alerts.len() >= 5, "{alerts:?}");
    let tests: Value = serde_norway::from_str(&read(ALERT_TESTS)).unwrap();
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for test in tests["tests"].as_array().unwrap() {
        for case in test["alert_rule_test"].as_array().unwrap() {
            let name = case["alertname"].as_str().unwrap().to_string();
            assert!(
                alerts.contains(&name),
                "{ALERT_TESTS} tests an unknown {name}"
            );
            let expected = case["exp_alerts"].as_array().map_or(0, Vec::len);
            if expected > 0 {
                firing.insert(name);
            } else {
                silent.insert(name);
            }
        }
    }
    assert_eq!(firing, alerts, "alerts without a case where they fire");
    assert_eq!(
        silent, alerts,
        "alerts without a case where they stay silent"
    );

    let (ok, output) = promtool(&["test", "rules", ALERT_TESTS]);
    assert!(ok, "promtool test rules {ALERT_TESTS}:\n{output}");

    // The same tests, each firing case expecting silence: promtool must fail every one, so the
    // alerts do fire there.
    let dir = TempDir::new("negcache-alert-tests");
    let mut flipped = tests.clone();
    flipped["rule_files"] = json!([repository().join(ALERTS).to_string_lossy()]);
    for test in flipped["tests"].as_array_mut().unwrap() {
        for case in test["alert_rule_test"].as_array_mut().unwrap() {
            case["exp_alerts"] = json!([]);
        }
    }
    let path = dir.path().join("flipped.test.json");
    fs::write(&path, flipped.to_string()).unwrap();
    let (ok, output) = promtool(&["test", "rules", path.to_str().unwrap()]);
    assert!(
        !ok,
        "every alert expected silent, yet promtool passed:\n{output}"
    );
    for alert in &alerts {
        assert!(
            output.contains(&format!("alertname: {alert},")),
            "{alert} did not fire where it should:\n{output}"
        );
    }
}

fn the_dashboards_queries_are_valid_promql() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let rules: Vec<Value> = dashboard_queries(&dashboard)
        .into_iter()
        .map(|(id, expr)| json!({"record": format!("negcache_dashboard:panel_{id}"), "expr": expr}))
        .collect();
    let count = rules.len();
    let dir = TempDir::new("negcache-dashboard-queries");
    let path = dir.path().join("dashboard-queries.json");
    fs::write(
        &path,
        json!({"groups": [{"name": "dashboard", "rules": rules}]}).to_string(),
    )
    .unwrap();
    let (ok, output) = promtool(&["check", "rules", path.to_str().unwrap()]);
    assert!(ok, "the dashboard's queries:\n{output}");
    assert!(output.contains(&format!("{count} rules found")), "{output}");
}

fn main() {
    let args = Arguments::from_args();
    let promtool: Needs<()> = promtool_available()
        .then_some(())
        .ok_or_else(|| "no promtool: apt-get install prometheus".into());
    let with_promtool: [(&str, fn()); 3] = [
        (
            "the_alert_rules_pass_promtool_check",
            the_alert_rules_pass_promtool_check,
        ),
        (
            "every_alert_fires_and_stays_silent_in_its_unit_tests",
            every_alert_fires_and_stays_silent_in_its_unit_tests,
        ),
        (
            "the_dashboards_queries_are_valid_promql",
            the_dashboards_queries_are_valid_promql,
        ),
    ];
    let mut trials: Vec<Trial> = with_promtool
        .into_iter()
        .map(|(name, body)| needing(name, &promtool, move |()| body()))
        .collect();
    let plain_tests: [(&str, fn()); 4] = [
        (
            "the_dashboard_and_the_alerts_use_only_metrics_envoy_exports",
            the_dashboard_and_the_alerts_use_only_metrics_envoy_exports,
        ),
        (
            "the_dashboard_shows_every_metric_the_filter_defines",
            the_dashboard_shows_every_metric_the_filter_defines,
        ),
        (
            "the_dashboard_is_a_grafana_dashboard_over_a_prometheus_variable",
            the_dashboard_is_a_grafana_dashboard_over_a_prometheus_variable,
        ),
        (
            "istios_stats_matcher_keeps_the_filters_metrics",
            istios_stats_matcher_keeps_the_filters_metrics,
        ),
    ];
    trials.extend(
        plain_tests
            .into_iter()
            .map(|(name, body)| plain(name, body)),
    );
    libtest_mimic::run(&args, trials).exit();
}
