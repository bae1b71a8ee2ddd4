//! Path normalization and exemption on arbitrary paths: never a panic; an exempt path has no
//! escape that a later decoding could turn into another path, and normalizing is stable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use negcache::path;

fuzz_target!(|raw: &str| {
    let exempt = [path::normalize("/healthz"), path::normalize("/static/")];
    let normalized = path::normalize(raw);
    assert!(normalized.starts_with('/'));
    if path::is_exempt(raw, &exempt) {
        let lower = path::path_only(raw).to_ascii_lowercase();
        for escape in ["%2f", "%5c", "%2e", "%3b", "%00", "%25", ";", "\\", "//"] {
            assert!(!lower.contains(escape), "{raw:?} exempt with {escape}");
        }
        assert!(exempt
            .iter()
            .any(|prefix| path::is_under(&normalized, prefix)));
    }
    let _ = path::segment(raw, 0);
    let _ = path::query_only(raw);
});
