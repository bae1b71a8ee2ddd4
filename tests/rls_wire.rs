#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The rate limit service messages' expected bytes (`tests/data/rls/*.bin`, which the filter's
//! unit tests compare with what it encodes and decodes) are what `protoc` makes of the text
//! messages beside them (`*.txt`) with the published definitions: Envoy's `rls.proto` as
//! vendored with Limitador (`../shared/vendor/limitador/.../vendor/protobufs`).
//!
//! Needs `protoc` (Debian `protobuf-compiler`, which building Limitador installs) and the
//! vendored sources; without them the trials report themselves ignored, except under CI (`CI`
//! set), where they fail. Its own harness (libtest-mimic), like tests/browser.rs.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::trials::{needing, Needs};
use libtest_mimic::Arguments;

fn protobufs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/vendor/limitador/limitador-server/vendor/protobufs")
}

/// `protoc --encode=TYPE` of `text` with the vendored definitions.
fn encode(message_type: &str, text: &[u8]) -> Result<Vec<u8>, String> {
    let root = protobufs();
    let mut child = Command::new("protoc")
        .args(
            ["data-plane-api", "xds", "protoc-gen-validate", "googleapis"].map(|dir| {
                let mut flag = std::ffi::OsString::from("-I");
                flag.push(root.join(dir));
                flag
            }),
        )
        .arg(format!("--encode={message_type}"))
        .arg("envoy/service/ratelimit/v3/rls.proto")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("protoc: {e}"))?;
    child.stdin.take().unwrap().write_all(text).unwrap();
    let output = child.wait_with_output().unwrap();
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(output.stdout)
}

fn check(name: &str, message_type: &str) {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/rls");
    let text = std::fs::read(data.join(format!("{name}.txt"))).unwrap();
    let committed = std::fs::read(data.join(format!("{name}.bin"))).unwrap();
    let encoded = encode(message_type, &text).unwrap_or_else(|e| panic!("protoc: {e}"));
    assert_eq!(
        encoded, committed,
        "tests/data/rls/{name}.bin differs from protoc's encoding of {name}.txt"
    );
}

fn main() {
    let args = Arguments::from_args();
    let protoc = Command::new("protoc").arg("--version").output().is_ok();
    let vendored = protobufs().join("data-plane-api").is_dir();
    let tools: Needs<()> = match (protoc, vendored) {
        (true, true) => Ok(()),
        (false, _) => Err("protoc not found (Debian: apt-get install protobuf-compiler)".into()),
        (true, false) => Err("no vendored protobufs at ../shared/vendor/limitador".into()),
    };
    let cases = [
        (
            "request-ipv4",
            "envoy.service.ratelimit.v3.RateLimitRequest",
        ),
        (
            "request-ipv6",
            "envoy.service.ratelimit.v3.RateLimitRequest",
        ),
        (
            "response-over-limit",
            "envoy.service.ratelimit.v3.RateLimitResponse",
        ),
        (
            "response-ok",
            "envoy.service.ratelimit.v3.RateLimitResponse",
        ),
    ];
    let trials = cases
        .into_iter()
        .map(|(name, message_type)| {
            let trial = format!("protoc_encodes_{}_as_committed", name.replace('-', "_"));
            needing(&trial, &tools, move |()| check(name, message_type))
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
