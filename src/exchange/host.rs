//! What an exchange asks of the host while it decides.

use crate::clock::Clock;
use crate::slots::SharedStore;

pub trait Host {
    type Store: SharedStore;

    /// Shared data: the cache's and the limiter's tables.
    fn store(&self) -> &Self::Store;

    /// A clock for one step: it reads the host's time at most once, and only when asked, so a
    /// request that finds nothing about itself never reads it.
    fn clock(&self) -> Clock;

    /// The downstream peer's address (`source.address`), read only for a request whose client
    /// something uses.
    fn source_address(&self) -> Option<Vec<u8>>;
}
