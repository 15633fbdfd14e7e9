//! The daemon's HTTP endpoints (axum): `/healthz`, `/readyz`, `/metrics`, `/status`, `/history`.
//!
//! `/status` and `/history` carry personal data (names, emails, nevisIDM's messages quoting them): with
//! `http.auth_token_file` set it answers only `Authorization: Bearer <token>`, compared in constant
//! time; a missing or wrong token gets 401 and counts in `http_unauthorized_total{path}`. The
//! probes and `/metrics` stay open (kubelets and scrapers carry no token), so they must never
//! serve personal data.
//!
//! Readiness means "the sync works": a run completed without a fatal error and without either API
//! being unavailable, recently enough (`http.ready_max_age`, default 3 × the schedule interval, at least 10 minutes).
//! Users refused by nevisIDM (422) do not make the daemon unready; they show in `/status`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use subtle::ConstantTimeEq;
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
    /// `http.auth_token_file`'s token: the [`protected`] routes want it as a bearer token. `None`:
    /// they are open, as every route was before the key existed.
    pub auth_token: Option<SecretString>,
}

impl AppState {
    pub fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The open routes (probes and the scrape) and the [`protected`] ones.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(protected(&state))
        .with_state(state)
}

/// The routes that serve personal data, behind the bearer token when one is configured.
///
/// A new endpoint with personal data joins HERE, as one more `.route(…)` before the
/// `route_layer` (for instance `.route("/history", get(history))`): `route_layer` guards exactly
/// the routes added before it, and leaves an unknown path a 404 rather than a 401.
fn protected(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/status", get(status))
        .route("/history", get(history))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(state),
            require_bearer,
        ))
}

/// Passes the request on when no token is configured or it carries the right one; otherwise
/// answers 401 and counts it under the route's path.
async fn require_bearer(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &state.auth_token else {
        return next.run(request).await;
    };
    let presented = request.headers().get(header::AUTHORIZATION);
    let Err(refusal) = check_bearer(presented, expected) else {
        return next.run(request).await;
    };
    // The route as routed (`route_layer` runs on matched routes only), never the raw path.
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| request.uri().path(), MatchedPath::as_str);
    state.metrics.count_unauthorized(path);
    tracing::debug!(path, ?refusal, "refused a request to a protected endpoint");
    unauthorized(refusal)
}

/// Why a request to a protected route was refused (RFC 6750 answers the two differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No `Authorization` header, or one of another scheme (`Basic …`).
    Missing,
    /// A bearer token that is not the configured one.
    Wrong,
}

/// Whether `authorization` (the header's value) is `Bearer <expected>`; the scheme's case does
/// not matter (RFC 7235). The tokens are compared with `subtle`'s constant-time equality, so how
/// long a refusal takes says nothing about how much of a guess was right; only a difference in
/// length shows, which tells nothing about the token's characters.
fn check_bearer(
    authorization: Option<&HeaderValue>,
    expected: &SecretString,
) -> Result<(), Refusal> {
    let value = authorization.ok_or(Refusal::Missing)?.as_bytes();
    let (scheme, token) = value
        .iter()
        .position(|&b| b == b' ')
        .map_or((value, &[][..]), |at| value.split_at(at));
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(Refusal::Missing);
    }
    let token = token.trim_ascii_start();
    if bool::from(token.ct_eq(expected.expose_secret().as_bytes())) {
        Ok(())
    } else {
        Err(Refusal::Wrong)
    }
}

/// 401 with the `WWW-Authenticate: Bearer` challenge and a short JSON body.
fn unauthorized(refusal: Refusal) -> Response {
    let (challenge, error) = match refusal {
        Refusal::Missing => (
            r#"Bearer realm="nexudus-nevis-sync""#,
            "a bearer token is required",
        ),
        Refusal::Wrong => (
            r#"Bearer realm="nexudus-nevis-sync", error="invalid_token""#,
            "the bearer token was refused",
        ),
    };
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, challenge)],
        axum::Json(json!({ "error": error })),
    )
        .into_response()
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

/// `/history?who=&since=&op=&outcome=&limit=&before=`: a page of the provisioning log's
/// entries, newest first, as JSON lines (what `--history --json` prints), the last line naming
/// the next page when there is one. `since` is Unix seconds, a duration back from now (`24h`)
/// or an RFC 3339 time. The page is read on the blocking pool, not on the async workers that
/// serve the probes.
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
    let store = state.store.clone();
    let page = tokio::task::spawn_blocking(move || query.run(&store))
        .await
        .map_err(|e| e.to_string())
        .and_then(|read| read.map_err(|e| e.to_string()));
    match page {
        Ok(page) => (
            [(header::CONTENT_TYPE, "application/x-ndjson; charset=utf-8")],
            crate::audit::query::json_lines(&page),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({ "error": e })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Outcome;

    #[test]
    fn only_the_configured_bearer_token_passes() {
        let expected = SecretString::from("s3cret-token");
        let check =
            |value: &str| check_bearer(Some(&HeaderValue::from_str(value).unwrap()), &expected);
        assert_eq!(check("Bearer s3cret-token"), Ok(()));
        assert_eq!(
            check("bearer s3cret-token"),
            Ok(()),
            "the scheme has no case"
        );
        assert_eq!(
            check("BEARER   s3cret-token"),
            Ok(()),
            "1*SP before the token"
        );
        assert_eq!(check_bearer(None, &expected), Err(Refusal::Missing));
        for other_scheme in [
            "Basic czNjcmV0LXRva2Vu",
            "s3cret-token",
            "Bearers3cret-token",
            "",
        ] {
            assert_eq!(
                check(other_scheme),
                Err(Refusal::Missing),
                "{other_scheme:?}"
            );
        }
        for wrong in [
            "Bearer",
            "Bearer ",
            "Bearer s3cret-toke",
            "Bearer s3cret-token2",
            "Bearer S3CRET-TOKEN",
            "Bearer s3cret-token ",
            "Bearer x3cret-token",
        ] {
            assert_eq!(check(wrong), Err(Refusal::Wrong), "{wrong:?}");
        }
        let not_utf8 = HeaderValue::from_bytes(b"Bearer s3cret-\xfftoken").unwrap();
        assert_eq!(
            check_bearer(Some(&not_utf8), &expected),
            Err(Refusal::Wrong)
        );
    }

    #[test]
    fn a_refusal_says_bearer_and_whether_a_token_came() {
        for (refusal, invalid_token) in [(Refusal::Missing, false), (Refusal::Wrong, true)] {
            let answer = unauthorized(refusal);
            assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
            let challenge = answer.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
            assert!(challenge.starts_with("Bearer "), "{challenge}");
            assert_eq!(
                challenge.contains("invalid_token"),
                invalid_token,
                "{challenge}"
            );
        }
    }

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
