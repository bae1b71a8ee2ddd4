//! negcache: an Envoy / Istio HTTP filter (proxy-wasm) that keeps a shared negative cache of
//! authentication failures. Everything outside `host` is plain Rust, tested natively.

pub mod client_ip;
pub mod config;
pub mod credential;
pub mod fingerprint;
pub mod header_name;
pub mod http_date;
pub mod negative_cache;
pub mod path;
pub mod request;
pub mod slots;
