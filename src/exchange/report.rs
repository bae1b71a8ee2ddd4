//! What one step of an exchange leaves for the host to record.

use super::Decision;
use crate::metrics::{Metric, PendingCounts};

/// The access-log decision (the last one of the step) and the metric updates of one step. The
/// host writes the decision to filter state only when there is one, and adds the counts to its
/// pending sums: a good request's step leaves at most one decision and no count.
#[derive(Debug, Default)]
pub struct Report {
    pub decision: Option<Decision>,
    pub counts: PendingCounts,
}

impl Report {
    pub(super) fn decide(&mut self, decision: Decision) {
        self.decision = Some(decision);
    }

    pub(super) fn add(&mut self, metric: Metric, value: u64) {
        self.counts.add(metric, value);
    }

    pub(super) fn inc(&mut self, metric: Metric) {
        self.counts.add(metric, 1);
    }

    /// A host error or contention beyond its bound: counted, logged as `error`, and the request
    /// goes on as if the filter were not there.
    pub(super) fn error(&mut self) {
        self.inc(Metric::Errors);
        self.decide(Decision::Error);
    }
}
