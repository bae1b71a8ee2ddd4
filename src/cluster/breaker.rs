//! The circuit breaker in front of the rate limit service, shared by every worker of the
//! process (one record in shared data): after `consecutive_errors` failed calls in a row it
//! opens, and failures go uncounted by the service (counted locally only) for `open_ms`; then
//! one trial call goes through, which closes it or opens it again. While it is open, a dead
//! service costs a failing response no wait at all.

use crate::codec::{read_versioned, Versioned, Writer};
use crate::config::BreakerConfig;
use crate::slots::{SharedStore, StoreError, MAX_CAS_ATTEMPTS};

pub const BREAKER_KEY: &str = "negcache/cluster/breaker";

const RECORD_VERSION: u8 = 1;
const RECORD_LEN: usize = 16;

/// The breaker as stored; `Default` is closed with no error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BreakerState {
    /// Failed calls since the last answer.
    errors: u32,
    /// A trial call is under way (it holds the breaker until `open_until_ms`).
    trial: bool,
    /// Calls are skipped until then.
    open_until_ms: u64,
}

impl BreakerState {
    fn encode(&self) -> Vec<u8> {
        Writer::versioned(RECORD_VERSION, RECORD_LEN)
            .padding(2)
            .u8(u8::from(self.trial))
            .u32(self.errors)
            .u64(self.open_until_ms)
            .finish()
    }

    /// Unreadable bytes (another version, cut short) read as closed: the breaker only ever
    /// saves latency, so when in doubt the service is asked.
    fn decode(bytes: &[u8]) -> BreakerState {
        let read = read_versioned(bytes, RECORD_VERSION, |reader| {
            reader.padding(2)?;
            let trial = match reader.u8()? {
                0 => false,
                1 => true,
                _ => return None,
            };
            Some(BreakerState {
                trial,
                errors: reader.u32()?,
                open_until_ms: reader.u64()?,
            })
        });
        match read {
            Versioned::Value(state) => state,
            _ => BreakerState::default(),
        }
    }

    fn tripped(&self, config: &BreakerConfig) -> bool {
        self.errors >= config.consecutive_errors
    }
}

/// Whether a failure goes to the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Closed: call.
    Call,
    /// The breaker was open and its time is up: this call is the one trial.
    Trial,
    /// Open, or another worker's trial is under way: count locally only.
    Skip,
}

/// What an answer did to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    /// It opened (after `consecutive_errors` failures in a row, or a failed trial).
    Opened,
    /// An answer after failures closed it.
    Closed,
}

/// Creates the record (closed) if it is missing, so every later write is a checked CAS (the
/// host checks CAS only for keys that exist).
pub fn create<S: SharedStore>(store: &S) -> Result<(), StoreError> {
    if store.get(BREAKER_KEY)?.is_none() {
        store.set(BREAKER_KEY, &BreakerState::default().encode(), 0)?;
    }
    Ok(())
}

/// Reads the record, lets `decide` choose a result and maybe a new state, and writes it back
/// with the CAS it read, retrying on conflict.
fn update<S: SharedStore, T>(
    store: &S,
    mut decide: impl FnMut(BreakerState) -> (T, Option<BreakerState>),
) -> Result<T, StoreError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (bytes, cas) = store.get(BREAKER_KEY)?.unwrap_or_default();
        let (result, write) = decide(BreakerState::decode(&bytes));
        let Some(state) = write else {
            return Ok(result);
        };
        match store.set(BREAKER_KEY, &state.encode(), cas) {
            Ok(()) => return Ok(result),
            Err(StoreError::CasMismatch) => continue,
            Err(other) => return Err(other),
        }
    }
    Err(StoreError::CasMismatch)
}

/// Before a call at `now_ms`. A closed breaker costs one read and no write. A trial holds the
/// breaker for `timeout_ms` (the longest its answer can take), so the other workers skip
/// meanwhile; a trial whose answer never comes (its stream ended first) is followed by another.
pub fn permit<S: SharedStore>(
    store: &S,
    config: &BreakerConfig,
    timeout_ms: u64,
    now_ms: u64,
) -> Result<Permit, StoreError> {
    update(store, |state| {
        if now_ms < state.open_until_ms {
            return (Permit::Skip, None);
        }
        if !state.tripped(config) {
            return (Permit::Call, None);
        }
        let trial = BreakerState {
            trial: true,
            open_until_ms: now_ms.saturating_add(timeout_ms),
            ..state
        };
        (Permit::Trial, Some(trial))
    })
}

/// After a call (`trial`: the one `permit` let through an open breaker): `answered` when the
/// service gave a verdict, else it failed.
pub fn record<S: SharedStore>(
    store: &S,
    config: &BreakerConfig,
    now_ms: u64,
    answered: bool,
    trial: bool,
) -> Result<Transition, StoreError> {
    update(store, |state| {
        if answered {
            if state == BreakerState::default() {
                return (Transition::None, None);
            }
            let transition = if state.tripped(config) {
                Transition::Closed
            } else {
                Transition::None
            };
            return (transition, Some(BreakerState::default()));
        }
        let errors = state.errors.saturating_add(1);
        // The trial failed, or this failure is the one that reaches the threshold; a failure
        // of a call made before the breaker opened leaves the open time alone.
        let opens = (trial && state.trial)
            || (!state.tripped(config) && errors >= config.consecutive_errors);
        if opens {
            let open = BreakerState {
                errors,
                trial: false,
                open_until_ms: now_ms.saturating_add(config.open_ms),
            };
            return (Transition::Opened, Some(open));
        }
        (Transition::None, Some(BreakerState { errors, ..state }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::hostile;
    use crate::slots::memory::MemoryStore;

    const T0: u64 = 1_700_000_000_000;
    const TIMEOUT_MS: u64 = 20;
    const CONFIG: BreakerConfig = BreakerConfig {
        consecutive_errors: 3,
        open_ms: 10_000,
    };

    fn store() -> MemoryStore {
        let store = MemoryStore::default();
        create(&store).unwrap();
        store
    }

    fn fail(store: &MemoryStore, now_ms: u64) -> Transition {
        record(store, &CONFIG, now_ms, false, false).unwrap()
    }

    fn fail_trial(store: &MemoryStore, now_ms: u64) -> Transition {
        record(store, &CONFIG, now_ms, false, true).unwrap()
    }

    fn answer(store: &MemoryStore, now_ms: u64) -> Transition {
        record(store, &CONFIG, now_ms, true, false).unwrap()
    }

    fn permit_at(store: &MemoryStore, now_ms: u64) -> Permit {
        permit(store, &CONFIG, TIMEOUT_MS, now_ms).unwrap()
    }

    #[test]
    fn a_closed_breaker_calls_with_one_read_and_no_write() {
        let store = store();
        let writes = store.writes.get();
        assert_eq!(permit_at(&store, T0), Permit::Call);
        assert_eq!(answer(&store, T0), Transition::None);
        assert_eq!(store.writes.get(), writes);
    }

    #[test]
    fn it_opens_after_consecutive_errors_and_skips_until_open_ms_has_passed() {
        let store = store();
        assert_eq!(fail(&store, T0), Transition::None);
        assert_eq!(fail(&store, T0 + 1), Transition::None);
        assert_eq!(permit_at(&store, T0 + 2), Permit::Call);
        assert_eq!(fail(&store, T0 + 2), Transition::Opened);
        assert_eq!(permit_at(&store, T0 + 3), Permit::Skip);
        assert_eq!(permit_at(&store, T0 + 2 + CONFIG.open_ms - 1), Permit::Skip);
        assert_eq!(permit_at(&store, T0 + 2 + CONFIG.open_ms), Permit::Trial);
    }

    #[test]
    fn an_answer_between_errors_starts_the_count_again() {
        let store = store();
        fail(&store, T0);
        fail(&store, T0);
        answer(&store, T0);
        fail(&store, T0);
        fail(&store, T0);
        assert_eq!(permit_at(&store, T0), Permit::Call);
    }

    #[test]
    fn one_trial_at_a_time_then_closed_by_its_answer_or_reopened_by_its_failure() {
        let store = store();
        for _ in 0..3 {
            fail(&store, T0);
        }
        let after = T0 + CONFIG.open_ms;
        assert_eq!(permit_at(&store, after), Permit::Trial);
        // Another worker, while the trial is under way.
        assert_eq!(permit_at(&store, after + 1), Permit::Skip);
        // A call made before the breaker opened fails late: the trial still holds it.
        assert_eq!(fail(&store, after + 1), Transition::None);
        assert_eq!(permit_at(&store, after + 2), Permit::Skip);
        // The trial fails at once (connection refused): open again for open_ms.
        assert_eq!(fail_trial(&store, after + 1), Transition::Opened);
        assert_eq!(permit_at(&store, after + 1 + TIMEOUT_MS), Permit::Skip);
        let later = after + 1 + CONFIG.open_ms;
        assert_eq!(permit_at(&store, later), Permit::Trial);
        assert_eq!(answer(&store, later + 5), Transition::Closed);
        assert_eq!(permit_at(&store, later + 6), Permit::Call);
    }

    #[test]
    fn a_trial_whose_answer_never_comes_is_followed_by_another() {
        let store = store();
        for _ in 0..3 {
            fail(&store, T0);
        }
        let after = T0 + CONFIG.open_ms;
        assert_eq!(permit_at(&store, after), Permit::Trial);
        assert_eq!(permit_at(&store, after + TIMEOUT_MS - 1), Permit::Skip);
        assert_eq!(permit_at(&store, after + TIMEOUT_MS), Permit::Trial);
    }

    #[test]
    fn late_failures_of_calls_made_before_it_opened_do_not_reopen_it() {
        let store = store();
        for _ in 0..3 {
            fail(&store, T0);
        }
        // Two calls that were in flight fail later: still open until T0 + open_ms.
        assert_eq!(fail(&store, T0 + 5_000), Transition::None);
        assert_eq!(fail(&store, T0 + 6_000), Transition::None);
        assert_eq!(permit_at(&store, T0 + CONFIG.open_ms), Permit::Trial);
    }

    #[test]
    fn writes_under_contention_are_not_lost() {
        let store = store();
        store.conflicts.set(3);
        fail(&store, T0);
        fail(&store, T0);
        assert_eq!(fail(&store, T0), Transition::Opened);
        assert_eq!(permit_at(&store, T0 + 1), Permit::Skip);
    }

    #[test]
    fn a_host_error_is_an_error_not_a_verdict() {
        let store = store();
        store.fail_host.set(true);
        assert_eq!(
            permit(&store, &CONFIG, TIMEOUT_MS, T0),
            Err(StoreError::Host)
        );
    }

    #[test]
    fn unreadable_records_read_as_closed() {
        let open = BreakerState {
            errors: 7,
            trial: true,
            open_until_ms: T0,
        };
        let bytes = open.encode();
        assert_eq!(bytes.len(), RECORD_LEN);
        assert_eq!(BreakerState::decode(&bytes), open);
        for cut in 0..bytes.len() {
            assert_eq!(BreakerState::decode(&bytes[..cut]), BreakerState::default());
        }
        // Any bytes at all decode to some state, without a panic.
        for input in hostile::inputs(&bytes) {
            let _ = BreakerState::decode(&input);
        }
        assert_eq!(BreakerState::decode(b""), BreakerState::default());
        assert_eq!(BreakerState::decode(&[9; 16]), BreakerState::default());
    }
}
