//! The commit: what a run records as true once its writes are over, for each way a run ends.
//!
//! After a listing: the `UpdatedOn` watermark (held back by failed and invalid users), and —
//! only when the listing was complete and full — stale failures of users no longer listed and
//! the missing-run counts of users listed again are dropped, and those of users missing from it
//! go up; then the store is flushed. A run stopped by a shutdown (in any phase) or a failed
//! listing keeps what was confirmed and flushes it.

use std::collections::HashSet;
use std::time::Duration;

use super::RunOptions;
use crate::dispatch::Dispatcher;
use crate::nevis::Target;
use crate::report::RunReport;
use crate::store::{Store, StoreError};

pub struct Commit<'a> {
    store: &'a Store,
    dry_run: bool,
}

impl<'a> Commit<'a> {
    pub fn new(store: &'a Store, opts: &RunOptions) -> Commit<'a> {
        Commit {
            store,
            dry_run: opts.dry_run.is_some(),
        }
    }

    /// A shutdown: the writes in flight may finish and be checkpointed within `grace`; anything
    /// still running after that is abandoned unrecorded (reported failed) and redone by the next
    /// run.
    pub async fn after_shutdown<T: Target>(
        &self,
        mut dispatcher: Dispatcher<T>,
        grace: Duration,
        report: &mut RunReport,
    ) -> Result<(), StoreError> {
        tracing::warn!("shutdown requested: finishing the writes in flight");
        let finished = tokio::time::timeout(grace, dispatcher.finish(report)).await;
        if finished.is_err() {
            tracing::warn!(?grace, "shutdown grace over: abandoning unconfirmed writes");
        }
        dispatcher.abandon(report);
        self.interrupted(report).await
    }

    /// A shutdown, once no write is in flight (or none was ever sent): the run says it was
    /// interrupted and keeps only what was confirmed — no watermark, no roster, no missing
    /// counts, no stale failures dropped, since the run did not get to the end that makes them
    /// true.
    pub async fn interrupted(&self, report: &mut RunReport) -> Result<(), StoreError> {
        tracing::warn!("the run stops here, interrupted by a shutdown");
        report.interrupted = true;
        report.incomplete_reason = Some("the run was interrupted by a shutdown".into());
        if !self.dry_run {
            self.store.flush().await?;
        }
        Ok(())
    }

    /// A failed listing: what was written is checkpointed (and flushed, even in a dry run, as
    /// always); nobody is disabled from it.
    pub async fn after_failure<T: Target>(
        &self,
        dispatcher: &mut Dispatcher<T>,
        report: &mut RunReport,
    ) -> Result<(), StoreError> {
        let _ = dispatcher.finish(report).await;
        self.store.flush().await
    }

    /// A listing that ended and whose writes are confirmed; `kept` are the Ids it kept in scope,
    /// `missing` those the settlement found missing from it (see `Decision::missing`).
    pub async fn after_listing(
        &self,
        report: &RunReport,
        kept: &HashSet<u64>,
        missing: &[u64],
    ) -> Result<(), StoreError> {
        if self.dry_run {
            return Ok(());
        }
        let store = self.store;
        if let Some(mark) = report.watermark.mark() {
            store.set_watermark(&mark)?;
        }
        if report.listing_complete && !report.incremental {
            // Failures of users Nexudus no longer lists are stale; users listed again are no
            // longer missing.
            store.retain_failures(|id| kept.contains(&id))?;
            store.retain_missing(|id| !kept.contains(&id))?;
            for &id in missing {
                store.count_missing(id)?;
            }
        }
        store.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(complete: bool, incremental: bool) -> RunReport {
        let mut r = RunReport {
            listing_complete: complete,
            incremental,
            ..RunReport::default()
        };
        r.watermark.seen(Some("2025-01-15T10:30:00Z"));
        r
    }

    /// A store where users 1 and 2 failed and are missing once.
    fn store() -> Store {
        let store = Store::temporary().unwrap();
        for id in [1, 2] {
            store.record_failure(id, "refused").unwrap();
            store.count_missing(id).unwrap();
        }
        store
    }

    #[tokio::test]
    async fn a_complete_full_listing_drops_stale_failures_and_counts_who_is_missing() {
        let store = store();
        let commit = Commit::new(&store, &RunOptions::default());
        commit
            .after_listing(&report(true, false), &HashSet::from([1]), &[2])
            .await
            .unwrap();
        assert_eq!(
            store.watermark().unwrap().as_deref(),
            Some("2025-01-15T10:30")
        );
        let failed: Vec<u64> = store.failures().unwrap().into_iter().map(|f| f.0).collect();
        assert_eq!(failed, vec![1], "user 2 is no longer listed");
        assert_eq!(
            (
                store.missing_count(1).unwrap(),
                store.missing_count(2).unwrap()
            ),
            (0, 2),
            "user 1 is listed again, user 2 missing once more"
        );
    }

    #[tokio::test]
    async fn an_incomplete_or_incremental_listing_keeps_them_and_a_dry_run_records_nothing() {
        for (complete, incremental) in [(false, false), (true, true)] {
            let store = store();
            Commit::new(&store, &RunOptions::default())
                .after_listing(&report(complete, incremental), &HashSet::new(), &[2])
                .await
                .unwrap();
            assert_eq!(store.failures().unwrap().len(), 2);
            assert_eq!(store.missing_count(2).unwrap(), 1);
            assert!(store.watermark().unwrap().is_some());
        }
        let store = store();
        let dry = RunOptions {
            dry_run: Some(std::sync::Arc::new(|_: &serde_json::Value| {})),
            ..RunOptions::default()
        };
        Commit::new(&store, &dry)
            .after_listing(&report(true, false), &HashSet::new(), &[2])
            .await
            .unwrap();
        assert_eq!(store.failures().unwrap().len(), 2);
        assert_eq!(store.missing_count(2).unwrap(), 1);
        assert_eq!(store.watermark().unwrap(), None);
    }

    #[tokio::test]
    async fn an_interrupted_run_says_so_and_records_nothing_it_did_not_finish() {
        let store = store();
        let mut r = report(true, false);
        Commit::new(&store, &RunOptions::default())
            .interrupted(&mut r)
            .await
            .unwrap();
        assert!(r.interrupted && r.exit_code() == 1);
        assert_eq!(
            r.incomplete_reason.as_deref(),
            Some("the run was interrupted by a shutdown")
        );
        assert_eq!(store.watermark().unwrap(), None);
        assert_eq!(store.failures().unwrap().len(), 2);
        assert_eq!(store.missing_count(2).unwrap(), 1);
    }
}
