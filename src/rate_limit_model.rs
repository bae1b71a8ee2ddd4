//! The limiter in shared data against a model of its rules: any sequence of requests from a few
//! clients, succeeding or failing, with the clock stepping and other writers conflicting with
//! its compare-and-swap writes, gives the model's answer to every request.

use proptest::prelude::*;

use crate::clock::Clock;
use crate::config::{Config, RateLimitConfig};
use crate::fingerprint::Fingerprint;
use crate::rate_limit::{admit, finish, table, Admission};
use crate::slots::memory::MemoryStore;

const T0: u64 = 1_700_000_000_000;

/// A step that must succeed, as a test-case failure when it does not.
fn ok<T, E: std::fmt::Debug>(result: Result<T, E>) -> Result<T, TestCaseError> {
    result.map_err(|error| TestCaseError::fail(format!("{error:?}")))
}

/// One client as the README states the rules: a fixed window from its first failure, failure
/// `max_failures + 1` starts a block, requests while blocked neither count nor extend it, a
/// repeat offender within `max_block_seconds` gets `factor` times its last block, capped.
#[derive(Debug, Clone, Copy, Default)]
struct ModelClient {
    window_start: u64,
    failures: u32,
    block_until: u64,
    block_len: u64,
}

impl ModelClient {
    fn blocked(&self, now: u64) -> bool {
        now < self.block_until
    }

    fn fail(&mut self, now: u64, config: &RateLimitConfig) {
        let in_window = self.failures > 0 && now < self.window_start + config.window_ms;
        if in_window {
            self.failures += 1;
        } else {
            self.window_start = now;
            self.failures = 1;
        }
        if self.failures <= config.max_failures {
            return;
        }
        let mut length = config.block_ms;
        if let Some(escalation) = config.escalation {
            let repeat = self.block_until != 0
                && now.saturating_sub(self.block_until) <= escalation.max_block_ms;
            if repeat {
                length = (self.block_len * u64::from(escalation.factor))
                    .clamp(config.block_ms, escalation.max_block_ms);
            }
        }
        self.block_until = now + length;
        self.block_len = length;
        self.failures = 0;
    }
}

/// A request: which client, whether it fails, how far the clock moves before it, and how many
/// of its writes another writer beats.
#[derive(Debug, Clone)]
struct Step {
    client: u8,
    fails: bool,
    advance_ms: u64,
    conflicts: usize,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0u8..2,
        any::<bool>(),
        prop_oneof![Just(0u64), 1u64..5_000, 5_000u64..400_000],
        prop_oneof![3 => Just(0usize), 1 => 1usize..4],
    )
        .prop_map(|(client, fails, advance_ms, conflicts)| Step {
            client,
            fails,
            advance_ms,
            conflicts,
        })
}

fn fingerprint(n: u8) -> Fingerprint {
    Fingerprint([n.wrapping_mul(37).wrapping_add(1); 16])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_limiter_gives_the_models_answer(
        max_failures in 0u32..4,
        escalation in any::<bool>(),
        steps in prop::collection::vec(step(), 1..80),
    ) {
        let json = format!(
            r#"{{"rate_limit": {{"max_failures": {max_failures}, "window_seconds": 60,
                "block_seconds": 30, "capacity": 2,
                "escalation": {}}}}}"#,
            if escalation { r#"{"factor": 2, "max_block_seconds": 600}"# } else { "null" }
        );
        let config = ok(Config::parse(json.as_bytes()))?.rate_limit;
        let store = MemoryStore::default();
        // Two slots, two clients: both always fit, so the model needs no eviction.
        let limiter = table(config.capacity);
        ok(limiter.create_slots(&store))?;
        let mut model = [ModelClient::default(); 2];
        let mut now = T0;
        for step in steps {
            now += step.advance_ms;
            let client = fingerprint(step.client);
            let expected = &mut model[usize::from(step.client)];
            store.conflicts.set(step.conflicts);
            let admission = ok(admit(&store, &limiter, &config, &client, &Clock::fixed(now)))?;
            if expected.blocked(now) {
                prop_assert_eq!(admission, Admission::Blocked { until_ms: expected.block_until });
                continue;
            }
            let reservation = match admission {
                Admission::Pass => None,
                Admission::Reserved { window_start_ms } => Some(window_start_ms),
                other => return Err(TestCaseError::fail(format!("{other:?} at {now}: {expected:?}"))),
            };
            store.conflicts.set(step.conflicts);
            let outcome =
                ok(finish(&store, &limiter, &config, &client, now, step.fails, reservation))?;
            if step.fails {
                expected.fail(now, &config);
            }
            prop_assert_eq!(outcome.counted, step.fails);
            let started = expected.block_until == now + expected.block_len && step.fails
                && expected.blocked(now);
            prop_assert_eq!(outcome.block_ms.is_some(), started, "{:?}", expected);
        }
    }
}
