//! Pure: when a user nevisIDM refused is asked again. A create or update refused for the user's
//! own values (a 4xx about the user, an archived account holding its loginId, a value nevisIDM
//! answered for but did not take) will be refused again for the same values: sending it on every
//! tick only fills the provisioning log (100 refused users at a one-minute tick were 144,000
//! entries a day). So the refusal is kept with the user's failure record — a digest of the
//! values refused, the tries refused with them, when the next try is — and the next try waits:
//! 1 hour after the first refusal, doubling to at most 24 hours.
//!
//! Why these numbers: a refusal of a user's values is lifted by a person — in Nexudus (another
//! value: tried at once, the digest differs) or in nevisIDM (a policy, a freed loginId: tried
//! within a day at worst, or at once by a reconcile, which always tries). An hour first catches
//! a refusal that was a passing state of nevisIDM; a day at most keeps an unattended refusal to
//! one provisioning-log entry a day.
//!
//! Disables are never backed off (a refused disable is access kept: tried every run); neither is
//! a failure of nevisIDM itself (unavailable, a version conflict), which is the run's, not the
//! user's. A leaf: it imports nothing of ours.

use std::time::Duration;

/// The wait after the first refusal.
pub const FIRST_WAIT: Duration = Duration::from_secs(3600);
/// The longest wait between two tries.
pub const LONGEST_WAIT: Duration = Duration::from_secs(24 * 3600);

/// A user's write refused for the values with `digest` (the fingerprint of the user as mapped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub digest: u64,
    /// Tries refused in a row with these values.
    pub tries: u32,
    /// Unix seconds before which these values are not sent again by an ordinary run.
    pub next_at: u64,
    /// nevisIDM confirmed the write but did not take a value (not a refusal in words).
    pub not_taken: bool,
}

impl Refusal {
    /// The refusal after a try refused at `now` for the values with `digest`; `previous` is
    /// what was kept before it (its tries count on only for the same values).
    pub fn after(previous: Option<&Refusal>, digest: u64, now: u64, not_taken: bool) -> Refusal {
        let tries = match previous {
            Some(p) if p.digest == digest => p.tries.saturating_add(1),
            _ => 1,
        };
        Refusal {
            digest,
            tries,
            next_at: now.saturating_add(wait(tries).as_secs()),
            not_taken,
        }
    }

    /// Whether an ordinary run at `now` leaves the values with `digest` unsent: the same values
    /// as refused, before their next try.
    pub fn defers(&self, digest: u64, now: u64) -> bool {
        self.digest == digest && now < self.next_at
    }

    /// Words for a person: when the next try is, and what brings it sooner.
    pub fn note(&self) -> String {
        format!(
            "next try at {} (refused {} time(s) with these values; tried at once if the Nexudus \
             record changes, or by a --reconcile)",
            rfc3339(self.next_at),
            self.tries
        )
    }
}

/// The wait after `tries` refusals in a row: [`FIRST_WAIT`], doubling, at most [`LONGEST_WAIT`].
pub fn wait(tries: u32) -> Duration {
    let doublings = tries.saturating_sub(1).min(16);
    FIRST_WAIT.saturating_mul(1 << doublings).min(LONGEST_WAIT)
}

/// Unix seconds as RFC 3339 (UTC, whole seconds).
fn rfc3339(unix_seconds: u64) -> String {
    i64::try_from(unix_seconds)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map_or_else(
            || unix_seconds.to_string(),
            |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3600;

    #[test]
    fn the_wait_doubles_from_an_hour_to_a_day() {
        let hours: Vec<u64> = (1..=8).map(|t| wait(t).as_secs() / HOUR).collect();
        assert_eq!(hours, [1, 2, 4, 8, 16, 24, 24, 24]);
        assert_eq!(wait(u32::MAX), LONGEST_WAIT);
    }

    #[test]
    fn tries_count_on_for_the_same_values_only() {
        let first = Refusal::after(None, 7, 1_000, false);
        assert_eq!((first.tries, first.next_at), (1, 1_000 + HOUR));
        let second = Refusal::after(Some(&first), 7, first.next_at, false);
        assert_eq!(
            (second.tries, second.next_at),
            (2, first.next_at + 2 * HOUR)
        );
        let other = Refusal::after(Some(&second), 8, 5_000, true);
        assert_eq!(
            (other.tries, other.next_at, other.not_taken),
            (1, 5_000 + HOUR, true)
        );
    }

    #[test]
    fn only_the_same_values_before_their_time_are_deferred() {
        let r = Refusal::after(None, 7, 1_000, false);
        assert!(r.defers(7, 1_000) && r.defers(7, r.next_at - 1));
        assert!(!r.defers(7, r.next_at), "its time has come");
        assert!(!r.defers(8, 1_000), "other values are sent at once");
    }

    #[test]
    fn the_note_says_when_and_what_brings_it_sooner() {
        let note = Refusal::after(None, 7, 0, false).note();
        assert!(
            note.starts_with("next try at 1970-01-01T01:00:00Z"),
            "{note}"
        );
        assert!(note.contains("refused 1 time(s)") && note.contains("--reconcile"));
    }
}
