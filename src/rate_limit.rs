//! The failure rate limit: per client, a fixed window anchored at its first failure, a block
//! after `max_failures + 1` failures, escalating blocks for repeat offenders, and in-flight
//! reservations so a parallel burst cannot slip past the count. All arithmetic is on plain
//! numbers and times; the records live in a bounded slot table in shared data.

use crate::clock::Clock;
use crate::codec::{read_versioned, Versioned, Writer};
use crate::config::RateLimitConfig;
use crate::fingerprint::Fingerprint;
use crate::slots::{Bucket, SharedStore, Slot, SlotTable, StoreError, Write};

const RECORD_VERSION: u8 = 1;
const RECORD_LEN: usize = 56;

/// One client's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientRecord {
    pub epoch: u32,
    pub client: Fingerprint,
    /// Start of the failure window; meaningful while `failures > 0`.
    pub window_start_ms: u64,
    pub failures: u32,
    /// Requests of this client under way that reserved a place.
    pub inflight: u32,
    /// End of the current or last block; 0 when never blocked.
    pub block_until_ms: u64,
    /// Length of the current or last block, for escalation.
    pub block_len_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoded {
    Empty,
    Record(ClientRecord),
    Unreadable,
}

impl ClientRecord {
    pub fn encode(&self) -> Vec<u8> {
        Writer::versioned(RECORD_VERSION, RECORD_LEN)
            .padding(3)
            .u32(self.epoch)
            .fingerprint(&self.client)
            .u64(self.window_start_ms)
            .u32(self.failures)
            .u32(self.inflight)
            .u64(self.block_until_ms)
            .u64(self.block_len_ms)
            .finish()
    }

    fn decode(bytes: &[u8]) -> Decoded {
        let read = read_versioned(bytes, RECORD_VERSION, |reader| {
            reader.padding(3)?;
            Some(ClientRecord {
                epoch: reader.u32()?,
                client: reader.fingerprint()?,
                window_start_ms: reader.u64()?,
                failures: reader.u32()?,
                inflight: reader.u32()?,
                block_until_ms: reader.u64()?,
                block_len_ms: reader.u64()?,
            })
        });
        match read {
            Versioned::Empty => Decoded::Empty,
            Versioned::Value(record) => Decoded::Record(record),
            Versioned::OtherVersion | Versioned::Malformed => Decoded::Unreadable,
        }
    }

    pub fn blocked_at(&self, now_ms: u64) -> bool {
        now_ms < self.block_until_ms
    }

    /// The client has failed recently: its requests must reserve a place.
    pub fn window_live(&self, now_ms: u64, config: &RateLimitConfig) -> bool {
        self.failures > 0 && now_ms < self.window_start_ms.saturating_add(config.window_ms)
    }

    /// Nothing about this record matters any more: free for another client.
    fn expired(&self, now_ms: u64, config: &RateLimitConfig) -> bool {
        !self.blocked_at(now_ms) && !self.window_live(now_ms, config)
    }

    /// How many more requests may be under way at once before one more failure blocks.
    fn inflight_limit(&self, config: &RateLimitConfig) -> u32 {
        (config.max_failures + 1).saturating_sub(self.failures)
    }

    /// Counts one failure at `now_ms`; returns the length of the block it starts, if any.
    /// A failure while blocked (a request that started before the block) changes nothing:
    /// blocked clients cannot extend their block.
    fn count_failure(&mut self, now_ms: u64, config: &RateLimitConfig) -> Option<u64> {
        if self.blocked_at(now_ms) {
            return None;
        }
        if self.window_live(now_ms, config) {
            self.failures = self.failures.saturating_add(1);
        } else {
            self.window_start_ms = now_ms;
            self.failures = 1;
            self.inflight = 0;
        }
        if self.failures <= config.max_failures {
            return None;
        }
        Some(self.start_block(now_ms, config))
    }

    /// Starts a block at `now_ms` (escalated for a repeat offender) and forgets the window;
    /// returns its length.
    fn start_block(&mut self, now_ms: u64, config: &RateLimitConfig) -> u64 {
        let length = next_block_len(self, now_ms, config);
        self.block_until_ms = now_ms.saturating_add(length);
        self.block_len_ms = length;
        self.failures = 0;
        self.window_start_ms = 0;
        self.inflight = 0;
        length
    }
}

/// A client blocked again within `max_block_seconds` after its last block ended gets the last
/// length times `factor`, capped; otherwise `block_seconds`.
pub fn next_block_len(record: &ClientRecord, now_ms: u64, config: &RateLimitConfig) -> u64 {
    let Some(escalation) = config.escalation else {
        return config.block_ms;
    };
    let repeat = record.block_until_ms != 0
        && record.block_len_ms != 0
        && now_ms.saturating_sub(record.block_until_ms) <= escalation.max_block_ms;
    if !repeat {
        return config.block_ms;
    }
    record
        .block_len_ms
        .saturating_mul(u64::from(escalation.factor))
        .clamp(config.block_ms, escalation.max_block_ms)
}

/// What a request may do when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Not tracked (no recent failure): nothing written.
    Pass,
    /// Tracked: a place was reserved in the client's current window.
    Reserved { window_start_ms: u64 },
    /// Blocked until then.
    Blocked { until_ms: u64 },
    /// Too many requests of a failing client already under way.
    InflightFull,
}

/// The rate limiter's table: `capacity` client records.
pub fn table(capacity: u32) -> SlotTable {
    SlotTable::new("negcache/limit", capacity)
}

/// The slot holding this client's record, and the record.
fn own_slot<'a>(
    slots: &'a [Slot<'a>; 2],
    client: &Fingerprint,
    epoch: u32,
) -> Option<(&'a Slot<'a>, ClientRecord)> {
    slots
        .iter()
        .find_map(|slot| match ClientRecord::decode(slot.bytes) {
            Decoded::Record(record) if record.client == *client && record.epoch == epoch => {
                Some((slot, record))
            }
            _ => None,
        })
}

/// Checks a request at its start, without writing: its admission, and the bucket as read. A
/// client without a record costs one read and no look at the clock. For `Reserved`, no place is
/// held yet: `reserve` writes it, starting from this read, or the request ends at once (a hit
/// replaying a failure) and `count_failure_from` counts it in the same one write.
pub fn check<S: SharedStore>(
    store: &S,
    table: &SlotTable,
    config: &RateLimitConfig,
    client: &Fingerprint,
    clock: &Clock,
) -> Result<(Admission, Bucket), StoreError> {
    let read = table.read_candidates(store, client)?;
    let (admission, _) = admission(&read.slots(), config, client, clock);
    Ok((admission, read))
}

/// Holds a place for a request of a client with recent failures, with one write starting from
/// the bucket `check` read. The admission may differ from what `check` said when another
/// request wrote the bucket in between.
pub fn reserve<S: SharedStore>(
    store: &S,
    table: &SlotTable,
    config: &RateLimitConfig,
    client: &Fingerprint,
    clock: &Clock,
    read: Bucket,
) -> Result<Admission, StoreError> {
    table.update_from(store, client, Some(read), |slots| {
        let (admission, place) = admission(slots, config, client, clock);
        let write = place.map(|(slot, record)| Write {
            slot,
            bytes: record.encode(),
        });
        (admission, write)
    })
}

/// `check`, then `reserve` when the request is to hold a place: the admission of a request
/// that goes on to the upstream, as the request step makes it.
#[cfg(test)]
pub fn admit<S: SharedStore>(
    store: &S,
    table: &SlotTable,
    config: &RateLimitConfig,
    client: &Fingerprint,
    clock: &Clock,
) -> Result<Admission, StoreError> {
    match check(store, table, config, client, clock)? {
        (Admission::Reserved { .. }, read) => reserve(store, table, config, client, clock, read),
        (admission, _) => Ok(admission),
    }
}

/// The admission of a client's request, from its candidate slots, and the place it holds: its
/// slot and the record with that place, encoded only by the write (`check` writes nothing).
fn admission<'s>(
    slots: &'s [Slot<'s>; 2],
    config: &RateLimitConfig,
    client: &Fingerprint,
    clock: &Clock,
) -> (Admission, Option<(&'s Slot<'s>, ClientRecord)>) {
    let Some((slot, mut record)) = own_slot(slots, client, config.epoch) else {
        return (Admission::Pass, None);
    };
    let now_ms = clock.now_ms();
    if record.blocked_at(now_ms) {
        let until_ms = record.block_until_ms;
        return (Admission::Blocked { until_ms }, None);
    }
    if !record.window_live(now_ms, config) {
        return (Admission::Pass, None);
    }
    if record.inflight >= record.inflight_limit(config) {
        return (Admission::InflightFull, None);
    }
    record.inflight += 1;
    let reserved = Admission::Reserved {
        window_start_ms: record.window_start_ms,
    };
    (reserved, Some((slot, record)))
}

/// What the end of a request changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// The failure was counted.
    pub counted: bool,
    /// It started a block of this many ms.
    pub block_ms: Option<u64>,
    /// A slot that never held a record now holds one.
    pub newly_used: bool,
}

/// Records the end of a request: releases its reservation, and counts it when it failed.
pub fn finish<S: SharedStore>(
    store: &S,
    table: &SlotTable,
    config: &RateLimitConfig,
    client: &Fingerprint,
    now_ms: u64,
    failed: bool,
    reservation: Option<u64>,
) -> Result<Outcome, StoreError> {
    table.update(store, client, |slots| {
        ending(slots, config, client, now_ms, failed, reservation)
    })
}

/// Counts the failure of a request that holds no place, starting from the bucket `check` read
/// at its start: a cache hit replaying a failure reads and writes its client's bucket once.
pub fn count_failure_from<S: SharedStore>(
    store: &S,
    table: &SlotTable,
    config: &RateLimitConfig,
    client: &Fingerprint,
    now_ms: u64,
    read: Bucket,
) -> Result<Outcome, StoreError> {
    table.update_from(store, client, Some(read), |slots| {
        ending(slots, config, client, now_ms, true, None)
    })
}

/// What the end of a request changes in its client's record, from the candidate slots.
fn ending<'s>(
    slots: &'s [Slot<'s>; 2],
    config: &RateLimitConfig,
    client: &Fingerprint,
    now_ms: u64,
    failed: bool,
    reservation: Option<u64>,
) -> (Outcome, Option<Write<'s>>) {
    if let Some((slot, mut record)) = own_slot(slots, client, config.epoch) {
        let before = record;
        if reservation.is_some_and(|start| start == record.window_start_ms) {
            record.inflight = record.inflight.saturating_sub(1);
        }
        let mut outcome = Outcome::default();
        if failed && !record.blocked_at(now_ms) {
            outcome.counted = true;
            outcome.block_ms = record.count_failure(now_ms, config);
        }
        let write = (record != before).then(|| Write {
            slot,
            bytes: record.encode(),
        });
        return (outcome, write);
    }
    if !failed {
        return (Outcome::default(), None);
    }
    let mut record = ClientRecord {
        epoch: config.epoch,
        client: *client,
        ..ClientRecord::default()
    };
    let block_ms = record.count_failure(now_ms, config);
    let slot = place_new(slots, now_ms, config);
    let outcome = Outcome {
        counted: true,
        block_ms,
        newly_used: slot.bytes.is_empty(),
    };
    let write = Write {
        slot,
        bytes: record.encode(),
    };
    (outcome, Some(write))
}

/// The fleet's verdict (cluster mode: the rate limit service answered `OVER_LIMIT`): blocks
/// the client as its own count would have, escalation included. A client already blocked keeps
/// its block, as a failure while blocked changes nothing.
pub fn block<S: SharedStore>(
    store: &S,
    table: &SlotTable,
    config: &RateLimitConfig,
    client: &Fingerprint,
    now_ms: u64,
) -> Result<Outcome, StoreError> {
    table.update(store, client, |slots| {
        let (slot, mut record) = match own_slot(slots, client, config.epoch) {
            Some((_, record)) if record.blocked_at(now_ms) => {
                return (Outcome::default(), None);
            }
            Some(found) => found,
            None => {
                let record = ClientRecord {
                    epoch: config.epoch,
                    client: *client,
                    ..ClientRecord::default()
                };
                (place_new(slots, now_ms, config), record)
            }
        };
        let outcome = Outcome {
            counted: false,
            block_ms: Some(record.start_block(now_ms, config)),
            newly_used: slot.bytes.is_empty(),
        };
        let write = Write {
            slot,
            bytes: record.encode(),
        };
        (outcome, Some(write))
    })
}

/// Where a new client goes: an empty or unreadable slot, else an expired one, else the live
/// counter with fewer failures, else (both slots hold live blocks) the block ending first.
///
/// A new client is always tracked: were blocks never displaced, a holder of many addresses (an
/// IPv6 /48 is 65,536 /64s) could fill the table with blocks and every new client landing in a
/// bucket of two blocks would go uncounted, the limiter silently off for it. A block gives way
/// only in a bucket already holding two, to a failure that lands there: the bucket is chosen by
/// a keyed fingerprint, one in `capacity / 2`, so nobody can aim at a block to cut it short.
fn place_new<'a>(slots: &'a [Slot<'a>; 2], now_ms: u64, config: &RateLimitConfig) -> &'a Slot<'a> {
    let rank = |slot: &Slot| -> (u8, u64) {
        match ClientRecord::decode(slot.bytes) {
            Decoded::Empty | Decoded::Unreadable => (0, 0),
            Decoded::Record(old) if old.epoch != config.epoch => (0, 0),
            Decoded::Record(old) if old.expired(now_ms, config) => (1, 0),
            Decoded::Record(old) if !old.blocked_at(now_ms) => (2, u64::from(old.failures)),
            Decoded::Record(old) => (3, old.block_until_ms),
        }
    };
    // The first of equally ranked slots.
    let [first, second] = slots;
    if rank(second) < rank(first) {
        second
    } else {
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::counting;
    use crate::codec::hostile;
    use crate::config::Config;
    use crate::slots::memory::MemoryStore;

    const T0: u64 = 1_700_000_000_000;

    fn config(json: &str) -> RateLimitConfig {
        Config::parse(json.as_bytes()).unwrap().rate_limit
    }

    fn client(n: u8) -> Fingerprint {
        let mut bytes = [n; 16];
        bytes[8] = n.wrapping_mul(31).wrapping_add(7);
        Fingerprint(bytes)
    }

    struct Limiter {
        store: MemoryStore,
        table: SlotTable,
        config: RateLimitConfig,
    }

    impl Limiter {
        fn new(json: &str) -> Limiter {
            let config = config(json);
            let store = MemoryStore::default();
            let table = table(config.capacity);
            table.create_slots(&store).unwrap();
            Limiter {
                store,
                table,
                config,
            }
        }

        fn admit(&self, who: u8, now: u64) -> Admission {
            let clock = Clock::fixed(now);
            admit(&self.store, &self.table, &self.config, &client(who), &clock).unwrap()
        }

        fn end(&self, who: u8, now: u64, failed: bool, reservation: Option<u64>) -> Outcome {
            let client = client(who);
            finish(
                &self.store,
                &self.table,
                &self.config,
                &client,
                now,
                failed,
                reservation,
            )
            .unwrap()
        }

        fn fail(&self, who: u8, now: u64, reservation: Option<u64>) -> Outcome {
            self.end(who, now, true, reservation)
        }

        fn succeed(&self, who: u8, now: u64, reservation: Option<u64>) -> Outcome {
            self.end(who, now, false, reservation)
        }

        /// The rate limit service answered `OVER_LIMIT` for this client.
        fn fleet_block(&self, who: u8, now: u64) -> Outcome {
            block(&self.store, &self.table, &self.config, &client(who), now).unwrap()
        }

        /// A sequential request: admitted, then failing.
        fn attempt(&self, who: u8, now: u64) -> Admission {
            let admission = self.admit(who, now);
            let reservation = match admission {
                Admission::Pass => None,
                Admission::Reserved { window_start_ms } => Some(window_start_ms),
                _ => return admission,
            };
            self.fail(who, now, reservation);
            admission
        }
    }

    #[test]
    fn the_fleets_verdict_blocks_a_client_the_local_count_has_not() {
        let limiter = Limiter::new(r#"{"rate_limit": {"max_failures": 3, "block_seconds": 60}}"#);
        limiter.fail(1, T0, None);
        let outcome = limiter.fleet_block(1, T0 + 10);
        assert_eq!(outcome.block_ms, Some(60_000));
        assert!(!outcome.counted);
        assert_eq!(
            limiter.admit(1, T0 + 11),
            Admission::Blocked {
                until_ms: T0 + 10 + 60_000
            }
        );
        // Another client, never seen here, blocked by the fleet: gets a slot of its own.
        let outcome = limiter.fleet_block(2, T0 + 20);
        assert!(outcome.newly_used);
        assert!(matches!(
            limiter.admit(2, T0 + 21),
            Admission::Blocked { .. }
        ));
        assert_eq!(limiter.admit(3, T0 + 21), Admission::Pass);
    }

    #[test]
    fn the_fleets_verdict_keeps_a_block_in_force_and_escalates_a_repeat_offender() {
        let limiter = Limiter::new(
            r#"{"rate_limit": {"block_seconds": 60,
                "escalation": {"factor": 2, "max_block_seconds": 600}}}"#,
        );
        assert_eq!(limiter.fleet_block(1, T0).block_ms, Some(60_000));
        // While blocked: nothing changes (the block is not extended).
        assert_eq!(limiter.fleet_block(1, T0 + 30_000).block_ms, None);
        assert_eq!(
            limiter.admit(1, T0 + 59_999),
            Admission::Blocked {
                until_ms: T0 + 60_000
            }
        );
        // Blocked again soon after: twice as long.
        assert_eq!(limiter.fleet_block(1, T0 + 61_000).block_ms, Some(120_000));
    }

    #[test]
    fn records_round_trip() {
        let record = ClientRecord {
            epoch: 3,
            client: client(9),
            window_start_ms: 11,
            failures: 4,
            inflight: 2,
            block_until_ms: u64::MAX - 1,
            block_len_ms: 300_000,
        };
        let bytes = record.encode();
        assert_eq!(bytes.len(), RECORD_LEN);
        assert_eq!(ClientRecord::decode(&bytes), Decoded::Record(record));
        assert_eq!(ClientRecord::decode(&bytes[..10]), Decoded::Unreadable);
        assert_eq!(ClientRecord::decode(b""), Decoded::Empty);
    }

    #[test]
    fn any_bytes_decode_to_a_record_or_nothing() {
        let record = ClientRecord {
            epoch: 1,
            client: client(4),
            window_start_ms: T0,
            failures: 2,
            inflight: 1,
            block_until_ms: T0 + 5,
            block_len_ms: 5,
        }
        .encode();
        for cut in 1..record.len() {
            assert_eq!(ClientRecord::decode(&record[..cut]), Decoded::Unreadable);
        }
        for bytes in hostile::inputs(&record) {
            if let Decoded::Record(decoded) = ClientRecord::decode(&bytes) {
                assert_eq!(
                    ClientRecord::decode(&decoded.encode()),
                    Decoded::Record(decoded)
                );
            }
        }
    }

    #[test]
    fn a_client_without_a_record_costs_one_read_and_no_clock() {
        let limiter = Limiter::new("{}");
        limiter.fail(1, T0, None);
        let clock = counting::clock();
        let admission = admit(
            &limiter.store,
            &limiter.table,
            &limiter.config,
            &client(2),
            &clock,
        );
        assert_eq!(admission, Ok(Admission::Pass));
        assert_eq!(counting::reads(), 0);
        let admission = admit(
            &limiter.store,
            &limiter.table,
            &limiter.config,
            &client(1),
            &clock,
        );
        assert!(admission.is_ok());
        assert_eq!(
            counting::reads(),
            1,
            "a client with a record needs the time"
        );
    }

    #[test]
    fn good_traffic_is_never_written() {
        let limiter = Limiter::new("{}");
        let writes = limiter.store.writes.get();
        for n in 0..50 {
            assert_eq!(limiter.admit(n, T0), Admission::Pass);
            limiter.succeed(n, T0, None);
        }
        assert_eq!(limiter.store.writes.get(), writes);
    }

    #[test]
    fn the_block_starts_exactly_at_failure_max_plus_one() {
        let limiter = Limiter::new(r#"{"rate_limit": {"max_failures": 3}}"#);
        for n in 0..4 {
            let admission = limiter.attempt(1, T0 + n);
            assert!(
                !matches!(admission, Admission::Blocked { .. }),
                "attempt {n}"
            );
        }
        assert_eq!(
            limiter.admit(1, T0 + 10),
            Admission::Blocked {
                until_ms: T0 + 3 + 300_000
            }
        );
        assert_eq!(
            limiter.admit(2, T0 + 10),
            Admission::Pass,
            "others unaffected"
        );
    }

    #[test]
    fn blocked_retries_do_not_extend_the_block_and_it_ends_on_time() {
        let limiter = Limiter::new(
            r#"{"rate_limit": {"max_failures": 1, "block_seconds": 10, "escalation": null}}"#,
        );
        limiter.attempt(1, T0);
        limiter.attempt(1, T0 + 1);
        let until = T0 + 1 + 10_000;
        for t in (T0 + 2..until).step_by(1_000) {
            assert_eq!(
                limiter.attempt(1, t),
                Admission::Blocked { until_ms: until }
            );
            // A request that started before the block and failed late is not counted either.
            assert!(!limiter.fail(1, t, None).counted);
        }
        assert_eq!(limiter.admit(1, until), Admission::Pass);
    }

    #[test]
    fn the_window_is_fixed_from_the_first_failure() {
        let limiter = Limiter::new(r#"{"rate_limit": {"max_failures": 2, "window_seconds": 60}}"#);
        limiter.attempt(1, T0);
        limiter.attempt(1, T0 + 30_000);
        // The window opened at T0 has closed: this failure opens a new one.
        limiter.attempt(1, T0 + 60_000);
        limiter.attempt(1, T0 + 61_000);
        // Two failures in the new window: still admitted (with a reservation), not blocked.
        assert!(matches!(
            limiter.attempt(1, T0 + 62_000),
            Admission::Reserved { .. }
        ));
        assert!(matches!(
            limiter.admit(1, T0 + 62_001),
            Admission::Blocked { .. }
        ));
    }

    #[test]
    fn escalation_multiplies_and_caps_repeat_blocks() {
        let limiter = Limiter::new(
            r#"{"rate_limit": {"max_failures": 0, "block_seconds": 10,
                "escalation": {"factor": 2, "max_block_seconds": 30}}}"#,
        );
        let mut now = T0;
        for expected in [10_000, 20_000, 30_000, 30_000] {
            limiter.attempt(1, now);
            let Admission::Blocked { until_ms } = limiter.admit(1, now + 1) else {
                panic!("not blocked");
            };
            assert_eq!(until_ms - now, expected);
            now = until_ms;
        }
        // Longer than max_block_seconds without a block: back to block_seconds.
        now += 31_000;
        limiter.attempt(1, now);
        let Admission::Blocked { until_ms } = limiter.admit(1, now) else {
            panic!("not blocked");
        };
        assert_eq!(until_ms - now, 10_000);
    }

    #[test]
    fn a_parallel_burst_after_a_failure_is_bounded() {
        let limiter = Limiter::new(r#"{"rate_limit": {"max_failures": 3}}"#);
        limiter.attempt(1, T0);
        // failures = 1: at most 3 + 1 - 1 = 3 in flight.
        let admissions: Vec<Admission> = (0..6).map(|n| limiter.admit(1, T0 + 1 + n)).collect();
        let reserved: Vec<u64> = admissions
            .iter()
            .filter_map(|a| match a {
                Admission::Reserved { window_start_ms } => Some(*window_start_ms),
                _ => None,
            })
            .collect();
        assert_eq!(reserved.len(), 3);
        assert_eq!(
            admissions
                .iter()
                .filter(|a| **a == Admission::InflightFull)
                .count(),
            3
        );
        // All three fail: exactly the block.
        let blocks: Vec<Outcome> = reserved
            .iter()
            .map(|r| limiter.fail(1, T0 + 10, Some(*r)))
            .collect();
        assert_eq!(blocks.iter().filter(|o| o.block_ms.is_some()).count(), 1);
        assert!(matches!(
            limiter.admit(1, T0 + 11),
            Admission::Blocked { .. }
        ));
    }

    #[test]
    fn successful_requests_release_their_place() {
        let limiter = Limiter::new(r#"{"rate_limit": {"max_failures": 1}}"#);
        limiter.attempt(1, T0);
        let Admission::Reserved { window_start_ms } = limiter.admit(1, T0 + 1) else {
            panic!("a failing client reserves");
        };
        assert_eq!(limiter.admit(1, T0 + 2), Admission::InflightFull);
        limiter.succeed(1, T0 + 3, Some(window_start_ms));
        assert!(matches!(
            limiter.admit(1, T0 + 4),
            Admission::Reserved { .. }
        ));
    }

    #[test]
    fn epoch_forgets_every_counter_and_block() {
        let mut limiter = Limiter::new(r#"{"rate_limit": {"max_failures": 0}}"#);
        limiter.attempt(1, T0);
        assert!(matches!(
            limiter.admit(1, T0 + 1),
            Admission::Blocked { .. }
        ));
        limiter.config.epoch = 1;
        assert_eq!(limiter.admit(1, T0 + 2), Admission::Pass);
    }

    #[test]
    fn a_block_survives_new_clients_while_its_bucket_has_a_counter() {
        let mut limiter = Limiter::new(r#"{"rate_limit": {"max_failures": 0, "capacity": 2}}"#);
        limiter.attempt(1, T0);
        assert!(matches!(
            limiter.admit(1, T0 + 1),
            Admission::Blocked { .. }
        ));
        // Rotating addresses, each failing once (not enough for a block): they take the other
        // slot from each other, never the block's.
        limiter.config.max_failures = 5;
        for n in 10..200 {
            assert!(limiter.fail(n, T0 + 2, None).counted, "client {n}");
        }
        assert!(matches!(
            limiter.admit(1, T0 + 3),
            Admission::Blocked { .. }
        ));
    }

    #[test]
    fn a_bucket_of_two_blocks_still_tracks_a_new_client() {
        let mut limiter = Limiter::new(r#"{"rate_limit": {"max_failures": 0, "capacity": 2}}"#);
        limiter.attempt(1, T0);
        limiter.attempt(2, T0 + 1_000);
        limiter.config.max_failures = 1;
        let outcome = limiter.fail(3, T0 + 2_000, None);
        assert!(outcome.counted);
        // The block ending first gave way; the other holds.
        assert_eq!(limiter.admit(1, T0 + 2_001), Admission::Pass);
        assert!(matches!(
            limiter.admit(2, T0 + 2_001),
            Admission::Blocked { .. }
        ));
        assert_eq!(
            limiter.fail(3, T0 + 2_002, None).block_ms,
            Some(300_000),
            "the new client is counted to its block"
        );
    }

    #[test]
    fn blocks_from_many_addresses_never_turn_the_limiter_off_for_new_clients() {
        // As many blocked addresses as the table has slots (an IPv6 /48 holds 65,536 /64s, as
        // many as the default table), then new clients: every one is counted and blocked.
        let mut limiter = Limiter::new(r#"{"rate_limit": {"max_failures": 0, "capacity": 64}}"#);
        for n in 0..64 {
            limiter.attempt(n, T0);
        }
        limiter.config.max_failures = 1;
        for n in 64..=255 {
            assert!(limiter.fail(n, T0 + 1_000, None).counted, "client {n}");
            let second = limiter.fail(n, T0 + 1_001, None);
            assert!(second.block_ms.is_some(), "client {n} reached its block");
        }
    }

    #[test]
    fn a_full_table_takes_the_slot_with_fewer_failures() {
        let limiter = Limiter::new(r#"{"rate_limit": {"max_failures": 100, "capacity": 2}}"#);
        for _ in 0..5 {
            limiter.fail(1, T0, None);
        }
        limiter.fail(2, T0, None);
        let outcome = limiter.fail(3, T0, None);
        assert!(outcome.counted && !outcome.newly_used);
        assert!(
            matches!(limiter.admit(1, T0 + 1), Admission::Reserved { .. }),
            "the heavier client stays"
        );
        assert_eq!(
            limiter.admit(2, T0 + 1),
            Admission::Pass,
            "the lighter one was replaced"
        );
    }

    #[test]
    fn a_failure_counted_by_a_write_that_lost_its_race_is_not_reported() {
        let limiter = Limiter::new(r#"{"rate_limit": {"max_failures": 0, "capacity": 2}}"#);
        // While this worker writes the client's first failure (a block, with max_failures 0),
        // another worker blocks the same client first: this failure falls inside that block.
        let theirs = ClientRecord {
            epoch: limiter.config.epoch,
            client: client(1),
            block_until_ms: T0 + 99_000,
            block_len_ms: 99_000,
            ..ClientRecord::default()
        };
        let table = limiter.table.clone();
        *limiter.store.interloper.borrow_mut() = Some(Box::new(move |store| {
            table.plant(store, 0, &theirs.encode())
        }));
        let outcome = limiter.fail(1, T0, None);
        assert_eq!(outcome, Outcome::default(), "not counted, no block started");
        assert_eq!(
            limiter.admit(1, T0 + 1),
            Admission::Blocked {
                until_ms: T0 + 99_000
            }
        );
    }

    #[test]
    fn concurrent_updates_lose_nothing() {
        let limiter = Limiter::new(r#"{"rate_limit": {"max_failures": 5}}"#);
        for n in 0..5 {
            limiter.store.conflicts.set(2);
            limiter.fail(1, T0 + n, None);
        }
        limiter.store.conflicts.set(3);
        let outcome = limiter.fail(1, T0 + 9, None);
        assert!(outcome.block_ms.is_some(), "the sixth failure blocks");
    }
}
