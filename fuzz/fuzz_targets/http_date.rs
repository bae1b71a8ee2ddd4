//! `Retry-After` values from an upstream: delay-seconds or an HTTP-date, arbitrary bytes and
//! any clock: never a panic or an overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use negcache::http_date;

fuzz_target!(|data: &[u8]| {
    let (now, value) = match data.split_first_chunk::<8>() {
        Some((now, value)) => (u64::from_le_bytes(*now), value),
        None => (1_700_000_000_000, data),
    };
    let _ = http_date::retry_after_reset_ms(value, now);
});
