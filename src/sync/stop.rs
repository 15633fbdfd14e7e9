//! Stopping: how every phase of a run hears a shutdown, with one rule.
//!
//! A phase that only reads or waits — the deletion probe, the reconcile's read of nevisIDM, the
//! deletion search, the look-ups before disabling, a removal waiting for a free slot, the wait for
//! the writes in flight — is run through [`until_stopped`]: when the shutdown comes first, the
//! phase's future is dropped, and with it whatever it was waiting on, however deep (a request in
//! flight, the pacer's or the hour budget's wait, a retry's pause, a token request). No client
//! needs to know about shutdowns, and no sleep can outlive one.
//!
//! Writes are not dropped this way: once sent, the run gives them `sync.shutdown_grace` to be
//! confirmed and checkpointed (`commit`'s `after_shutdown`).

use std::future::Future;

use tokio_util::sync::CancellationToken;

/// A shutdown came before the phase ended; what it was doing is abandoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

/// Runs `phase` unless `cancel` is (or becomes) cancelled first. A shutdown that has already come
/// wins even over a phase that would end at once: no new work starts after a stop.
pub async fn until_stopped<F: Future>(
    cancel: &CancellationToken,
    phase: F,
) -> Result<F::Output, Stopped> {
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(Stopped),
        output = phase => Ok(output),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_ends_a_wait_of_an_hour_at_once() {
        let cancel = CancellationToken::new();
        let stopper = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            stopper.cancel();
        });
        let started = tokio::time::Instant::now();
        let waited = until_stopped(&cancel, tokio::time::sleep(Duration::from_secs(3600))).await;
        assert_eq!(waited, Err(Stopped));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test]
    async fn after_a_shutdown_no_phase_starts() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let started = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&started);
        let phase = async move { flag.store(true, Ordering::SeqCst) };
        assert_eq!(until_stopped(&cancel, phase).await, Err(Stopped));
        assert!(!started.load(Ordering::SeqCst), "the phase never ran");
    }

    #[tokio::test]
    async fn without_a_shutdown_the_phase_ends_as_it_would() {
        let cancel = CancellationToken::new();
        assert_eq!(until_stopped(&cancel, async { 7 }).await, Ok(7));
    }
}
