//! The negative cache in shared data against a model: a map from credential to its one entry.
//! Any sequence of stores, lookups and purges of a few credentials, with the clock stepping and
//! other writers conflicting with the compare-and-swap writes, finds exactly the model's live
//! entries, with their own status and body, whether the body lives in the slot or (large)
//! under its own key.

use proptest::prelude::*;

use crate::clock::Clock;
use crate::config::{Config, KeyShape};
use crate::fingerprint::Fingerprint;
use crate::negative_cache::{self, CacheTables, Record, ReplayBody};
use crate::slots::memory::MemoryStore;

const T0: u64 = 1_700_000_000_000;

/// A step that must succeed, as a test-case failure when it does not.
fn ok<T, E: std::fmt::Debug>(result: Result<T, E>) -> Result<T, TestCaseError> {
    result.map_err(|error| TestCaseError::fail(format!("{error:?}")))
}

#[derive(Debug, Clone)]
enum Op {
    /// `large`: a body too large for the slot, kept under its own key.
    Store {
        who: u8,
        status: u16,
        ttl_ms: u64,
        large: bool,
    },
    Lookup {
        who: u8,
    },
    Purge {
        who: u8,
    },
    Advance {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            0u8..2,
            prop_oneof![Just(401u16), Just(403)],
            1u64..120_000,
            any::<bool>()
        )
            .prop_map(|(who, status, ttl_ms, large)| Op::Store {
                who,
                status,
                ttl_ms,
                large
            }),
        (0u8..2).prop_map(|who| Op::Lookup { who }),
        (0u8..2).prop_map(|who| Op::Purge { who }),
        (0u64..90_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

fn identity(who: u8) -> Fingerprint {
    Fingerprint([who.wrapping_mul(53).wrapping_add(3); 16])
}

fn key(who: u8) -> Fingerprint {
    Fingerprint([who.wrapping_mul(17).wrapping_add(9); 16])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_cache_finds_the_models_live_entries(
        ops in prop::collection::vec((op(), prop_oneof![3 => Just(0usize), 1 => 1usize..4]), 1..80),
    ) {
        // Every status keyed on the identity alone; two slots for two credentials, so every
        // entry has a place and the model needs no eviction.
        let json = r#"{"negative_cache": {"capacity": 2, "statuses": {
            "401": {"ttl_seconds": 60}, "403": {"ttl_seconds": 60}}}}"#;
        let config = ok(Config::parse(json.as_bytes()))?.negative_cache;
        let store = MemoryStore::default();
        let tables = CacheTables::new(config.capacity);
        ok(tables.records.create_slots(&store))?;
        // The model: each credential's entry (status, expiry, body), if any.
        let mut model: [Option<(u16, u64, Vec<u8>)>; 2] = [None, None];
        let mut now = T0;
        for (op, conflicts) in ops {
            store.conflicts.set(conflicts);
            match op {
                Op::Advance { ms } => now += ms,
                Op::Store { who, status, ttl_ms, large } => {
                    let mut body = format!("{who}-{status}-{now}").into_bytes();
                    if large {
                        body.resize(2 * negative_cache::INLINE_REPLAY_BYTES, b'.');
                    }
                    let record = Record {
                        inactive: false,
                        anonymous: false,
                        status,
                        shape: KeyShape::IDENTITY_ONLY.to_bits(),
                        epoch: 0,
                        stored_ms: now,
                        expires_ms: now + ttl_ms,
                        reset_ms: 0,
                        identity: identity(who),
                        key: key(who),
                    };
                    let replay = ReplayBody {
                        key: key(who),
                        stored_ms: now,
                        body: Some(body.clone()),
                        ..ReplayBody::default()
                    };
                    ok(negative_cache::store(&store, &tables, &record, &replay))?;
                    model[usize::from(who)] = Some((status, now + ttl_ms, body));
                }
                Op::Purge { who } => {
                    let removed =
                        ok(negative_cache::purge(&store, &tables, &identity(who), 0, now))?;
                    let entry = &mut model[usize::from(who)];
                    let live = entry.as_ref().is_some_and(|(_, expires, _)| now < *expires);
                    prop_assert_eq!(removed, u32::from(live));
                    *entry = None;
                }
                Op::Lookup { who } => {
                    let found = ok(negative_cache::lookup(
                        &store,
                        &tables,
                        &config,
                        &identity(who),
                        &Clock::fixed(now),
                        |_| Some(key(who)),
                    ))?;
                    prop_assert!(!found.corrupt);
                    let expected = model[usize::from(who)]
                        .as_ref()
                        .filter(|(_, expires, _)| now < *expires);
                    match (found.hit, expected) {
                        (None, None) => {}
                        (Some(hit), Some((status, expires, body))) => {
                            prop_assert_eq!(hit.record.status, *status);
                            prop_assert_eq!(hit.record.expires_ms, *expires);
                            let replayed = ok(hit.replay(&store, &tables))?;
                            let replayed = replayed.as_ref().and_then(|r| r.parts().body);
                            prop_assert_eq!(replayed, Some(body.as_slice()));
                        }
                        (hit, expected) => {
                            return Err(TestCaseError::fail(format!(
                                "at {now}: found {hit:?}, the model has {expected:?}"
                            )));
                        }
                    }
                }
            }
        }
    }
}
