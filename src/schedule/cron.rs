//! Cron parsing: six-field expressions (seconds first, UTC), read the way `tokio-cron-scheduler`
//! reads them. A leaf: it imports nothing of ours, so `config` can check schedules with it without
//! an import loop through the daemon loop (`tests/module_graph.rs` keeps it a leaf).

use std::time::Duration;

use chrono::Utc;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// Parses a cron expression the way `tokio-cron-scheduler` does (seconds required).
pub fn parse(expr: &str) -> Result<Cron, String> {
    if expr.split_whitespace().count() != 6 {
        return Err(format!(
            "expected six fields (seconds minutes hours day-of-month month day-of-week), got {:?}",
            expr
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr)
        .map_err(|e| format!("{e}"))
}

/// The gap between the next two firings from now: the schedule's interval, for `/readyz`.
pub fn interval(cron: &Cron) -> Option<Duration> {
    let now = Utc::now();
    let first = cron.find_next_occurrence(&now, false).ok()?;
    let second = cron.find_next_occurrence(&first, false).ok()?;
    (second - first).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_six_fields_and_rejects_others() {
        assert!(parse("0 */15 * * * *").is_ok());
        assert!(parse("*/2 * * * * *").is_ok());
        assert!(parse("*/15 * * * *").is_err(), "five fields");
        assert!(parse("0 61 * * * *").is_err());
        assert!(parse("every day").is_err());
    }

    #[test]
    fn interval_is_the_gap_between_firings() {
        assert_eq!(
            interval(&parse("0 */15 * * * *").unwrap()),
            Some(Duration::from_secs(900))
        );
        assert_eq!(
            interval(&parse("*/2 * * * * *").unwrap()),
            Some(Duration::from_secs(2))
        );
    }
}
