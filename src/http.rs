//! The daemon's HTTP endpoints (axum): `/healthz`, `/readyz`, `/metrics`, `/status`, `/history`.
//!
//! Readiness means "the sync works": a run completed without a fatal error and without either API
//! being unavailable, recently enough (`http.ready_max_age`, default 3 × the schedule interval, at least 10 minutes).
//! Users refused by nevisIDM (422) do not make the daemon unready; they show in `/status`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::report::RunReport;
use crate::store::Store;

/// What the daemon knows about its runs, shared with the endpoints.
#[derive(Debug, Default)]
pub struct Health {
    pub running: bool,
    pub last_success: Option<SystemTime>,
    /// Why the most recent finished run does not count as a success, if it does not.
    pub last_problem: Option<String>,
    /// The counters of the run in flight, shown by `/status`.
    pub progress: Option<Arc<Progress>>,
}

impl Health {
    /// Records a completed run (interrupted runs say nothing about health and are ignored).
    pub fn record(&mut self, report: &RunReport) {
        if report.interrupted {
            return;
        }
        if report.healthy() {
            self.last_success = Some(SystemTime::now());
            self.last_problem = None;
        } else {
            self.last_problem = Some(format!(
                "last run could not reach an API for {} user(s)",
                report.counts().unavailable
            ));
        }
    }

    pub fn record_fatal(&mut self, error: &str) {
        self.last_problem = Some(format!("last run failed: {error}"));
    }

    /// `Ok` with the age of the last success, or the reason for not being ready.
    pub fn readiness(&self, max_age: Duration) -> Result<Duration, String> {
        let Some(at) = self.last_success else {
            return Err(self
                .last_problem
                .clone()
                .unwrap_or_else(|| "no successful run yet".into()));
        };
        if let Some(problem) = &self.last_problem {
            return Err(problem.clone());
        }
        let age = at.elapsed().unwrap_or_default();
        if age > max_age {
            return Err(format!(
                "last successful run is {}s old (http.ready_max_age is {}s)",
                age.as_secs(),
                max_age.as_secs()
            ));
        }
        Ok(age)
    }
}

pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub health: Mutex<Health>,
    pub store: Store,
    pub ready_max_age: Duration,
    /// `mapping.ext_id_prefix`, for naming failing users never created.
    pub ext_id_prefix: String,
}

impl AppState {
    pub fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/history", get(history))
        .with_state(state)
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.health().readiness(state.ready_max_age) {
        Ok(age) => (
            StatusCode::OK,
            axum::Json(json!({ "ready": true, "last_success_age_seconds": age.as_secs() })),
        )
            .into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "ready": false, "reason": reason })),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let ready = state.health().readiness(state.ready_max_age).is_ok();
    state.metrics.set_ready(ready);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn status(State(state): State<Arc<AppState>>) -> Response {
    let live = {
        let h = state.health();
        json!({
            "running": h.running,
            "last_success": h.last_success.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()),
            "ready": h.readiness(state.ready_max_age).is_ok(),
            "run_in_flight": h.progress.as_ref().map(|p| p.snapshot().to_json()),
        })
    };
    match crate::status::document(&state.store, &state.ext_id_prefix, Some(live)) {
        Ok(doc) => axum::Json(doc).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

/// `/history?who=&since=&op=&outcome=&limit=`: the provisioning log's entries, newest first,
/// as JSON lines (what `--history --json` prints). `since` is Unix seconds, a duration back from
/// now (`24h`) or an RFC 3339 time.
async fn history(
    State(state): State<Arc<AppState>>,
    axum::extract::Query(params): axum::extract::Query<std::collections::BTreeMap<String, String>>,
) -> Response {
    let query = match crate::audit::query::Query::from_params(&params, state.store.clock().now()) {
        Ok(q) => q,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": e }))).into_response();
        }
    };
    match query.run(&state.store) {
        Ok(entries) => (
            [(header::CONTENT_TYPE, "application/x-ndjson; charset=utf-8")],
            crate::audit::query::json_lines(&entries),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Outcome;

    #[test]
    fn readiness_follows_the_last_runs() {
        let mut h = Health::default();
        let max = Duration::from_secs(60);
        assert!(
            h.readiness(max).is_err(),
            "not ready before the first success"
        );
        h.record(&RunReport {
            listing_complete: true,
            ..RunReport::default()
        });
        assert!(h.readiness(max).is_ok());
        h.record_fatal("nevisIDM unavailable");
        assert!(
            h.readiness(max)
                .unwrap_err()
                .contains("nevisIDM unavailable")
        );
        h.record(&RunReport {
            interrupted: true,
            ..RunReport::default()
        });
        assert!(
            h.readiness(max).is_err(),
            "an interrupted run proves nothing"
        );
        let mut refused = RunReport::default();
        for id in [1, 2] {
            refused.record(id, Outcome::failed("x", "refused", false));
        }
        h.record(&refused);
        assert!(
            h.readiness(max).is_ok(),
            "refused users do not make the daemon unready"
        );
        let mut unreachable = RunReport::default();
        unreachable.record(1, Outcome::failed("x", "down", true));
        h.record(&unreachable);
        assert!(h.readiness(max).is_err());
        h.record(&RunReport::default());
        assert!(h.readiness(Duration::ZERO).is_err(), "too old");
    }
}
