//! A stored response's body, captured as it streams past, and the end of the stream.

use super::store::Entry;
use super::{Exchange, Host, Report, Tally};
use crate::filter_config::FilterConfig;

/// An entry waiting for its body.
pub(super) struct Capture {
    entry: Entry,
    captured: Vec<u8>,
    /// The body outgrew `max_body_bytes` or could not be read: the entry is stored without it.
    overflowed: bool,
}

impl Capture {
    pub(super) fn new(entry: Entry) -> Capture {
        Capture {
            entry,
            captured: Vec::new(),
            overflowed: false,
        }
    }

    fn overflow(&mut self) {
        self.overflowed = true;
        self.captured = Vec::new();
    }
}

impl Exchange {
    /// Whether the response body must be captured: an entry waits for it.
    pub fn captures_body(&self) -> bool {
        self.capture.is_some()
    }

    /// One chunk of `size` bytes of the response body went past; `read` hands it over
    /// (`None`: the host could not). It is read only while an entry waits for its body and the
    /// body still fits.
    pub fn body<H: Host>(
        &mut self,
        filter: &FilterConfig,
        host: &H,
        size: usize,
        end_of_stream: bool,
        read: impl FnOnce() -> Option<Vec<u8>>,
        report: &mut Report,
    ) {
        let Some(capture) = self.capture.as_mut() else {
            return;
        };
        let limit = filter.config.negative_cache.max_body_bytes as usize;
        if size > 0 && !capture.overflowed {
            if capture.captured.len().saturating_add(size) > limit {
                capture.overflow();
            } else {
                match read() {
                    Some(chunk) => capture.captured.extend_from_slice(&chunk),
                    None => capture.overflow(),
                }
            }
        }
        if end_of_stream {
            self.finish_capture(filter, host, true, report);
        }
    }

    /// The response's trailers: its body is complete.
    pub fn trailers<H: Host>(&mut self, filter: &FilterConfig, host: &H, report: &mut Report) {
        self.finish_capture(filter, host, true, report);
    }

    /// The stream is over, whatever happened. An entry whose body was cut short is stored
    /// without it; a request that ended without a response this filter handled (a reset, a
    /// timeout, its own reply) gives its place with the limiter back through the tally.
    pub fn end<H: Host>(
        &mut self,
        filter: &FilterConfig,
        host: &H,
        report: &mut Report,
    ) -> Option<Tally> {
        self.finish_capture(filter, host, false, report);
        self.settle(filter, false)
    }

    /// Stores the waiting entry: with the captured body when the stream completed within the
    /// limit, else with the filter's own body standing in.
    fn finish_capture<H: Host>(
        &mut self,
        filter: &FilterConfig,
        host: &H,
        completed: bool,
        report: &mut Report,
    ) {
        let Some(capture) = self.capture.take() else {
            return;
        };
        let mut entry = capture.entry;
        if completed && !capture.overflowed {
            entry.replay.body = Some(capture.captured);
        }
        self.store(filter, host, &entry, report);
    }
}
