//! The process-wide fingerprint key when the configuration gives none: made once, kept in
//! shared data, and adopted by every VM, so all workers compute the same fingerprints.

use crate::slots::{SharedStore, StoreError};

pub const SECRET_KEY: &str = "negcache/secret";
pub const SECRET_LEN: usize = 32;

/// The secret currently in shared data, if a valid one is there.
pub fn current<S: SharedStore>(store: &S) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(store
        .get(SECRET_KEY)?
        .map(|(bytes, _)| bytes)
        .filter(|bytes| bytes.len() == SECRET_LEN))
}

/// Returns the process secret, creating it from `fresh` if nobody has yet. The main thread's VM
/// runs this before any worker VM, so workers find it; should two VMs still race, the last
/// write is what shared data holds, and every VM re-reads it (here and on each tick).
pub fn agree<S: SharedStore>(
    store: &S,
    fresh: impl FnOnce() -> Option<[u8; SECRET_LEN]>,
) -> Result<Vec<u8>, SecretError> {
    let candidate = match current(store)? {
        Some(secret) => return Ok(secret),
        None => fresh().ok_or(SecretError::NoRandomness)?,
    };
    for _ in 0..MAX_ATTEMPTS {
        let cas = match store.get(SECRET_KEY)? {
            Some((bytes, _)) if bytes.len() == SECRET_LEN => return Ok(bytes),
            Some((_, cas)) => cas,
            None => 0,
        };
        match store.set(SECRET_KEY, &candidate, cas) {
            Ok(()) => return Ok(current(store)?.unwrap_or_else(|| candidate.to_vec())),
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Host | StoreError::Oversized) => return Err(SecretError::Store),
        }
    }
    Err(SecretError::Store)
}

const MAX_ATTEMPTS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretError {
    NoRandomness,
    Store,
}

impl From<StoreError> for SecretError {
    fn from(_: StoreError) -> Self {
        SecretError::Store
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::memory::MemoryStore;

    #[test]
    fn the_first_vm_creates_and_the_others_adopt() {
        let store = MemoryStore::default();
        let first = agree(&store, || Some([1; SECRET_LEN])).unwrap();
        let second = agree(&store, || Some([2; SECRET_LEN])).unwrap();
        assert_eq!(first, vec![1; SECRET_LEN]);
        assert_eq!(second, first);
    }

    #[test]
    fn a_vm_that_loses_a_race_adopts_the_winner() {
        let store = MemoryStore::default();
        store.put(SECRET_KEY, b"");
        store.conflicts.set(1);
        // Another VM writes between our read and our write: we end with what shared data has.
        let adopted = agree(&store, || Some([3; SECRET_LEN])).unwrap();
        assert_eq!(Some(adopted), current(&store).unwrap());
    }

    #[test]
    fn junk_in_the_key_is_replaced_and_failures_are_reported() {
        let store = MemoryStore::default();
        store.put(SECRET_KEY, b"short");
        assert_eq!(
            agree(&store, || Some([4; SECRET_LEN])).unwrap(),
            vec![4; SECRET_LEN]
        );
        let empty = MemoryStore::default();
        assert_eq!(agree(&empty, || None), Err(SecretError::NoRandomness));
        empty.fail_host.set(true);
        assert_eq!(
            agree(&empty, || Some([5; SECRET_LEN])),
            Err(SecretError::Store)
        );
    }
}
