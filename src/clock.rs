//! The wall clock, in whole Unix seconds, as the store and the Nexudus pacer read it: when a user
//! was disabled (for `sync.archive_after`), when the first failure in a row was, when the last run
//! was recorded, and the minute and hour buckets of the request budgets.
//!
//! A daemon always reads the system clock. A test hands the store a [`Clock::manual`] instead and
//! moves it with [`Clock::advance`], so an age of an hour is reached without waiting for it (and
//! without depending on where in the second a test happens to run). The pacer reads the clock of
//! the store it counts in, so one clock serves both.
//!
//! A leaf: it imports nothing of ours.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix seconds from the system clock, or from a clock a test moves by hand. Clones share the
/// same time.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// `None`: the system clock.
    manual: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// The system clock (the default).
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock that stands at `unix_seconds` until [`Clock::advance`] moves it.
    pub fn manual(unix_seconds: u64) -> Clock {
        Clock {
            manual: Some(Arc::new(AtomicU64::new(unix_seconds))),
        }
    }

    /// Whole seconds since the Unix epoch (0 for a system clock set before 1970).
    pub fn now(&self) -> u64 {
        match &self.manual {
            Some(at) => at.load(Ordering::SeqCst),
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// Moves a manual clock forward by `by` (whole seconds). The system clock cannot be moved:
    /// a call on it is a bug in a test, and panics.
    pub fn advance(&self, by: Duration) {
        let at = self
            .manual
            .as_ref()
            .expect("only a manual clock can be advanced");
        at.fetch_add(by.as_secs(), Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_its_clones_follow() {
        let clock = Clock::manual(1_000);
        let clone = clock.clone();
        assert_eq!(clock.now(), 1_000);
        clock.advance(Duration::from_secs(3_600));
        assert_eq!((clock.now(), clone.now()), (4_600, 4_600));
    }

    #[test]
    fn the_system_clock_is_after_2020() {
        assert!(Clock::system().now() > 1_577_836_800);
        assert!(Clock::default().now() > 1_577_836_800);
    }

    #[test]
    #[should_panic(expected = "only a manual clock")]
    fn the_system_clock_cannot_be_advanced() {
        Clock::system().advance(Duration::from_secs(1));
    }
}
