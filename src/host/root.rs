//! The root context: configuration, the fingerprint secret, slot creation, metrics.

use std::rc::Rc;
use std::time::Duration;

use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};

use super::http::NegcacheHttp;
use super::metrics::Metrics;
use super::store::EnvoyStore;
use crate::cluster::breaker;
use crate::config::{Config, ConfigError, SecretSource};
use crate::filter_config::FilterConfig;
use crate::secret;

/// How often a VM hands its metric updates to the host: the most a counter in `/stats` lags.
const METRICS_FLUSH: Duration = Duration::from_secs(1);

/// Every this many flushes, a VM using the generated secret re-reads it: heals the (start-up
/// only) case of two VMs creating it at once.
const SECRET_RECHECK_TICKS: u32 = 5;

#[derive(Default)]
pub struct NegcacheRoot {
    filter: Option<Rc<FilterConfig>>,
    metrics: Rc<Metrics>,
    generated_secret: bool,
    ticks: u32,
}

impl Context for NegcacheRoot {
    fn on_done(&mut self) -> bool {
        self.metrics.flush();
        true
    }
}

impl RootContext for NegcacheRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        // Which build runs, in the proxy's log: once per VM (measured with Envoy 1.40 and two
        // workers: two VMs on the main thread, one per worker).
        info!("negcache {} starting", env!("CARGO_PKG_VERSION"));
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        // Follow Envoy's level for the wasm component, so `--component-log-level wasm:debug`
        // shows the filter's debug lines and the default costs nothing.
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        match configure(&bytes) {
            Ok((filter, generated_secret)) => {
                // Defined once: contexts still serving hold this one and add to it.
                if !self.metrics.is_defined() {
                    self.metrics = Rc::new(Metrics::define());
                }
                // Only tables in use get keys: shared data never frees them.
                if filter.config.negative_cache.enabled {
                    if let Err(e) = filter.tables.records.create_slots(&EnvoyStore) {
                        warn!("negcache: could not create the cache slots: {e:?}");
                    }
                }
                if filter.config.rate_limit.enabled {
                    if let Err(e) = filter.clients.create_slots(&EnvoyStore) {
                        warn!("negcache: could not create the rate limit slots: {e:?}");
                    }
                }
                if filter.config.rate_limit.cluster.is_some() {
                    if let Err(e) = breaker::create(&EnvoyStore) {
                        warn!("negcache: could not create the cluster breaker: {e:?}");
                    }
                }
                self.generated_secret = generated_secret;
                let _ = hostcalls::set_tick_period(METRICS_FLUSH);
                self.filter = Some(Rc::new(filter));
                true
            }
            Err(e) => {
                error!("{e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.metrics.flush();
        self.ticks = self.ticks.wrapping_add(1);
        let Some(filter) = &self.filter else {
            return;
        };
        if !self.generated_secret || !self.ticks.is_multiple_of(SECRET_RECHECK_TICKS) {
            return;
        }
        if let Ok(Some(shared)) = secret::current(&EnvoyStore) {
            let current = crate::fingerprint::Fingerprinter::from_secret(&shared);
            if current.key_bytes() != filter.hasher.key_bytes() {
                info!("negcache: adopting the process secret another VM created");
                self.filter = Some(Rc::new(filter.with_secret(&shared)));
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(NegcacheHttp::new(
            self.filter.clone(),
            self.metrics.clone(),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Parses the configuration and settles the secret. Returns whether the secret is the
/// generated process secret (then it is re-checked on ticks).
fn configure(bytes: &[u8]) -> Result<(FilterConfig, bool), ConfigError> {
    let config = Config::parse(bytes)?;
    let (secret, generated) = match &config.secret {
        SecretSource::Inline(secret) => (secret.clone(), false),
        SecretSource::Env(name) => match std::env::var(name) {
            Ok(value) if value.len() >= 16 => (value.into_bytes(), false),
            Ok(_) => {
                return Err(ConfigError {
                    field: "hash_secret_env".into(),
                    reason: format!("environment variable {name} must hold at least 16 bytes"),
                })
            }
            Err(_) => {
                return Err(ConfigError {
                    field: "hash_secret_env".into(),
                    reason: format!(
                        "environment variable {name} is not set in the VM \
                         (pass it with vm_config.environment_variables)"
                    ),
                })
            }
        },
        SecretSource::Generated => {
            let secret = secret::agree(&EnvoyStore, random_secret).map_err(|e| ConfigError {
                field: String::new(),
                reason: format!("could not create the process secret in shared data: {e:?}"),
            })?;
            (secret, true)
        }
    };
    Ok((FilterConfig::new(config, &secret), generated))
}

fn random_secret() -> Option<[u8; secret::SECRET_LEN]> {
    let mut bytes = [0u8; secret::SECRET_LEN];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes)
}
