//! The source: Nexudus users, listed page by page through `GET /api/sys/users`.
//!
//! The client paces itself below Nexudus's documented limits (one request per 100 ms, 120 a
//! minute) so that a full listing draws no throttling, classifies every answer once (Nexudus
//! throttles with 409 + `Retry-After`), and leaves the retry timing to [`crate::retry`].

pub mod auth;
pub mod wire;

use std::future::Future;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use std::sync::Arc;
use std::time::Instant;

use crate::client::{self, describe, join, retry_after};
use crate::config::{NexudusAuth, NexudusConfig, RetryConfig};
use crate::metrics::Metrics;
use crate::retry::{Classify, RetryPolicy, Verdict};
use crate::store::Store;
use auth::{Grant, GrantError, TokenAuth};
pub use wire::{InvalidRecord, SourcePage};

/// Anything that can list Nexudus users page by page (the HTTP client, or a fake in unit tests).
pub trait Source: Send + Sync + 'static {
    /// Fetches page `page` (from 1), with retries already applied. With `updated_since`
    /// (`YYYY-MM-DDTHH:mm`, inclusive), only users changed since then are listed.
    fn fetch_page(
        &self,
        page: u32,
        updated_since: Option<&str>,
    ) -> impl Future<Output = Result<SourcePage, SourceError>> + Send;

    /// Whether Nexudus still has user `id` (`GET /api/sys/users/{id}`), with retries. Asked
    /// before a user missing from a listing is disabled: offset paging can skip a user when
    /// others are deleted and added while the pages are read, and nothing in the listing shows it.
    fn fetch_user(&self, id: u64) -> impl Future<Output = Result<Presence, SourceError>> + Send;
}

/// What a single-user read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// 404: the user is gone.
    Gone,
    Active,
    Inactive,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    #[error(
        "Nexudus refused the credentials (HTTP {status}); check nexudus.username/password and API access"
    )]
    Auth { status: u16 },
    #[error("Nexudus throttled the request (HTTP {status})")]
    Throttled {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("Nexudus answered HTTP {status}")]
    Server {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("Nexudus request failed: {0}")]
    Transport(String),
    #[error("Nexudus answered HTTP {status} unexpectedly: {detail}")]
    Unexpected { status: u16, detail: String },
    #[error("Nexudus listing could not be decoded: {0}")]
    Decode(String),
    /// The password grant was refused; `hint` says what to fix (a fresh `nexudus.totp`, …).
    #[error("Nexudus refused the sign-in at /api/token (HTTP {status} {error}); {hint}")]
    SignIn {
        status: u16,
        error: String,
        hint: String,
    },
    #[error("cannot keep the Nexudus refresh token in the store: {0}")]
    TokenStore(String),
}

impl SourceError {
    /// Authentication refusals end the run at once.
    pub fn is_auth(&self) -> bool {
        matches!(self, SourceError::Auth { .. } | SourceError::SignIn { .. })
    }
}

impl Classify for SourceError {
    fn verdict(&self) -> Verdict {
        match self {
            SourceError::Throttled { retry_after, .. }
            | SourceError::Server { retry_after, .. } => Verdict::Retry {
                after: *retry_after,
            },
            SourceError::Transport(_) => Verdict::Retry { after: None },
            SourceError::Auth { .. }
            | SourceError::Unexpected { .. }
            | SourceError::Decode(_)
            | SourceError::SignIn { .. }
            | SourceError::TokenStore(_) => Verdict::Final,
        }
    }

    fn label(&self) -> String {
        match self {
            SourceError::Auth { status }
            | SourceError::SignIn { status, .. }
            | SourceError::Throttled { status, .. }
            | SourceError::Server { status, .. }
            | SourceError::Unexpected { status, .. } => status.to_string(),
            SourceError::Transport(_) => "transport".into(),
            SourceError::Decode(_) => "decode".into(),
            SourceError::TokenStore(_) => "store".into(),
        }
    }
}

/// Paces requests under both of Nexudus's limits: a minimum gap between requests, and a sliding
/// minute budget. The minute limiter allows a burst of half the budget and refills the other half
/// over the minute, so no 60-second window ever sees more than the budget.
struct Pacer {
    gap: Option<DefaultDirectRateLimiter>,
    minute: DefaultDirectRateLimiter,
}

impl Pacer {
    fn new(min_interval: Duration, per_minute: u32) -> Pacer {
        let burst = (per_minute / 2).max(1);
        let refill = per_minute.saturating_sub(burst).max(1);
        let minute = Quota::with_period(Duration::from_secs(60) / refill)
            .expect("refill period is non-zero")
            .allow_burst(NonZeroU32::new(burst).expect("burst is at least one"));
        Pacer {
            gap: Quota::with_period(min_interval).map(RateLimiter::direct),
            minute: RateLimiter::direct(minute),
        }
    }

    async fn wait(&self) {
        if let Some(gap) = &self.gap {
            gap.until_ready().await;
        }
        self.minute.until_ready().await;
    }
}

/// How requests are authenticated (`nexudus.auth`).
enum Auth {
    Basic {
        username: String,
        password: SecretString,
    },
    Token(Box<TokenAuth>),
}

/// The Nexudus HTTP client.
pub struct NexudusClient {
    http: reqwest::Client,
    users_url: Url,
    token_url: Url,
    auth: Auth,
    page_size: u32,
    retry: RetryPolicy,
    pacer: Pacer,
    metrics: Arc<Metrics>,
}

impl NexudusClient {
    /// A client; with `nexudus.auth = "token"`, `store` keeps the rotating refresh token across
    /// restarts (without one, every start signs in with the password).
    pub fn new(
        cfg: &NexudusConfig,
        retry: RetryConfig,
        metrics: Arc<Metrics>,
        store: Option<Store>,
    ) -> Result<NexudusClient, SourceError> {
        let http = client::build(cfg.request_timeout)
            .map_err(|e| SourceError::Transport(format!("cannot build HTTP client: {e}")))?;
        let users_url = join(&cfg.base_url, "api/sys/users");
        let auth = match cfg.auth {
            NexudusAuth::Basic => Auth::Basic {
                username: cfg.username.clone(),
                password: cfg.password.clone(),
            },
            NexudusAuth::Token => Auth::Token(Box::new(TokenAuth::new(
                cfg.username.clone(),
                cfg.password.clone(),
                cfg.totp.clone(),
                cfg.client_id.clone(),
                store,
            ))),
        };
        Ok(NexudusClient {
            http,
            users_url,
            token_url: join(&cfg.base_url, "api/token"),
            auth,
            page_size: cfg.page_size,
            retry: RetryPolicy::new("nexudus", retry, Arc::clone(&metrics)),
            pacer: Pacer::new(cfg.min_request_interval, cfg.max_requests_per_minute),
            metrics,
        })
    }

    async fn fetch_once(
        &self,
        page: u32,
        updated_since: Option<&str>,
    ) -> Result<SourcePage, SourceError> {
        let started = Instant::now();
        let mut query = vec![
            ("page", page.to_string()),
            ("size", self.page_size.to_string()),
            ("orderBy", "Id".to_string()),
        ];
        if let Some(since) = updated_since {
            query.push(("from_User_UpdatedOn", since.to_string()));
        }
        let request = self.http.get(self.users_url.clone()).query(&query);
        let response = self.send(request).await?;
        let body = self.body_of(response, started).await?;
        wire::decode_page(&body).map_err(SourceError::Decode)
    }

    /// The body of a successful answer (timed from `started`); any other status classified.
    async fn body_of(
        &self,
        response: reqwest::Response,
        started: Instant,
    ) -> Result<bytes::Bytes, SourceError> {
        let status = response.status();
        let retry_after = retry_after(response.headers());
        if !status.is_success() {
            return Err(classify(status, retry_after, response).await);
        }
        let body = response.bytes().await.map_err(transport)?;
        self.metrics.observe_request("nexudus", started.elapsed());
        Ok(body)
    }

    /// One `GET /api/sys/users/{id}`: whether Nexudus still has the user.
    async fn fetch_user_once(&self, id: u64) -> Result<Presence, SourceError> {
        let started = Instant::now();
        let mut url = self.users_url.clone();
        url.path_segments_mut()
            .expect("the users URL is a base URL")
            .push(&id.to_string());
        let response = self.send(self.http.get(url)).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(Presence::Gone);
        }
        let body = self.body_of(response, started).await?;
        // Only `Active` matters here; anything unreadable counts as present (never as gone).
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        Ok(
            match doc.get("Active").and_then(serde_json::Value::as_bool) {
                Some(false) => Presence::Inactive,
                _ => Presence::Active,
            },
        )
    }

    /// Sends one paced, authenticated GET; with a bearer token, a 401 renews it and asks again
    /// once. The answer's status is the caller's to judge.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, SourceError> {
        self.pacer.wait().await;
        Ok(match &self.auth {
            Auth::Basic { username, password } => request
                .basic_auth(username, Some(password.expose_secret()))
                .send()
                .await
                .map_err(transport)?,
            Auth::Token(auth) => {
                let token = self.bearer(auth, None).await?;
                let response = request
                    .try_clone()
                    .expect("a GET without a body can be cloned")
                    .bearer_auth(token.expose_secret())
                    .send()
                    .await
                    .map_err(transport)?;
                if response.status() == StatusCode::UNAUTHORIZED {
                    // Expired or revoked before its time: renew once and ask again.
                    tracing::info!("Nexudus answered 401 to the access token; renewing it");
                    let token = self.bearer(auth, Some(&token)).await?;
                    self.pacer.wait().await;
                    request
                        .bearer_auth(token.expose_secret())
                        .send()
                        .await
                        .map_err(transport)?
                } else {
                    response
                }
            }
        })
    }

    /// An access token from `auth`, signing in or refreshing as needed. Token requests have no
    /// retries of their own: they are part of the listing attempt that needs the token, so one
    /// retry budget (the page's) bounds them — a failing token endpoint is asked at most
    /// `retry.max_attempts` times, not that number squared.
    async fn bearer(
        &self,
        auth: &TokenAuth,
        stale: Option<&SecretString>,
    ) -> Result<SecretString, SourceError> {
        auth.bearer(stale, |grant| async move {
            let result = self.grant_once(auth, &grant).await;
            if let Err(e) = &result {
                tracing::debug!(grant = grant.name(), error = %e, "token request failed");
            }
            result
        })
        .await
        .map_err(|e| match e {
            GrantError::SignIn {
                status,
                error,
                hint,
            } => SourceError::SignIn {
                status,
                error,
                hint,
            },
            // A refused refresh grant falls back to the password inside `bearer`; should one
            // escape, it is a refused sign-in all the same.
            GrantError::Refused { status, error } => SourceError::SignIn {
                status,
                error,
                hint: "check nexudus.username, nexudus.password and nexudus.totp".into(),
            },
            GrantError::Transient(e) => e,
            GrantError::Store(e) => SourceError::TokenStore(e),
        })
    }

    /// One `POST /api/token`, form-encoded, with the `client_id` header.
    async fn grant_once(&self, auth: &TokenAuth, grant: &Grant) -> Result<Vec<u8>, GrantError> {
        self.pacer.wait().await;
        let response = self
            .http
            .post(self.token_url.clone())
            .header("client_id", &auth.client_id)
            .form(&auth.form(grant))
            .send()
            .await
            .map_err(|e| GrantError::Transient(transport(e)))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = response
            .bytes()
            .await
            .map_err(|e| GrantError::Transient(transport(e)))?;
        if status.is_success() {
            return Ok(body.to_vec());
        }
        let code = status.as_u16();
        match code {
            400 | 401 | 403 => {
                // `{"error":"invalid_grant","error_description":"…"}`; never the request echoed.
                let doc: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
                let error = doc
                    .as_ref()
                    .and_then(|d| d.get("error"))
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("refused")
                    .chars()
                    .take(100)
                    .collect();
                Err(GrantError::Refused {
                    status: code,
                    error,
                })
            }
            409 | 429 => Err(GrantError::Transient(SourceError::Throttled {
                status: code,
                retry_after,
            })),
            408 | 500..=599 => Err(GrantError::Transient(SourceError::Server {
                status: code,
                retry_after,
            })),
            _ => Err(GrantError::Transient(SourceError::Unexpected {
                status: code,
                detail: format!("token endpoint answered HTTP {code}"),
            })),
        }
    }
}

impl Source for NexudusClient {
    async fn fetch_page(
        &self,
        page: u32,
        updated_since: Option<&str>,
    ) -> Result<SourcePage, SourceError> {
        let what = format!("users page {page}");
        self.retry
            .run(&what, || self.fetch_once(page, updated_since))
            .await
    }

    async fn fetch_user(&self, id: u64) -> Result<Presence, SourceError> {
        let what = format!("user {id}");
        self.retry.run(&what, || self.fetch_user_once(id)).await
    }
}

async fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    response: reqwest::Response,
) -> SourceError {
    let code = status.as_u16();
    match code {
        401 | 403 => SourceError::Auth { status: code },
        // Nexudus documents 409 for throttling; 429 is treated the same in case a proxy sends it.
        409 | 429 => SourceError::Throttled {
            status: code,
            retry_after,
        },
        408 | 500..=599 => SourceError::Server {
            status: code,
            retry_after,
        },
        _ => {
            let body = response.text().await.unwrap_or_default();
            SourceError::Unexpected {
                status: code,
                detail: body.chars().take(200).collect(),
            }
        }
    }
}

fn transport(e: reqwest::Error) -> SourceError {
    SourceError::Transport(describe(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_server_errors_retry_auth_does_not() {
        let t = SourceError::Throttled {
            status: 409,
            retry_after: Some(Duration::from_secs(2)),
        };
        assert_eq!(
            t.verdict(),
            Verdict::Retry {
                after: Some(Duration::from_secs(2))
            }
        );
        assert_eq!(SourceError::Auth { status: 401 }.verdict(), Verdict::Final);
        assert_eq!(
            SourceError::Transport("reset".into()).verdict(),
            Verdict::Retry { after: None }
        );
    }

    #[test]
    fn a_refresh_token_the_store_cannot_keep_is_a_store_failure() {
        // main adds the store.path hint to the fatal message of store failures.
        let e = crate::sync::SyncError::Source(SourceError::TokenStore("read-only".into()));
        assert!(e.is_store());
        assert!(!crate::sync::SyncError::Source(SourceError::Auth { status: 401 }).is_store());
    }
}
