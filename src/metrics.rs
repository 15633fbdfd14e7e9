//! Prometheus metrics (via `prometheus-client`), shared by the clients, the pipeline and the
//! daemon's `/metrics` endpoint. A one-shot run records into a registry nobody scrapes, which
//! keeps the code paths identical.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::report::RunReport;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FieldLabel {
    pub field: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabel {
    pub api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WindowLabel {
    pub window: &'static str,
}

/// A route of the daemon's HTTP port, as routed (`/status`), never the raw request path: what a
/// client sends cannot add series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    pub path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabel {
    pub api: &'static str,
    pub status: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    runs: Family<OutcomeLabel, Counter>,
    skipped_ticks: Counter,
    users: Family<OutcomeLabel, Counter>,
    invalid_records: Counter,
    held_disables: Counter,
    roles_granted: Counter,
    roles_revoked: Counter,
    held_revokes: Counter,
    directory_forms: Family<FieldLabel, Counter>,
    retries: Family<RetryLabel, Counter>,
    throttles: Family<RetryLabel, Counter>,
    quota_waits: Family<WindowLabel, Counter>,
    http_unauthorized: Family<PathLabel, Counter>,
    request_seconds: HistogramFamily<ApiLabel>,
    last_success: Gauge<f64, AtomicU64>,
    run_seconds: Histogram,
    store_bytes: Gauge,
    audit_entries: Gauge,
    audit_pruned_within_retention: Counter,
    failing_users: Gauge,
    oldest_failure: Gauge,
    ready: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn request_histogram() -> Histogram {
    // 5 ms .. ~40 s
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            runs: Family::default(),
            skipped_ticks: Counter::default(),
            users: Family::default(),
            invalid_records: Counter::default(),
            held_disables: Counter::default(),
            roles_granted: Counter::default(),
            roles_revoked: Counter::default(),
            held_revokes: Counter::default(),
            directory_forms: Family::default(),
            retries: Family::default(),
            throttles: Family::default(),
            quota_waits: Family::default(),
            http_unauthorized: Family::default(),
            request_seconds: Family::new_with_constructor(request_histogram),
            last_success: Gauge::default(),
            run_seconds: Histogram::new(exponential_buckets(0.1, 2.0, 14)),
            store_bytes: Gauge::default(),
            audit_entries: Gauge::default(),
            audit_pruned_within_retention: Counter::default(),
            failing_users: Gauge::default(),
            oldest_failure: Gauge::default(),
            ready: Gauge::default(),
            registry: Registry::with_prefix("nexudus_nevis_sync"),
        };
        m.register_all();
        m.create_watched_series();
        m
    }

    /// Every metric under its name and help text (after the `nexudus_nevis_sync` prefix).
    fn register_all(&mut self) {
        self.registry.register(
            "runs",
            "Sync runs by outcome (in_sync, problems, fatal, interrupted)",
            self.runs.clone(),
        );
        self.registry.register(
            "skipped_ticks",
            "Schedule ticks that found a run in progress (one run follows it as soon as it ends)",
            self.skipped_ticks.clone(),
        );
        self.registry.register(
            "users",
            "Users by the one outcome of their run (created, updated, disabled, archived, unchanged, out_of_scope, failed, invalid, held, adopted, conflict)",
            self.users.clone(),
        );
        self.registry.register(
            "invalid_records",
            "Nexudus records skipped as invalid",
            self.invalid_records.clone(),
        );
        self.registry.register(
            "held_disables",
            "Disables held back by the deletion safety",
            self.held_disables.clone(),
        );
        self.registry.register(
            "roles_granted",
            "Owned nevisIDM roles granted ([[roles.map]])",
            self.roles_granted.clone(),
        );
        self.registry.register(
            "roles_revoked",
            "Owned nevisIDM roles revoked ([[roles.map]])",
            self.roles_revoked.clone(),
        );
        self.registry.register(
            "held_revokes",
            "Role revocations held back by the revocation safety",
            self.held_revokes.clone(),
        );
        self.registry.register(
            "directory_forms",
            "Values nevisIDM keeps in its own form, learned (one per user and field): not written again",
            self.directory_forms.clone(),
        );
        self.registry.register(
            "retries",
            "Retried requests by API and status",
            self.retries.clone(),
        );
        self.registry.register(
            "throttles",
            "Throttled answers (409, 429) by API and status",
            self.throttles.clone(),
        );
        self.registry.register(
            "quota_waits",
            "Waits for the Nexudus request budget of the hour or the day (nexudus.max_requests_per_*), by window",
            self.quota_waits.clone(),
        );
        self.registry.register(
            "http_unauthorized",
            "Requests to the daemon's protected endpoints (http.auth_token_file) refused with 401 for a missing or wrong bearer token, by path",
            self.http_unauthorized.clone(),
        );
        self.registry.register(
            "request_duration_seconds",
            "HTTP request latency by API",
            self.request_seconds.clone(),
        );
        self.registry.register(
            "last_success_timestamp_seconds",
            "Unix time of the last run that completed without a fatal error",
            self.last_success.clone(),
        );
        self.registry.register(
            "run_duration_seconds",
            "Duration of sync runs",
            self.run_seconds.clone(),
        );
        self.registry.register(
            "store_size_bytes",
            "Size of the checkpoint store on disk",
            self.store_bytes.clone(),
        );
        self.registry.register(
            "audit_entries",
            "Entries the provisioning log holds (within audit.retention and audit.max_entries)",
            self.audit_entries.clone(),
        );
        self.registry.register(
            "audit_pruned_within_retention",
            "Provisioning-log entries audit.max_entries pruned while still inside audit.retention \
             (raise audit.max_entries)",
            self.audit_pruned_within_retention.clone(),
        );
        self.registry.register(
            "failing_users",
            "Users whose last attempt failed or was invalid",
            self.failing_users.clone(),
        );
        self.registry.register(
            "oldest_failure_timestamp_seconds",
            "Unix time the longest-failing user began failing (0 when no user is failing)",
            self.oldest_failure.clone(),
        );
        self.registry.register(
            "ready",
            "1 when /readyz answers ready (a recent run completed without an API unavailable), else 0",
            self.ready.clone(),
        );
    }

    fn create_watched_series(&self) {
        // Series the alert rules watch with increase() exist from the start at 0: a series
        // first seen at 1 would hide its first increment from increase().
        for outcome in ["in_sync", "problems", "fatal", "interrupted"] {
            let _ = self.runs.get_or_create(&OutcomeLabel { outcome });
        }
        for status in ["409", "429"] {
            let _ = self.throttles.get_or_create(&RetryLabel {
                api: "nexudus",
                status: status.into(),
            });
        }
        for window in ["hour", "day"] {
            let _ = self.quota_waits.get_or_create(&WindowLabel { window });
        }
        // The routes behind the bearer token: a first refusal shows as an increase too.
        for path in ["/status", "/history"] {
            let _ = self
                .http_unauthorized
                .get_or_create(&PathLabel { path: path.into() });
        }
    }

    pub fn observe_request(&self, api: &'static str, elapsed: Duration) {
        self.request_seconds
            .get_or_create(&ApiLabel { api })
            .observe(elapsed.as_secs_f64());
    }

    pub fn count_retry(&self, api: &'static str, status: String) {
        self.retries
            .get_or_create(&RetryLabel { api, status })
            .inc();
    }

    /// One throttled answer (409 or 429), whether or not it is retried.
    pub fn count_throttle(&self, api: &'static str, status: u16) {
        self.throttles
            .get_or_create(&RetryLabel {
                api,
                status: status.to_string(),
            })
            .inc();
    }

    /// A request had to wait for the Nexudus budget of `window` (`hour`, `day`).
    pub fn count_quota_wait(&self, window: &'static str) {
        self.quota_waits
            .get_or_create(&WindowLabel { window })
            .inc();
    }

    /// A request to the protected route `path` refused for its bearer token (401).
    pub fn count_unauthorized(&self, path: &str) {
        self.http_unauthorized
            .get_or_create(&PathLabel { path: path.into() })
            .inc();
    }

    pub fn count_skipped_tick(&self) {
        self.skipped_ticks.inc();
    }

    /// Records a finished run.
    pub fn record_run(&self, report: &RunReport) {
        let outcome = if report.interrupted {
            "interrupted"
        } else if report.exit_code() == 0 {
            "in_sync"
        } else {
            "problems"
        };
        self.runs.get_or_create(&OutcomeLabel { outcome }).inc();
        // Every user's one outcome, from the report: the sum over outcomes is the users the run
        // accounted for.
        let c = report.counts();
        for (outcome, n) in [
            ("created", c.created),
            ("updated", c.updated),
            ("disabled", c.disabled),
            ("archived", c.archived),
            ("unchanged", c.unchanged),
            ("out_of_scope", c.out_of_scope),
            ("failed", c.failed),
            ("invalid", c.invalid),
            ("held", c.held_disables),
            ("adopted", c.adopted),
            ("conflict", c.conflicts),
        ] {
            self.users
                .get_or_create(&OutcomeLabel { outcome })
                .inc_by(n);
        }
        self.invalid_records.inc_by(c.invalid);
        self.held_disables.inc_by(c.held_disables);
        self.roles_granted.inc_by(c.granted);
        self.roles_revoked.inc_by(c.revoked);
        self.held_revokes.inc_by(c.held_revokes);
        for form in report.learned_forms() {
            let field = form.field;
            self.directory_forms
                .get_or_create(&FieldLabel { field })
                .inc();
        }
        self.run_seconds.observe(report.duration.as_secs_f64());
        if report.healthy() {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            self.last_success.set(now.as_secs_f64());
        }
    }

    pub fn record_fatal(&self, duration: Duration) {
        self.runs
            .get_or_create(&OutcomeLabel { outcome: "fatal" })
            .inc();
        self.run_seconds.observe(duration.as_secs_f64());
    }

    /// What the store says after a run: its size, the failing users and since when the
    /// longest-failing one fails (Unix seconds, `None` when none is failing).
    pub fn set_store(&self, bytes: u64, failing_users: usize, oldest_failure: Option<u64>) {
        self.store_bytes.set(bytes as i64);
        self.failing_users.set(failing_users as i64);
        self.oldest_failure
            .set(oldest_failure.map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX)));
    }

    /// Entries the provisioning log holds after a run.
    pub fn set_audit_entries(&self, entries: u64) {
        self.audit_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// The store's count of entries the size bound pruned inside the retention, ever: the
    /// counter follows it (a count that went back, a store rebuilt, adds nothing).
    pub fn set_audit_pruned_within_retention(&self, total: u64) {
        let counted = self.audit_pruned_within_retention.get();
        self.audit_pruned_within_retention
            .inc_by(total.saturating_sub(counted));
    }

    /// Readiness as `/readyz` judges it, refreshed on every scrape.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The OpenMetrics text exposition (which Prometheus scrapes natively).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing metrics into a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_after_a_run() {
        let m = Metrics::new();
        let mut report = RunReport {
            listing_complete: true,
            ..RunReport::default()
        };
        for id in 1..=3 {
            report.record(id, crate::report::Outcome::Created);
        }
        m.record_run(&report);
        m.count_retry("nexudus", "409".into());
        m.count_throttle("nexudus", 429);
        m.observe_request("nevis", Duration::from_millis(12));
        m.count_unauthorized("/status");
        let text = m.encode();
        assert!(
            text.contains("nexudus_nevis_sync_users_total{outcome=\"created\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("nexudus_nevis_sync_runs_total{outcome=\"in_sync\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("nexudus_nevis_sync_retries_total{api=\"nexudus\",status=\"409\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("nexudus_nevis_sync_throttles_total{api=\"nexudus\",status=\"429\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("nexudus_nevis_sync_request_duration_seconds_count{api=\"nevis\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("nexudus_nevis_sync_http_unauthorized_total{path=\"/status\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("nexudus_nevis_sync_http_unauthorized_total{path=\"/history\"} 0"),
            "{text}"
        );
    }
}
