#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Every Envoy configuration shipped under envoy/ passes
//! `envoy --mode validate` with the built filter (whose `on_configure`
//! runs under validate, so a plugin configuration it rejects fails here).
//! Skipped: docker-compose files and Kubernetes manifests (`apiVersion:`).

mod common;

use std::fs;
use std::path::PathBuf;

use common::{envoy_validate, wasm_path, TempDir};

fn shipped_configs() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("envoy");
    let mut configs: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("read envoy/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            (name.ends_with(".yaml") || name.ends_with(".yml"))
                && !name.starts_with("docker-compose")
        })
        // Kubernetes / Istio manifests are not Envoy bootstraps.
        .filter(|p| {
            let text = fs::read_to_string(p).unwrap_or_default();
            !text.lines().any(|l| l.starts_with("apiVersion:"))
        })
        .collect();
    configs.sort();
    configs
}

#[test]
fn shipped_envoy_configs_validate() {
    let configs = shipped_configs();
    assert!(!configs.is_empty(), "no Envoy config under envoy/");
    let wasm = wasm_path();
    for config in configs {
        // A copy next to the freshly built filter, so the relative
        // `negcache.wasm` resolves without depending on `make build`.
        let dir = TempDir::new("negcache-shipped");
        let copy = dir.path().join(config.file_name().expect("file name"));
        fs::copy(&config, &copy).expect("copy config");
        fs::copy(&wasm, dir.path().join("negcache.wasm")).expect("copy wasm");
        let (ok, output) = envoy_validate(&copy);
        assert!(ok, "{} does not validate:\n{output}", config.display());
    }
}
