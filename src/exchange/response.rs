//! The response's turn: what to strip, mark, count and store, decided from `:status` and the
//! private headers' presence, so a good response costs a few single-header reads instead of
//! the whole map.

use super::body::Capture;
use super::tally::is_failure;
use super::{Exchange, Host, Report, Tally};
use crate::filter_config::FilterConfig;
use crate::negative_cache;
use crate::request::{Headers, RequestLine};

/// An upstream names a credential that is good now; the header carries it raw, so it never
/// reaches the client.
pub const PURGE_HEADER: &str = "x-negcache-purge";

/// The mark on the response of a request that would have been a hit in shadow mode.
const SHADOW_HIT: (&str, &str) = ("x-negcache", "shadow-hit");

/// What to do with a response, decided before its full header map is read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResponsePlan<'a> {
    /// The private headers it carries, to remove before the client sees them.
    purge_header: bool,
    inactive_header: Option<&'a str>,
    /// A header to add.
    pub add: Option<(&'static str, &'static str)>,
    /// How the request ended, for the limiter (`Exchange::count`).
    pub tally: Option<Tally>,
    /// Expire the entries of the credentials the purge header names.
    purge: bool,
    /// Store the response (its status) in the cache.
    store: Option<u16>,
    /// The response headers end the stream: there is no body to wait for.
    end_of_stream: bool,
}

impl<'a> ResponsePlan<'a> {
    /// Headers to remove from the response, after `respond` (which reads the purge header).
    pub fn remove(&self) -> impl Iterator<Item = &'a str> {
        let purge = self.purge_header.then_some(PURGE_HEADER);
        purge.into_iter().chain(self.inactive_header)
    }

    /// Whether `respond` must run, with the response's and the request's full header maps.
    pub fn needs_headers(&self) -> bool {
        self.purge || self.store.is_some()
    }
}

impl Exchange {
    /// Plans the response from single headers (`header(name)`: its first value, or `None`)
    /// and whether they end the stream. A response to a request the filter did not see, or to
    /// its own reply, is left alone without a read.
    pub fn response<'a>(
        &mut self,
        filter: &'a FilterConfig,
        end_of_stream: bool,
        header: impl Fn(&str) -> Option<Vec<u8>>,
    ) -> ResponsePlan<'a> {
        if !self.seen || self.replied_locally {
            return ResponsePlan::default();
        }
        let cache = &filter.config.negative_cache;
        let purge_header = header(PURGE_HEADER).is_some();
        let inactive_header = cache
            .inactive
            .as_ref()
            .map(|rule| rule.header.as_str())
            .filter(|name| header(name).is_some());
        let status = header(":status")
            .and_then(|value| std::str::from_utf8(&value).ok()?.parse::<u16>().ok());
        let failed = status.is_some_and(|status| is_failure(&filter.config.rate_limit, status));
        let mut plan = ResponsePlan {
            purge_header,
            inactive_header,
            tally: self.settle(filter, failed),
            purge: purge_header && cache.enabled,
            end_of_stream,
            ..ResponsePlan::default()
        };
        if self.shadow_hit {
            // A real hit would not have refreshed the entry; neither does its shadow.
            plan.add = Some(SHADOW_HIT);
        } else if self.subject.is_some() && cache.enabled {
            plan.store = status.filter(|status| negative_cache::may_store(*status));
        }
        plan
    }

    /// Carries out what the plan needs the full maps for: the purge, then the store (at once,
    /// or once the body has streamed past). `None` for a map the host could not hand over: an
    /// error, and the response goes on untouched.
    pub fn respond<H: Host>(
        &mut self,
        filter: &FilterConfig,
        host: &H,
        plan: &ResponsePlan,
        response: Option<&Headers>,
        request: Option<&Headers>,
        report: &mut Report,
    ) {
        let (Some(response), Some(request)) = (response, request) else {
            report.error();
            return;
        };
        let line = RequestLine::of(request);
        if plan.purge {
            self.purge(
                filter,
                host,
                response.all(PURGE_HEADER),
                &line.authority,
                report,
            );
        }
        let Some(status) = plan.store else {
            return;
        };
        let inactive = plan.inactive_header.is_some();
        let answer = (response, status, inactive);
        let entry = self.entry(filter, host, answer, (request, &line), report);
        let Some(mut entry) = entry else {
            return;
        };
        if plan.end_of_stream || !entry.capturable {
            if entry.capturable {
                entry.replay.body = Some(Vec::new());
            }
            self.store(filter, host, &entry, report);
        } else {
            self.capture = Some(Capture::new(entry));
        }
    }
}
