//! negcache: an Envoy / Istio HTTP filter (proxy-wasm) that keeps a shared negative cache of
//! authentication failures. Everything outside `host` is plain Rust, tested natively.

pub mod client_ip;
pub mod clock;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod cors;
pub mod credential;
pub mod decimal;
pub mod exchange;
pub mod filter_config;
pub mod fingerprint;
pub mod header_name;
pub mod http_date;
pub mod local_reply;
pub mod metrics;
pub mod negative_cache;
#[cfg(test)]
mod negative_cache_model;
pub mod path;
pub mod rate_limit;
#[cfg(test)]
mod rate_limit_model;
pub mod reply;
pub mod request;
pub mod secret;
pub mod slots;

#[cfg(target_arch = "wasm32")]
mod host;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::<host::NegcacheRoot>::default()
    });
}}
