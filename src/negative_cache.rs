//! What the negative cache stores, when an entry applies, and how entries are placed in the
//! slot table. A slot holds a fixed-size record (read on every lookup) followed by what a hit
//! replays: inline when it is small, so that a hit is one read; a larger body lives under a
//! second key read only on a hit, and carries its record's key and store time so a body that
//! does not belong to its record is never replayed.

use crate::clock::Clock;
use crate::codec::{read_versioned, Reader, Versioned, Writer};
use crate::config::{KeyShape, NegativeCacheConfig};
use crate::fingerprint::Fingerprint;
use crate::http_date::retry_after_reset_ms;
use crate::slots::{Bucket, IndexedValues, SharedStore, Slot, SlotTable, StoreError, Write};

const RECORD_VERSION: u8 = 2;
const RECORD_LEN: usize = 68;
const BODY_VERSION: u8 = 1;

const FLAG_INACTIVE: u8 = 1;
const FLAG_ANONYMOUS: u8 = 2;

/// Where a slot's replay is: right after its record, or under the slot's body key.
const REPLAY_INLINE: u8 = 1;
const REPLAY_ELSEWHERE: u8 = 2;

/// The largest replay (content type, challenge and body, as encoded) kept in the slot itself.
/// Every lookup copies its bucket of two slots out of shared data, a good request's included,
/// so the bucket stays small: a typical JSON 401 fits, a larger body gets its own key.
pub const INLINE_REPLAY_BYTES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub inactive: bool,
    pub anonymous: bool,
    pub status: u16,
    pub shape: u8,
    pub epoch: u32,
    pub stored_ms: u64,
    pub expires_ms: u64,
    /// The upstream's `Retry-After` as an absolute time; 0 when it sent none.
    pub reset_ms: u64,
    pub identity: Fingerprint,
    pub key: Fingerprint,
}

/// A slot's bytes, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Empty,
    Record(Record),
    /// Written by another version of the filter: a miss, and free to overwrite.
    OtherVersion,
    /// Bytes that cannot be a record: a miss, free to overwrite, and worth an error count.
    Corrupt,
}

/// What a hit replays besides the status, borrowed from where it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplayParts<'a> {
    pub content_type: Option<&'a [u8]>,
    pub www_authenticate: Option<&'a [u8]>,
    /// `None` when the upstream's body was not kept (too large, encoded, HEAD, cut short).
    pub body: Option<&'a [u8]>,
}

/// Where a slot's replay is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay<'a> {
    Inline(ReplayParts<'a>),
    /// Under the slot's body key (`CacheTables::bodies`), too large to share the bucket.
    Elsewhere,
}

impl Replay<'_> {
    /// The replay part of a slot (what follows its record); `None` when it is malformed.
    fn decode(tail: &[u8]) -> Option<Replay<'_>> {
        let mut reader = Reader::new(tail);
        let replay = match reader.u8()? {
            REPLAY_INLINE => Replay::Inline(ReplayParts {
                content_type: reader.optional()?,
                www_authenticate: reader.optional()?,
                body: reader.optional()?,
            }),
            REPLAY_ELSEWHERE => Replay::Elsewhere,
            _ => return None,
        };
        reader.is_done().then_some(replay)
    }
}

impl Record {
    /// The slot value of this record with `replay` after it (inline when small enough, else
    /// marked as under the body key); and whether `replay` must be written to the body key.
    pub fn encode(&self, replay: &ReplayBody) -> (Vec<u8>, bool) {
        let parts = replay.parts();
        let inline_len = 1 + [parts.content_type, parts.www_authenticate, parts.body]
            .iter()
            .map(|part| 1 + part.map_or(0, |bytes| 4 + bytes.len()))
            .sum::<usize>();
        let inline = inline_len <= INLINE_REPLAY_BYTES;
        let mut writer = self.writer(if inline { inline_len } else { 1 });
        if inline {
            writer
                .u8(REPLAY_INLINE)
                .optional(parts.content_type)
                .optional(parts.www_authenticate)
                .optional(parts.body);
        } else {
            writer.u8(REPLAY_ELSEWHERE);
        }
        (writer.finish(), !inline)
    }

    /// The record's fixed part, with room for `extra` bytes after it.
    fn writer(&self, extra: usize) -> Writer {
        let mut flags = 0;
        if self.inactive {
            flags |= FLAG_INACTIVE;
        }
        if self.anonymous {
            flags |= FLAG_ANONYMOUS;
        }
        let mut writer = Writer::versioned(RECORD_VERSION, RECORD_LEN + extra);
        writer
            .u8(flags)
            .u16(self.status)
            .u8(self.shape)
            .padding(3)
            .u32(self.epoch)
            .u64(self.stored_ms)
            .u64(self.expires_ms)
            .u64(self.reset_ms)
            .fingerprint(&self.identity)
            .fingerprint(&self.key);
        writer
    }

    /// A slot's value: its record, when the replay after it is well-formed too.
    pub fn decode(bytes: &[u8]) -> Decoded {
        let (head, tail) = bytes.split_at(bytes.len().min(RECORD_LEN));
        let read = read_versioned(head, RECORD_VERSION, |reader| {
            let flags = reader.u8()?;
            let status = reader.u16()?;
            let shape = reader.u8()?;
            reader.padding(3)?;
            Some(Record {
                inactive: flags & FLAG_INACTIVE != 0,
                anonymous: flags & FLAG_ANONYMOUS != 0,
                status,
                shape,
                epoch: reader.u32()?,
                stored_ms: reader.u64()?,
                expires_ms: reader.u64()?,
                reset_ms: reader.u64()?,
                identity: reader.fingerprint()?,
                key: reader.fingerprint()?,
            })
        });
        match read {
            Versioned::Empty => Decoded::Empty,
            Versioned::OtherVersion => Decoded::OtherVersion,
            Versioned::Value(record)
                if may_store(record.status) && Replay::decode(tail).is_some() =>
            {
                Decoded::Record(record)
            }
            Versioned::Value(_) | Versioned::Malformed => Decoded::Corrupt,
        }
    }

    /// The replay of a slot `decode` read as a record.
    pub fn replay_of(bytes: &[u8]) -> Option<Replay<'_>> {
        Replay::decode(bytes.get(RECORD_LEN..)?)
    }

    /// The same slot value with this record's fields (the replay after it kept as it was).
    fn reencode(&self, slot: &[u8]) -> Vec<u8> {
        let tail = slot.get(RECORD_LEN..).unwrap_or_default();
        let mut bytes = self.writer(tail.len()).finish();
        bytes.extend_from_slice(tail);
        bytes
    }

    pub fn is_live(&self, now_ms: u64, epoch: u32) -> bool {
        self.epoch == epoch && now_ms < self.expires_ms
    }
}

/// What a hit replays besides the status, as an entry is stored; under the body key (too large
/// for the slot) with its record's key and store time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplayBody {
    pub key: Fingerprint,
    pub stored_ms: u64,
    pub content_type: Option<Vec<u8>>,
    pub www_authenticate: Option<Vec<u8>>,
    /// `None` when the upstream's body was not kept (too large, encoded, HEAD, cut short).
    pub body: Option<Vec<u8>>,
}

impl ReplayBody {
    pub fn parts(&self) -> ReplayParts<'_> {
        ReplayParts {
            content_type: self.content_type.as_deref(),
            www_authenticate: self.www_authenticate.as_deref(),
            body: self.body.as_deref(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let body_len = self.body.as_ref().map_or(0, Vec::len);
        Writer::versioned(BODY_VERSION, 40 + body_len)
            .fingerprint(&self.key)
            .u64(self.stored_ms)
            .optional(self.content_type.as_deref())
            .optional(self.www_authenticate.as_deref())
            .optional(self.body.as_deref())
            .finish()
    }

    pub fn decode(bytes: &[u8]) -> Option<ReplayBody> {
        let read = read_versioned(bytes, BODY_VERSION, |reader| {
            Some(ReplayBody {
                key: reader.fingerprint()?,
                stored_ms: reader.u64()?,
                content_type: reader.optional()?.map(<[u8]>::to_vec),
                www_authenticate: reader.optional()?.map(<[u8]>::to_vec),
                body: reader.optional()?.map(<[u8]>::to_vec),
            })
        });
        match read {
            Versioned::Value(body) => Some(body),
            Versioned::Empty | Versioned::OtherVersion | Versioned::Malformed => None,
        }
    }

    pub fn belongs_to(&self, record: &Record) -> bool {
        self.key == record.key && self.stored_ms == record.stored_ms
    }
}

/// The key shape an entry of this kind is stored under, or `None` if it is not cached at all.
pub fn entry_shape(
    config: &NegativeCacheConfig,
    status: u16,
    inactive: bool,
    anonymous: bool,
) -> Option<KeyShape> {
    let shape = if inactive && !anonymous {
        KeyShape::IDENTITY_ONLY
    } else {
        config.rule_for(status)?.shape
    };
    Some(if anonymous {
        shape.for_anonymous()
    } else {
        shape
    })
}

/// What an upstream response tells the cache to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorePlan {
    pub shape: KeyShape,
    pub inactive: bool,
    pub expires_ms: u64,
    pub reset_ms: u64,
}

/// Only client errors are ever cached: a response outside 4xx needs no further look.
pub fn may_store(status: u16) -> bool {
    (400..=499).contains(&status)
}

/// Decides whether an upstream response is stored, for how long and under which key shape.
/// Only 4xx responses are candidates; the inactive marker applies to credentials only.
pub fn plan_store(
    config: &NegativeCacheConfig,
    status: u16,
    inactive_marker: bool,
    anonymous: bool,
    retry_after: Option<&[u8]>,
    now_ms: u64,
) -> Option<StorePlan> {
    if !may_store(status) {
        return None;
    }
    let inactive = inactive_marker && !anonymous && config.inactive.is_some();
    let ttl_ms = match (&config.inactive, inactive) {
        (Some(rule), true) => rule.ttl_ms,
        _ => config.rule_for(status)?.ttl_ms,
    };
    let shape = entry_shape(config, status, inactive, anonymous)?;
    let reset_ms = retry_after
        .and_then(|value| retry_after_reset_ms(value, now_ms))
        .unwrap_or(0);
    let mut expires_ms = now_ms.saturating_add(ttl_ms);
    if status == 429 && reset_ms != 0 {
        expires_ms = expires_ms.min(reset_ms);
    }
    if expires_ms <= now_ms {
        return None;
    }
    // A replayed `Retry-After` never points past the entry's own end: from then on the upstream
    // answers again, and says for itself how long to wait.
    let reset_ms = reset_ms.min(expires_ms);
    Some(StorePlan {
        shape,
        inactive,
        expires_ms,
        reset_ms,
    })
}

/// The cache's two tables in shared data: slots (a record and a small replay), two to a key,
/// and the replays too large for a slot, one key per slot that ever held one.
pub struct CacheTables {
    pub records: SlotTable,
    pub bodies: IndexedValues,
}

impl CacheTables {
    pub fn new(capacity: u32) -> Self {
        CacheTables {
            records: SlotTable::new("negcache/cache", capacity),
            bodies: IndexedValues::new("negcache/cb"),
        }
    }
}

/// The outcome of a lookup: the live entry that matches, and whether corrupt bytes were seen.
#[derive(Debug, Default)]
pub struct Lookup {
    pub hit: Option<Hit>,
    pub corrupt: bool,
}

/// A live entry found: its slot, its record, and the bucket it was read from (the replay is
/// read from there).
#[derive(Debug)]
pub struct Hit {
    pub index: u32,
    pub record: Record,
    bucket: Bucket,
    /// Which of the bucket's candidate slots.
    way: usize,
}

impl Hit {
    /// What the hit replays: from the slot itself, or (a large body) from its body key, where
    /// a body of another entry makes it `None`, a miss.
    pub fn replay<S: SharedStore>(
        &self,
        store: &S,
        tables: &CacheTables,
    ) -> Result<Option<Replayed<'_>>, StoreError> {
        let slots = self.bucket.slots();
        let slot = slots.get(self.way).map_or(&[][..], |slot| slot.bytes);
        match Record::replay_of(slot) {
            Some(Replay::Inline(parts)) => Ok(Some(Replayed::Slot(parts))),
            Some(Replay::Elsewhere) => {
                let bytes = tables.bodies.read(store, self.index)?;
                Ok(ReplayBody::decode(&bytes)
                    .filter(|body| body.belongs_to(&self.record))
                    .map(Replayed::Body))
            }
            None => Ok(None),
        }
    }
}

/// A hit's replay as read.
#[derive(Debug)]
pub enum Replayed<'a> {
    Slot(ReplayParts<'a>),
    Body(ReplayBody),
}

impl Replayed<'_> {
    pub fn parts(&self) -> ReplayParts<'_> {
        match self {
            Replayed::Slot(parts) => *parts,
            Replayed::Body(body) => body.parts(),
        }
    }
}

/// Finds a live entry of `identity` whose key, recomputed for this request with the shape its
/// status is keyed on, matches. `key_for` is called only for records of this identity, and
/// returns `None` when the request lacks a part the shape needs (an unresolved client IP).
pub fn lookup<S: SharedStore>(
    store: &S,
    tables: &CacheTables,
    config: &NegativeCacheConfig,
    identity: &Fingerprint,
    clock: &Clock,
    mut key_for: impl FnMut(KeyShape) -> Option<Fingerprint>,
) -> Result<Lookup, StoreError> {
    let mut result = Lookup::default();
    let bucket = tables.records.read_candidates(store, identity)?;
    let slots = bucket.slots();
    let distinct = if slots[0].index == slots[1].index {
        1
    } else {
        2
    };
    let mut found = None;
    for (way, slot) in slots.iter().enumerate().take(distinct) {
        let record = match Record::decode(slot.bytes) {
            Decoded::Record(record) => record,
            Decoded::Corrupt => {
                result.corrupt = true;
                continue;
            }
            Decoded::Empty | Decoded::OtherVersion => continue,
        };
        if record.identity != *identity || !record.is_live(clock.now_ms(), config.epoch) {
            continue;
        }
        let Some(shape) = entry_shape(config, record.status, record.inactive, record.anonymous)
        else {
            continue;
        };
        if shape.to_bits() != record.shape {
            continue;
        }
        if key_for(shape) == Some(record.key) {
            found = Some((way, slot.index, record));
            break;
        }
    }
    result.hit = found.map(|(way, index, record)| Hit {
        index,
        record,
        bucket,
        way,
    });
    Ok(result)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreOutcome {
    /// A live entry of another key was replaced.
    pub evicted: bool,
    /// The slot had never held data before.
    pub newly_used: bool,
    /// Corrupt bytes were overwritten.
    pub corrupt: bool,
}

/// Stores `record` and its replay in one of its identity's two slots: the slot already holding
/// the same key, else a free one (empty, expired, old epoch, unreadable), else the live entry
/// that expires first is evicted. A replay too large for the slot goes to the slot's body key
/// after the record: until it is there, a hit finds the older body, which is not its own, and
/// is a miss.
pub fn store<S: SharedStore>(
    store: &S,
    tables: &CacheTables,
    record: &Record,
    body: &ReplayBody,
) -> Result<StoreOutcome, StoreError> {
    let (encoded, elsewhere) = record.encode(body);
    let (outcome, index) = tables.records.update(store, &record.identity, |slots| {
        let (slot, outcome) = choose_slot(slots, record);
        let write = Write {
            slot,
            bytes: encoded.clone(),
        };
        ((outcome, slot.index), Some(write))
    })?;
    if elsewhere {
        tables.bodies.write(store, index, &body.encode())?;
    }
    Ok(outcome)
}

/// The slot `record` goes to, and what storing it there replaces.
fn choose_slot<'a>(slots: &'a [Slot<'a>; 2], record: &Record) -> (&'a Slot<'a>, StoreOutcome) {
    let held = slots.each_ref().map(|slot| Record::decode(slot.bytes));
    let same_key = |position: &usize| {
        matches!(&held[*position], Decoded::Record(existing)
            if existing.key == record.key && existing.epoch == record.epoch)
    };
    let free = |position: &usize| match &held[*position] {
        Decoded::Record(existing) => !existing.is_live(record.stored_ms, record.epoch),
        Decoded::Corrupt | Decoded::Empty | Decoded::OtherVersion => true,
    };
    let expires = |position: &usize| match &held[*position] {
        Decoded::Record(existing) => existing.expires_ms,
        Decoded::Corrupt | Decoded::Empty | Decoded::OtherVersion => 0,
    };
    let (position, evicted) = match (0..2).find(same_key).or_else(|| (0..2).find(free)) {
        Some(position) => (position, false),
        None => ((0..2).min_by_key(expires).unwrap_or(0), true),
    };
    let slot = &slots[position];
    let outcome = StoreOutcome {
        evicted,
        newly_used: slot.bytes.is_empty(),
        corrupt: held[position] == Decoded::Corrupt,
    };
    (slot, outcome)
}

/// Expires every live entry of `identity` (an upstream said the credential is good now).
/// Returns how many entries were removed. The slot keeps a record, never an empty value, so
/// "slots ever used" stays exact.
pub fn purge<S: SharedStore>(
    store: &S,
    tables: &CacheTables,
    identity: &Fingerprint,
    epoch: u32,
    now_ms: u64,
) -> Result<u32, StoreError> {
    let mut removed = 0;
    // Each pass expires at most one entry; two slots need at most two passes.
    for _ in 0..2 {
        let expired = tables.records.update(store, identity, |slots| {
            let write = slots.iter().find_map(|slot| {
                let Decoded::Record(mut record) = Record::decode(slot.bytes) else {
                    return None;
                };
                if record.identity != *identity || !record.is_live(now_ms, epoch) {
                    return None;
                }
                record.expires_ms = now_ms;
                Some(Write {
                    slot,
                    bytes: record.reencode(slot.bytes),
                })
            });
            (write.is_some(), write)
        })?;
        if !expired {
            break;
        }
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::counting;
    use crate::codec::hostile;
    use crate::config::Config;
    use crate::fingerprint::{Fingerprinter, KeyParts, Who};
    use crate::slots::memory::MemoryStore;

    const NOW: u64 = 1_700_000_000_000;

    fn config() -> NegativeCacheConfig {
        Config::parse(b"{}").unwrap().negative_cache
    }

    fn small(capacity: u32) -> NegativeCacheConfig {
        let json = format!(r#"{{"negative_cache": {{"capacity": {capacity}}}}}"#);
        Config::parse(json.as_bytes()).unwrap().negative_cache
    }

    struct World {
        store: MemoryStore,
        tables: CacheTables,
        config: NegativeCacheConfig,
        hasher: Fingerprinter,
    }

    impl World {
        fn new(config: NegativeCacheConfig) -> World {
            let store = MemoryStore::default();
            let tables = CacheTables::new(config.capacity);
            tables.records.create_slots(&store).unwrap();
            World {
                store,
                tables,
                config,
                hasher: Fingerprinter::from_secret(b"test secret, long enough"),
            }
        }

        fn identity(&self, token: &str) -> Fingerprint {
            self.hasher.identity(
                b"api.example.com",
                Who::Credential {
                    source: "header:authorization",
                    value: token.as_bytes(),
                },
            )
        }

        fn parts(path: &str) -> KeyParts<'_> {
            KeyParts {
                method: "GET",
                path,
                query: "",
                client_ip: "192.0.2.1",
            }
        }

        fn save(
            &self,
            token: &str,
            path: &str,
            status: u16,
            retry_after: Option<&str>,
            now: u64,
        ) -> StoreOutcome {
            let body = format!("{{\"token\":\"{token}\"}}").into_bytes();
            self.save_body(token, path, status, retry_after, now, body)
        }

        fn save_body(
            &self,
            token: &str,
            path: &str,
            status: u16,
            retry_after: Option<&str>,
            now: u64,
            body: Vec<u8>,
        ) -> StoreOutcome {
            let plan = plan_store(
                &self.config,
                status,
                false,
                false,
                retry_after.map(str::as_bytes),
                now,
            )
            .expect("cacheable");
            let identity = self.identity(token);
            let key = self
                .hasher
                .entry(&identity, plan.shape, &World::parts(path));
            let record = Record {
                inactive: plan.inactive,
                anonymous: false,
                status,
                shape: plan.shape.to_bits(),
                epoch: self.config.epoch,
                stored_ms: now,
                expires_ms: plan.expires_ms,
                reset_ms: plan.reset_ms,
                identity,
                key,
            };
            let body = ReplayBody {
                key,
                stored_ms: now,
                content_type: Some(b"application/json".to_vec()),
                www_authenticate: None,
                body: Some(body),
            };
            store(&self.store, &self.tables, &record, &body).unwrap()
        }

        fn find(&self, token: &str, path: &str, now: u64) -> Option<(Record, Option<ReplayBody>)> {
            let identity = self.identity(token);
            let found = lookup(
                &self.store,
                &self.tables,
                &self.config,
                &identity,
                &Clock::fixed(now),
                |shape| Some(self.hasher.entry(&identity, shape, &World::parts(path))),
            )
            .unwrap();
            found.hit.map(|hit| {
                let replayed = hit.replay(&self.store, &self.tables).unwrap();
                let body = replayed.map(|replayed| {
                    let parts = replayed.parts();
                    ReplayBody {
                        key: hit.record.key,
                        stored_ms: hit.record.stored_ms,
                        content_type: parts.content_type.map(<[u8]>::to_vec),
                        www_authenticate: parts.www_authenticate.map(<[u8]>::to_vec),
                        body: parts.body.map(<[u8]>::to_vec),
                    }
                });
                (hit.record, body)
            })
        }
    }

    #[test]
    fn a_credential_without_an_entry_is_looked_up_without_the_clock() {
        let world = World::new(config());
        world.save("t1", "/", 401, None, NOW);
        let lookup_of = |token: &str, clock: &Clock| {
            let identity = world.identity(token);
            lookup(
                &world.store,
                &world.tables,
                &world.config,
                &identity,
                clock,
                |shape| Some(world.hasher.entry(&identity, shape, &World::parts("/"))),
            )
            .unwrap()
        };
        let clock = counting::clock();
        assert!(lookup_of("t2", &clock).hit.is_none());
        assert_eq!(counting::reads(), 0);
        assert!(lookup_of("t1", &clock).hit.is_some());
        assert_eq!(counting::reads(), 1);
    }

    #[test]
    fn records_round_trip_and_bad_bytes_are_told_apart() {
        let record = Record {
            inactive: true,
            anonymous: false,
            status: 401,
            shape: 3,
            epoch: 7,
            stored_ms: 1,
            expires_ms: 2,
            reset_ms: 3,
            identity: Fingerprint([1; 16]),
            key: Fingerprint([2; 16]),
        };
        let (bytes, elsewhere) = record.encode(&ReplayBody::default());
        assert!(!elsewhere);
        assert_eq!(
            bytes.len(),
            RECORD_LEN + 4,
            "the record, then an empty inline replay"
        );
        assert_eq!(Record::decode(&bytes), Decoded::Record(record));
        assert_eq!(Record::decode(b""), Decoded::Empty);
        assert_eq!(Record::decode(&[9, 1, 2]), Decoded::OtherVersion);
        assert_eq!(
            Record::decode(&[1, 1, 2]),
            Decoded::OtherVersion,
            "version 1"
        );
        assert_eq!(Record::decode(&bytes[..40]), Decoded::Corrupt);
        assert_eq!(
            Record::decode(&bytes[..RECORD_LEN]),
            Decoded::Corrupt,
            "a record without its replay"
        );
        let mut bad_status = bytes.clone();
        bad_status[2] = 200;
        bad_status[3] = 0;
        assert_eq!(Record::decode(&bad_status), Decoded::Corrupt);
    }

    #[test]
    fn bodies_round_trip_and_reject_truncation() {
        let body = ReplayBody {
            key: Fingerprint([5; 16]),
            stored_ms: 99,
            content_type: Some(b"text/plain".to_vec()),
            www_authenticate: Some(b"Bearer".to_vec()),
            body: None,
        };
        let bytes = body.encode();
        assert_eq!(ReplayBody::decode(&bytes), Some(body));
        for cut in 0..bytes.len() {
            assert_eq!(ReplayBody::decode(&bytes[..cut]), None);
        }
    }

    #[test]
    fn any_bytes_decode_to_a_record_or_nothing() {
        let record = Record {
            inactive: false,
            anonymous: true,
            status: 429,
            shape: 7,
            epoch: 2,
            stored_ms: NOW,
            expires_ms: NOW + 1,
            reset_ms: NOW + 2,
            identity: Fingerprint([3; 16]),
            key: Fingerprint([4; 16]),
        }
        .encode(&ReplayBody {
            content_type: Some(b"text/plain".to_vec()),
            body: Some(b"no".to_vec()),
            ..ReplayBody::default()
        })
        .0;
        for cut in 1..record.len() {
            assert_eq!(Record::decode(&record[..cut]), Decoded::Corrupt, "{cut}");
        }
        for bytes in hostile::inputs(&record) {
            if let Decoded::Record(decoded) = Record::decode(&bytes) {
                let replay = Record::replay_of(&bytes).expect("a record's replay is readable");
                let again = decoded.reencode(&bytes);
                assert_eq!(Record::decode(&again), Decoded::Record(decoded));
                assert_eq!(Record::replay_of(&again), Some(replay));
            }
        }
        let body = ReplayBody {
            key: Fingerprint([5; 16]),
            stored_ms: NOW,
            content_type: Some(b"text/plain".to_vec()),
            www_authenticate: None,
            body: Some(b"denied".to_vec()),
        }
        .encode();
        for bytes in hostile::inputs(&body) {
            if let Some(decoded) = ReplayBody::decode(&bytes) {
                assert_eq!(ReplayBody::decode(&decoded.encode()), Some(decoded));
            }
        }
    }

    #[test]
    fn plans_follow_status_rules() {
        let config = config();
        let plan = plan_store(&config, 401, false, false, None, NOW).unwrap();
        assert_eq!(plan.expires_ms, NOW + 60_000);
        assert_eq!(plan.shape, KeyShape::IDENTITY_ONLY);
        for status in [200, 302, 404, 500, 503, 100] {
            assert_eq!(
                plan_store(&config, status, false, false, None, NOW),
                None,
                "{status}"
            );
        }
        // A 5xx with the inactive marker is still never stored.
        assert_eq!(plan_store(&config, 503, true, false, None, NOW), None);
        let inactive = plan_store(&config, 403, true, false, None, NOW).unwrap();
        assert!(inactive.inactive);
        assert_eq!(inactive.expires_ms, NOW + 3_600_000);
        assert_eq!(inactive.shape, KeyShape::IDENTITY_ONLY);
        // An unlisted 4xx marked inactive is stored too: the marker is about the credential.
        assert!(
            plan_store(&config, 404, true, false, None, NOW)
                .unwrap()
                .inactive
        );
        // Anonymous requests cannot be inactive and are keyed per request line.
        let anonymous = plan_store(&config, 401, true, true, None, NOW).unwrap();
        assert!(!anonymous.inactive);
        assert!(anonymous.shape.method && anonymous.shape.path && anonymous.shape.query);
    }

    #[test]
    fn retry_after_bounds_429_and_is_kept_for_others() {
        let config = config();
        let throttled = plan_store(&config, 429, false, false, Some(b"3"), NOW).unwrap();
        assert_eq!(throttled.expires_ms, NOW + 3_000);
        assert_eq!(throttled.reset_ms, NOW + 3_000);
        let long = plan_store(&config, 429, false, false, Some(b"3600"), NOW).unwrap();
        assert_eq!(long.expires_ms, NOW + 10_000);
        assert_eq!(
            plan_store(&config, 429, false, false, Some(b"0"), NOW),
            None
        );
        let unauthorized = plan_store(&config, 401, false, false, Some(b"5"), NOW).unwrap();
        assert_eq!(unauthorized.expires_ms, NOW + 60_000);
        assert_eq!(unauthorized.reset_ms, NOW + 5_000);
        let garbage = plan_store(&config, 429, false, false, Some(b"soon"), NOW).unwrap();
        assert_eq!((garbage.reset_ms, garbage.expires_ms), (0, NOW + 10_000));
    }

    #[test]
    fn a_far_retry_after_is_replayed_as_at_most_the_entrys_lifetime() {
        let config = config();
        for far in [
            &b"Fri, 31 Dec 9999 23:59:59 GMT"[..],
            b"99999999999999999999999",
            b"86400",
        ] {
            let unauthorized = plan_store(&config, 401, false, false, Some(far), NOW).unwrap();
            assert_eq!(unauthorized.expires_ms, NOW + 60_000);
            assert_eq!(unauthorized.reset_ms, NOW + 60_000);
            let throttled = plan_store(&config, 429, false, false, Some(far), NOW).unwrap();
            assert_eq!(throttled.reset_ms, throttled.expires_ms);
        }
        let world = World::new(config);
        world.save("t1", "/", 401, Some("99999999999999999999999"), NOW);
        let (record, body) = world.find("t1", "/", NOW + 1_500).unwrap();
        let reply = crate::reply::cache_hit(&record, body.unwrap().parts(), NOW + 1_500);
        let retry_after = reply.header("retry-after");
        assert_eq!(retry_after, Some("59"), "the entry's remaining 58.5 s");
    }

    #[test]
    fn a_stored_entry_is_found_until_it_expires() {
        let world = World::new(config());
        assert!(world.find("t1", "/a", NOW).is_none());
        let outcome = world.save("t1", "/a", 401, None, NOW);
        assert!(outcome.newly_used && !outcome.evicted);
        let (record, body) = world.find("t1", "/other", NOW + 1).unwrap();
        assert_eq!(record.status, 401);
        assert_eq!(body.unwrap().body.unwrap(), b"{\"token\":\"t1\"}");
        assert!(world.find("t1", "/a", NOW + 59_999).is_some());
        assert!(world.find("t1", "/a", NOW + 60_000).is_none());
        assert!(world.find("t2", "/a", NOW + 1).is_none());
    }

    #[test]
    fn forbidden_is_per_path_and_epoch_clears() {
        let mut world = World::new(config());
        world.save("t1", "/admin", 403, None, NOW);
        assert!(world.find("t1", "/admin", NOW + 1).is_some());
        assert!(world.find("t1", "/public", NOW + 1).is_none());
        world.config.epoch = 1;
        assert!(world.find("t1", "/admin", NOW + 1).is_none());
    }

    #[test]
    fn a_changed_rule_shape_makes_old_entries_misses() {
        let mut world = World::new(config());
        world.save("t1", "/a", 401, None, NOW);
        world.config = Config::parse(
            br#"{"negative_cache": {"statuses": {"401": {"ttl_seconds": 5, "key": ["identity", "path"]}}}}"#,
        )
        .unwrap()
        .negative_cache;
        assert!(world.find("t1", "/a", NOW + 1).is_none());
    }

    #[test]
    fn a_small_replay_lives_in_its_slot_and_a_large_one_under_its_own_key() {
        let world = World::new(small(8));
        world.save("t1", "/", 401, None, NOW);
        assert_eq!(
            world.store.keys(),
            4 + 1,
            "four buckets and the marker, no body key"
        );
        let (_, body) = world.find("t1", "/", NOW + 1).unwrap();
        assert_eq!(body.unwrap().body.unwrap(), b"{\"token\":\"t1\"}");

        let large = vec![b'x'; INLINE_REPLAY_BYTES];
        world.save_body("t2", "/", 401, None, NOW, large.clone());
        assert_eq!(world.store.keys(), 4 + 1 + 1, "one body key");
        let (_, body) = world.find("t2", "/", NOW + 1).unwrap();
        assert_eq!(body.unwrap().body.unwrap(), large);

        // The largest body kept in the slot next to a content type and no challenge: the
        // place byte, three presence bytes, two lengths of 4 bytes, the two values.
        let fits = vec![b'y'; INLINE_REPLAY_BYTES - 4 - 8 - b"application/json".len()];
        let before = world.store.keys();
        world.save_body("t3", "/", 401, None, NOW, fits.clone());
        assert_eq!(world.store.keys(), before, "kept in the slot");
        let (_, body) = world.find("t3", "/", NOW + 1).unwrap();
        assert_eq!(body.unwrap().body.unwrap(), fits);
        let one_more = [fits.as_slice(), b"y"].concat();
        world.save_body("t4", "/", 401, None, NOW, one_more.clone());
        assert_eq!(world.store.keys(), before + 1, "under its own key");
        let (_, body) = world.find("t4", "/", NOW + 1).unwrap();
        assert_eq!(body.unwrap().body.unwrap(), one_more);
    }

    #[test]
    fn a_body_of_another_entry_is_never_replayed() {
        let world = World::new(config());
        world.save_body("t1", "/a", 401, None, NOW, vec![b'x'; 1_000]);
        let identity = world.identity("t1");
        let [index, _] = world.tables.records.candidates(&identity);
        let foreign = ReplayBody {
            key: Fingerprint([9; 16]),
            stored_ms: NOW,
            body: Some(b"someone else".to_vec()),
            ..ReplayBody::default()
        };
        world
            .tables
            .bodies
            .write(&world.store, index, &foreign.encode())
            .unwrap();
        let (_, body) = world.find("t1", "/a", NOW + 1).unwrap();
        assert_eq!(body, None);
    }

    #[test]
    fn a_full_table_evicts_and_stays_bounded() {
        let world = World::new(small(8));
        let mut evictions = 0;
        let mut used = 0;
        for n in 0..500 {
            let outcome = if n % 2 == 0 {
                world.save(&format!("token-{n}"), "/", 401, None, NOW + n)
            } else {
                let large = vec![b'x'; 2 * INLINE_REPLAY_BYTES];
                world.save_body(&format!("token-{n}"), "/", 401, None, NOW + n, large)
            };
            evictions += u32::from(outcome.evicted);
            used += u32::from(outcome.newly_used);
        }
        assert!(evictions > 400, "{evictions}");
        assert_eq!(used, 8);
        // 8 slots in 4 keys, at most 8 body keys, and the creation marker.
        assert!(world.store.keys() <= 4 + 8 + 1, "{}", world.store.keys());
        assert!(world.find("token-499", "/", NOW + 500).is_some());
        assert!(world.find("token-498", "/", NOW + 500).is_some());
    }

    #[test]
    fn storing_the_same_key_again_replaces_it() {
        let world = World::new(small(8));
        world.save("t1", "/", 401, None, NOW);
        let again = world.save("t1", "/", 401, None, NOW + 10);
        assert!(!again.evicted && !again.newly_used);
        assert_eq!(
            world.find("t1", "/", NOW + 11).unwrap().0.stored_ms,
            NOW + 10
        );
    }

    #[test]
    fn corrupt_slots_are_misses_and_get_overwritten() {
        let world = World::new(config());
        let identity = world.identity("t1");
        for index in world.tables.records.candidates(&identity) {
            world
                .tables
                .records
                .plant(&world.store, index, &[RECORD_VERSION, 1, 2, 3]);
        }
        let found = lookup(
            &world.store,
            &world.tables,
            &world.config,
            &identity,
            &Clock::fixed(NOW),
            |_| Some(Fingerprint::default()),
        )
        .unwrap();
        assert!(found.hit.is_none() && found.corrupt);
        let outcome = world.save("t1", "/", 401, None, NOW);
        assert!(outcome.corrupt && !outcome.evicted);
        assert!(world.find("t1", "/", NOW + 1).is_some());
    }

    #[test]
    fn purge_removes_every_entry_of_the_identity_only() {
        let world = World::new(config());
        world.save("t1", "/a", 401, None, NOW);
        world.save("t1", "/b", 403, None, NOW);
        world.save("t2", "/a", 401, None, NOW);
        let removed = purge(
            &world.store,
            &world.tables,
            &world.identity("t1"),
            0,
            NOW + 1,
        )
        .unwrap();
        assert_eq!(removed, 2);
        assert!(world.find("t1", "/a", NOW + 2).is_none());
        assert!(world.find("t1", "/b", NOW + 2).is_none());
        assert!(world.find("t2", "/a", NOW + 2).is_some());
        assert_eq!(
            purge(
                &world.store,
                &world.tables,
                &world.identity("t1"),
                0,
                NOW + 3
            )
            .unwrap(),
            0
        );
    }

    #[test]
    fn the_outcome_is_that_of_the_write_that_went_through() {
        // One bucket: every identity has the same two slots.
        let world = World::new(small(2));
        let corrupt = [RECORD_VERSION, 1, 2, 3];
        for index in [0, 1] {
            world.tables.records.plant(&world.store, index, &corrupt);
        }
        let other = Record {
            inactive: false,
            anonymous: false,
            status: 401,
            shape: KeyShape::IDENTITY_ONLY.to_bits(),
            epoch: world.config.epoch,
            stored_ms: NOW,
            expires_ms: NOW + 60_000,
            reset_ms: 0,
            identity: world.identity("t2"),
            key: Fingerprint([7; 16]),
        };
        // Between the first read and its write, other workers store live entries over the
        // corrupt bytes that write was about to replace: the retry must evict one of them.
        let records = world.tables.records.clone();
        *world.store.interloper.borrow_mut() = Some(Box::new(move |store| {
            for index in [0, 1] {
                records.plant(store, index, &other.encode(&ReplayBody::default()).0);
            }
        }));
        let outcome = world.save("t1", "/", 401, None, NOW + 1);
        let evicted = StoreOutcome {
            evicted: true,
            newly_used: false,
            corrupt: false,
        };
        assert_eq!(outcome, evicted);
        assert!(world.find("t1", "/", NOW + 2).is_some());
    }

    #[test]
    fn concurrent_writers_are_retried_not_lost() {
        let world = World::new(config());
        world.store.conflicts.set(3);
        world.save("t1", "/", 401, None, NOW);
        assert!(world.find("t1", "/", NOW + 1).is_some());
    }
}
