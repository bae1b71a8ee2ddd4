//! Everything a request needs that is fixed between two configurations: the validated
//! configuration, the fingerprint key, the slot tables, and precomputed source labels.

use crate::config::Config;
use crate::fingerprint::Fingerprinter;
use crate::negative_cache::CacheTables;
use crate::rate_limit;
use crate::slots::SlotTable;

pub struct Runtime {
    pub config: Config,
    pub hasher: Fingerprinter,
    pub tables: CacheTables,
    pub clients: SlotTable,
    /// `config.credentials[i].label()`, computed once instead of on every request.
    pub source_labels: Vec<String>,
}

impl Runtime {
    pub fn new(config: Config, secret: &[u8]) -> Runtime {
        let tables = CacheTables::new(config.negative_cache.capacity);
        let clients = rate_limit::table(config.rate_limit.capacity);
        let source_labels = config.credentials.iter().map(|s| s.label()).collect();
        Runtime {
            hasher: Fingerprinter::from_secret(secret),
            tables,
            clients,
            source_labels,
            config,
        }
    }

    /// The same configuration under another secret (a VM adopting the process secret).
    pub fn with_secret(&self, secret: &[u8]) -> Runtime {
        Runtime::new(self.config.clone(), secret)
    }
}
