//! Metric ids of this VM, and the updates not yet handed to the host.

use std::cell::RefCell;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

use crate::metrics::{Kind, Metric, PendingCounts};

#[derive(Default)]
pub struct Metrics {
    ids: Vec<Option<u32>>,
    pending: RefCell<PendingCounts>,
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
        Metrics {
            ids,
            pending: RefCell::default(),
        }
    }

    pub fn is_defined(&self) -> bool {
        !self.ids.is_empty()
    }

    /// Adds a request's counts to the pending sums, emptying them.
    pub fn absorb(&self, counts: &mut PendingCounts) {
        if let Ok(mut pending) = self.pending.try_borrow_mut() {
            for (metric, value) in counts.take() {
                pending.add(metric, value);
            }
        }
    }

    /// One host call per metric that changed since the last flush.
    pub fn flush(&self) {
        let Ok(mut pending) = self.pending.try_borrow_mut() else {
            return;
        };
        for (metric, value) in pending.take() {
            if let Some(Some(id)) = self.ids.get(metric.index()) {
                let _ = hostcalls::increment_metric(*id, i64::try_from(value).unwrap_or(i64::MAX));
            }
        }
    }
}
