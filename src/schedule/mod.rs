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
//!
//! These rules live apart from the cron jobs (`Ticker`, and the loop `drive`), so the unit tests
//! send ticks by hand instead of waiting for the wall clock.

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
    let (ticker, ticks) = Ticker::new(&state);
    let mut scheduler = start_scheduler(&config, &ticker).await?;
    tracing::info!(schedule = %config.sync.schedule, "daemon started; first run now");
    drive(&config, &source, &target, &state, &shutdown, &ticker, ticks).await;
    tracing::info!("daemon stopping");
    if let Err(e) = scheduler.shutdown().await {
        tracing::warn!(error = %e, "scheduler did not stop cleanly");
    }
    if let Err(e) = state.store.flush().await {
        tracing::error!(error = %e, "final store flush failed");
    }
    Ok(())
}

/// What a tick does, whoever sends it: the cron jobs in the daemon, a test by hand (so the rules
/// are tested without waiting for the wall clock's next second).
#[derive(Clone)]
struct Ticker {
    /// A run is due; holds one at the most (a tick while one is due is skipped).
    due: mpsc::Sender<()>,
    running: Arc<AtomicBool>,
    /// A tick came while a run was in progress: the next run starts as soon as that one ends.
    missed: Arc<AtomicBool>,
    /// The next run is a reconcile.
    reconcile_due: Arc<AtomicBool>,
    state: Arc<AppState>,
}

impl Ticker {
    /// The ticker and the receiver of the runs it makes due.
    fn new(state: &Arc<AppState>) -> (Ticker, mpsc::Receiver<()>) {
        let (due, ticks) = mpsc::channel(1);
        let ticker = Ticker {
            due,
            running: Arc::default(),
            missed: Arc::default(),
            reconcile_due: Arc::default(),
            state: Arc::clone(state),
        };
        (ticker, ticks)
    }

    /// A tick of `sync.schedule`: a run is due, or, during a run, one follows it.
    fn tick(&self) {
        if self.running.load(Ordering::SeqCst) {
            self.missed.store(true, Ordering::SeqCst);
            self.state.metrics.count_skipped_tick();
            tracing::info!("schedule tick during a run: the next run starts as soon as it ends");
        } else if self.due.try_send(()).is_err() {
            self.state.metrics.count_skipped_tick();
            tracing::info!("schedule tick skipped: a run is already due");
        }
    }

    /// A tick of `sync.reconcile_schedule`: the next run reconciles, and is due.
    fn reconcile(&self) {
        self.reconcile_due.store(true, Ordering::SeqCst);
        let _ = self.due.try_send(());
    }
}

/// The daemon loop: the first run at once, then one for each run `ticks` makes due (or at once
/// when a tick came during the last run), until `shutdown`.
async fn drive<S: Source, T: Target>(
    config: &Config,
    source: &Arc<S>,
    target: &Arc<T>,
    state: &AppState,
    shutdown: &CancellationToken,
    ticker: &Ticker,
    mut ticks: mpsc::Receiver<()>,
) {
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
        if !first && !ticker.missed.swap(false, Ordering::SeqCst) {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                tick = ticks.recv() => if tick.is_none() { break },
            }
        }
        first = false;
        if shutdown.is_cancelled() {
            break;
        }
        if !budget_checked {
            budget_checked = budget_check(config, state);
        }
        ticker.running.store(true, Ordering::SeqCst);
        state.health().running = true;
        // Full listing at start-up and every `full_every`-th run; incremental in between. A due
        // reconcile is always a full listing. A full listing the deletion probe asked for counts
        // as the scheduled one: the next is `full_every` runs after it.
        opts.reconcile = ticker.reconcile_due.swap(false, Ordering::SeqCst);
        opts.incremental = !opts.reconcile
            && since_full.is_some_and(|n| n.saturating_add(1) < config.sync.full_every);
        let listed_everyone = run_and_record(config, source, target, state, &opts).await;
        since_full = match listed_everyone {
            Some(true) => Some(0),
            Some(false) => since_full.map(|n| n.saturating_add(1)),
            None => since_full,
        };
        state.health().running = false;
        ticker.running.store(false, Ordering::SeqCst);
    }
}

fn scheduler_error(e: tokio_cron_scheduler::JobSchedulerError) -> ScheduleError {
    ScheduleError(e.to_string())
}

/// Starts the cron jobs: `sync.schedule` ticks, `sync.reconcile_schedule` (if set) reconciles;
/// both through `ticker`.
async fn start_scheduler(config: &Config, ticker: &Ticker) -> Result<JobScheduler, ScheduleError> {
    let scheduler = JobScheduler::new().await.map_err(scheduler_error)?;
    let job = {
        let ticker = ticker.clone();
        Job::new_async(config.sync.schedule.as_str(), move |_id, _scheduler| {
            ticker.tick();
            Box::pin(async {})
        })
        .map_err(scheduler_error)?
    };
    scheduler.add(job).await.map_err(scheduler_error)?;
    if let Some(expr) = &config.sync.reconcile_schedule {
        let ticker = ticker.clone();
        let job = Job::new_async(expr.as_str(), move |_id, _scheduler| {
            ticker.reconcile();
            Box::pin(async {})
        })
        .map_err(scheduler_error)?;
        scheduler.add(job).await.map_err(scheduler_error)?;
        tracing::info!(reconcile_schedule = %expr, "reconciles scheduled");
    }
    scheduler.start().await.map_err(scheduler_error)?;
    Ok(scheduler)
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
    if let Ok(entries) = store.audit_len() {
        state.metrics.set_audit_entries(entries);
    }
    if let Ok(pruned) = store.audit_pruned_within_retention() {
        state.metrics.set_audit_pruned_within_retention(pruned);
    }
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

#[cfg(test)]
mod tests {
    //! The loop's rules with ticks sent by hand: no cron job, no wall clock.
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    use serde_json::Value;
    use tokio::sync::{Notify, Semaphore};

    use super::*;
    use crate::diff::Changes;
    use crate::mapper::DesiredUser;
    use crate::metrics::Metrics;
    use crate::nevis::{PageCursor, TargetError, UserPage};
    use crate::nexudus::{PageIds, Presence, SourceError, SourcePage};
    use crate::store::Store;

    /// Upper bound for anything these tests wait on.
    const WAIT: Duration = Duration::from_secs(30);

    /// An empty Nexudus whose first listing waits for the test to open the gate: while it
    /// waits, a run is in progress for as long as the test needs.
    struct GatedSource {
        runs: AtomicU32,
        reading: Notify,
        gate: Semaphore,
    }

    impl GatedSource {
        fn new() -> GatedSource {
            GatedSource {
                runs: AtomicU32::new(0),
                reading: Notify::new(),
                gate: Semaphore::new(0),
            }
        }
    }

    impl Source for GatedSource {
        async fn fetch_page(&self, _: u32, _: Option<&str>) -> Result<SourcePage, SourceError> {
            self.reading.notify_one();
            // Closed until the test adds permits; each read takes one and gives it back.
            drop(self.gate.acquire().await);
            Ok(SourcePage {
                total_items: Some(0),
                ..SourcePage::default()
            })
        }
        async fn fetch_user(&self, _: u64) -> Result<Presence, SourceError> {
            Ok(Presence::Gone)
        }
        async fn ids_at(&self, _: u32, _: u32) -> Result<PageIds, SourceError> {
            Ok(PageIds {
                ids: Vec::new(),
                total_items: Some(0),
            })
        }
        async fn begin_run(&self, _: bool) {
            self.runs.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// An empty nevisIDM; nothing is ever written to it here.
    struct EmptyTarget;

    impl Target for EmptyTarget {
        async fn create(&self, _: &DesiredUser) -> Result<(), TargetError> {
            Ok(())
        }
        async fn update(
            &self,
            _: &str,
            _: &Changes,
            _: Option<i64>,
        ) -> Result<Option<Value>, TargetError> {
            Ok(None)
        }
        async fn archive(&self, _: &str) -> Result<(), TargetError> {
            Ok(())
        }
        async fn get(&self, _: &str) -> Result<Option<Value>, TargetError> {
            Ok(None)
        }
        async fn list_page(
            &self,
            _: &[(&str, &str)],
            _: u32,
            _: &PageCursor,
        ) -> Result<UserPage, TargetError> {
            Ok(UserPage {
                items: Vec::new(),
                continuation: None,
                total: Some(0),
            })
        }
    }

    /// Polls `check` every 10 ms for at most [`WAIT`].
    async fn eventually(check: impl Fn() -> bool) -> bool {
        tokio::time::timeout(WAIT, async {
            while !check() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .is_ok()
    }

    /// Replaces a daemon test that scheduled a tick three wall-clock seconds ahead and hoped the
    /// import was still running then.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ticks_during_a_run_bring_one_run_as_soon_as_it_ends() {
        let config = crate::config::testing::config(&[]);
        let source = Arc::new(GatedSource::new());
        let state = Arc::new(AppState {
            metrics: Arc::new(Metrics::new()),
            health: Default::default(),
            store: Store::temporary().unwrap(),
            ready_max_age: Duration::from_secs(600),
            ext_id_prefix: config.mapping.ext_id_prefix.clone(),
            auth_token: None,
        });
        let (ticker, ticks) = Ticker::new(&state);
        let shutdown = CancellationToken::new();
        let daemon = {
            let (source, state, shutdown, ticker) = (
                Arc::clone(&source),
                Arc::clone(&state),
                shutdown.clone(),
                ticker.clone(),
            );
            tokio::spawn(async move {
                let target = Arc::new(EmptyTarget);
                drive(&config, &source, &target, &state, &shutdown, &ticker, ticks).await;
            })
        };
        // The first run starts without a tick and waits at the gate: it is in progress.
        tokio::time::timeout(WAIT, source.reading.notified())
            .await
            .expect("the first run reads the listing");
        assert!(state.health().running);
        // Two ticks while it runs: both counted as skipped, one run remembered.
        ticker.tick();
        ticker.tick();
        let skipped = "nexudus_nevis_sync_skipped_ticks_total 2";
        assert!(state.metrics.encode().contains(skipped));
        source.gate.add_permits(Semaphore::MAX_PERMITS);
        // No more ticks: the next run comes from the ones it outlasted.
        assert!(
            eventually(|| source.runs.load(Ordering::SeqCst) == 2).await,
            "a second run follows the first at once"
        );
        assert!(
            eventually(|| !state.health().running).await,
            "the second run ends"
        );
        // Once idle, the loop waits for a tick; one brings one run.
        ticker.tick();
        assert!(
            eventually(|| source.runs.load(Ordering::SeqCst) == 3).await,
            "a tick while idle brings a run"
        );
        shutdown.cancel();
        tokio::time::timeout(WAIT, daemon)
            .await
            .expect("the loop ends on shutdown")
            .expect("the loop did not panic");
        assert_eq!(source.runs.load(Ordering::SeqCst), 3, "one run per cause");
    }
}
