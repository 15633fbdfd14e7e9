//! The daemon loop and its schedule: six-field cron expressions (seconds first, UTC), driven by
//! `tokio-cron-scheduler`. This is the only module that knows the cron crates, so the config check
//! and the scheduler can never disagree about what a valid schedule is.
//!
//! The first run starts at once. Runs never overlap: a tick that finds a run in progress is
//! skipped and counted. Each run is the same `run_once` that `--sync-now` calls. A second job on
//! `sync.reconcile_schedule` marks the next run as a reconcile (compared with nevisIDM's real
//! state); a reconcile tick that finds a run in progress is not lost, the next run reconciles.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::AppState;
use crate::nevis::Target;
use crate::nexudus::Source;
use crate::sync::{RunOptions, run_once};

#[derive(Debug, thiserror::Error)]
#[error("scheduler: {0}")]
pub struct ScheduleError(String);

/// Runs syncs on the schedule until `shutdown` is cancelled; the run in flight then finishes its
/// writes within `sync.shutdown_grace` and the store is flushed.
pub async fn run_daemon<S: Source, T: Target>(
    config: Arc<Config>,
    source: Arc<S>,
    target: Arc<T>,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> Result<(), ScheduleError> {
    let err = |e: tokio_cron_scheduler::JobSchedulerError| ScheduleError(e.to_string());
    let (ticks, mut tick_rx) = mpsc::channel::<()>(1);
    let running = Arc::new(AtomicBool::new(false));
    let mut scheduler = JobScheduler::new().await.map_err(err)?;
    let job = {
        let ticks = ticks.clone();
        let running = Arc::clone(&running);
        let state = Arc::clone(&state);
        Job::new_async(config.sync.schedule.as_str(), move |_id, _scheduler| {
            let ticks = ticks.clone();
            let running = Arc::clone(&running);
            let state = Arc::clone(&state);
            Box::pin(async move {
                if running.load(Ordering::SeqCst) || ticks.try_send(()).is_err() {
                    state.metrics.count_skipped_tick();
                    tracing::info!("schedule tick skipped: a run is still in progress");
                }
            })
        })
        .map_err(err)?
    };
    scheduler.add(job).await.map_err(err)?;
    let reconcile_due = Arc::new(AtomicBool::new(false));
    if let Some(expr) = &config.sync.reconcile_schedule {
        let due = Arc::clone(&reconcile_due);
        let ticks = ticks.clone();
        let job = Job::new_async(expr.as_str(), move |_id, _scheduler| {
            due.store(true, Ordering::SeqCst);
            let _ = ticks.try_send(());
            Box::pin(async {})
        })
        .map_err(err)?;
        scheduler.add(job).await.map_err(err)?;
        tracing::info!(reconcile_schedule = %expr, "reconciles scheduled");
    }
    scheduler.start().await.map_err(err)?;
    tracing::info!(schedule = %config.sync.schedule, "daemon started; first run now");

    let mut opts = RunOptions {
        shutdown: Some(shutdown.clone()),
        ..RunOptions::default()
    };
    let mut first = true;
    let mut runs: u64 = 0;
    // Whether the hourly budget was checked against a known listing size (the first start has
    // none until its first full listing).
    let mut budget_checked = false;
    loop {
        if !first {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                tick = tick_rx.recv() => if tick.is_none() { break },
            }
        }
        first = false;
        if shutdown.is_cancelled() {
            break;
        }
        if !budget_checked {
            budget_checked = budget_check(&config, &state);
        }
        running.store(true, Ordering::SeqCst);
        state.health().running = true;
        // Full listing at start-up and every `full_every`-th run; incremental in between. A due
        // reconcile is always a full listing.
        opts.reconcile = reconcile_due.swap(false, Ordering::SeqCst);
        opts.incremental =
            !opts.reconcile && !runs.is_multiple_of(u64::from(config.sync.full_every));
        runs += 1;
        let started = Instant::now();
        let store = &state.store;
        match run_once(
            &config,
            Arc::clone(&source),
            Arc::clone(&target),
            store,
            &opts,
        )
        .await
        {
            Ok(report) => {
                state.metrics.record_run(&report);
                state.health().record(&report);
            }
            Err(e) => {
                state.metrics.record_fatal(started.elapsed());
                state.health().record_fatal(&e.to_string());
            }
        }
        let failing = store.failures().map(|f| f.len()).unwrap_or(0);
        state.metrics.set_store(
            store.size_on_disk().unwrap_or(0),
            failing,
            store.oldest_failure_since().ok().flatten(),
        );
        state.health().running = false;
        running.store(false, Ordering::SeqCst);
    }
    tracing::info!("daemon stopping");
    if let Err(e) = scheduler.shutdown().await {
        tracing::warn!(error = %e, "scheduler did not stop cleanly");
    }
    if let Err(e) = state.store.flush().await {
        tracing::error!(error = %e, "final store flush failed");
    }
    Ok(())
}

/// Warns when the schedule and the listing size cannot fit Nexudus's hourly budget; true once a
/// listing size was known to check against (before each run until then).
fn budget_check(config: &Config, state: &AppState) -> bool {
    let known = state
        .store
        .meta_bytes(crate::nexudus::LISTING_SIZE_KEY)
        .ok()
        .flatten()
        .is_some();
    if let Some(warning) = crate::nexudus::hourly_budget_warning(config, &state.store) {
        tracing::warn!("{warning}");
    }
    known
}

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
