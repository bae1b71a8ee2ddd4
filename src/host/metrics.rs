//! Metric ids of this VM.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

use crate::metrics::{Kind, Metric};

#[derive(Default, Clone)]
pub struct Metrics {
    ids: Vec<Option<u32>>,
}

impl Metrics {
    pub fn define() -> Metrics {
        let ids = Metric::ALL
            .iter()
            .map(|metric| {
                let kind = match metric.kind() {
                    Kind::Counter => MetricType::Counter,
                    Kind::Gauge => MetricType::Gauge,
                };
                hostcalls::define_metric(kind, metric.name()).ok()
            })
            .collect();
        Metrics { ids }
    }

    pub fn add(&self, metric: Metric, value: u64) {
        if value == 0 {
            return;
        }
        let position = Metric::ALL.iter().position(|m| *m == metric);
        if let Some(Some(id)) = position.and_then(|p| self.ids.get(p)) {
            let _ = hostcalls::increment_metric(*id, i64::try_from(value).unwrap_or(i64::MAX));
        }
    }

    pub fn inc(&self, metric: Metric) {
        self.add(metric, 1);
    }
}
