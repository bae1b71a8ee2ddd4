//! The request's client, resolved only for what uses it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use log::info;

use super::{Exchange, Host, Report};
use crate::client_ip;
use crate::filter_config::FilterConfig;
use crate::metrics::Metric;
use crate::request::Headers;

/// The header-derived-peer notice is logged once per VM, not once per request.
static HEADER_DERIVED_PEER_LOGGED: AtomicBool = AtomicBool::new(false);

impl Exchange {
    /// Whether the request step needs the client whatever the cache holds: the limiter, or an
    /// anonymous request's identity. An entry keyed on the client IP resolves it only when one
    /// is looked at or stored (`client_for_key`), so a cache-only set-up spends no host call and
    /// no header walk on a request that never touches such an entry.
    pub(super) fn needs_client(&self, filter: &FilterConfig) -> bool {
        let cache = &filter.config.negative_cache;
        filter.config.rate_limit.enabled
            || (cache.enabled && !self.has_credential && cache.cache_anonymous)
    }

    /// The client's group for an entry keyed on it, resolved now if nothing has yet; `None`
    /// when it cannot be resolved.
    pub(super) fn client_for_key<H: Host>(
        &mut self,
        filter: &FilterConfig,
        host: &H,
        headers: &Headers,
        report: &mut Report,
    ) -> Option<&str> {
        if !self.client_needed {
            self.resolve_client(filter, host, headers, report);
        }
        self.client.as_deref()
    }

    /// Resolves the client from the peer and the proxy headers, and keeps its group.
    pub(super) fn resolve_client<H: Host>(
        &mut self,
        filter: &FilterConfig,
        host: &H,
        headers: &Headers,
        report: &mut Report,
    ) -> Option<IpAddr> {
        let config = &filter.config.client_ip;
        let address = host.source_address();
        let address = address
            .as_deref()
            .and_then(|bytes| std::str::from_utf8(bytes).ok());
        let resolution = client_ip::resolve(config, address, headers);
        if resolution.header_derived_peer {
            report.inc(Metric::ClientIpHeaderDerivedPeer);
            if !HEADER_DERIVED_PEER_LOGGED.swap(true, Ordering::Relaxed) {
                info!(
                    "negcache: the downstream address has port 0: Envoy took it from \
                     X-Forwarded-For (use_remote_address: false), which a client can write; \
                     see the README for safe set-ups"
                );
            }
        }
        report.add(
            Metric::ClientIpUntrustedHeader,
            u64::from(resolution.untrusted_header),
        );
        if resolution.client.is_none() {
            report.inc(Metric::ClientIpUnresolved);
        }
        self.client_needed = true;
        self.client = resolution
            .client
            .map(|ip| client_ip::group(ip, config.ipv6_prefix));
        resolution.client
    }
}
