//! When to retry: exponential backoff with jitter (from `backon`), honouring `Retry-After`, capped
//! in attempts and in total time. This is the only module that imports the retry crate.
//!
//! *Whether* an error is worth retrying is decided by the clients, which classify each answer once
//! and express it through [`Classify`].

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;

use std::sync::Arc;

use crate::config::RetryConfig;
use crate::metrics::Metrics;

/// How a failed attempt should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Do not retry (validation error, authentication refused, …).
    Final,
    /// Retry; the server may have said how long to wait.
    Retry { after: Option<Duration> },
}

/// Implemented by client errors so the policy can ask whether to try again.
pub trait Classify {
    fn verdict(&self) -> Verdict;
    /// Short label for logs and metrics, such as `"409"` or `"timeout"`.
    fn label(&self) -> String;
}

/// The retry policy of one API client.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    config: RetryConfig,
    api: &'static str,
    metrics: Arc<Metrics>,
}

impl RetryPolicy {
    pub fn new(api: &'static str, config: RetryConfig, metrics: Arc<Metrics>) -> Self {
        RetryPolicy {
            config,
            api,
            metrics,
        }
    }

    /// Runs `op` until it succeeds, fails finally, or the attempt/time budget is spent. The last
    /// error is returned as is, so callers see what really happened.
    pub async fn run<T, E, F, Fut>(&self, what: &str, mut op: F) -> Result<T, E>
    where
        E: Classify + Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        // The time budget counts from the first failure: time spent before it (waiting for the
        // Nexudus hour budget, which can be long) is pacing, not retrying.
        let mut first_failure: Option<Instant> = None;
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(self.config.initial_delay)
            .with_max_delay(self.config.max_delay)
            .with_max_times(self.config.max_attempts.saturating_sub(1))
            .with_jitter()
            .build();
        let mut attempt = 1;
        loop {
            let err = match op().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let Verdict::Retry { after } = err.verdict() else {
                return Err(err);
            };
            let Some(backoff_delay) = backoff.next() else {
                tracing::warn!(api = self.api, what, attempt, error = %err, "giving up: attempts exhausted");
                return Err(err);
            };
            // The wait the server stated (Retry-After, or a throttle's message) is what it asked
            // for: coming back sooner would only draw another refusal. The backoff (which also
            // bounds the attempts) decides only when nothing said how long.
            let delay = after.unwrap_or(backoff_delay);
            let retrying_since = *first_failure.get_or_insert_with(Instant::now);
            if retrying_since.elapsed() + delay > self.config.max_elapsed {
                tracing::warn!(api = self.api, what, attempt, error = %err, "giving up: retry time budget spent");
                return Err(err);
            }
            self.metrics.count_retry(self.api, err.label());
            tracing::info!(
                api = self.api,
                what,
                attempt,
                status = %err.label(),
                delay_ms = delay.as_millis() as u64,
                "retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug)]
    struct E(Verdict);
    impl Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }
    impl Classify for E {
        fn verdict(&self) -> Verdict {
            self.0
        }
        fn label(&self) -> String {
            "test".into()
        }
    }

    fn policy(attempts: usize) -> RetryPolicy {
        RetryPolicy::new(
            "test",
            RetryConfig {
                max_attempts: attempts,
                initial_delay: Duration::from_millis(100),
                max_delay: Duration::from_secs(2),
                max_elapsed: Duration::from_secs(60),
            },
            Arc::new(Metrics::new()),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn retries_retriable_until_success() {
        let calls = AtomicU32::new(0);
        let r: Result<u32, E> = policy(5)
            .run("x", || async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < 3 {
                    Err(E(Verdict::Retry { after: None }))
                } else {
                    Ok(n)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 3);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn final_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let r: Result<(), E> = policy(5)
            .run("x", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(E(Verdict::Final))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_are_capped() {
        let calls = AtomicU32::new(0);
        let r: Result<(), E> = policy(3)
            .run("x", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(E(Verdict::Retry { after: None }))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_as_a_floor() {
        let start = Instant::now();
        let calls = AtomicU32::new(0);
        let _: Result<(), E> = policy(2)
            .run("x", || async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(E(Verdict::Retry {
                        after: Some(Duration::from_secs(7)),
                    }))
                } else {
                    Ok(())
                }
            })
            .await;
        assert!(
            start.elapsed() >= Duration::from_secs(7),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn time_before_the_first_failure_is_not_retrying() {
        // An attempt that first waited an hour for a quota and then failed still gets its retries.
        let calls = AtomicU32::new(0);
        let r: Result<(), E> = policy(3)
            .run("x", || async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Err(E(Verdict::Retry { after: None }))
                } else {
                    Ok(())
                }
            })
            .await;
        assert!(r.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stated_wait_is_used_as_is_not_lengthened_by_the_backoff() {
        let start = Instant::now();
        let calls = AtomicU32::new(0);
        let _: Result<(), E> = policy(2)
            .run("x", || async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(E(Verdict::Retry {
                        after: Some(Duration::from_millis(10)),
                    }))
                } else {
                    Ok(())
                }
            })
            .await;
        // The backoff would start at 100 ms; the server asked for 10 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_beyond_the_time_budget_gives_up() {
        let calls = AtomicU32::new(0);
        let r: Result<(), E> = policy(5)
            .run("x", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(E(Verdict::Retry {
                    after: Some(Duration::from_secs(3600)),
                }))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
