//! Whatever bytes shared data holds (another build's records, a torn write, garbage): every
//! read of the cache's and the limiter's tables decodes them to an entry or to "nothing" (a
//! cache slot's record and the replay after it, or the body key of a large replay), and every
//! write replaces them, never a panic.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use negcache::clock::Clock;
use negcache::config::Config;
use negcache::fingerprint::Fingerprint;
use negcache::negative_cache::{self, CacheTables, Record, ReplayBody};
use negcache::rate_limit;
use negcache::reply;
use negcache::slots::{SharedStore, StoreError};

const NOW: u64 = 1_700_000_000_000;

/// Every key holds the fuzz input until something writes it.
struct Garbage<'a> {
    bytes: &'a [u8],
    written: RefCell<Vec<(String, Vec<u8>)>>,
}

impl SharedStore for Garbage<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        let written = self.written.borrow();
        let value = written.iter().rev().find(|(k, _)| k == key);
        Ok(Some((
            value.map_or(self.bytes.to_vec(), |(_, v)| v.clone()),
            1,
        )))
    }

    fn set(&self, key: &str, value: &[u8], _cas: u32) -> Result<(), StoreError> {
        self.written
            .borrow_mut()
            .push((key.to_string(), value.to_vec()));
        Ok(())
    }
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(config) =
        Config::parse(br#"{"negative_cache": {"capacity": 4}, "rate_limit": {"capacity": 4}}"#)
    else {
        return;
    };
    let store = Garbage {
        bytes,
        written: RefCell::default(),
    };
    let clock = Clock::fixed(NOW);
    let identity = Fingerprint([7; 16]);
    let tables = CacheTables::new(config.negative_cache.capacity);

    if let Ok(found) = negative_cache::lookup(
        &store,
        &tables,
        &config.negative_cache,
        &identity,
        &clock,
        |_| Some(Fingerprint([9; 16])),
    ) {
        if let Some(hit) = found.hit {
            if let Ok(Some(replayed)) = hit.replay(&store, &tables) {
                let _ = reply::cache_hit(&hit.record, replayed.parts(), NOW);
            }
        }
    }
    let record = Record {
        inactive: false,
        anonymous: false,
        status: 401,
        shape: 0,
        epoch: 0,
        stored_ms: NOW,
        expires_ms: NOW + 60_000,
        reset_ms: 0,
        identity,
        key: Fingerprint([9; 16]),
    };
    // A replay kept in the slot, then one too large for it, under its own key.
    for size in [2, 2 * negative_cache::INLINE_REPLAY_BYTES] {
        let body = ReplayBody {
            key: record.key,
            stored_ms: NOW,
            content_type: None,
            www_authenticate: None,
            body: Some(vec![b'x'; size]),
        };
        let _ = negative_cache::store(&store, &tables, &record, &body);
    }
    let _ = negative_cache::purge(&store, &tables, &identity, 0, NOW);

    let limiter = rate_limit::table(config.rate_limit.capacity);
    let client = Fingerprint([3; 16]);
    let limit = &config.rate_limit;
    if let Ok((_, read)) = rate_limit::check(&store, &limiter, limit, &client, &clock) {
        let _ = rate_limit::reserve(&store, &limiter, limit, &client, &clock, read.clone());
        let _ = rate_limit::count_failure_from(&store, &limiter, limit, &client, NOW, read);
    }
    let _ = rate_limit::finish(
        &store,
        &limiter,
        &config.rate_limit,
        &client,
        NOW,
        true,
        Some(NOW),
    );
});
