//! A configuration as every request of it uses it: the validated configuration, the
//! fingerprint key, the slot tables, and the credential sources' labels computed once. Built at
//! configuration and shared, read-only, by every exchange until the next one.

use crate::config::Config;
use crate::fingerprint::Fingerprinter;
use crate::negative_cache::CacheTables;
use crate::rate_limit;
use crate::slots::SlotTable;

pub struct FilterConfig {
    pub config: Config,
    pub hasher: Fingerprinter,
    pub tables: CacheTables,
    pub clients: SlotTable,
    /// `config.credentials[i].label()`, computed once instead of on every request.
    pub source_labels: Vec<String>,
}

impl FilterConfig {
    pub fn new(config: Config, secret: &[u8]) -> FilterConfig {
        let tables = CacheTables::new(config.negative_cache.capacity);
        let clients = rate_limit::table(config.rate_limit.capacity);
        let source_labels = config.credentials.iter().map(|s| s.label()).collect();
        FilterConfig {
            hasher: Fingerprinter::from_secret(secret),
            tables,
            clients,
            source_labels,
            config,
        }
    }

    /// The same configuration under another secret (a VM adopting the process secret).
    pub fn with_secret(&self, secret: &[u8]) -> FilterConfig {
        FilterConfig::new(self.config.clone(), secret)
    }
}
