#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The repository's Dockerfile, built as a user with Docker or Podman builds it: the image must
//! have one layer, holding `plugin.wasm` byte for byte as `make build` made it
//! (`target/negcache.wasm`), which is what Istio's WasmPlugin pulls from an `oci://` URL.
//!
//! Builds with `podman build` through scripts/podman.sh, reads the image back with `podman save
//! --format oci-dir` (layers differ by timestamps, so the file inside is compared, not the
//! layer), then removes the image. Where podman cannot run a container the trial reports itself
//! ignored, except under CI (`CI` set, where `.ci/run` installs podman): there it fails. Like
//! tests/browser.rs, this file is its own libtest-mimic harness to decide that at run time.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::trials::{needing, Needs};
use common::TempDir;
use libtest_mimic::Arguments;
use serde_json::Value;

fn main() {
    let args = Arguments::from_args();
    let podman: Needs<()> = match podman_cannot_run() {
        None => Ok(()),
        Some(why) => Err(format!("no podman: {why}")),
    };
    let trial = needing(
        "the_image_is_one_layer_holding_the_built_filter_as_plugin_wasm",
        &podman,
        |()| the_image_is_one_layer_holding_the_built_filter_as_plugin_wasm(),
    );
    libtest_mimic::run(&args, vec![trial]).exit();
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn podman(args: &[&str]) -> Command {
    let mut command = Command::new(repo().join("scripts/podman.sh"));
    command.args(args);
    command
}

/// Why podman cannot run a container here (`scripts/podman.sh --check`), or `None`.
fn podman_cannot_run() -> Option<String> {
    match podman(&["--check"]).output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        Err(err) => Some(format!("cannot run scripts/podman.sh: {err}")),
    }
}

fn run(what: &str, mut command: Command) -> Output {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Removes the image when the test ends, passed or not.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = podman(&["rmi", "--force", &self.0]).output();
    }
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn blob(dir: &Path, digest: &str) -> PathBuf {
    let (algorithm, hex) = digest.split_once(':').expect("digest is ALGORITHM:HEX");
    dir.join("blobs").join(algorithm).join(hex)
}

fn the_image_is_one_layer_holding_the_built_filter_as_plugin_wasm() {
    let wasm = repo().join("target/negcache.wasm");
    let built = std::fs::read(&wasm)
        .unwrap_or_else(|e| panic!("{}: {e} (run `make build` first)", wasm.display()));

    let image = Image(format!(
        "localhost/negcache-dockerfile-test:{}",
        std::process::id()
    ));
    let mut build = podman(&["build", "--quiet", "--tag", &image.0, "--file"]);
    build.arg(repo().join("Dockerfile")).arg(repo());
    run("podman build", build);

    let tmp = TempDir::new("negcache-dockerfile");
    let saved = tmp.path().join("image");
    let mut save = podman(&["save", "--format", "oci-dir", "--output"]);
    save.arg(&saved).arg(&image.0);
    run("podman save", save);

    let index = read_json(&saved.join("index.json"));
    let manifest = read_json(&blob(
        &saved,
        index["manifests"][0]["digest"]
            .as_str()
            .expect("index names a manifest"),
    ));
    let layers = manifest["layers"]
        .as_array()
        .expect("manifest lists layers");
    assert_eq!(layers.len(), 1, "one layer, got {layers:?}");
    let media_type = layers[0]["mediaType"].as_str().unwrap_or_default();
    assert!(
        media_type.starts_with("application/vnd.oci.image.layer.v1.tar"),
        "a tar layer, got {media_type}"
    );
    let layer = blob(&saved, layers[0]["digest"].as_str().expect("layer digest"));

    // GNU tar reads a compressed layer as it is.
    let mut list = Command::new("tar");
    list.arg("-tf").arg(&layer);
    let entries = String::from_utf8(run("tar -t", list).stdout).expect("tar lists UTF-8 names");
    let entries: Vec<&str> = entries.lines().collect();
    assert_eq!(
        entries,
        ["plugin.wasm"],
        "the layer holds plugin.wasm alone"
    );

    let mut extract = Command::new("tar");
    extract.arg("-xOf").arg(&layer).arg("plugin.wasm");
    let plugin = run("tar -x", extract).stdout;
    assert!(
        plugin == built,
        "plugin.wasm ({} bytes) differs from {} ({} bytes)",
        plugin.len(),
        wasm.display(),
        built.len()
    );
}
