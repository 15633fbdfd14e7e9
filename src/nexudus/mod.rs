//! The source: Nexudus users, listed page by page through `GET /api/sys/users`.
//!
//! The client paces itself below Nexudus's documented limits (one request per 100 ms, 120 a
//! minute) so that a full listing draws no throttling, classifies every answer once (Nexudus
//! throttles with 409 + `Retry-After`), and leaves the retry timing to [`crate::retry`].

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
use crate::config::{NexudusConfig, RetryConfig};
use crate::metrics::Metrics;
use crate::retry::{Classify, RetryPolicy, Verdict};
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
}

impl SourceError {
    /// Authentication refusals end the run at once.
    pub fn is_auth(&self) -> bool {
        matches!(self, SourceError::Auth { .. })
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
            SourceError::Auth { .. } | SourceError::Unexpected { .. } | SourceError::Decode(_) => {
                Verdict::Final
            }
        }
    }

    fn label(&self) -> String {
        match self {
            SourceError::Auth { status }
            | SourceError::Throttled { status, .. }
            | SourceError::Server { status, .. }
            | SourceError::Unexpected { status, .. } => status.to_string(),
            SourceError::Transport(_) => "transport".into(),
            SourceError::Decode(_) => "decode".into(),
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

/// The Nexudus HTTP client (Basic auth on every request).
pub struct NexudusClient {
    http: reqwest::Client,
    users_url: Url,
    username: String,
    password: SecretString,
    page_size: u32,
    retry: RetryPolicy,
    pacer: Pacer,
    metrics: Arc<Metrics>,
}

impl NexudusClient {
    pub fn new(
        cfg: &NexudusConfig,
        retry: RetryConfig,
        metrics: Arc<Metrics>,
    ) -> Result<NexudusClient, SourceError> {
        let http = client::build(cfg.request_timeout)
            .map_err(|e| SourceError::Transport(format!("cannot build HTTP client: {e}")))?;
        let users_url = join(&cfg.base_url, "api/sys/users");
        Ok(NexudusClient {
            http,
            users_url,
            username: cfg.username.clone(),
            password: cfg.password.clone(),
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
        self.pacer.wait().await;
        let started = Instant::now();
        let mut query = vec![
            ("page", page.to_string()),
            ("size", self.page_size.to_string()),
            ("orderBy", "Id".to_string()),
        ];
        if let Some(since) = updated_since {
            query.push(("from_User_UpdatedOn", since.to_string()));
        }
        let response = self
            .http
            .get(self.users_url.clone())
            .basic_auth(&self.username, Some(self.password.expose_secret()))
            .query(&query)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        if !status.is_success() {
            return Err(classify(status, retry_after, response).await);
        }
        let body = response.bytes().await.map_err(transport)?;
        self.metrics.observe_request("nexudus", started.elapsed());
        wire::decode_page(&body).map_err(SourceError::Decode)
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
}
