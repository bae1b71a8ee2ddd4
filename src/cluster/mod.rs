//! Cluster mode: failures also counted by a rate limit service that every replica shares, so
//! the failure limit holds across a fleet. The messages it exchanges (`rls`) and the breaker
//! that stops calling it while it fails (`breaker`); the exchange decides when to call and what
//! an answer does (`exchange::cluster`).

pub mod breaker;
pub mod rls;
