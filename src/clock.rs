//! A request's clock. Reading the host's time is a host call, and a request that finds nothing
//! about itself in shared data (a good request) never needs the time: it is read at most once,
//! and only when asked for.

use std::cell::OnceCell;

pub struct Clock {
    read: fn() -> u64,
    value: OnceCell<u64>,
}

impl Clock {
    /// A clock that calls `read` (milliseconds since the Unix epoch) the first time it is asked.
    pub fn new(read: fn() -> u64) -> Clock {
        Clock {
            read,
            value: OnceCell::new(),
        }
    }

    /// A clock stopped at `now_ms`.
    pub fn fixed(now_ms: u64) -> Clock {
        Clock {
            read: || 0,
            value: OnceCell::from(now_ms),
        }
    }

    pub fn now_ms(&self) -> u64 {
        *self.value.get_or_init(self.read)
    }
}

#[cfg(test)]
pub mod counting {
    //! A clock that counts how often the host's time was read.
    use super::Clock;

    thread_local! {
        static READS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    pub const NOW: u64 = 1_700_000_000_000;

    fn read() -> u64 {
        READS.with(|reads| reads.set(reads.get() + 1));
        NOW
    }

    /// A fresh clock reading `NOW`; starts this thread's count of reads (`reads`) from zero.
    pub fn clock() -> Clock {
        READS.with(|reads| reads.set(0));
        Clock::new(read)
    }

    /// How often a `clock()` of this thread read the time.
    pub fn reads() -> usize {
        READS.with(std::cell::Cell::get)
    }
}

#[cfg(test)]
mod tests {
    use super::counting::{clock, reads, NOW};
    use super::Clock;

    #[test]
    fn the_host_time_is_read_once_and_only_when_asked() {
        let clock = clock();
        assert_eq!(reads(), 0);
        assert_eq!(clock.now_ms(), NOW);
        assert_eq!(clock.now_ms(), NOW);
        assert_eq!(reads(), 1);
        assert_eq!(Clock::fixed(42).now_ms(), 42);
    }
}
