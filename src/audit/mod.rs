//! The provisioning log: for every person, every change the sync made or decided against, and
//! why — kept in the store, beside the checkpoints it explains.
//!
//! A confirmed write's entry is written by whoever checkpoints it, in one atomic step with the
//! checkpoint ([`Recorder::write_with`]; [`crate::dispatch`], [`crate::roles`]): a confirmed
//! write is never checkpointed without its entry, and an entry is written only for what
//! nevisIDM confirmed or refused, so a crash leaves no entry for a write that did not happen.
//! Decisions against a write (a held disable or revocation, an invalid record, a conflict) are
//! written once while they stay the same ([`once`]), so that an unchanged rerun writes nothing.
//!
//! - [`entry`]  the entry: operation, fields before and after, outcome, cause
//! - [`cause`]  the causes in words, one phrase each
//! - [`once`]   what makes two decisions the same, and which marks a write forgets
//! - [`values`] `audit.values`: full values, keyed hashes, or field names only
//! - [`query`]  `--history` and `/history`: by person or by time, filtered, a page at a time, as
//!   a table or JSON lines
//!
//! A dry run writes nothing; `audit.enabled = false` writes nothing but still prunes what is
//! kept (`audit.retention` first, then `audit.max_entries`) and still answers `--history`.

pub mod cause;
pub mod entry;
pub mod once;
pub mod query;
pub mod values;

use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use entry::{Change, Draft, Entry, Operation, Verdict, Why, changes_of};
pub use once::Code;

use crate::config::AuditConfig;
use crate::store::{AuditRecord, Checkpoint, Mark, Pruned, Store, StoreError};
use values::Redact;

/// Writes a run's entries. Cheap to clone; [`Recorder::off`] writes nothing.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    run_id: String,
    mode: &'static str,
    redact: Redact,
    retention: Duration,
    max_entries: u64,
    /// One pruning at a time (the count it keeps is shared).
    pruning: Mutex<()>,
}

impl Recorder {
    /// A recorder that writes nothing (a dry run, `audit.enabled = false`, unit tests).
    pub fn off() -> Recorder {
        Recorder::default()
    }

    /// The recorder of one run in `mode` (`full`, `incremental`, `reconcile`).
    pub fn start(
        cfg: &AuditConfig,
        store: &Store,
        run_id: &str,
        mode: &'static str,
    ) -> Result<Recorder, StoreError> {
        if !cfg.enabled {
            return Ok(Recorder::off());
        }
        Ok(Recorder {
            inner: Some(Arc::new(Inner {
                store: store.clone(),
                run_id: run_id.to_string(),
                mode,
                redact: Redact::new(cfg.values, store)?,
                retention: cfg.retention,
                max_entries: cfg.max_entries,
                pruning: Mutex::new(()),
            })),
        })
    }

    /// Writes the entry of a write nevisIDM refused or that failed (or of a confirmed write
    /// without a checkpoint of its own). The caller makes it durable ([`Store::flush`]).
    pub fn write(&self, draft: Draft) -> Result<(), StoreError> {
        match &self.inner {
            Some(inner) => inner.append(draft, None, &Checkpoint::Nothing),
            None => Ok(()),
        }
    }

    /// Writes a confirmed write's entry and its `checkpoint` in `store` (the run's) as one
    /// atomic step; the checkpoint alone when the log is off. The caller makes it durable
    /// ([`Store::flush`]).
    pub fn write_with(
        &self,
        store: &Store,
        draft: Draft,
        checkpoint: Checkpoint<'_>,
    ) -> Result<(), StoreError> {
        match &self.inner {
            Some(inner) => inner.append(draft, None, &checkpoint),
            None => store.commit(None, &checkpoint).map(drop),
        }
    }

    /// Writes an entry for a decision against a write (held, invalid, conflict) unless the
    /// person's last decision of the same operation and target was the same: the same `code`,
    /// fields and `values` (what else the decision is about), whatever its reason's words say.
    pub fn write_once(&self, draft: Draft, code: Code, values: &[&str]) -> Result<(), StoreError> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let once = (once::slot(&draft, code), once::digest(&draft, code, values));
        inner.append(draft, Some(once), &Checkpoint::Nothing)
    }
}

impl Inner {
    /// Appends `draft` with `audit.values` applied, with `checkpoint`; with `once` (slot,
    /// digest), only unless the person's mark there holds the same digest. A confirmed write
    /// forgets the marks it concerns. Keeps the log within its bound.
    fn append(
        &self,
        draft: Draft,
        once: Option<(Vec<u8>, u64)>,
        checkpoint: &Checkpoint<'_>,
    ) -> Result<(), StoreError> {
        let scope = once::scope(&draft);
        let mark = match &once {
            Some((slot, digest)) => Mark::Once {
                slot,
                digest: *digest,
            },
            None if draft.outcome == Verdict::Confirmed => Mark::Forget(&scope),
            None => Mark::Keep,
        };
        let draft = self.redacted(draft);
        let body = draft.to_stored(&self.run_id, self.mode);
        let record = AuditRecord {
            at: self.store.clock().now(),
            nexudus_id: draft.nexudus_id,
            ext_id: &draft.ext_id,
            body: &body,
        };
        if !self.store.commit(Some((record, mark)), checkpoint)? {
            return Ok(());
        }
        self.bound()
    }

    /// `draft` as `audit.values` keeps it: the values of its changes, and its reason, which may
    /// quote them.
    fn redacted(&self, mut draft: Draft) -> Draft {
        let plain: Vec<String> = draft
            .changes
            .iter()
            .flat_map(|c| [c.before.clone(), c.after.clone()])
            .flatten()
            .collect();
        let plain: Vec<&str> = plain.iter().map(String::as_str).collect();
        draft.reason = draft.reason.map(|r| self.redact.text(r, &plain));
        draft.changes = self.redact.apply(draft.changes);
        draft
    }

    /// Keeps the log within `audit.max_entries`: entries past `audit.retention` go first, then,
    /// only if that is not enough, the oldest younger ones down to a hundredth below the bound.
    fn bound(&self) -> Result<(), StoreError> {
        if self.store.audit_len()? <= self.max_entries {
            return Ok(());
        }
        let _one = self.pruning.lock().unwrap_or_else(|p| p.into_inner());
        let keep = self.max_entries - self.max_entries / 100;
        let pruned =
            self.store
                .audit_prune(cutoff(&self.store, self.retention), self.max_entries, keep)?;
        warn_if_young(pruned);
        Ok(())
    }
}

/// Unix seconds before which entries are past `retention`.
fn cutoff(store: &Store, retention: Duration) -> u64 {
    store.clock().now().saturating_sub(retention.as_secs())
}

/// The size bound pruned entries the retention promises to keep: say what to raise.
fn warn_if_young(pruned: Pruned) {
    if pruned.young > 0 {
        tracing::warn!(
            pruned = pruned.young,
            "audit.max_entries pruned provisioning-log entries younger than audit.retention: \
             raise audit.max_entries (or lower audit.retention) so that the log keeps what \
             the retention promises"
        );
    }
}

/// Prunes what `audit.retention` and `audit.max_entries` no longer keep, the aged entries
/// first; answers what went. Run at the end of every run that writes (even with
/// `audit.enabled = false`: what was kept before still ages out).
pub fn prune(cfg: &AuditConfig, store: &Store) -> Result<Pruned, StoreError> {
    let pruned = store.audit_prune(
        cutoff(store, cfg.retention),
        cfg.max_entries,
        cfg.max_entries,
    )?;
    warn_if_young(pruned);
    Ok(pruned)
}

/// Unix seconds as RFC 3339 (UTC, whole seconds).
pub fn rfc3339(unix_seconds: u64) -> String {
    i64::try_from(unix_seconds)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| unix_seconds.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuditValues;
    use std::time::Duration;

    fn cfg() -> AuditConfig {
        AuditConfig {
            enabled: true,
            retention: Duration::from_secs(90 * 86_400),
            max_entries: 1_000,
            values: AuditValues::Full,
        }
    }

    fn held(id: u64) -> Draft {
        Draft {
            nexudus_id: Some(id),
            ext_id: format!("nexudus-{id}"),
            operation: Operation::Disable,
            changes: vec![Change {
                field: "userState".into(),
                before: Some("active".into()),
                after: Some("disabled".into()),
            }],
            outcome: Verdict::Held,
            status: None,
            reason: Some("35 disables exceed sync.max_disables = 10".into()),
            cause: cause::GONE_CONFIRMED.into(),
        }
    }

    fn entries(store: &Store) -> Vec<Entry> {
        store
            .audit_since(0)
            .map(|e| query::entry_of(e.unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn an_entry_carries_the_run_the_mode_and_the_time() {
        let store = Store::temporary()
            .unwrap()
            .with_clock(crate::clock::Clock::manual(1_780_000_000));
        let log = Recorder::start(&cfg(), &store, "run-1", "full").unwrap();
        log.write(held(1)).unwrap();
        let got = entries(&store);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].run_id, "run-1");
        assert_eq!(got[0].mode, "full");
        assert_eq!(got[0].time, "2026-05-28T20:26:40Z");
        assert_eq!(got[0].outcome, Verdict::Held);
    }

    #[test]
    fn the_same_decision_is_written_once_until_a_confirmed_write_of_the_user() {
        let store = Store::temporary().unwrap();
        let log = Recorder::start(&cfg(), &store, "r", "full").unwrap();
        log.write_once(held(1), Code::DeletionSafety, &[]).unwrap();
        let mut recounted = held(1);
        recounted.reason = Some("36 disables exceed sync.max_disables = 10".into());
        log.write_once(recounted, Code::DeletionSafety, &[])
            .unwrap();
        assert_eq!(entries(&store).len(), 1, "a count in the reason is no news");
        // A refused write of the user is no news either: nothing changed for them.
        let mut refused = held(1);
        refused.outcome = Verdict::Refused;
        log.write(refused).unwrap();
        log.write_once(held(1), Code::DeletionSafety, &[]).unwrap();
        assert_eq!(entries(&store).len(), 2);
        let mut confirmed = held(1);
        confirmed.outcome = Verdict::Confirmed;
        log.write(confirmed).unwrap();
        log.write_once(held(1), Code::DeletionSafety, &[]).unwrap();
        assert_eq!(entries(&store).len(), 4);
        // Another code is another decision.
        log.write_once(held(1), Code::ListingIncomplete, &[])
            .unwrap();
        assert_eq!(entries(&store).len(), 5);
    }

    #[test]
    fn the_size_bound_prunes_aged_entries_before_any_young_one() {
        let clock = crate::clock::Clock::manual(1_000_000_000);
        let store = Store::temporary().unwrap().with_clock(clock.clone());
        let bounded = AuditConfig {
            max_entries: 100,
            ..cfg()
        };
        let log = Recorder::start(&bounded, &store, "r", "full").unwrap();
        log.write(held(0)).unwrap();
        clock.advance(Duration::from_secs(91 * 86_400));
        for id in 1..=100 {
            log.write(held(id)).unwrap();
        }
        // 101 entries: the aged one made room; every young one is kept.
        let kept: Vec<_> = entries(&store)
            .iter()
            .filter_map(|e| e.nexudus_id)
            .collect();
        assert_eq!(kept.len(), 100);
        assert!(!kept.contains(&0));
        assert_eq!(store.audit_pruned_within_retention().unwrap(), 0);
        // Only young ones left: the bound prunes them, a hundredth below it, and counts them.
        log.write(held(101)).unwrap();
        assert_eq!(store.audit_len().unwrap(), 99);
        assert_eq!(store.audit_pruned_within_retention().unwrap(), 2);
    }

    #[test]
    fn off_writes_nothing_and_the_bound_prunes_the_oldest() {
        let store = Store::temporary().unwrap();
        let off = AuditConfig {
            enabled: false,
            ..cfg()
        };
        Recorder::start(&off, &store, "r", "full")
            .unwrap()
            .write(held(1))
            .unwrap();
        assert_eq!(store.audit_len().unwrap(), 0);
        let small = AuditConfig {
            max_entries: 10,
            ..cfg()
        };
        let log = Recorder::start(&small, &store, "r", "full").unwrap();
        for id in 0..25 {
            log.write(held(id)).unwrap();
        }
        assert!(store.audit_len().unwrap() <= 10);
        let newest = &entries(&store)[0];
        assert_eq!(newest.nexudus_id, Some(24));
    }

    #[test]
    fn retention_prunes_what_aged_out() {
        let clock = crate::clock::Clock::manual(1_000_000_000);
        let store = Store::temporary().unwrap().with_clock(clock.clone());
        let log = Recorder::start(&cfg(), &store, "r", "full").unwrap();
        log.write(held(1)).unwrap();
        clock.advance(Duration::from_secs(89 * 86_400));
        log.write(held(2)).unwrap();
        assert_eq!(prune(&cfg(), &store).unwrap(), Pruned::default());
        clock.advance(Duration::from_secs(2 * 86_400));
        let pruned = prune(&cfg(), &store).unwrap();
        assert_eq!((pruned.aged, pruned.young), (1, 0));
        assert_eq!(entries(&store)[0].nexudus_id, Some(2));
    }
}
