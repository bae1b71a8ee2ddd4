//! Fixed tables in shared data. A `SlotTable` holds `capacity` slots in buckets of two, one
//! key per bucket: a fingerprint maps to one bucket, so finding it (or learning it is absent)
//! costs one read. Writers read the bucket, decide, and write it back with the CAS they read,
//! retrying on conflict. `IndexedValues` is one key per slot index, for values too large to
//! share a bucket. The set of keys never grows past the capacity (shared data cannot delete
//! keys).

use crate::codec::{Reader, TooLong, Writer};
use crate::decimal;
use crate::fingerprint::Fingerprint;

/// Shared data as the filter needs it. Envoy's implementation lives in `host::store`;
/// tests use an in-memory one that can inject conflicts.
pub trait SharedStore {
    /// The value and CAS of `key`, or `None` when the key does not exist.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    /// Writes `value` if the key's CAS is still `cas` (0 = unconditionally).
    /// Caution: the host checks the CAS only for keys that already exist.
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    CasMismatch,
    Host,
    /// A value too large for a bucket's length field (never the case for the fixed records).
    Oversized,
}

/// Conflicts come only from the other worker threads of this process, so a handful of retries
/// is generous; running out is reported as an error, never as a silent lost update.
pub const MAX_CAS_ATTEMPTS: usize = 16;

/// Slots per bucket (per shared-data key).
const WAYS: u32 = 2;

/// One slot as read: its bytes (empty for a slot never written), borrowed from its bucket's
/// value, and the CAS of its bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot<'a> {
    pub index: u32,
    pub bytes: &'a [u8],
    pub cas: u32,
}

/// What an update decided to write: new bytes for one of the candidate slots it was given
/// (`slot` borrows from them, so it cannot name another).
pub struct Write<'a> {
    pub slot: &'a Slot<'a>,
    pub bytes: Vec<u8>,
}

/// A bucket as read: its value as the host handed it over, and where each of a fingerprint's
/// two candidate slots lies in it. The slots are views of the value: reading a bucket copies
/// nothing more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    value: Vec<u8>,
    cas: u32,
    candidates: [u32; 2],
    ways: [std::ops::Range<usize>; 2],
}

impl Bucket {
    /// The two candidate slots (the same one twice in a bucket with a single slot).
    pub fn slots(&self) -> [Slot<'_>; 2] {
        self.candidates.map(|index| Slot {
            index,
            bytes: self
                .value
                .get(self.ways[(index % WAYS) as usize].clone())
                .unwrap_or_default(),
            cas: self.cas,
        })
    }
}

/// A shared-data key (`<prefix>/<n>`), built on the stack: a request reads several keys, and
/// each would otherwise be an allocation and a trip through `format!`.
pub struct SlotKey {
    bytes: [u8; 48],
    len: usize,
}

impl SlotKey {
    fn new(prefix: &str, n: u32) -> SlotKey {
        let mut key = SlotKey {
            bytes: [0; 48],
            len: 0,
        };
        // Prefixes are short constants; an oversized one is cut, never a panic.
        let prefix = &prefix.as_bytes()[..prefix.len().min(32)];
        key.bytes[..prefix.len()].copy_from_slice(prefix);
        key.bytes[prefix.len()] = b'/';
        let digits = decimal::digits(u64::from(n));
        let digits = digits.as_bytes();
        let end = prefix.len() + 1 + digits.len();
        key.bytes[prefix.len() + 1..end].copy_from_slice(digits);
        key.len = end;
        key
    }
}

impl std::ops::Deref for SlotKey {
    type Target = str;

    fn deref(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

/// Where the two ways of a bucket lie in its value: each a short byte string (u16 length, then
/// the bytes). An empty value (a bucket created but never written) is two empty slots.
fn decode_bucket(value: &[u8]) -> [std::ops::Range<usize>; 2] {
    let mut ways = [0..0, 0..0];
    let mut reader = Reader::new(value);
    for way in &mut ways {
        // A way cut short reads, like the ones after it, as an empty slot, which the next
        // write replaces with a well-formed bucket.
        let Some(bytes) = reader.short_bytes() else {
            break;
        };
        let end = value.len() - reader.remaining();
        *way = end - bytes.len()..end;
    }
    ways
}

fn encode_bucket(ways: [&[u8]; 2]) -> Result<Vec<u8>, StoreError> {
    let mut writer = Writer::unversioned(ways.iter().map(|way| way.len() + 2).sum());
    for way in ways {
        writer
            .short_bytes(way)
            .map_err(|TooLong| StoreError::Oversized)?;
    }
    Ok(writer.finish())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotTable {
    prefix: &'static str,
    capacity: u32,
}

impl SlotTable {
    pub fn new(prefix: &'static str, capacity: u32) -> Self {
        SlotTable {
            prefix,
            capacity: capacity.max(1),
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    fn buckets(&self) -> u32 {
        self.capacity.div_ceil(WAYS)
    }

    /// The two slots of the fingerprint's bucket (the same one twice for the last bucket of a
    /// table with an odd capacity).
    pub fn candidates(&self, fp: &Fingerprint) -> [u32; 2] {
        let bucket = (fp.low_u64() % u64::from(self.buckets())) as u32;
        let first = bucket * WAYS;
        let second = (first + 1).min(self.capacity - 1);
        [first, second]
    }

    /// The key of the bucket holding slot `index`.
    pub fn key(&self, index: u32) -> SlotKey {
        SlotKey::new(self.prefix, index / WAYS)
    }

    /// The bucket of `index`, as read, with these two of its slots as candidates.
    fn read_bucket<S: SharedStore>(
        &self,
        store: &S,
        candidates: [u32; 2],
    ) -> Result<Bucket, StoreError> {
        let (value, cas) = store.get(&self.key(candidates[0]))?.unwrap_or_default();
        let ways = decode_bucket(&value);
        Ok(Bucket {
            value,
            cas,
            candidates,
            ways,
        })
    }

    /// Both candidate slots of `fp`, in one read (`Bucket::slots`).
    pub fn read_candidates<S: SharedStore>(
        &self,
        store: &S,
        fp: &Fingerprint,
    ) -> Result<Bucket, StoreError> {
        // The first candidate is always a bucket's first slot; the second is its other one, or
        // the first again in a bucket with a single slot.
        self.read_bucket(store, self.candidates(fp))
    }

    /// Reads both candidates and lets `decide` return its result and what to write (`None`:
    /// nothing), then writes that with the CAS read; on a conflict, starts over with a fresh
    /// read and a fresh decision. Returns the result of the decision that held: the one whose
    /// write went through, or that wrote nothing.
    pub fn update<S, T, F>(&self, store: &S, fp: &Fingerprint, decide: F) -> Result<T, StoreError>
    where
        S: SharedStore,
        F: for<'s> FnMut(&'s [Slot<'s>; 2]) -> (T, Option<Write<'s>>),
    {
        self.update_from(store, fp, None, decide)
    }

    /// `update`, whose first decision starts from `read`, the bucket of `fp` as read earlier
    /// in the same request, instead of reading it again: a request that already read its
    /// client's bucket makes its one write with that read's CAS. When another writer changed
    /// the bucket since, the CAS fails and the update starts over from a fresh read.
    pub fn update_from<S, T, F>(
        &self,
        store: &S,
        fp: &Fingerprint,
        mut read: Option<Bucket>,
        mut decide: F,
    ) -> Result<T, StoreError>
    where
        S: SharedStore,
        F: for<'s> FnMut(&'s [Slot<'s>; 2]) -> (T, Option<Write<'s>>),
    {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let bucket = match read.take() {
                Some(bucket) if bucket.candidates == self.candidates(fp) => bucket,
                _ => self.read_candidates(store, fp)?,
            };
            let slots = bucket.slots();
            let (result, write) = decide(&slots);
            let Some(write) = write else {
                return Ok(result);
            };
            match self.write_slot(store, &slots, write.slot.index, &write.bytes) {
                Ok(()) => return Ok(result),
                Err(StoreError::CasMismatch) => continue,
                Err(error) => return Err(error),
            }
        }
        Err(StoreError::CasMismatch)
    }

    /// Writes the bucket of `slots` (both candidates of one fingerprint, as read) with slot
    /// `index` replaced by `bytes`, if the bucket is unchanged since.
    fn write_slot<S: SharedStore>(
        &self,
        store: &S,
        slots: &[Slot; 2],
        index: u32,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let mut ways: [&[u8]; 2] = [&[], &[]];
        for slot in slots {
            ways[(slot.index % WAYS) as usize] = slot.bytes;
        }
        ways[(index % WAYS) as usize] = bytes;
        store.set(&self.key(index), &encode_bucket(ways)?, slots[0].cas)
    }

    /// Creates every bucket key that does not exist yet, empty, so that CAS protects each
    /// bucket from its first write on. Run once per process, on the main thread before workers
    /// serve: a marker key records the capacity already created, so later VMs skip the walk.
    pub fn create_slots<S: SharedStore>(&self, store: &S) -> Result<u32, StoreError> {
        let marker = format!("{}/created", self.prefix);
        if let Some((bytes, _)) = store.get(&marker)? {
            let created = std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| text.parse::<u32>().ok())
                .unwrap_or(0);
            if created >= self.capacity {
                return Ok(0);
            }
        }
        let mut created = 0;
        for bucket in 0..self.buckets() {
            let key = SlotKey::new(self.prefix, bucket);
            if store.get(&key)?.is_none() {
                store.set(&key, b"", 0)?;
                created += 1;
            }
        }
        let capacity = decimal::string(u64::from(self.capacity));
        store.set(&marker, capacity.as_bytes(), 0)?;
        Ok(created)
    }

    /// Overwrites one slot, whatever its bucket holds: for tests that plant bytes.
    #[cfg(test)]
    pub fn plant<S: SharedStore>(&self, store: &S, index: u32, bytes: &[u8]) {
        let first = index - index % WAYS;
        let Ok(bucket) = self.read_bucket(store, [first, first + 1]) else {
            return;
        };
        let _ = self.write_slot(store, &bucket.slots(), index, bytes);
    }
}

/// One value per slot index, one key each (`<prefix>/<index>`): for values too large to share a
/// bucket, written only alongside the slot they belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedValues {
    prefix: &'static str,
}

impl IndexedValues {
    pub fn new(prefix: &'static str) -> Self {
        IndexedValues { prefix }
    }

    /// The value at `index` (empty when never written).
    pub fn read<S: SharedStore>(&self, store: &S, index: u32) -> Result<Vec<u8>, StoreError> {
        Ok(store
            .get(&SlotKey::new(self.prefix, index))?
            .map(|(value, _)| value)
            .unwrap_or_default())
    }

    pub fn write<S: SharedStore>(
        &self,
        store: &S,
        index: u32,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        store.set(&SlotKey::new(self.prefix, index), bytes, 0)
    }
}

#[cfg(test)]
pub mod memory {
    //! An in-memory `SharedStore` with Envoy's semantics, plus injectable conflicts.
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    /// Another writer's change, made to the store before a write of this one.
    pub type Interloper = Box<dyn FnOnce(&MemoryStore)>;

    #[derive(Default)]
    pub struct MemoryStore {
        pub map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        next_cas: Cell<u32>,
        /// Before each of the next N writes, another writer rewrites the key as it is.
        pub conflicts: Cell<usize>,
        /// Before the next write to an existing key, another writer makes this change.
        pub interloper: RefCell<Option<Interloper>>,
        pub fail_host: Cell<bool>,
        pub reads: Cell<usize>,
        pub writes: Cell<usize>,
    }

    impl MemoryStore {
        pub fn put(&self, key: &str, value: &[u8]) {
            let cas = self.bump();
            self.map
                .borrow_mut()
                .insert(key.to_string(), (value.to_vec(), cas));
        }

        fn bump(&self) -> u32 {
            let cas = self.next_cas.get() + 1;
            self.next_cas.set(cas);
            cas
        }

        pub fn keys(&self) -> usize {
            self.map.borrow().len()
        }
    }

    impl SharedStore for MemoryStore {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            if self.fail_host.get() {
                return Err(StoreError::Host);
            }
            self.reads.set(self.reads.get() + 1);
            Ok(self.map.borrow().get(key).cloned())
        }

        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
            if self.fail_host.get() {
                return Err(StoreError::Host);
            }
            if self.map.borrow().contains_key(key) {
                let interloper = self.interloper.borrow_mut().take();
                if let Some(interloper) = interloper {
                    interloper(self);
                }
            }
            if self.conflicts.get() > 0 && self.map.borrow().contains_key(key) {
                self.conflicts.set(self.conflicts.get() - 1);
                let current = self.map.borrow().get(key).map(|(v, _)| v.clone());
                self.put(key, &current.unwrap_or_default());
            }
            let existing = self.map.borrow().get(key).map(|(_, c)| *c);
            // Envoy checks the CAS only when the key exists and a CAS was given.
            if let Some(current) = existing {
                if cas != 0 && cas != current {
                    return Err(StoreError::CasMismatch);
                }
            }
            self.writes.set(self.writes.get() + 1);
            self.put(key, value);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::memory::MemoryStore;
    use super::*;
    use crate::codec::hostile;

    fn fp(n: u8) -> Fingerprint {
        let mut bytes = [0u8; 16];
        bytes[0] = n;
        bytes[8] = n.wrapping_mul(7).wrapping_add(3);
        Fingerprint(bytes)
    }

    /// Appends `tag` to the first candidate; the result is the bytes it found there.
    fn append(tag: u8) -> impl for<'a> FnMut(&'a [Slot<'a>; 2]) -> (Vec<u8>, Option<Write<'a>>) {
        move |slots| {
            let found = slots[0].bytes.to_vec();
            let mut bytes = found.clone();
            bytes.push(tag);
            let write = Write {
                slot: &slots[0],
                bytes,
            };
            (found, Some(write))
        }
    }

    #[test]
    fn keys_are_prefix_slash_number_with_two_slots_a_bucket() {
        let table = SlotTable::new("negcache/cache", 8);
        assert_eq!(&*table.key(0), "negcache/cache/0");
        assert_eq!(&*table.key(1), "negcache/cache/0");
        assert_eq!(&*table.key(7), "negcache/cache/3");
        assert_eq!(
            &*SlotKey::new("negcache/cb", 4_294_967_295),
            "negcache/cb/4294967295"
        );
        assert_eq!(&*SlotKey::new("t", 1_048_575), "t/1048575");
    }

    #[test]
    fn candidates_are_the_two_slots_of_one_bucket_in_range() {
        let table = SlotTable::new("t", 10);
        for n in 0..=255 {
            let [a, b] = table.candidates(&fp(n));
            assert!(a < 10 && b == a + 1 && a % 2 == 0, "{a} {b}");
        }
        assert_eq!(SlotTable::new("t", 1).candidates(&fp(9)), [0, 0]);
        // An odd capacity: the last bucket has a single slot.
        let odd = SlotTable::new("t", 9);
        let last = (0..=255)
            .map(|n| odd.candidates(&fp(n)))
            .find(|[a, _]| *a == 8)
            .unwrap();
        assert_eq!(last, [8, 8]);
    }

    #[test]
    fn creating_slots_is_bounded_and_done_once() {
        let store = MemoryStore::default();
        let table = SlotTable::new("negcache/cache", 64);
        assert_eq!(table.create_slots(&store).unwrap(), 32);
        assert_eq!(store.keys(), 33, "32 buckets and the marker");
        let writes = store.writes.get();
        assert_eq!(table.create_slots(&store).unwrap(), 0);
        assert_eq!(store.writes.get(), writes, "a second VM writes nothing");
        // Existing data is never overwritten by creation.
        store.put("negcache/cache/3", b"data");
        store.put("negcache/cache/created", b"0");
        assert_eq!(table.create_slots(&store).unwrap(), 0);
        assert_eq!(store.map.borrow()["negcache/cache/3"].0, b"data");
    }

    #[test]
    fn writing_one_slot_keeps_the_other_slot_of_its_bucket() {
        let store = MemoryStore::default();
        let table = SlotTable::new("t", 8);
        table.create_slots(&store).unwrap();
        let write = |candidate: usize, bytes: &'static [u8]| {
            table
                .update(&store, &fp(1), |slots| {
                    let slot = &slots[candidate];
                    let write = Write {
                        slot,
                        bytes: bytes.to_vec(),
                    };
                    (slot.bytes.to_vec(), Some(write))
                })
                .unwrap()
        };
        write(1, b"second");
        let before = write(0, b"first");
        assert!(before.is_empty());
        let bucket = table.read_candidates(&store, &fp(1)).unwrap();
        let [a, b] = bucket.slots();
        assert_eq!((a.bytes, b.bytes), (&b"first"[..], &b"second"[..]));
        assert_eq!(store.keys(), 5, "one key a bucket");
    }

    #[test]
    fn a_malformed_bucket_reads_as_empty_slots_and_is_rewritten() {
        let store = MemoryStore::default();
        let table = SlotTable::new("t", 8);
        store.put(&table.key(table.candidates(&fp(1))[0]), &[200, 0, 1, 2]);
        let bucket = table.read_candidates(&store, &fp(1)).unwrap();
        let [a, b] = bucket.slots();
        assert!(a.bytes.is_empty() && b.bytes.is_empty());
        table.update(&store, &fp(1), append(b'x')).unwrap();
        let bucket = table.read_candidates(&store, &fp(1)).unwrap();
        let [a, _] = bucket.slots();
        assert_eq!(a.bytes, b"x");
    }

    /// The two ways of a bucket's value, copied out.
    fn ways(value: &[u8]) -> [Vec<u8>; 2] {
        decode_bucket(value).map(|way| value[way].to_vec())
    }

    #[test]
    fn any_bytes_decode_to_two_slots() {
        let bucket = encode_bucket([b"first", b"second slot"]).unwrap();
        assert_eq!(ways(&bucket), [b"first".to_vec(), b"second slot".to_vec()]);
        assert_eq!(ways(&bucket[..9]), [b"first".to_vec(), Vec::new()]);
        for bytes in hostile::inputs(&bucket) {
            let read = ways(&bytes);
            assert!(read.iter().map(Vec::len).sum::<usize>() <= bytes.len());
            let again = encode_bucket([&read[0], &read[1]]).unwrap();
            assert_eq!(ways(&again), read);
        }
    }

    #[test]
    fn an_oversized_slot_is_refused() {
        let store = MemoryStore::default();
        let table = SlotTable::new("t", 8);
        let huge = vec![1u8; 70_000];
        let result = table.update(&store, &fp(1), |slots| {
            let write = Write {
                slot: &slots[0],
                bytes: huge.clone(),
            };
            ((), Some(write))
        });
        assert_eq!(result, Err(StoreError::Oversized));
    }

    #[test]
    fn indexed_values_are_one_key_each() {
        let store = MemoryStore::default();
        let values = IndexedValues::new("negcache/cb");
        assert!(values.read(&store, 3).unwrap().is_empty());
        values.write(&store, 3, b"body").unwrap();
        assert_eq!(values.read(&store, 3).unwrap(), b"body");
        assert_eq!(&store.map.borrow()["negcache/cb/3"].0, b"body");
    }

    #[test]
    fn conflicting_writers_lose_no_update() {
        let store = MemoryStore::default();
        let table = SlotTable::new("t", 8);
        table.create_slots(&store).unwrap();
        store.conflicts.set(5);
        table.update(&store, &fp(1), append(b'a')).unwrap();
        table.update(&store, &fp(1), append(b'b')).unwrap();
        let bucket = table.read_candidates(&store, &fp(1)).unwrap();
        let [slot, _] = bucket.slots();
        assert_eq!(slot.bytes, b"ab");
    }

    #[test]
    fn the_result_is_the_decision_of_the_attempt_that_wrote() {
        let store = MemoryStore::default();
        let table = SlotTable::new("t", 8);
        table.create_slots(&store).unwrap();
        let index = table.candidates(&fp(1))[0];
        let theirs = table.clone();
        *store.interloper.borrow_mut() = Some(Box::new(move |store| {
            theirs.plant(store, index, b"theirs ")
        }));
        let mut decisions = 0;
        let mut append_mine = append(b'!');
        let found = table
            .update(&store, &fp(1), |slots| {
                decisions += 1;
                append_mine(slots)
            })
            .unwrap();
        assert_eq!(
            decisions, 2,
            "the first write met the other writer's change"
        );
        assert_eq!(
            found, b"theirs ",
            "what the second decision saw, not the first"
        );
        let bucket = table.read_candidates(&store, &fp(1)).unwrap();
        let [slot, _] = bucket.slots();
        assert_eq!(slot.bytes, b"theirs !");
    }

    #[test]
    fn a_decision_to_write_nothing_is_returned_without_a_write() {
        let store = MemoryStore::default();
        let table = SlotTable::new("t", 8);
        table.create_slots(&store).unwrap();
        let writes = store.writes.get();
        let result = table.update(&store, &fp(1), |_| ("nothing to do", None));
        assert_eq!(result, Ok("nothing to do"));
        assert_eq!(store.writes.get(), writes);
    }

    #[test]
    fn endless_conflicts_are_an_error_not_a_lost_write() {
        let store = MemoryStore::default();
        let table = SlotTable::new("t", 8);
        table.create_slots(&store).unwrap();
        store.conflicts.set(MAX_CAS_ATTEMPTS);
        assert_eq!(
            table.update(&store, &fp(1), append(b'a')),
            Err(StoreError::CasMismatch)
        );
        let bucket = table.read_candidates(&store, &fp(1)).unwrap();
        let [slot, _] = bucket.slots();
        assert!(slot.bytes.is_empty());
    }

    #[test]
    fn host_failures_surface_as_errors() {
        let store = MemoryStore::default();
        let table = SlotTable::new("t", 8);
        store.fail_host.set(true);
        assert_eq!(table.read_candidates(&store, &fp(1)), Err(StoreError::Host));
        assert!(table.update(&store, &fp(1), append(b'a')).is_err());
    }
}
