//! The decision table of one exchange, driven the way the host adapter drives it: what the
//! client gets, whether the upstream is asked, what is stored, counted and logged.

mod allocations;
mod cache;
mod cluster;
mod flow;
mod harness;
mod limit;
