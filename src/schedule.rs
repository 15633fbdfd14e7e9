//! The daemon's schedule: six-field cron expressions (seconds first, UTC).
//!
//! This is the only module that knows the cron syntax, so the config check and the scheduler can
//! never disagree about what a valid schedule is.

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
}
