#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! What a release ships (`make dist`, scripts/dist.sh): the filter, its checksum, and an OCI
//! image of it that Istio pulls, read back with skopeo as a registry client reads it; and the
//! version the running filter reports in Envoy's log.
//!
//! The image trials need skopeo (Debian package `skopeo`). Without it they report themselves
//! ignored, except under CI (`CI` set, where `.ci/run` installs it): there they fail. libtest
//! cannot decide at run time that a test is ignored, so this file is its own test harness
//! (`harness = false`, libtest-mimic), with libtest's output and options.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::trials::{needing, plain, Needs};
use common::{wasm_path, TempDir};
use libtest_mimic::{Arguments, Trial};
use serde_json::{json, Value};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn main() {
    let args = Arguments::from_args();
    let skopeo: Needs<()> = Command::new("skopeo")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
        .then_some(())
        .ok_or_else(|| "no skopeo: apt-get install skopeo".into());
    let image_trials: [(&str, fn()); 2] = [
        (
            "dist_ships_the_wasm_its_checksum_and_a_compat_wasm_image",
            dist_ships_the_wasm_its_checksum_and_a_compat_wasm_image,
        ),
        (
            "the_same_wasm_gives_the_same_image_digest",
            the_same_wasm_gives_the_same_image_digest,
        ),
    ];
    let mut trials: Vec<Trial> = image_trials
        .into_iter()
        .map(|(name, body)| needing(name, &skopeo, move |()| body()))
        .collect();
    trials.push(plain(
        "envoy_logs_the_filters_version_when_it_starts",
        envoy_logs_the_filters_version_when_it_starts,
    ));
    libtest_mimic::run(&args, trials).exit();
}

/// One run of scripts/dist.sh into a fresh directory.
struct Dist {
    dir: TempDir,
    stdout: String,
}

impl Dist {
    fn run() -> Dist {
        let dir = TempDir::new("negcache-dist");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dist.sh");
        let out = Command::new(&script)
            .arg(dir.path())
            .env("NEGCACHE_WASM", wasm_path())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "scripts/dist.sh failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Dist { dir, stdout }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The image layout, as skopeo names it: `oci:<dir>:<tag>`.
    fn image(&self) -> String {
        format!(
            "oci:{}:{VERSION}",
            self.path(&format!("negcache-{VERSION}.oci")).display()
        )
    }

    /// The first word after `label` on the printed line that starts with it.
    fn printed(&self, label: &str) -> String {
        self.stdout
            .lines()
            .find_map(|line| line.strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {label:?} line in:\n{}", self.stdout))
            .to_string()
    }
}

/// Runs `program args`, panics with its stderr unless it succeeds; returns stdout.
fn run(program: &str, args: &[&str], cwd: &Path) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("UTF-8 output")
}

/// SHA-256 (hex) of `bytes`, by coreutils' sha256sum.
fn sha256(bytes: &[u8], scratch: &Path) -> String {
    let file = scratch.join("sha256-input");
    fs::write(&file, bytes).unwrap();
    let out = text(run("sha256sum", &[file.to_str().unwrap()], scratch));
    fs::remove_file(&file).unwrap();
    out.split_whitespace().next().unwrap().to_string()
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn dist_ships_the_wasm_its_checksum_and_a_compat_wasm_image() {
    let wasm = fs::read(wasm_path()).unwrap();
    let dist = Dist::run();
    let scratch = TempDir::new("negcache-dist-check");

    // The .wasm is the shipped build, byte for byte, and its checksum file checks out.
    let wasm_name = format!("negcache-{VERSION}.wasm");
    assert!(
        fs::read(dist.path(&wasm_name)).unwrap() == wasm,
        "{wasm_name} differs from the shipped build"
    );
    let wasm_sha = sha256(&wasm, scratch.path());
    assert_eq!(
        fs::read_to_string(dist.path(&format!("{wasm_name}.sha256"))).unwrap(),
        format!("{wasm_sha}  {wasm_name}\n")
    );
    run(
        "sha256sum",
        &["--check", "--strict", &format!("{wasm_name}.sha256")],
        dist.dir.path(),
    );
    assert_eq!(dist.printed("wasm sha256: "), wasm_sha);

    // The push command, with the layout the script wrote.
    let layout = dist.path(&format!("negcache-{VERSION}.oci"));
    assert!(
        dist.stdout.contains(&format!(
            "push: skopeo copy --preserve-digests oci:{}:{VERSION} docker://REGISTRY/negcache:{VERSION}\n",
            layout.display()
        )),
        "{}",
        dist.stdout
    );

    // The digest printed for Istio is the manifest's, as skopeo computes it and as the
    // manifest's bytes hash.
    let digest = dist.printed("image manifest digest: ");
    assert!(is_hex64(&digest), "{digest:?}");
    let image = dist.image();
    let inspect: Value =
        serde_json::from_slice(&run("skopeo", &["inspect", &image], scratch.path())).unwrap();
    assert_eq!(inspect["Digest"], format!("sha256:{digest}"), "{inspect}");
    let raw = run("skopeo", &["inspect", "--raw", &image], scratch.path());
    assert_eq!(sha256(&raw, scratch.path()), digest);

    // The compat variant: one tar+gzip layer, the annotation.
    let manifest: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "{manifest}"
    );
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "{manifest}");
    assert_eq!(layers[0]["mediaType"], LAYER_MEDIA_TYPE, "{manifest}");
    assert_eq!(
        manifest["annotations"],
        json!({"module.wasm.image/variant": "compat"})
    );

    // Pulled as a registry client pulls it (every blob checked against its digest, digests
    // kept), the only layer holds exactly plugin.wasm, the shipped build.
    let pulled = scratch.path().join("pulled");
    let pulled_ref = format!("dir:{}", pulled.display());
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--insecure-policy",
            "--preserve-digests",
            &image,
            &pulled_ref,
        ],
        scratch.path(),
    );
    assert_eq!(fs::read(pulled.join("manifest.json")).unwrap(), raw);
    let layer_digest = layers[0]["digest"].as_str().unwrap();
    let layer = pulled.join(layer_digest.strip_prefix("sha256:").unwrap());
    let layer = layer.to_str().unwrap();
    let entries = text(run("tar", &["-tzf", layer], scratch.path()));
    assert_eq!(entries, "plugin.wasm\n");
    let extracted = scratch.path().join("layer");
    fs::create_dir(&extracted).unwrap();
    run(
        "tar",
        &["-xzf", layer, "-C", extracted.to_str().unwrap()],
        scratch.path(),
    );
    let files: Vec<_> = fs::read_dir(&extracted)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(files, ["plugin.wasm"]);
    assert!(
        fs::read(extracted.join("plugin.wasm")).unwrap() == wasm,
        "the layer's plugin.wasm differs from the shipped build"
    );
}

fn the_same_wasm_gives_the_same_image_digest() {
    let first = Dist::run();
    let second = Dist::run();
    let digest = first.printed("image manifest digest: ");
    assert_eq!(second.printed("image manifest digest: "), digest);
    let layout = format!("negcache-{VERSION}.oci");
    let index = |dist: &Dist| fs::read(dist.path(&layout).join("index.json")).unwrap();
    assert_eq!(index(&first), index(&second));
}

fn envoy_logs_the_filters_version_when_it_starts() {
    let (_upstream, envoy) = common::start(common::api, json!({}));
    envoy.wait_log_contains(&format!("negcache {VERSION} starting"));
}
