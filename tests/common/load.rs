//! Many requests at once: the floods of the tests and the table fills of the benchmark.

use std::fs;
use std::ops::Range;
use std::thread;

use super::client::{ClientConnection, ClientResponse};

/// A request of a flood: path and headers.
pub type FloodRequest = (String, Vec<(String, String)>);

/// Sends request `i` for every `i` in `range`, split over `threads` keep-alive connections to
/// 127.0.0.1:`port`, and hands each answer to `check`.
pub fn flood(
    port: u16,
    range: Range<usize>,
    threads: usize,
    request: impl Fn(usize) -> FloodRequest + Sync,
    check: impl Fn(usize, &ClientResponse) + Sync,
) {
    let chunk = range.len().div_ceil(threads.max(1));
    thread::scope(|scope| {
        for t in 0..threads.max(1) {
            let from = range.start + t * chunk;
            let to = (from + chunk).min(range.end);
            let (request, check) = (&request, &check);
            scope.spawn(move || {
                let mut connection = ClientConnection::open(port);
                for i in from..to {
                    let (path, headers) = request(i);
                    let headers: Vec<(&str, &str)> = headers
                        .iter()
                        .map(|(name, value)| (name.as_str(), value.as_str()))
                        .collect();
                    check(i, &connection.get(&path, &headers));
                }
            });
        }
    });
}

/// A distinct client address for each `i` below 131,072, in 198.18.0.0/15 (the range set aside
/// for benchmarks).
pub fn client_ip(i: usize) -> String {
    assert!(i < 1 << 17, "198.18.0.0/15 has 131072 addresses");
    format!("198.{}.{}.{}", 18 + (i >> 16), (i >> 8) & 255, i & 255)
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"))
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .expect("VmRSS in /proc/pid/status")
}
