//! The provisioning log: for every person, every change the sync made or decided against, and
//! why — kept in the store, beside the checkpoints it explains.
//!
//! Each write's entry is written by whoever checkpoints it, in the same step and just before the
//! checkpoint ([`crate::dispatch`], [`crate::roles`]): a confirmed write is never checkpointed
//! without its entry, and an entry is written only for what nevisIDM confirmed or refused, so a
//! crash leaves no entry for a write that did not happen. Decisions against a write (a held
//! disable or revocation, an invalid record, a conflict) are written once per user while they
//! stay the same, so that an unchanged rerun writes nothing.
//!
//! - [`entry`]  the entry: operation, fields before and after, outcome, cause
//! - [`cause`]  the causes in words, one phrase each
//! - [`values`] `audit.values`: full values, keyed hashes, or field names only
//! - [`query`]  `--history` and `/history`: by person or by time, filtered, as a table or JSON lines
//!
//! A dry run writes nothing; `audit.enabled = false` writes nothing but still prunes what is
//! kept (`audit.retention`, `audit.max_entries`) and still answers `--history`.

pub mod cause;
pub mod entry;
pub mod query;
pub mod values;

use std::sync::{Arc, Mutex};

pub use entry::{Change, Draft, Entry, Operation, Verdict, Why, changes_of};

use crate::config::AuditConfig;
use crate::store::{AuditRecord, Store, StoreError};
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
                max_entries: cfg.max_entries,
                pruning: Mutex::new(()),
            })),
        })
    }

    /// Writes an entry (a write confirmed, refused or failed). The caller makes it durable with
    /// the checkpoint it explains ([`Store::flush`]).
    pub fn write(&self, draft: Draft) -> Result<(), StoreError> {
        match &self.inner {
            Some(inner) => inner.append(draft, None),
            None => Ok(()),
        }
    }

    /// Writes an entry for a decision against a write (held, invalid, conflict) unless the
    /// user's last such entry said the same: a decision that stays the same run after run is
    /// written once, until something else happens to the user.
    pub fn write_once(&self, draft: Draft) -> Result<(), StoreError> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let once = draft.nexudus_id.map(|id| (id, digest(&draft)));
        inner.append(draft, once)
    }
}

impl Inner {
    /// Appends `draft` with `audit.values` applied; with `once` (Nexudus Id, digest), only
    /// unless that user's last decision had the same digest. Keeps the log within its bound.
    fn append(&self, draft: Draft, once: Option<(u64, u64)>) -> Result<(), StoreError> {
        let draft = self.redacted(draft);
        let body = draft.to_stored(&self.run_id, self.mode);
        let record = AuditRecord {
            at: self.store.clock().now(),
            nexudus_id: draft.nexudus_id,
            ext_id: &draft.ext_id,
            body: &body,
        };
        let count = match once {
            None => self.store.audit_append(record)?,
            Some((id, digest)) => {
                if !self.store.audit_append_once(record, id, digest)? {
                    return Ok(());
                }
                self.store.audit_len()?
            }
        };
        self.bound(count)
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

    /// Keeps the log within `audit.max_entries`, pruning a hundredth below it at a time.
    fn bound(&self, count: u64) -> Result<(), StoreError> {
        if count <= self.max_entries {
            return Ok(());
        }
        let _one = self.pruning.lock().unwrap_or_else(|p| p.into_inner());
        let keep = self.max_entries - self.max_entries / 100;
        self.store.audit_prune(0, keep)?;
        Ok(())
    }
}

/// Prunes what `audit.retention` and `audit.max_entries` no longer keep; answers how many
/// entries went. Run at the end of every run that writes (even with `audit.enabled = false`:
/// what was kept before still ages out).
pub fn prune(cfg: &AuditConfig, store: &Store) -> Result<u64, StoreError> {
    let cutoff = store.clock().now().saturating_sub(cfg.retention.as_secs());
    store.audit_prune(cutoff, cfg.max_entries)
}

/// Unix seconds as RFC 3339 (UTC, whole seconds).
pub fn rfc3339(unix_seconds: u64) -> String {
    i64::try_from(unix_seconds)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| unix_seconds.to_string())
}

/// What makes two decisions the same (time and run aside).
fn digest(draft: &Draft) -> u64 {
    let text = format!(
        "{}|{}|{:?}|{:?}|{}",
        draft.operation.as_str(),
        draft.outcome.as_str(),
        draft.reason,
        draft.changes,
        draft.cause
    );
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
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
    fn the_same_decision_is_written_once_until_something_else_happens() {
        let store = Store::temporary().unwrap();
        let log = Recorder::start(&cfg(), &store, "r", "full").unwrap();
        log.write_once(held(1)).unwrap();
        log.write_once(held(1)).unwrap();
        assert_eq!(entries(&store).len(), 1);
        let mut confirmed = held(1);
        confirmed.outcome = Verdict::Confirmed;
        log.write(confirmed).unwrap();
        log.write_once(held(1)).unwrap();
        assert_eq!(entries(&store).len(), 3);
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
        assert_eq!(prune(&cfg(), &store).unwrap(), 0);
        clock.advance(Duration::from_secs(2 * 86_400));
        assert_eq!(prune(&cfg(), &store).unwrap(), 1);
        assert_eq!(entries(&store)[0].nexudus_id, Some(2));
    }
}
