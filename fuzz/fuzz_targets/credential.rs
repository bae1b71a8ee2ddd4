//! Credential extraction from arbitrary header lines and an arbitrary path, for every kind of
//! source: never a panic, and what is found is already canonical.
#![no_main]

mod lines;

use libfuzzer_sys::fuzz_target;
use negcache::config::CredentialSource;
use negcache::credential::{self, Presented};
use negcache::request::Headers;

fuzz_target!(|data: &[u8]| {
    let sources = [
        CredentialSource::Header("authorization".into()),
        CredentialSource::Header("x-api-key".into()),
        CredentialSource::Cookie("session".into()),
        CredentialSource::Query("api_key".into()),
        CredentialSource::PathSegment(1),
    ];
    let (path, pairs) = lines::split(data);
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let headers = Headers::from_pairs(&pairs);
    if let Presented::Credential(found) = credential::extract(&sources, &headers, path) {
        assert!(!found.value.is_empty());
        let again = credential::canonical(&sources[found.source], &found.value);
        assert_eq!(again.as_ref(), found.value.as_ref(), "canonical twice");
    }
});
