//! The daemon loop and its schedule: six-field cron expressions (seconds first, UTC), driven by
//! `tokio-cron-scheduler`. Only this module and its leaf [`cron`] know the cron crates, so the
//! config check (which uses [`cron`]) and the scheduler can never disagree about what a valid
//! schedule is.
//!
//! The first run starts at once. Runs never overlap: a tick that finds a run in progress is
//! counted as skipped, and one run follows as soon as the run in progress ends (however many
//! ticks it outlasted), so a change made during a long full listing waits for that listing, not
//! for the next tick too. Each run is the same `run_once` that `--sync-now` calls. A second job on
//! `sync.reconcile_schedule` marks the next run as a reconcile (compared with nevisIDM's real
//! state); a reconcile tick that finds a run in progress is not lost, the next run reconciles.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::AppState;
use crate::nevis::Target;
use crate::nexudus::Source;
use crate::progress::{self, Progress};
use crate::sync::{RunOptions, run_once};

pub mod cron;

// The public paths from before the split.
pub use cron::{interval, parse};

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
    let running = Arc::new(AtomicBool::new(false));
    let reconcile_due = Arc::new(AtomicBool::new(false));
    // A tick came while a run was in progress: the next run starts as soon as that one ends.
    let missed = Arc::new(AtomicBool::new(false));
    // The sender is kept for as long as the loop runs, as the jobs' clones are.
    let (mut scheduler, _ticks, mut tick_rx) =
        start_scheduler(&config, &state, [&running, &reconcile_due, &missed]).await?;
    tracing::info!(schedule = %config.sync.schedule, "daemon started; first run now");

    let mut opts = RunOptions {
        shutdown: Some(shutdown.clone()),
        ..RunOptions::default()
    };
    let mut first = true;
    // Incremental runs since the last full listing; `None` until a run listed everyone.
    let mut since_full: Option<u32> = None;
    // Whether the hourly budget was checked against a known listing size (the first start has
    // none until its first full listing).
    let mut budget_checked = false;
    loop {
        if !first && !missed.swap(false, Ordering::SeqCst) {
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
        // reconcile is always a full listing. A full listing the deletion probe asked for counts
        // as the scheduled one: the next is `full_every` runs after it.
        opts.reconcile = reconcile_due.swap(false, Ordering::SeqCst);
        opts.incremental = !opts.reconcile
            && since_full.is_some_and(|n| n.saturating_add(1) < config.sync.full_every);
        let listed_everyone = run_and_record(&config, &source, &target, &state, &opts).await;
        since_full = match listed_everyone {
            Some(true) => Some(0),
            Some(false) => since_full.map(|n| n.saturating_add(1)),
            None => since_full,
        };
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

fn scheduler_error(e: tokio_cron_scheduler::JobSchedulerError) -> ScheduleError {
    ScheduleError(e.to_string())
}

/// Starts the cron jobs: `sync.schedule` ticks into the channel (a tick that finds a run in
/// progress is counted as skipped and sets `missed`); `sync.reconcile_schedule`, if set, marks
/// the next run as a reconcile and ticks too.
async fn start_scheduler(
    config: &Config,
    state: &Arc<AppState>,
    [running, reconcile_due, missed]: [&Arc<AtomicBool>; 3],
) -> Result<(JobScheduler, mpsc::Sender<()>, mpsc::Receiver<()>), ScheduleError> {
    let (ticks, tick_rx) = mpsc::channel::<()>(1);
    let scheduler = JobScheduler::new().await.map_err(scheduler_error)?;
    let job = {
        let ticks = ticks.clone();
        let running = Arc::clone(running);
        let missed = Arc::clone(missed);
        let state = Arc::clone(state);
        Job::new_async(config.sync.schedule.as_str(), move |_id, _scheduler| {
            let ticks = ticks.clone();
            let running = Arc::clone(&running);
            let missed = Arc::clone(&missed);
            let state = Arc::clone(&state);
            Box::pin(async move {
                if running.load(Ordering::SeqCst) {
                    missed.store(true, Ordering::SeqCst);
                    state.metrics.count_skipped_tick();
                    tracing::info!(
                        "schedule tick during a run: the next run starts as soon as it ends"
                    );
                } else if ticks.try_send(()).is_err() {
                    state.metrics.count_skipped_tick();
                    tracing::info!("schedule tick skipped: a run is already due");
                }
            })
        })
        .map_err(scheduler_error)?
    };
    scheduler.add(job).await.map_err(scheduler_error)?;
    if let Some(expr) = &config.sync.reconcile_schedule {
        let due = Arc::clone(reconcile_due);
        let ticks = ticks.clone();
        let job = Job::new_async(expr.as_str(), move |_id, _scheduler| {
            due.store(true, Ordering::SeqCst);
            let _ = ticks.try_send(());
            Box::pin(async {})
        })
        .map_err(scheduler_error)?;
        scheduler.add(job).await.map_err(scheduler_error)?;
        tracing::info!(reconcile_schedule = %expr, "reconciles scheduled");
    }
    scheduler.start().await.map_err(scheduler_error)?;
    Ok((scheduler, ticks, tick_rx))
}

/// One scheduled run: `run_once`, its outcome into the metrics and `/status`, then the store's
/// size and failures into the metrics. Answers whether the run listed everyone (`None`: it
/// failed).
async fn run_and_record<S: Source, T: Target>(
    config: &Config,
    source: &Arc<S>,
    target: &Arc<T>,
    state: &AppState,
    opts: &RunOptions,
) -> Option<bool> {
    let started = Instant::now();
    let store = &state.store;
    // The run's counters: a log line every log.progress_interval, and /status while it runs.
    let counters = Progress::new();
    state.health().progress = Some(Arc::clone(&counters));
    let shown = progress::spawn(
        Arc::clone(&counters),
        progress::Display::Log {
            interval: config.log.progress_interval,
        },
    );
    let opts = RunOptions {
        progress: Some(counters),
        ..opts.clone()
    };
    let result = run_once(config, Arc::clone(source), Arc::clone(target), store, &opts).await;
    shown.finish().await;
    state.health().progress = None;
    let listed_everyone = match result {
        Ok(report) => {
            state.metrics.record_run(&report);
            state.health().record(&report);
            // An interrupted run ends the daemon; otherwise a full listing ran to its end.
            Some(!report.incremental && !report.interrupted)
        }
        Err(e) => {
            state.metrics.record_fatal(started.elapsed());
            state.health().record_fatal(&e.to_string());
            None
        }
    };
    let failing = store.failures().map(|f| f.len()).unwrap_or(0);
    state.metrics.set_store(
        store.size_on_disk().unwrap_or(0),
        failing,
        store.oldest_failure_since().ok().flatten(),
    );
    listed_everyone
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
