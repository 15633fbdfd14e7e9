//! The incremental-polling watermark, derived only from Nexudus's own `UpdatedOn` values (their
//! time zone is not documented, so the local clock is never compared with them).
//!
//! A run remembers the newest `UpdatedOn` it saw — or, if some user failed or was invalid, the
//! oldest `UpdatedOn` among those, so that the next incremental listing lists them again. The
//! next incremental run asks for `from_User_UpdatedOn` = that mark minus `sync.incremental_overlap`
//! (inclusive, minute precision, `YYYY-MM-DDTHH:mm`).

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime};

const FORMAT: &str = "%Y-%m-%dT%H:%M";

/// The minute of an `UpdatedOn` value in UTC (`2025-01-15T10:30:00Z` -> `2025-01-15T10:30`), if
/// it is one. Nexudus writes it with `Z`, without a zone, with fractional seconds, and sometimes
/// with an offset: an offset is converted to UTC, because the `from_User_UpdatedOn` filter
/// compares in UTC (what real clients poll with); a value without a zone is taken as UTC.
pub fn minute(updated_on: &str) -> Option<String> {
    let value = updated_on.trim();
    let utc = match DateTime::parse_from_rfc3339(value) {
        Ok(at) => at.naive_utc(),
        Err(_) => {
            let naive = value.trim_end_matches(['Z', 'z']);
            NaiveDateTime::parse_from_str(naive, "%Y-%m-%dT%H:%M:%S%.f")
                .or_else(|_| NaiveDateTime::parse_from_str(naive, FORMAT))
                .ok()?
        }
    };
    Some(utc.format(FORMAT).to_string())
}

/// `mark` moved back by `overlap`, as a `from_User_UpdatedOn` value.
pub fn minus(mark: &str, overlap: Duration) -> Option<String> {
    let t = NaiveDateTime::parse_from_str(mark, FORMAT).ok()?;
    let back = chrono::Duration::from_std(overlap).ok()?;
    Some(t.checked_sub_signed(back)?.format(FORMAT).to_string())
}

/// Collects what one run saw.
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    newest: Option<String>,
    oldest_problem: Option<String>,
}

impl Tracker {
    pub fn seen(&mut self, updated_on: Option<&str>) {
        if let Some(m) = updated_on.and_then(minute)
            && self.newest.as_ref().is_none_or(|n| m > *n)
        {
            self.newest = Some(m);
        }
    }

    pub fn problem(&mut self, updated_on: Option<&str>) {
        if let Some(m) = updated_on.and_then(minute)
            && self.oldest_problem.as_ref().is_none_or(|o| m < *o)
        {
            self.oldest_problem = Some(m);
        }
    }

    /// The mark to keep after the run, or `None` to keep the previous one (nothing was seen).
    pub fn mark(&self) -> Option<String> {
        self.oldest_problem.clone().or_else(|| self.newest.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minute_precision_and_overlap() {
        assert_eq!(
            minute("2025-01-15T10:30:59Z").as_deref(),
            Some("2025-01-15T10:30")
        );
        // Every form Nexudus writes: with and without Z, fractions, an offset (-> UTC).
        for (value, want) in [
            ("2025-01-15T10:30:00", "2025-01-15T10:30"),
            ("2025-01-15T10:30:59.1234567", "2025-01-15T10:30"),
            ("2025-01-15T10:30:59.123Z", "2025-01-15T10:30"),
            ("2025-01-15T10:30:00.123+01:00", "2025-01-15T09:30"),
            ("2025-01-15T00:10:00-05:30", "2025-01-15T05:40"),
            ("2025-01-15T10:30", "2025-01-15T10:30"),
        ] {
            assert_eq!(minute(value).as_deref(), Some(want), "{value}");
        }
        assert_eq!(minute("yesterday"), None);
        assert_eq!(minute("2025-13-15T10:30:00Z"), None);
        assert_eq!(
            minus("2025-01-15T00:05", Duration::from_secs(600)).as_deref(),
            Some("2025-01-14T23:55")
        );
    }

    #[test]
    fn problems_hold_the_mark_back() {
        let mut t = Tracker::default();
        assert_eq!(t.mark(), None);
        t.seen(Some("2025-01-15T10:30:00Z"));
        t.seen(Some("2025-01-15T12:00:00Z"));
        t.seen(Some("garbage"));
        assert_eq!(t.mark().as_deref(), Some("2025-01-15T12:00"));
        t.problem(Some("2025-01-15T11:00:00Z"));
        t.problem(Some("2025-01-15T11:30:00Z"));
        assert_eq!(t.mark().as_deref(), Some("2025-01-15T11:00"));
    }
}
