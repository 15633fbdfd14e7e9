//! Progress of the run in flight, for people watching it: users listed of `TotalItems`, writes
//! done and in flight, failures, rate and ETA. The run counts into a [`Progress`] (atomics, no
//! locks on the hot path); a reporter shows it as a live line on a terminal (indicatif), or as a
//! log line every `log.progress_interval` elsewhere (journald, Kubernetes), and the daemon's
//! `/status` shows the same numbers for the run in flight.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Counters of one run. Cheap to share; every method is a relaxed atomic update.
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    listed: AtomicU64,
    /// `TotalItems` of the listing; 0 until known.
    total: AtomicU64,
    written: AtomicU64,
    in_flight: AtomicU64,
    failed: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            started: Instant::now(),
            listed: AtomicU64::new(0),
            total: AtomicU64::new(0),
            written: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress::default())
    }

    /// `n` more users read from the listing.
    pub fn listed(&self, n: u64) {
        self.listed.fetch_add(n, Ordering::Relaxed);
    }

    /// The listing's `TotalItems`.
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    /// A write went out to nevisIDM.
    pub fn write_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A write came back: confirmed (`ok`) or failed.
    pub fn write_done(&self, ok: bool) {
        // Never below zero, whatever the order of the calls.
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
        if ok {
            self.written.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The numbers now.
    pub fn snapshot(&self) -> Snapshot {
        let elapsed = self.started.elapsed();
        let listed = self.listed.load(Ordering::Relaxed);
        let total = Some(self.total.load(Ordering::Relaxed)).filter(|&t| t > 0);
        let rate = if elapsed.as_secs_f64() > 0.0 {
            listed as f64 / elapsed.as_secs_f64()
        } else {
            0.0
        };
        let eta = match total {
            Some(total) if rate > 0.0 && total > listed => {
                Some(Duration::from_secs_f64((total - listed) as f64 / rate))
            }
            Some(_) => Some(Duration::ZERO),
            None => None,
        };
        Snapshot {
            listed,
            total,
            written: self.written.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            elapsed,
            rate,
            eta,
        }
    }
}

/// The numbers of a run at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub listed: u64,
    pub total: Option<u64>,
    pub written: u64,
    pub in_flight: u64,
    pub failed: u64,
    pub elapsed: Duration,
    /// Users listed (and planned) per second since the run began.
    pub rate: f64,
    /// Time left at the current rate, when the total is known.
    pub eta: Option<Duration>,
}

impl Snapshot {
    /// The document `/status` shows for the run in flight.
    pub fn to_json(&self) -> Value {
        json!({
            "listed": self.listed,
            "total_items": self.total,
            "writes_done": self.written,
            "writes_in_flight": self.in_flight,
            "failures": self.failed,
            "elapsed_seconds": self.elapsed.as_secs(),
            "users_per_second": (self.rate * 10.0).round() / 10.0,
            "eta_seconds": self.eta.map(|d| d.as_secs()),
        })
    }

    /// One line: `listed 1200/100000 users, writes 1150 done 8 in flight, 2 failed, 95.1 users/s, ETA 17m 20s`.
    pub fn line(&self) -> String {
        let total = self.total.map_or_else(|| "?".into(), |t| t.to_string());
        let eta = self.eta.map_or_else(
            || "unknown".into(),
            |d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string(),
        );
        format!(
            "listed {}/{total} users, writes {} done {} in flight, {} failed, {:.1} users/s, ETA {eta}",
            self.listed, self.written, self.in_flight, self.failed, self.rate
        )
    }
}

/// How a run's progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// A live line on the terminal (stderr), replaced by the summary at the end.
    Terminal,
    /// A log line (INFO, with the numbers as fields) every `interval`.
    Log { interval: Duration },
}

/// Shows `progress` until `stop` is cancelled. Nothing goes to stdout: `--dry-run` prints its
/// plan there.
pub async fn report(progress: Arc<Progress>, display: Display, stop: CancellationToken) {
    match display {
        Display::Terminal => terminal(progress, stop).await,
        Display::Log { interval } => log_lines(progress, interval, stop).await,
    }
}

/// The live line on the terminal, while one is drawn: log lines are written above it.
static LIVE_LINE: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);

fn set_live_line(bar: Option<indicatif::ProgressBar>) {
    *LIVE_LINE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = bar;
}

/// A log writer for stderr that clears the live progress line while a log line is written and
/// draws it again below (as cargo does), so the two never mix. Buffers one log event and writes it
/// at once when dropped.
#[derive(Default)]
pub struct StderrAboveProgress(Vec<u8>);

impl Write for StderrAboveProgress {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.0);
        let bar = LIVE_LINE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let write = || std::io::stderr().lock().write_all(&bytes);
        match bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}

impl Drop for StderrAboveProgress {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

async fn terminal(progress: Arc<Progress>, stop: CancellationToken) {
    let bar = indicatif::ProgressBar::with_draw_target(
        None,
        indicatif::ProgressDrawTarget::stderr_with_hz(4),
    );
    let style = indicatif::ProgressStyle::with_template("{spinner} {wide_msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    bar.set_style(style);
    set_live_line(Some(bar.clone()));
    loop {
        let now = progress.snapshot();
        if let Some(total) = now.total {
            bar.set_length(total);
        }
        bar.set_position(now.listed);
        bar.set_message(now.line());
        bar.tick();
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    set_live_line(None);
    bar.finish_and_clear();
}

async fn log_lines(progress: Arc<Progress>, interval: Duration, stop: CancellationToken) {
    let interval = interval.max(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
        let now = progress.snapshot();
        tracing::info!(
            listed = now.listed,
            total_items = now.total,
            writes_done = now.written,
            writes_in_flight = now.in_flight,
            failures = now.failed,
            users_per_second = (now.rate * 10.0).round() / 10.0,
            eta_seconds = now.eta.map(|d| d.as_secs()),
            "progress: {}",
            now.line()
        );
    }
}

/// Starts showing `progress` in the background; the returned guard stops it when dropped.
pub fn spawn(progress: Arc<Progress>, display: Display) -> Guard {
    let stop = CancellationToken::new();
    let task = tokio::spawn(report(progress, display, stop.clone()));
    Guard {
        stop,
        task: Some(task),
    }
}

/// Stops the reporter (and clears the terminal line) when dropped or [`Guard::finish`]ed.
pub struct Guard {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Guard {
    /// Stops the reporter and waits until its line is cleared, so the summary prints cleanly.
    pub async fn finish(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_writes_in_flight_and_estimates_the_time_left() {
        let p = Progress::default();
        assert_eq!(p.snapshot().eta, None, "no total yet");
        p.set_total(100);
        p.listed(25);
        p.write_started();
        p.write_started();
        p.write_done(true);
        p.write_started();
        p.write_done(false);
        let s = p.snapshot();
        assert_eq!(
            (s.listed, s.total, s.written, s.in_flight, s.failed),
            (25, Some(100), 1, 1, 1)
        );
        assert!(s.eta.is_some());
        let line = s.line();
        assert!(
            line.starts_with("listed 25/100 users, writes 1 done 1 in flight, 1 failed"),
            "{line}"
        );
        let doc = s.to_json();
        assert_eq!(doc["total_items"], 100);
        assert_eq!(doc["writes_in_flight"], 1);
        // An extra completion never takes in-flight below zero.
        p.write_done(true);
        p.write_done(true);
        assert_eq!(p.snapshot().in_flight, 0);
        p.listed(75);
        assert_eq!(p.snapshot().eta, Some(Duration::ZERO), "all listed");
    }
}
