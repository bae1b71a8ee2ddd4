//! The cache's writes: an entry made from a response, stored; entries purged.

use log::debug;

use super::{Decision, Exchange, Host, Report};
use crate::credential;
use crate::filter_config::FilterConfig;
use crate::fingerprint::Who;
use crate::metrics::Metric;
use crate::negative_cache::{self, Record, ReplayBody, StoreOutcome};
use crate::request::{Headers, RequestLine};

/// An entry to store, and whether the upstream's body may be kept for the replay.
pub(super) struct Entry {
    pub(super) record: Record,
    pub(super) replay: ReplayBody,
    pub(super) capturable: bool,
}

impl Exchange {
    /// The entry a response (its headers, `status`, whether it marks the credential inactive)
    /// makes to the request (`request`, `line`), when the cache keeps it, stored now.
    pub(super) fn entry<H: Host>(
        &mut self,
        filter: &FilterConfig,
        host: &H,
        (response, status, inactive_marker): (&Headers, u16, bool),
        (request, line): (&Headers, &RequestLine),
        report: &mut Report,
    ) -> Option<Entry> {
        let cache = &filter.config.negative_cache;
        let subject = self.subject?;
        let now = host.clock().now_ms();
        let plan = negative_cache::plan_store(
            cache,
            status,
            inactive_marker,
            subject.anonymous,
            response.first("retry-after"),
            now,
        )?;
        let key = self.entry_key(filter, host, (request, line), &subject, plan.shape, report)?;
        let record = Record {
            inactive: plan.inactive,
            anonymous: subject.anonymous,
            status,
            shape: plan.shape.to_bits(),
            epoch: cache.epoch,
            stored_ms: now,
            expires_ms: plan.expires_ms,
            reset_ms: plan.reset_ms,
            identity: subject.identity,
            key,
        };
        let replay = ReplayBody {
            key,
            stored_ms: now,
            content_type: response.first("content-type").map(<[u8]>::to_vec),
            www_authenticate: response.first("www-authenticate").map(<[u8]>::to_vec),
            body: None,
        };
        let declared_length = response
            .first_str("content-length")
            .and_then(|s| s.trim().parse::<usize>().ok());
        // A body the client could not be sent as-is (HEAD, encoded) or too large is replaced by
        // the filter's own on a hit.
        let capturable = !self.head
            && !response.contains("content-encoding")
            && declared_length.is_none_or(|length| length <= cache.max_body_bytes as usize);
        Some(Entry {
            record,
            replay,
            capturable,
        })
    }

    pub(super) fn store<H: Host>(
        &self,
        filter: &FilterConfig,
        host: &H,
        entry: &Entry,
        report: &mut Report,
    ) {
        let Entry { record, replay, .. } = entry;
        match negative_cache::store(host.store(), &filter.tables, record, replay) {
            Ok(outcome) => {
                let StoreOutcome {
                    evicted,
                    newly_used,
                    corrupt,
                } = outcome;
                report.inc(Metric::Stores);
                report.add(Metric::Evictions, u64::from(evicted));
                report.add(Metric::SlotsUsed, u64::from(newly_used));
                report.add(Metric::Errors, u64::from(corrupt));
                report.decide(Decision::Stored);
                debug!(
                    "negcache: stored {} for {} ({} s)",
                    record.status,
                    record.identity.short(),
                    record.expires_ms.saturating_sub(record.stored_ms) / 1000
                );
            }
            Err(_) => report.error(),
        }
    }

    /// Expires every entry of the credentials named (raw, one per line) under every configured
    /// source, for the request's authority.
    pub(super) fn purge<'v, H: Host>(
        &self,
        filter: &FilterConfig,
        host: &H,
        values: impl Iterator<Item = &'v [u8]>,
        authority: &[u8],
        report: &mut Report,
    ) {
        let clock = host.clock();
        let epoch = filter.config.negative_cache.epoch;
        for value in values {
            let value = value.trim_ascii();
            if value.is_empty() {
                continue;
            }
            let sources = filter.config.credentials.iter();
            for (source, label) in sources.zip(&filter.source_labels) {
                // The value as the request's credential was read: `Bearer T` purges `bearer T`.
                let value = &*credential::canonical(source, value);
                let who = Who::Credential {
                    source: label,
                    value,
                };
                let identity = filter.hasher.identity(authority, who);
                match negative_cache::purge(
                    host.store(),
                    &filter.tables,
                    &identity,
                    epoch,
                    clock.now_ms(),
                ) {
                    Ok(removed) => {
                        report.add(Metric::Purges, u64::from(removed));
                        if removed > 0 {
                            debug!("negcache: purged {removed} entries of {}", identity.short());
                        }
                    }
                    Err(_) => report.error(),
                }
            }
        }
    }
}
