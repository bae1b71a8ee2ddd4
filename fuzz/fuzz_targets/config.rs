//! Any bytes as the plugin configuration: a `Config` or an error naming the field, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use negcache::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Err(error) = Config::parse(data) {
        // The message Envoy logs is one line.
        assert!(!error.to_string().contains('\n'), "{error}");
    }
});
