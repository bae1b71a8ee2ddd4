//! A fixed table of `capacity` slots in shared data, one key per slot. Each fingerprint has two
//! candidate slots; writers read, decide and write back with the CAS they read, retrying on
//! conflict. The set of keys never grows past `capacity` (shared data cannot delete keys).

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
}

/// Conflicts come only from the other worker threads of this process, so a handful of retries
/// is generous; running out is reported as an error, never as a silent lost update.
pub const MAX_CAS_ATTEMPTS: usize = 16;

/// One slot as read: its bytes (empty for a slot never written) and the CAS to write it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub index: u32,
    pub bytes: Vec<u8>,
    pub cas: u32,
}

/// What an update decided to write into one of the candidate slots.
pub struct Write {
    /// Position in the candidates array.
    pub candidate: usize,
    pub bytes: Vec<u8>,
}

/// A slot's shared-data key (`<prefix>/<index>`), built on the stack: a request reads several
/// slots, and each key would otherwise be an allocation and a trip through `format!`.
pub struct SlotKey {
    bytes: [u8; 48],
    len: usize,
}

impl SlotKey {
    fn new(prefix: &str, index: u32) -> SlotKey {
        let mut key = SlotKey {
            bytes: [0; 48],
            len: 0,
        };
        // Prefixes are short constants; an oversized one is cut, never a panic.
        let prefix = &prefix.as_bytes()[..prefix.len().min(32)];
        key.bytes[..prefix.len()].copy_from_slice(prefix);
        key.bytes[prefix.len()] = b'/';
        key.len = prefix.len() + 1;
        let mut digits = [0u8; 10];
        let mut n = index;
        let mut count = 0;
        loop {
            digits[count] = b'0' + (n % 10) as u8;
            count += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for digit in digits[..count].iter().rev() {
            key.bytes[key.len] = *digit;
            key.len += 1;
        }
        key
    }
}

impl std::ops::Deref for SlotKey {
    type Target = str;

    fn deref(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
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

    /// Two slots from two independent halves of the fingerprint (the same one twice only
    /// when the table has a single slot or the halves collide).
    pub fn candidates(&self, fp: &Fingerprint) -> [u32; 2] {
        let capacity = u64::from(self.capacity);
        let first = (fp.low_u64() % capacity) as u32;
        let mut second = (fp.high_u64() % capacity) as u32;
        if second == first && self.capacity > 1 {
            second = (first + 1) % self.capacity;
        }
        [first, second]
    }

    pub fn key(&self, index: u32) -> SlotKey {
        SlotKey::new(self.prefix, index)
    }

    pub fn read<S: SharedStore>(&self, store: &S, index: u32) -> Result<Slot, StoreError> {
        let (bytes, cas) = store.get(&self.key(index))?.unwrap_or_default();
        Ok(Slot { index, bytes, cas })
    }

    pub fn read_candidates<S: SharedStore>(
        &self,
        store: &S,
        fp: &Fingerprint,
    ) -> Result<[Slot; 2], StoreError> {
        let [a, b] = self.candidates(fp);
        let first = self.read(store, a)?;
        let second = if b == a {
            first.clone()
        } else {
            self.read(store, b)?
        };
        Ok([first, second])
    }

    /// Read both candidates, let `decide` choose what to write, write it with the CAS read;
    /// on a conflict start over. `decide` returning `None` means nothing to write.
    /// Returns what was written (candidate slot as read before the write, new bytes).
    pub fn update<S, F>(
        &self,
        store: &S,
        fp: &Fingerprint,
        mut decide: F,
    ) -> Result<Option<(Slot, Vec<u8>)>, StoreError>
    where
        S: SharedStore,
        F: FnMut(&[Slot; 2]) -> Option<Write>,
    {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let slots = self.read_candidates(store, fp)?;
            let Some(write) = decide(&slots) else {
                return Ok(None);
            };
            let Some(slot) = slots.get(write.candidate) else {
                return Ok(None);
            };
            match store.set(&self.key(slot.index), &write.bytes, slot.cas) {
                Ok(()) => return Ok(Some((slot.clone(), write.bytes))),
                Err(StoreError::CasMismatch) => continue,
                Err(StoreError::Host) => return Err(StoreError::Host),
            }
        }
        Err(StoreError::CasMismatch)
    }

    /// Creates every slot key that does not exist yet, empty, so that CAS protects each slot
    /// from its first write on. Run once per process, on the main thread before workers serve:
    /// a marker key records the capacity already created, so later VMs skip the walk.
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
        for index in 0..self.capacity {
            let key = self.key(index);
            if store.get(&key)?.is_none() {
                store.set(&key, b"", 0)?;
                created += 1;
            }
        }
        store.set(&marker, self.capacity.to_string().as_bytes(), 0)?;
        Ok(created)
    }
}

#[cfg(test)]
pub mod memory {
    //! An in-memory `SharedStore` with Envoy's semantics, plus injectable conflicts.
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    #[derive(Default)]
    pub struct MemoryStore {
        pub map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        next_cas: Cell<u32>,
        /// Before each of the next N writes, another writer changes the key first.
        pub conflicts: Cell<usize>,
        pub fail_host: Cell<bool>,
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
            Ok(self.map.borrow().get(key).cloned())
        }

        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
            if self.fail_host.get() {
                return Err(StoreError::Host);
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

    fn fp(n: u8) -> Fingerprint {
        let mut bytes = [0u8; 16];
        bytes[0] = n;
        bytes[8] = n.wrapping_mul(7).wrapping_add(3);
        Fingerprint(bytes)
    }

    fn append(tag: u8) -> impl FnMut(&[Slot; 2]) -> Option<Write> {
        move |slots| {
            let mut bytes = slots[0].bytes.clone();
            bytes.push(tag);
            Some(Write {
                candidate: 0,
                bytes,
            })
        }
    }

    #[test]
    fn slot_keys_are_prefix_slash_index() {
        assert_eq!(&*SlotTable::new("negcache/c", 8).key(0), "negcache/c/0");
        assert_eq!(
            &*SlotTable::new("negcache/cb", 8).key(4_294_967_295),
            "negcache/cb/4294967295"
        );
        assert_eq!(&*SlotTable::new("t", 8).key(1_048_575), "t/1048575");
    }

    #[test]
    fn candidates_are_two_distinct_slots_in_range() {
        let table = SlotTable::new("t", 10);
        for n in 0..=255 {
            let [a, b] = table.candidates(&fp(n));
            assert!(a < 10 && b < 10 && a != b);
        }
        assert_eq!(SlotTable::new("t", 1).candidates(&fp(9)), [0, 0]);
    }

    #[test]
    fn creating_slots_is_bounded_and_done_once() {
        let store = MemoryStore::default();
        let table = SlotTable::new("negcache/c", 64);
        assert_eq!(table.create_slots(&store).unwrap(), 64);
        assert_eq!(store.keys(), 65);
        let writes = store.writes.get();
        assert_eq!(table.create_slots(&store).unwrap(), 0);
        assert_eq!(store.writes.get(), writes, "a second VM writes nothing");
        // Existing data is never overwritten by creation.
        store.put("negcache/c/3", b"data");
        store.put("negcache/c/created", b"0");
        assert_eq!(table.create_slots(&store).unwrap(), 0);
        assert_eq!(store.map.borrow()["negcache/c/3"].0, b"data");
    }

    #[test]
    fn conflicting_writers_lose_no_update() {
        let store = MemoryStore::default();
        let table = SlotTable::new("t", 8);
        table.create_slots(&store).unwrap();
        store.conflicts.set(5);
        table.update(&store, &fp(1), append(b'a')).unwrap();
        table.update(&store, &fp(1), append(b'b')).unwrap();
        let [slot, _] = table.read_candidates(&store, &fp(1)).unwrap();
        assert_eq!(slot.bytes, b"ab");
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
        let [slot, _] = table.read_candidates(&store, &fp(1)).unwrap();
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
