//! Pacing under all four of Nexudus's documented limits — one request per 100 ms, 120 a minute,
//! 5,000 an hour, 200,000 a day (`nexudus.min_request_interval`, `max_requests_per_minute`,
//! `max_requests_per_hour`, `max_requests_per_day`, each a little under the documented figure by
//! default) — and behind any wait a throttled answer asked for.
//!
//! The short windows are `governor` rate limiters in memory: a restart costs at most one
//! minute's burst. The hour and the day cannot be kept that way — a cron job starts a new process
//! every run, and a daemon restarted in a loop would start with a full budget each time — so
//! they are counted in the store, in buckets: one per minute for the hour, one per hour for the
//! day. A request is admitted when the buckets overlapping the last hour (day) hold fewer than the
//! limit. Counting whole buckets overstates a window by at most one bucket, never understates it:
//! the sliding window this enforces is never over the limit, whatever window Nexudus counts in
//! (sliding or fixed to the clock hour). The wall clock is used (counts must survive a restart);
//! a clock set back only makes the window look fuller. It is the store's [`Clock`], so a test
//! that moves the store's clock moves the budgets' too.
//!
//! When a window is full the next request waits until it is not, rather than drawing throttles;
//! the wait is logged once and kept in the store for `/status` and `--status`.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::store::Store;

/// Store key (meta tree) of the hour and day buckets.
const COUNTS_KEY: &str = "nexudus_quota_counts";
/// Store key (meta tree) of the wait in progress, if any (JSON), read by the status document.
pub const WAIT_KEY: &str = "nexudus_quota_wait";

/// A window of `span` seconds counted in buckets of `bucket` seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub name: &'static str,
    bucket: u64,
    span: u64,
    pub limit: u32,
    /// Bucket index (unix seconds / bucket) -> requests sent in it.
    counts: BTreeMap<u64, u32>,
}

impl Window {
    pub fn new(name: &'static str, bucket: u64, span: u64, limit: u32) -> Window {
        Window {
            name,
            bucket,
            span,
            limit,
            counts: BTreeMap::new(),
        }
    }

    /// The first bucket that still overlaps the window ending at `now`.
    fn first_bucket(&self, now: u64) -> u64 {
        now.saturating_sub(self.span) / self.bucket
    }

    /// Requests counted in the window ending at `now`.
    pub fn used(&self, now: u64) -> u32 {
        self.counts
            .range(self.first_bucket(now)..)
            .map(|(_, n)| *n)
            .fold(0u32, u32::saturating_add)
    }

    /// How long from `now` until one more request fits; `None` when it fits now.
    pub fn wait(&self, now: u64) -> Option<Duration> {
        let mut used = self.used(now);
        if used < self.limit {
            return None;
        }
        // Drop buckets oldest first until one more fits: the window must move past the last one
        // dropped.
        for (&index, &n) in self.counts.range(self.first_bucket(now)..) {
            used = used.saturating_sub(n);
            if used < self.limit {
                let free_at = (index + 1) * self.bucket + self.span;
                return Some(Duration::from_secs(free_at.saturating_sub(now).max(1)));
            }
        }
        // A limit of zero never fits; config validation forbids it.
        Some(Duration::from_secs(self.span))
    }

    pub fn record(&mut self, now: u64) {
        let first = self.first_bucket(now);
        self.counts.retain(|&index, _| index >= first);
        let n = self.counts.entry(now / self.bucket).or_default();
        *n = n.saturating_add(1);
    }
}

/// What the store keeps of the two long windows.
#[derive(Serialize, Deserialize, Default)]
struct Saved {
    minutes: Vec<(u64, u32)>,
    hours: Vec<(u64, u32)>,
}

/// The hour and day windows, kept in the store when there is one.
struct LongWindows {
    hour: Window,
    day: Window,
    store: Option<Store>,
    /// A failing store is reported once, and pacing goes on in memory.
    store_failed: bool,
    /// The store's clock (the system clock without a store).
    clock: Clock,
}

impl LongWindows {
    fn load(hour_limit: u32, day_limit: u32, store: Option<Store>) -> LongWindows {
        let mut windows = LongWindows {
            hour: Window::new("hour", 60, 3600, hour_limit),
            day: Window::new("day", 3600, 86_400, day_limit),
            clock: store
                .as_ref()
                .map_or_else(Clock::system, |s| s.clock().clone()),
            store,
            store_failed: false,
        };
        // A wait recorded by an earlier process is over: that process is gone.
        set_wait(windows.store.as_ref(), None);
        let saved = windows
            .store
            .as_ref()
            .and_then(|s| s.meta_bytes(COUNTS_KEY).ok().flatten())
            .and_then(|bytes| serde_json::from_slice::<Saved>(&bytes).ok())
            .unwrap_or_default();
        windows.hour.counts = saved.minutes.into_iter().collect();
        windows.day.counts = saved.hours.into_iter().collect();
        windows
    }

    fn save(&mut self) {
        let Some(store) = &self.store else { return };
        let saved = Saved {
            minutes: self.hour.counts.iter().map(|(k, v)| (*k, *v)).collect(),
            hours: self.day.counts.iter().map(|(k, v)| (*k, *v)).collect(),
        };
        let result = serde_json::to_vec(&saved)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                store
                    .set_meta_bytes(COUNTS_KEY, &bytes)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = result
            && !self.store_failed
        {
            self.store_failed = true;
            tracing::warn!(error = %e, "cannot keep the Nexudus request counts in the store; the hour and day budgets are counted for this process only");
        }
    }

    /// The window that is full at `now` and how long until it is not.
    fn wait(&self, now: u64) -> Option<(&Window, Duration)> {
        [&self.hour, &self.day]
            .into_iter()
            .filter_map(|w| w.wait(now).map(|d| (w, d)))
            .max_by_key(|(_, d)| *d)
    }
}

/// The pacer of one Nexudus client; every request (listing pages, single users, languages,
/// tokens) passes [`Pacer::wait`] first.
pub struct Pacer {
    gap: Option<DefaultDirectRateLimiter>,
    minute: DefaultDirectRateLimiter,
    long: tokio::sync::Mutex<LongWindows>,
    /// No request before this instant: a throttled answer asked to wait until then.
    not_before: std::sync::Mutex<Option<tokio::time::Instant>>,
    metrics: Arc<Metrics>,
}

/// The four limits.
pub struct Limits {
    pub min_interval: Duration,
    pub per_minute: u32,
    pub per_hour: u32,
    pub per_day: u32,
}

impl Pacer {
    /// The minute limiter allows a burst of a tenth of the budget and refills the rest over the
    /// minute, so no 60-second window ever sees more than the budget, and a long listing keeps
    /// nearly the whole budget's pace whatever came before it (110 a minute: a burst of 11, then
    /// one request every 0.61 s, so 100 pages take under a minute even right after another
    /// full listing; a burst of half the budget left only half of it for such a listing).
    pub fn new(limits: &Limits, store: Option<Store>, metrics: Arc<Metrics>) -> Pacer {
        let per_minute = limits.per_minute.max(1);
        let burst = (per_minute / 10).max(1);
        let refill = per_minute.saturating_sub(burst).max(1);
        let minute = Quota::with_period(Duration::from_secs(60) / refill)
            .expect("refill period is non-zero")
            .allow_burst(NonZeroU32::new(burst).expect("burst is at least one"));
        Pacer {
            gap: Quota::with_period(limits.min_interval).map(RateLimiter::direct),
            minute: RateLimiter::direct(minute),
            long: tokio::sync::Mutex::new(LongWindows::load(
                limits.per_hour,
                limits.per_day,
                store,
            )),
            not_before: std::sync::Mutex::new(None),
            metrics,
        }
    }

    /// Holds every request back until `wait` from now has passed (a throttled answer's wait).
    pub fn hold(&self, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        let mut not_before = self
            .not_before
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if not_before.is_none_or(|t| t < until) {
            *not_before = Some(until);
        }
    }

    /// Waits until one more request fits every window, and counts it.
    pub async fn wait(&self) {
        let held = *self
            .not_before
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(until) = held {
            tokio::time::sleep_until(until).await;
        }
        let mut announced = false;
        loop {
            let wait = {
                let mut long = self.long.lock().await;
                let now = long.clock.now();
                match long.wait(now).map(|(w, d)| (w.clone(), d)) {
                    None => {
                        long.record(now);
                        long.save();
                        if announced {
                            tracing::info!("Nexudus request budget available again; going on");
                            set_wait(long.store.as_ref(), None);
                        }
                        break;
                    }
                    Some((window, wait)) => {
                        if !announced {
                            tracing::warn!(
                                window = window.name,
                                used = window.used(now),
                                limit = window.limit,
                                wait_s = wait.as_secs(),
                                "the Nexudus request budget of the {} is used up (nexudus.max_requests_per_{}): \
                                 waiting for it rather than drawing throttles",
                                window.name,
                                window.name
                            );
                            announced = true;
                            self.metrics.count_quota_wait(window.name);
                            set_wait(
                                long.store.as_ref(),
                                Some(json!({
                                    "window": window.name,
                                    "used": window.used(now),
                                    "limit": window.limit,
                                    "since": now,
                                    "until": now + wait.as_secs(),
                                    "reason": format!(
                                        "waiting for the Nexudus request budget of the {} \
                                         (nexudus.max_requests_per_{}) rather than drawing throttles",
                                        window.name, window.name
                                    ),
                                })),
                            );
                        }
                        wait
                    }
                }
            };
            // Re-checked at least every minute: buckets free up one at a time.
            tokio::time::sleep(wait.min(Duration::from_secs(60))).await;
        }
        if let Some(gap) = &self.gap {
            gap.until_ready().await;
        }
        self.minute.until_ready().await;
    }

    /// Requests counted in the last hour, with its limit.
    pub async fn hour_used(&self) -> (u32, u32) {
        let long = self.long.lock().await;
        (long.hour.used(long.clock.now()), long.hour.limit)
    }
}

impl LongWindows {
    fn record(&mut self, now: u64) {
        self.hour.record(now);
        self.day.record(now);
    }
}

/// Records (or clears) the wait in progress for the status document.
fn set_wait(store: Option<&Store>, wait: Option<serde_json::Value>) {
    let Some(store) = store else { return };
    let bytes = wait.map(|w| w.to_string().into_bytes()).unwrap_or_default();
    if let Err(e) = store.set_meta_bytes(WAIT_KEY, &bytes) {
        tracing::debug!(error = %e, "cannot record the quota wait for /status");
    }
}

/// Requests an idle incremental run costs: the deletion probe and one page of changes.
pub const INCREMENTAL_RUN_REQUESTS: u64 = 2;

/// The warning to give at start when the steady state would not fit the hourly budget:
/// `runs_per_hour` runs, one in `full_every` a full listing of `pages` pages (plus the languages
/// page), the others idle incremental runs ([`INCREMENTAL_RUN_REQUESTS`]).
pub fn hourly_budget_warning(
    pages: u64,
    runs_per_hour: f64,
    full_every: u32,
    per_hour: u32,
) -> Option<String> {
    let per_run = pages + 1;
    let full_runs = runs_per_hour / f64::from(full_every.max(1));
    let needed = (per_run as f64 * full_runs
        + INCREMENTAL_RUN_REQUESTS as f64 * (runs_per_hour - full_runs))
        .ceil() as u64;
    (needed > u64::from(per_hour)).then(|| {
        format!(
            "a full listing takes about {per_run} Nexudus requests ({pages} pages of \
             nexudus.page_size, plus the languages), an idle incremental run \
             {INCREMENTAL_RUN_REQUESTS}; at {runs_per_hour:.1} runs an hour (sync.schedule), \
             {full_runs:.1} of them full (sync.full_every), that is {needed} requests an hour, \
             over the hourly budget of \
             {per_hour} (nexudus.max_requests_per_hour; Nexudus allows 5,000): runs will wait \
             for the budget. Schedule fewer runs, use incremental runs (sync.full_every), or \
             raise nexudus.page_size"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hour_window_admits_its_limit_then_waits_for_the_oldest_bucket() {
        let mut w = Window::new("hour", 60, 3600, 3);
        let t0 = 1_000_000 * 60 + 10; // ten seconds into a minute
        for i in 0..3 {
            assert_eq!(w.wait(t0 + i), None);
            w.record(t0 + i);
        }
        assert_eq!(w.used(t0 + 5), 3);
        // Full: the oldest bucket (the minute of t0) leaves the window an hour after its end.
        let wait = w.wait(t0 + 5).expect("full");
        assert_eq!(wait, Duration::from_secs(3600 + 60 - 15));
        assert_eq!(w.wait(t0 + 5 + wait.as_secs()), None);
        // Never under-counted: just before, it is still full.
        assert!(w.wait(t0 + 5 + wait.as_secs() - 1).is_some());
    }

    #[test]
    fn a_day_window_counts_hour_buckets() {
        let mut w = Window::new("day", 3600, 86_400, 2);
        w.record(7200);
        w.record(3 * 3600 + 5);
        assert_eq!(w.used(4 * 3600), 2);
        assert_eq!(
            w.wait(4 * 3600),
            Some(Duration::from_secs(86_400 + 3 * 3600 - 4 * 3600))
        );
        assert_eq!(
            w.used(86_400 + 3 * 3600 + 1),
            1,
            "the first bucket has left"
        );
    }

    #[test]
    fn counts_survive_a_restart_through_the_store() {
        let store = Store::temporary()
            .unwrap()
            .with_clock(Clock::manual(1_000_000 * 60));
        let mut a = LongWindows::load(2, 100, Some(store.clone()));
        let now = store.clock().now();
        a.record(now);
        a.record(now);
        a.save();
        let b = LongWindows::load(2, 100, Some(store));
        assert_eq!(b.hour.used(now), 2);
        assert_eq!(b.wait(now).map(|(w, _)| w.name), Some("hour"));
    }

    /// The hour's wait is re-checked every (paused) minute and ends when the store's clock has
    /// moved past the oldest bucket: nothing here waits for the wall clock.
    #[tokio::test(start_paused = true)]
    async fn a_full_hour_is_waited_out_by_the_store_clock() {
        let clock = Clock::manual(1_000_000 * 60);
        let store = Store::temporary().unwrap().with_clock(clock.clone());
        let limits = Limits {
            min_interval: Duration::ZERO,
            per_minute: 1_000,
            per_hour: 2,
            per_day: 100,
        };
        let pacer = Pacer::new(&limits, Some(store.clone()), Arc::new(Metrics::new()));
        pacer.wait().await;
        pacer.wait().await;
        assert_eq!(pacer.hour_used().await, (2, 2));
        let third = pacer.wait();
        tokio::pin!(third);
        assert!(
            tokio::time::timeout(Duration::from_secs(90), &mut third)
                .await
                .is_err(),
            "the third request waits while the hour is full"
        );
        let wait = store.meta_bytes(WAIT_KEY).unwrap().unwrap_or_default();
        assert!(!wait.is_empty(), "the wait is kept for /status");
        clock.advance(Duration::from_secs(3600 + 60));
        tokio::time::timeout(Duration::from_secs(61), third)
            .await
            .expect("admitted at the next re-check once the hour has moved on");
        assert_eq!(pacer.hour_used().await, (1, 2));
        let wait = store.meta_bytes(WAIT_KEY).unwrap().unwrap_or_default();
        assert!(wait.is_empty(), "the wait is over");
    }

    #[test]
    fn the_budget_warning_does_the_arithmetic_of_the_readme() {
        // 20,000 users in pages of 1000: 21 requests a run; every 15 minutes: 84 an hour.
        assert_eq!(hourly_budget_warning(20, 4.0, 1, 4500), None);
        // Every minute with pages of 100, every run full: 201 × 60 = 12,060.
        let w = hourly_budget_warning(200, 60.0, 1, 4500).expect("over");
        assert!(w.contains("12060 requests an hour"), "{w}");
        // The defaults with 100,000 users: 240 runs an hour, one full (101) and 239 idle
        // incremental ones (2 each): 579.
        let w = hourly_budget_warning(100, 240.0, 240, 500).expect("over 500");
        assert!(w.contains("579 requests an hour"), "{w}");
        assert_eq!(hourly_budget_warning(100, 240.0, 240, 4500), None);
    }
}
