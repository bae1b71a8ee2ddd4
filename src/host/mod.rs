//! The only code that talks to the proxy: reads what the core needs, writes what it decides.

mod ffi;
mod http;
mod metrics;
mod root;
mod store;

pub use root::NegcacheRoot;
