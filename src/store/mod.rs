//! The checkpoint store: what nevisIDM confirmed for each Nexudus user, in an embedded sled
//! database. This is the only module that imports sled.
//!
//! Layout (tree -> key -> value):
//! - `users`: Nexudus Id (u64, big-endian) -> 8-byte fingerprint (LE) + format byte (3) +
//!   nevisIDM's `version` of the user (1 byte: known or not, then i64 LE) + postcard(`DesiredUser`).
//!   The version is the one nevisIDM last reported (optimistic locking); formats 1 and 2 (no
//!   version) are still read.
//!   The fingerprint lets an unchanged user be recognised with one read and one hash, no decoding.
//! - `failures`: Nexudus Id -> `0x00` + Unix seconds (u64 LE) of the first failure in a row + UTF-8
//!   reason of the last failed or invalid attempt (cleared on success); or, for a create or update
//!   nevisIDM refused for the user's values, `0x01` + that time + the [`Refusal`] (digest of the
//!   values refused u64 LE, tries u32 LE, next try u64 LE, a flags byte: 1 = not taken) + the
//!   reason. Stores written before the time was kept hold the reason alone (a reason never starts
//!   with `0x00` or `0x01`).
//! - `missing`: Nexudus Id -> complete listings in a row (u32 LE) the user was missing from.
//! - `disabled_at`: Nexudus Id -> Unix seconds (u64 LE) since the checkpoint says disabled
//!   (local clock: it is our own event), for `sync.archive_after`.
//! - `meta`: `last_run` -> JSON report of the last run; `watermark` -> incremental-polling mark;
//!   `nexudus_quota_counts` -> Nexudus requests per minute/hour bucket (JSON), kept across
//!   runs for the hour and day budgets; `nexudus_quota_wait` -> JSON of a budget wait in progress;
//!   `nexudus_listing_size` -> `TotalItems` of the last full listing (decimal).
//! - `operator`: what operators' decisions left behind, by key prefix (one small tree, since every
//!   sled tree costs memory): `L` + Nexudus Id -> extId of a pre-existing nevisIDM user adopted for
//!   it (`sync.adopt`); `O` + extId -> its Nexudus Id (one nevisIDM user is never linked twice);
//!   `H` + Nexudus Id -> empty: disabled by hand in nevisIDM while active in Nexudus, found by a
//!   reconcile and left disabled (`sync.reenable_on_reconcile = false`); `B` + Nexudus Id: a
//!   mark of older versions (a create an archived account blocked, now a [`Refusal`]), dropped
//!   with the next checkpoint of the user.
//! - `forms`: Nexudus Id -> JSON of the user's [`Forms`]: values nevisIDM keeps in its own form,
//!   and values written over a different held one, not read back since (only users with any).
//!
//! - `roles`: Nexudus Id -> JSON of the roles the sync granted the user and nevisIDM confirmed
//!   (the profile and each owned roleExtId with its authorization), kept by [`crate::roles`];
//!   `meta` keys `roles_*` hold its resolution, memberships and watermark.
//!
//! - `audit`: the provisioning log (see [`audit`]'s layout): one entry per write made or decided
//!   against, written in one atomic step with the checkpoint it explains ([`step`]); kept by
//!   `--rebuild-store`. `meta` key `audit_pruned_within_retention`: entries the size bound
//!   pruned while still inside `audit.retention`, ever (u64 LE).
//!
//! A checkpoint is written only after nevisIDM confirmed the write; `flush` makes it durable.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Duration;

use crate::clock::Clock;
use crate::forms::Forms;
use crate::mapper::{DesiredUser, UserState};
use crate::refusal::Refusal;

mod audit;
mod step;
pub use audit::{AuditEntry, AuditRecord, Mark, Pruned};
pub use step::{Checkpoint, UserCheckpoint};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "store {path} is in use by another nexudus-nevis-sync process (sled holds an exclusive lock); \
         stop the other process or point store.path elsewhere"
    )]
    InUse { path: String },
    #[error(
        "store {path} cannot be opened: {detail}; if it is damaged, rebuild it from nevisIDM and \
         Nexudus with `nexudus-nevis-sync --sync-now --rebuild-store` (the damaged copy is kept \
         beside it)"
    )]
    Open { path: String, detail: String },
    #[error(
        "store {path} cannot be opened for writing: {detail}; check that the directory is \
         writable by this user and its file system has free space (the store is not damaged: \
         --rebuild-store would not help)"
    )]
    Unwritable { path: String, detail: String },
    #[error(
        "store is corrupt: {0}; rebuild it from nevisIDM and Nexudus with \
         `nexudus-nevis-sync --sync-now --rebuild-store`"
    )]
    Corrupt(String),
    #[error("store I/O failed: {0}")]
    Io(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Corruption { .. } => StoreError::Corrupt(e.to_string()),
            other => StoreError::Io(other.to_string()),
        }
    }
}

/// A handle on the checkpoint store. Cheap to clone (sled trees are reference-counted).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    users: sled::Tree,
    failures: sled::Tree,
    meta: sled::Tree,
    missing: sled::Tree,
    disabled_at: sled::Tree,
    operator: sled::Tree,
    forms: sled::Tree,
    roles: sled::Tree,
    /// The provisioning log ([`audit`]).
    audit: sled::Tree,
    /// Entries in `audit` ([`audit::UNCOUNTED`] until first needed).
    audit_count: Arc<AtomicU64>,
    commits: Arc<GroupCommit>,
    /// What "now" is for the times kept here (and for the pacer that counts in this store).
    clock: Clock,
}

/// Group commit: callers that need their writes durable share one flush at a time. Concurrent
/// `flush_async` calls can exhaust sled's I/O thread pool and deadlock (seen with 16 writers), so
/// flushes are serialised here and run on tokio's blocking pool; a caller whose writes a flush
/// already covered does not flush again.
#[derive(Default)]
struct GroupCommit {
    /// Tickets handed out after writes.
    issued: AtomicU64,
    /// Every ticket up to this one is durable.
    durable: tokio::sync::Mutex<u64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// Result of looking a user up by fingerprint.
pub enum Lookup {
    /// No checkpoint: the user was never confirmed.
    Missing,
    /// The checkpoint has exactly this fingerprint.
    Same,
    /// The checkpoint differs; here it is.
    Changed(DesiredUser),
}

impl Store {
    /// Opens (creating if needed) the store at `path`, taking sled's exclusive file lock.
    pub fn open(path: &Path, cache_capacity_bytes: u64) -> Result<Store, StoreError> {
        let shown = path.display().to_string();
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity_bytes)
            .mode(sled::Mode::LowSpace);
        // sled panics on some damaged files instead of answering an error: that is a damaged
        // store too, and must end in a message that says how to rebuild it.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()))
            .map_err(|panic| StoreError::Open {
                path: shown.clone(),
                detail: format!("sled failed reading it: {}", panic_text(&panic)),
            })?;
        let db = opened.map_err(|e| classify_open_error(&shown, e))?;
        restrict_to_owner(path);
        Self::from_db(db)
    }

    /// `open` (or another opening, such as [`Store::open_for_rebuild`]) for a run, waiting up to
    /// `wait` (`store.open_wait`) while another process holds the store: a `--status` or
    /// `--history` reads it for a moment when no daemon holds it, and a run starting then must
    /// not fail for that. Tried again every 100 ms; any other error fails at once, and a store
    /// still held at the end fails with the "in use" error as before.
    pub async fn open_waiting(
        wait: Duration,
        open: impl Fn() -> Result<Store, StoreError>,
    ) -> Result<Store, StoreError> {
        const PAUSE: Duration = Duration::from_millis(100);
        let deadline = tokio::time::Instant::now() + wait;
        let mut said = false;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match open() {
                Err(StoreError::InUse { path }) if !left.is_zero() => {
                    if !said {
                        said = true;
                        tracing::info!(
                            "store {path} is in use by another process (a --status or --history \
                             reading it?); waiting up to {} for it (store.open_wait)",
                            humantime::format_duration(wait)
                        );
                    }
                    tokio::time::sleep(PAUSE.min(left)).await;
                }
                other => return other,
            }
        }
    }

    /// `--rebuild-store`: opens the store at `path` emptied of checkpoints (adoption links and
    /// the provisioning log kept),
    /// or, when it cannot be opened (damaged), moves it aside to `<path>.damaged-<unix time>` and
    /// starts a new one there. A store in use by another process is never touched.
    pub fn open_for_rebuild(path: &Path, cache_capacity_bytes: u64) -> Result<Store, StoreError> {
        match Self::open(path, cache_capacity_bytes) {
            Ok(store) => {
                store.clear_for_rebuild()?;
                tracing::info!(
                    entries = store.audit_len()?,
                    "the provisioning log is kept through the rebuild"
                );
                Ok(store)
            }
            Err(e @ (StoreError::InUse { .. } | StoreError::Unwritable { .. })) => Err(e),
            Err(e) => {
                let mut aside = path.as_os_str().to_owned();
                aside.push(format!(".damaged-{}", Clock::system().now()));
                let aside = std::path::PathBuf::from(aside);
                tracing::warn!(
                    error = %e,
                    moved_to = %aside.display(),
                    "store cannot be opened; moving it aside and rebuilding. Its provisioning log \
                     cannot be carried over: it stays in the copy moved aside (read it with \
                     --history and store.path set to that copy, if it opens at all)"
                );
                std::fs::rename(path, &aside).map_err(|io| StoreError::Open {
                    path: path.display().to_string(),
                    detail: format!("cannot move the damaged store aside: {io}"),
                })?;
                Self::open(path, cache_capacity_bytes)
            }
        }
    }

    /// An empty throw-away store (the demo, and dry runs against a store that does not exist yet).
    pub fn temporary() -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(8 * 1024 * 1024)
            .open()?;
        Self::from_db(db)
    }

    fn from_db(db: sled::Db) -> Result<Store, StoreError> {
        Ok(Store {
            users: db.open_tree("users")?,
            failures: db.open_tree("failures")?,
            meta: db.open_tree("meta")?,
            missing: db.open_tree("missing")?,
            disabled_at: db.open_tree("disabled_at")?,
            operator: db.open_tree("operator")?,
            forms: db.open_tree("forms")?,
            roles: db.open_tree("roles")?,
            audit: db.open_tree("audit")?,
            audit_count: Arc::new(AtomicU64::new(audit::UNCOUNTED)),
            commits: Arc::default(),
            clock: Clock::system(),
            db,
        })
    }

    /// This store with `clock` for the times it keeps (tests: a [`Clock::manual`]).
    pub fn with_clock(mut self, clock: Clock) -> Store {
        self.clock = clock;
        self
    }

    /// The clock the store keeps times by.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Compares a fingerprint with the stored one without decoding the stored user when they match.
    pub fn lookup(&self, nexudus_id: u64, fingerprint: u64) -> Result<Lookup, StoreError> {
        let Some(bytes) = self.users.get(nexudus_id.to_be_bytes())? else {
            return Ok(Lookup::Missing);
        };
        if bytes.len() >= 8 && bytes[..8] == fingerprint.to_le_bytes() {
            return Ok(Lookup::Same);
        }
        match decode(&bytes) {
            Ok(old) => Ok(Lookup::Changed(old)),
            // An unreadable checkpoint (another format version, a damaged value) is treated as
            // unknown: the user is created again, which nevisIDM answers "already exists", and
            // the convergence path rewrites the checkpoint. One bad value never stops a run.
            Err(e) => {
                tracing::warn!(nexudus_id, error = %e, "unreadable checkpoint; re-confirming the user");
                Ok(Lookup::Missing)
            }
        }
    }

    /// nevisIDM's `version` of the user as last reported, kept with its checkpoint; `None` when
    /// unknown (no checkpoint, an older format, or never reported).
    pub fn version(&self, nexudus_id: u64) -> Result<Option<i64>, StoreError> {
        Ok(self
            .users
            .get(nexudus_id.to_be_bytes())?
            .and_then(|bytes| version_in(&bytes)))
    }

    pub fn get(&self, nexudus_id: u64) -> Result<Option<DesiredUser>, StoreError> {
        self.users
            .get(nexudus_id.to_be_bytes())?
            .map(|b| decode(&b))
            .transpose()
    }

    /// Records what nevisIDM confirmed for this user and clears any recorded failure.
    pub fn put(&self, nexudus_id: u64, user: &DesiredUser) -> Result<(), StoreError> {
        self.put_as(nexudus_id, user, fingerprint(user))
    }

    /// Like [`Store::put`], filed under `fingerprint`: the fingerprint of the user as mapped,
    /// when what was confirmed differs from it only by kept identifiers (an extId set at creation
    /// or adoption), so that the next unchanged run recognises the user without decoding it.
    /// The version nevisIDM last reported is kept: nothing was written.
    pub fn put_as(
        &self,
        nexudus_id: u64,
        user: &DesiredUser,
        fingerprint: u64,
    ) -> Result<(), StoreError> {
        let version = self.version(nexudus_id)?;
        self.put_versioned(nexudus_id, user, fingerprint, version)
    }

    /// Like [`Store::put_as`], with the `version` nevisIDM reported for the user (`None`:
    /// unknown, e.g. after a create, whose answer carries none).
    pub fn put_versioned(
        &self,
        nexudus_id: u64,
        user: &DesiredUser,
        fingerprint: u64,
        version: Option<i64>,
    ) -> Result<(), StoreError> {
        let checkpoint = UserCheckpoint {
            nexudus_id,
            user,
            fingerprint,
            version,
            forms: None,
            link: None,
        };
        self.commit(None, &Checkpoint::User(checkpoint))?;
        Ok(())
    }

    /// Like [`Store::put_versioned`], but the user's failure record stays (with the time its
    /// failing began): a write nevisIDM confirmed without taking every value is still failing.
    pub fn put_still_failing(
        &self,
        nexudus_id: u64,
        user: &DesiredUser,
        fingerprint: u64,
        version: Option<i64>,
    ) -> Result<(), StoreError> {
        let key = nexudus_id.to_be_bytes();
        let failure = self.failures.get(key)?;
        self.put_versioned(nexudus_id, user, fingerprint, version)?;
        if let Some(value) = failure {
            self.failures.insert(key, value)?;
        }
        Ok(())
    }

    /// The forms kept for this user ([`Forms`]); empty when none, or when unreadable (a form not
    /// known is learned again). Forms an older version learned that are no form of the value
    /// sent are dropped here ([`Forms::kept`]; the record is rewritten with the user's next
    /// forms).
    pub fn forms(&self, nexudus_id: u64) -> Result<Forms, StoreError> {
        let Some(bytes) = self.forms.get(nexudus_id.to_be_bytes())? else {
            return Ok(Forms::default());
        };
        let forms: Forms = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(nexudus_id, error = %e, "unreadable forms record; learning them again");
            Forms::default()
        });
        Ok(forms.kept())
    }

    /// Keeps `forms` for this user (none: the record is removed).
    pub fn set_forms(&self, nexudus_id: u64, forms: &Forms) -> Result<(), StoreError> {
        let key = nexudus_id.to_be_bytes();
        match forms_value(forms)? {
            None => self.forms.remove(key)?,
            Some(json) => self.forms.insert(key, json)?,
        };
        Ok(())
    }

    /// Users with learned forms: how many, and the first `limit` of them, in Id order.
    pub fn learned_forms(&self, limit: usize) -> Result<(usize, Vec<(u64, Forms)>), StoreError> {
        let mut total = 0;
        let mut first = Vec::new();
        for item in self.forms.iter() {
            let (k, v) = item?;
            let Ok(forms) = serde_json::from_slice::<Forms>(&v).map(Forms::kept) else {
                continue;
            };
            if forms.learned.is_empty() {
                continue;
            }
            total += 1;
            if first.len() < limit {
                first.push((id_of(&k, "forms")?, forms));
            }
        }
        Ok((total, first))
    }

    /// Users whose checkpoint has said `disabled` for longer than `age`.
    pub fn disabled_longer_than(&self, age: Duration) -> Result<Vec<u64>, StoreError> {
        let now = self.clock.now();
        let mut out = Vec::new();
        for item in self.disabled_at.iter() {
            let (k, v) = item?;
            let id = id_of(&k, "disabled_at")?;
            let since = <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_le_bytes)
                .map_err(|_| StoreError::Corrupt("disabled_at value is not 8 bytes".into()))?;
            if now.saturating_sub(since) >= age.as_secs() {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Number of users with a checkpoint.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Every checkpoint, in Id order. Errors are yielded, not swallowed.
    pub fn iter(&self) -> impl Iterator<Item = Result<(u64, DesiredUser), StoreError>> + '_ {
        self.users.iter().map(|item| {
            let (k, v) = item?;
            Ok((id_of(&k, "users")?, decode(&v)?))
        })
    }

    /// The Nexudus Id of every checkpoint, in Id order, without decoding one: the role stage's
    /// reconcile needs only who is known.
    pub fn user_ids(&self) -> impl Iterator<Item = Result<u64, StoreError>> + '_ {
        self.users.iter().keys().map(|key| id_of(&key?, "users"))
    }

    /// Records why the user's last attempt failed; the time of the first failure in a row is
    /// kept (for alerts on users failing for long), the reason is the latest.
    pub fn record_failure(&self, nexudus_id: u64, reason: &str) -> Result<(), StoreError> {
        self.put_failure(nexudus_id, reason, None)
    }

    /// Records that nevisIDM refused the user's values, with the [`Refusal`] that says when
    /// they are sent again; otherwise as [`Store::record_failure`].
    pub fn record_refusal(
        &self,
        nexudus_id: u64,
        reason: &str,
        refusal: &Refusal,
    ) -> Result<(), StoreError> {
        self.put_failure(nexudus_id, reason, Some(refusal))
    }

    fn put_failure(
        &self,
        nexudus_id: u64,
        reason: &str,
        refusal: Option<&Refusal>,
    ) -> Result<(), StoreError> {
        let key = nexudus_id.to_be_bytes();
        let since = self
            .failures
            .get(key)?
            .and_then(|v| split_failure(&v).since)
            .unwrap_or_else(|| self.clock.now());
        self.failures
            .insert(key, encode_failure(since, refusal, reason))?;
        Ok(())
    }

    /// The refusal kept with the user's failure record, if nevisIDM refused its values.
    pub fn refusal(&self, nexudus_id: u64) -> Result<Option<Refusal>, StoreError> {
        Ok(self
            .failures
            .get(nexudus_id.to_be_bytes())?
            .and_then(|v| split_failure(&v).refusal))
    }

    /// Unix seconds of the first failure of the user failing the longest, among failures whose
    /// time is known; `None` when no user is failing.
    pub fn oldest_failure_since(&self) -> Result<Option<u64>, StoreError> {
        let mut oldest = None;
        for item in self.failures.iter() {
            let (_, v) = item?;
            if let Some(since) = split_failure(&v).since {
                oldest = Some(oldest.map_or(since, |o: u64| o.min(since)));
            }
        }
        Ok(oldest)
    }

    pub fn clear_failure(&self, nexudus_id: u64) -> Result<(), StoreError> {
        self.failures.remove(nexudus_id.to_be_bytes())?;
        Ok(())
    }

    /// Drops recorded failures of users for whom `keep` says no.
    pub fn retain_failures(&self, keep: impl Fn(u64) -> bool) -> Result<(), StoreError> {
        for (id, _) in self.failures()? {
            if !keep(id) {
                self.failures.remove(id.to_be_bytes())?;
            }
        }
        Ok(())
    }

    /// Counts one more complete listing this user was missing from; returns the new count.
    pub fn count_missing(&self, nexudus_id: u64) -> Result<u32, StoreError> {
        let now = self.missing_count(nexudus_id)?.saturating_add(1);
        self.missing
            .insert(nexudus_id.to_be_bytes(), &now.to_le_bytes())?;
        Ok(now)
    }

    /// How many complete listings in a row this user has been missing from (read only).
    pub fn missing_count(&self, nexudus_id: u64) -> Result<u32, StoreError> {
        Ok(self
            .missing
            .get(nexudus_id.to_be_bytes())?
            .and_then(|v| v.as_ref().try_into().ok().map(u32::from_le_bytes))
            .unwrap_or(0))
    }

    /// Forgets the missing counts of users for whom `keep` says no.
    pub fn retain_missing(&self, keep: impl Fn(u64) -> bool) -> Result<(), StoreError> {
        for item in self.missing.iter() {
            let (k, _) = item?;
            if !keep(id_of(&k, "missing")?) {
                self.missing.remove(k)?;
            }
        }
        Ok(())
    }

    /// Stores the last run's report (JSON) for `--status` and `/status`.
    /// Records the last run's report, and when it was recorded (for `--status`).
    pub fn set_last_run(&self, json: &[u8]) -> Result<(), StoreError> {
        self.meta.insert("last_run", json)?;
        self.meta
            .insert("last_run_at", &self.clock.now().to_le_bytes())?;
        Ok(())
    }

    /// Unix seconds at which the last run's report was recorded, if known.
    pub fn last_run_at(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .meta
            .get("last_run_at")?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_le_bytes))
    }

    /// The incremental-polling watermark (`YYYY-MM-DDTHH:mm`, Nexudus time).
    pub fn watermark(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .meta
            .get("watermark")?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn set_watermark(&self, mark: &str) -> Result<(), StoreError> {
        self.meta.insert("watermark", mark.as_bytes())?;
        Ok(())
    }

    /// A credential kept across restarts (the Nexudus refresh token). The store directory is
    /// private to its owner (mode 0700).
    pub fn secret(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .meta
            .get(key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn set_secret(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.meta.insert(key, value.as_bytes())?;
        Ok(())
    }

    /// A small value of the `meta` tree by key (the Nexudus request counts and quota wait).
    pub fn meta_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(key)?.map(|v| v.to_vec()))
    }

    pub fn set_meta_bytes(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(key, value)?;
        Ok(())
    }

    /// The role checkpoint of a user (its encoding is [`crate::roles`]'s), if any.
    pub fn role_holding(&self, nexudus_id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .roles
            .get(nexudus_id.to_be_bytes())?
            .map(|v| v.to_vec()))
    }

    /// Replaces a user's role checkpoint; `None` removes it.
    pub fn set_role_holding(
        &self,
        nexudus_id: u64,
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let key = nexudus_id.to_be_bytes();
        match value {
            Some(value) => self.roles.insert(key, value)?,
            None => self.roles.remove(key)?,
        };
        Ok(())
    }

    /// The Nexudus Id of every role checkpoint, in Id order, without reading one.
    pub fn role_holding_ids(&self) -> impl Iterator<Item = Result<u64, StoreError>> + '_ {
        self.roles.iter().keys().map(|key| id_of(&key?, "roles"))
    }

    pub fn last_run(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get("last_run")?.map(|v| v.to_vec()))
    }

    /// Users whose last attempt failed or was invalid, with the reason, the Unix time of the
    /// first failure in a row (when it was kept) and the refusal (when nevisIDM refused the
    /// user's values).
    pub fn failures_since(&self) -> Result<Vec<FailureRecord>, StoreError> {
        self.failures
            .iter()
            .map(|item| {
                let (k, v) = item?;
                let parts = split_failure(&v);
                Ok(FailureRecord {
                    nexudus_id: id_of(&k, "failures")?,
                    reason: String::from_utf8_lossy(parts.reason).into_owned(),
                    since: parts.since,
                    refusal: parts.refusal,
                })
            })
            .collect()
    }

    /// Why the user's last attempt failed, if it did.
    pub fn failure(&self, nexudus_id: u64) -> Result<Option<String>, StoreError> {
        Ok(self
            .failures
            .get(nexudus_id.to_be_bytes())?
            .map(|v| String::from_utf8_lossy(split_failure(&v).reason).into_owned()))
    }

    /// Users whose last attempt failed or was invalid, with the reason.
    pub fn failures(&self) -> Result<Vec<(u64, String)>, StoreError> {
        Ok(self
            .failures_since()?
            .into_iter()
            .map(|f| (f.nexudus_id, f.reason))
            .collect())
    }

    /// Makes every write made before this call durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let ticket = self.commits.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let mut durable = self.commits.durable.lock().await;
        if *durable >= ticket {
            return Ok(());
        }
        // Everything ticketed so far was written before its ticket was taken.
        let covered = self.commits.issued.load(Ordering::SeqCst);
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Io(format!("flush task failed: {e}")))??;
        *durable = covered;
        Ok(())
    }

    /// The extId of the nevisIDM user adopted for this Nexudus user, if any.
    pub fn link(&self, nexudus_id: u64) -> Result<Option<String>, StoreError> {
        Ok(self
            .operator
            .get(op_key(LINK, &nexudus_id.to_be_bytes()))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// The Nexudus user an adopted extId is linked to, if any.
    pub fn link_owner(&self, ext_id: &str) -> Result<Option<u64>, StoreError> {
        self.operator
            .get(op_key(OWNER, ext_id.as_bytes()))?
            .map(|v| id_of(&v, "link owner"))
            .transpose()
    }

    /// Records that `ext_id` (a user this tool did not create) now belongs to `nexudus_id`.
    pub fn set_link(&self, nexudus_id: u64, ext_id: &str) -> Result<(), StoreError> {
        let id = nexudus_id.to_be_bytes();
        self.operator.insert(op_key(LINK, &id), ext_id.as_bytes())?;
        self.operator
            .insert(op_key(OWNER, ext_id.as_bytes()), &id)?;
        Ok(())
    }

    /// Nexudus Ids a reconcile found disabled by hand and left so (read once per run).
    pub fn hand_disabled_ids(&self) -> Result<HashSet<u64>, StoreError> {
        self.operator
            .scan_prefix([HAND_DISABLED])
            .map(|item| {
                let (k, _) = item?;
                id_of(&k[1..], "hand-disabled mark")
            })
            .collect()
    }

    pub fn set_hand_disabled(&self, nexudus_id: u64, on: bool) -> Result<(), StoreError> {
        let key = op_key(HAND_DISABLED, &nexudus_id.to_be_bytes());
        if on {
            self.operator.insert(key, &[])?;
        } else {
            self.operator.remove(key)?;
        }
        Ok(())
    }

    /// `--rebuild-store` on a readable store: forgets every checkpoint and run-time record, so
    /// that nevisIDM's real state and a full listing decide everything again. Adoption links are
    /// kept: they cannot be recovered from either system.
    pub fn clear_for_rebuild(&self) -> Result<(), StoreError> {
        for tree in [
            &self.users,
            &self.failures,
            &self.missing,
            &self.disabled_at,
            &self.forms,
            &self.roles,
        ] {
            tree.clear()?;
        }
        for prefix in [HAND_DISABLED, BLOCKED] {
            for key in self.operator.scan_prefix([prefix]).keys() {
                self.operator.remove(key?)?;
            }
        }
        // The refresh token in `meta` stays: it is a credential, not a checkpoint.
        self.meta.remove("last_run")?;
        self.meta.remove("watermark")?;
        Ok(())
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }
}

/// How the `forms` tree keeps a user's forms: JSON; `None` when there are none (the record is
/// removed).
fn forms_value(forms: &Forms) -> Result<Option<Vec<u8>>, StoreError> {
    if forms.is_empty() {
        return Ok(None);
    }
    serde_json::to_vec(forms)
        .map(Some)
        .map_err(|e| StoreError::Io(e.to_string()))
}

/// First byte of a failure value that carries the time of the first failure.
const FAILURE_WITH_TIME: u8 = 0;
/// First byte of a failure value that carries that time and a [`Refusal`].
const FAILURE_REFUSED: u8 = 1;
/// Bytes of a [`Refusal`] in a failure value: digest, tries, next try, flags.
const REFUSAL_LEN: usize = 8 + 4 + 8 + 1;
/// The flag of a refusal whose value nevisIDM did not take.
const NOT_TAKEN: u8 = 1;

/// A user's failure record ([`Store::failures_since`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureRecord {
    pub nexudus_id: u64,
    pub reason: String,
    /// Unix seconds of the first failure in a row, when kept.
    pub since: Option<u64>,
    /// When nevisIDM refused the user's values: when they are sent again.
    pub refusal: Option<Refusal>,
}

/// The parts of a failure value.
struct FailureParts<'a> {
    since: Option<u64>,
    refusal: Option<Refusal>,
    reason: &'a [u8],
}

fn encode_failure(since: u64, refusal: Option<&Refusal>, reason: &str) -> Vec<u8> {
    let mut value = Vec::with_capacity(9 + REFUSAL_LEN + reason.len());
    value.push(if refusal.is_some() {
        FAILURE_REFUSED
    } else {
        FAILURE_WITH_TIME
    });
    value.extend_from_slice(&since.to_le_bytes());
    if let Some(r) = refusal {
        value.extend_from_slice(&r.digest.to_le_bytes());
        value.extend_from_slice(&r.tries.to_le_bytes());
        value.extend_from_slice(&r.next_at.to_le_bytes());
        value.push(if r.not_taken { NOT_TAKEN } else { 0 });
    }
    value.extend_from_slice(reason.as_bytes());
    value
}

/// A failure value's time of first failure (when kept), refusal (when kept) and reason.
fn split_failure(value: &[u8]) -> FailureParts<'_> {
    let u64_at = |b: &[u8], at: usize| {
        b.get(at..at + 8)
            .and_then(|x| <[u8; 8]>::try_from(x).ok())
            .map(u64::from_le_bytes)
    };
    match value.split_first() {
        Some((&FAILURE_WITH_TIME, rest)) if rest.len() >= 8 => FailureParts {
            since: u64_at(rest, 0),
            refusal: None,
            reason: &rest[8..],
        },
        Some((&FAILURE_REFUSED, rest)) if rest.len() >= 8 + REFUSAL_LEN => {
            let r = &rest[8..8 + REFUSAL_LEN];
            let tries = <[u8; 4]>::try_from(&r[8..12]).map(u32::from_le_bytes).ok();
            let refusal = match (u64_at(r, 0), tries, u64_at(r, 12)) {
                (Some(digest), Some(tries), Some(next_at)) => Some(Refusal {
                    digest,
                    tries,
                    next_at,
                    not_taken: r[20] & NOT_TAKEN != 0,
                }),
                _ => None,
            };
            FailureParts {
                since: u64_at(rest, 0),
                refusal,
                reason: &rest[8 + REFUSAL_LEN..],
            }
        }
        _ => FailureParts {
            since: None,
            refusal: None,
            reason: value,
        },
    }
}

/// The fingerprint of a desired user: xxh3 of its canonical encoding.
pub fn fingerprint(user: &DesiredUser) -> u64 {
    let body = postcard::to_allocvec(user).expect("encoding a DesiredUser into memory cannot fail");
    xxhash_rust::xxh3::xxh3_64(&body)
}

/// Version of the checkpoint encoding; bump it when `DesiredUser` changes shape (postcard is not
/// self-describing), so old values are recognised as such instead of misread. Older formats are
/// still read (below), so an upgrade does not send every user through re-confirmation.
/// Format 3 added nevisIDM's `version`; format 2 is format 3 without it.
const CHECKPOINT_FORMAT: u8 = 3;
/// Where the user starts in a format-3 value: fingerprint, format, known flag, version.
const V3_BODY: usize = 8 + 1 + 1 + 8;

/// Format 1: `DesiredUser` before `properties` existed.
#[derive(serde::Deserialize)]
struct DesiredUserV1 {
    ext_id: String,
    login_id: String,
    first_name: String,
    family_name: String,
    email: String,
    language_code: String,
    state: UserState,
}

impl From<DesiredUserV1> for DesiredUser {
    fn from(v: DesiredUserV1) -> Self {
        DesiredUser {
            ext_id: v.ext_id,
            login_id: v.login_id,
            first_name: v.first_name,
            family_name: v.family_name,
            email: v.email,
            language_code: v.language_code,
            state: v.state,
            properties: Default::default(),
        }
    }
}

fn encode(user: &DesiredUser, fingerprint: u64, version: Option<i64>) -> Vec<u8> {
    let body = postcard::to_allocvec(user).expect("encoding a DesiredUser into memory cannot fail");
    let mut out = Vec::with_capacity(V3_BODY + body.len());
    out.extend_from_slice(&fingerprint.to_le_bytes());
    out.push(CHECKPOINT_FORMAT);
    out.push(u8::from(version.is_some()));
    out.extend_from_slice(&version.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// The version kept in a checkpoint value, if it has one.
fn version_in(bytes: &[u8]) -> Option<i64> {
    if bytes.get(8) != Some(&CHECKPOINT_FORMAT) || bytes.get(9) != Some(&1) {
        return None;
    }
    let raw = bytes.get(10..V3_BODY)?;
    <[u8; 8]>::try_from(raw).ok().map(i64::from_le_bytes)
}

fn decode(bytes: &[u8]) -> Result<DesiredUser, StoreError> {
    match bytes.get(8) {
        Some(&CHECKPOINT_FORMAT) => bytes
            .get(V3_BODY..)
            .ok_or_else(|| StoreError::Corrupt("checkpoint too short".into()))
            .and_then(|body| {
                postcard::from_bytes(body)
                    .map_err(|e| StoreError::Corrupt(format!("checkpoint: {e}")))
            }),
        Some(2) => postcard::from_bytes(&bytes[9..])
            .map_err(|e| StoreError::Corrupt(format!("checkpoint (format 2): {e}"))),
        Some(1) => postcard::from_bytes::<DesiredUserV1>(&bytes[9..])
            .map(DesiredUser::from)
            .map_err(|e| StoreError::Corrupt(format!("checkpoint (format 1): {e}"))),
        Some(other) => Err(StoreError::Corrupt(format!(
            "checkpoint format {other} is not {CHECKPOINT_FORMAT}"
        ))),
        None => Err(StoreError::Corrupt("checkpoint too short".into())),
    }
}

/// The store holds a refresh token: only its owner may read it.
#[cfg(unix)]
fn restrict_to_owner(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot make the store directory private (0700)");
    }
}

#[cfg(not(unix))]
fn restrict_to_owner(_path: &Path) {}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Key prefixes of the `operator` tree.
const LINK: u8 = b'L';
const OWNER: u8 = b'O';
const HAND_DISABLED: u8 = b'H';
/// Older versions' mark of a blocked create (now a [`Refusal`]): only ever removed.
const BLOCKED: u8 = b'B';

fn op_key(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + rest.len());
    key.push(prefix);
    key.extend_from_slice(rest);
    key
}

/// A Nexudus Id key (u64, big-endian) of `tree`.
fn id_of(key: &[u8], tree: &str) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt(format!("{tree} key is not 8 bytes")))
}

fn classify_open_error(path: &str, e: sled::Error) -> StoreError {
    match &e {
        // sled takes an exclusive advisory lock on the db file; a second process gets WouldBlock
        // (or "could not acquire lock" as Other on some platforms).
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") =>
        {
            StoreError::InUse {
                path: path.to_string(),
            }
        }
        sled::Error::Corruption { .. } => StoreError::Corrupt(format!("{path}: {e}")),
        // The location refuses writes: nothing is wrong with the store itself, and moving it
        // aside for a rebuild would throw a good store away.
        sled::Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::ReadOnlyFilesystem
                    | std::io::ErrorKind::StorageFull
                    | std::io::ErrorKind::QuotaExceeded
                    | std::io::ErrorKind::FileTooLarge
                    | std::io::ErrorKind::NotADirectory
            ) =>
        {
            StoreError::Unwritable {
                path: path.to_string(),
                detail: e.to_string(),
            }
        }
        _ => StoreError::Open {
            path: path.to_string(),
            detail: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapper::UserState;

    fn user(name: &str) -> DesiredUser {
        DesiredUser {
            ext_id: "nexudus-7".into(),
            login_id: "a@b.c".into(),
            first_name: name.into(),
            family_name: "F".into(),
            email: "a@b.c".into(),
            language_code: "en".into(),
            state: UserState::Active,
            properties: Default::default(),
        }
    }

    #[test]
    fn lookup_recognises_same_changed_and_missing() {
        let store = Store::temporary().unwrap();
        assert!(matches!(store.lookup(7, 1).unwrap(), Lookup::Missing));
        store.put(7, &user("A")).unwrap();
        assert!(matches!(
            store.lookup(7, fingerprint(&user("A"))).unwrap(),
            Lookup::Same
        ));
        match store.lookup(7, fingerprint(&user("B"))).unwrap() {
            Lookup::Changed(old) => assert_eq!(old, user("A")),
            _ => panic!("expected changed"),
        }
        assert_eq!(store.len(), 1);
        assert_eq!(store.iter().next().unwrap().unwrap(), (7, user("A")));
    }

    #[test]
    fn unreadable_checkpoint_is_treated_as_unknown_not_fatal() {
        let store = Store::temporary().unwrap();
        store
            .users
            .insert(9u64.to_be_bytes(), &[1u8, 2, 3, 4, 5, 6, 7, 8, 99, 0][..])
            .unwrap();
        assert!(matches!(store.lookup(9, 1).unwrap(), Lookup::Missing));
        assert!(
            store.iter().next().unwrap().is_err(),
            "iteration still reports it"
        );
    }

    #[test]
    fn ids_come_from_the_keys_even_when_a_value_is_unreadable() {
        let store = Store::temporary().unwrap();
        store.put(7, &user("A")).unwrap();
        store.users.insert(9u64.to_be_bytes(), &[99u8][..]).unwrap();
        store.set_role_holding(3, Some(b"not json")).unwrap();
        store.set_role_holding(7, Some(b"{}")).unwrap();
        let users: Vec<u64> = store.user_ids().map(Result::unwrap).collect();
        assert_eq!(users, [7, 9]);
        let holders: Vec<u64> = store.role_holding_ids().map(Result::unwrap).collect();
        assert_eq!(holders, [3, 7]);
    }

    #[test]
    fn a_failure_keeps_the_time_it_began_and_legacy_reasons_still_read() {
        let store = Store::temporary().unwrap().with_clock(Clock::manual(5_000));
        assert_eq!(store.oldest_failure_since().unwrap(), None);
        // A value from before the time was kept: the reason alone.
        store
            .failures
            .insert(5u64.to_be_bytes(), &b"500 old"[..])
            .unwrap();
        // A failure that began long ago, failing again now: the beginning is kept.
        let mut old = vec![FAILURE_WITH_TIME];
        old.extend_from_slice(&1_000u64.to_le_bytes());
        old.extend_from_slice(b"422 first");
        store.failures.insert(7u64.to_be_bytes(), old).unwrap();
        store.record_failure(7, "422 again").unwrap();
        store.record_failure(8, "404").unwrap();
        assert_eq!(store.oldest_failure_since().unwrap(), Some(1_000));
        let mut failures = store.failures().unwrap();
        failures.sort();
        assert_eq!(
            failures,
            vec![
                (5, "500 old".to_string()),
                (7, "422 again".to_string()),
                (8, "404".to_string())
            ]
        );
        store.clear_failure(7).unwrap();
        assert_eq!(
            store.oldest_failure_since().unwrap(),
            Some(5_000),
            "user 8's failure began at the clock's now"
        );
    }

    #[test]
    fn a_refusal_is_kept_with_the_failure_and_cleared_by_a_checkpoint() {
        let store = Store::temporary().unwrap().with_clock(Clock::manual(5_000));
        store.record_failure(7, "503 down").unwrap();
        assert_eq!(store.refusal(7).unwrap(), None);
        let refusal = Refusal {
            digest: 0xfeed,
            tries: 3,
            next_at: 9_000,
            not_taken: true,
        };
        store.record_refusal(7, "422 no", &refusal).unwrap();
        assert_eq!(store.refusal(7).unwrap(), Some(refusal));
        let all = store.failures_since().unwrap();
        assert_eq!(
            all,
            vec![FailureRecord {
                nexudus_id: 7,
                reason: "422 no".into(),
                since: Some(5_000),
                refusal: Some(refusal),
            }],
            "the first failure's time is kept"
        );
        // Another failure (nevisIDM unavailable) is not a refusal of the values.
        store.record_failure(7, "503 again").unwrap();
        assert_eq!(store.refusal(7).unwrap(), None);
        store.record_refusal(7, "422 no", &refusal).unwrap();
        store.put(7, &user("A")).unwrap();
        assert_eq!(
            (store.refusal(7).unwrap(), store.failure(7).unwrap()),
            (None, None)
        );
    }

    #[test]
    fn a_disabled_checkpoint_ages_by_the_store_clock() {
        let clock = Clock::manual(10_000);
        let store = Store::temporary().unwrap().with_clock(clock.clone());
        let mut disabled = user("A");
        disabled.state = UserState::Disabled;
        store.put(7, &disabled).unwrap();
        let hour = Duration::from_secs(3600);
        clock.advance(hour - Duration::from_secs(1));
        assert!(store.disabled_longer_than(hour).unwrap().is_empty());
        clock.advance(Duration::from_secs(1));
        assert_eq!(store.disabled_longer_than(hour).unwrap(), vec![7]);
        // Written again while still disabled: the age is not restarted.
        store.put(7, &disabled).unwrap();
        assert_eq!(store.disabled_longer_than(hour).unwrap(), vec![7]);
        // Active again: no age at all.
        store.put(7, &user("A")).unwrap();
        assert!(
            store
                .disabled_longer_than(Duration::ZERO)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn success_clears_recorded_failure() {
        let store = Store::temporary().unwrap();
        store.record_failure(7, "422 errors.invalidData").unwrap();
        assert_eq!(
            store.failures().unwrap(),
            vec![(7, "422 errors.invalidData".to_string())]
        );
        store.put(7, &user("A")).unwrap();
        assert!(store.failures().unwrap().is_empty());
    }

    /// Regression: 16 writers each awaiting `flush_async` deadlocked sled's I/O pool.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_durable_writes_complete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for id in 0..64u64 {
            let store = store.clone();
            tasks.spawn(async move {
                for round in 0..5 {
                    store.put(id, &user(&format!("n{round}"))).unwrap();
                    store.flush().await.unwrap();
                }
            });
        }
        let all = async {
            while let Some(done) = tasks.join_next().await {
                done.unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), all)
            .await
            .expect("durable writes finished without deadlock");
        assert_eq!(store.len(), 64);
    }

    #[test]
    fn second_open_of_same_path_is_in_use_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path(), 1 << 20).unwrap();
        let second = Store::open(dir.path(), 1 << 20);
        assert!(
            matches!(second, Err(StoreError::InUse { .. })),
            "{second:?}"
        );
        drop(first);
    }
}

#[cfg(test)]
mod damage {
    use super::*;

    fn user() -> DesiredUser {
        DesiredUser {
            ext_id: "nexudus-1".into(),
            login_id: "a@b.c".into(),
            first_name: "A".into(),
            family_name: "B".into(),
            email: "a@b.c".into(),
            language_code: "en".into(),
            state: UserState::Active,
            properties: Default::default(),
        }
    }

    async fn filled(path: &Path) {
        let s = Store::open(path, 1 << 20).unwrap();
        for i in 0..50 {
            s.put(i, &user()).unwrap();
        }
        s.set_link(7, "legacy-7").unwrap();
        let entry = AuditRecord {
            at: 1,
            nexudus_id: Some(7),
            ext_id: "legacy-7",
            body: b"{}",
        };
        s.audit_append(entry).unwrap();
        s.flush().await.unwrap();
    }

    /// `open` once the store a test just dropped is free: sled releases its file lock when its
    /// background threads let go of the database, a moment after the drop (a busy machine made
    /// an immediate reopen fail with `InUse`). Bounded: 5 s.
    async fn when_free<T>(open: impl Fn() -> Result<T, StoreError>) -> Result<T, StoreError> {
        for _ in 0..250 {
            match open() {
                Err(StoreError::InUse { .. }) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
        open()
    }

    #[tokio::test]
    async fn a_damaged_store_says_how_to_rebuild_and_is_moved_aside_by_a_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        filled(&path).await;
        for entry in std::fs::read_dir(&path).unwrap() {
            let file = entry.unwrap().path();
            if !file.is_file() {
                continue;
            }
            let len = std::fs::metadata(&file).unwrap().len() as usize;
            std::fs::write(&file, vec![0xA5u8; len.max(64)]).unwrap();
        }
        let err = match when_free(|| Store::open(&path, 1 << 20)).await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a damaged store opened"),
        };
        assert!(err.contains("--rebuild-store"), "{err}");
        let store = Store::open_for_rebuild(&path, 1 << 20).unwrap();
        assert!(store.is_empty());
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("store.damaged-"))
            .collect();
        assert_eq!(aside.len(), 1, "the damaged copy is kept beside the store");
    }

    #[tokio::test]
    async fn rebuilding_a_readable_store_forgets_checkpoints_but_keeps_links() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        filled(&path).await;
        let store = when_free(|| Store::open_for_rebuild(&path, 1 << 20))
            .await
            .unwrap();
        assert!(store.is_empty());
        assert_eq!(
            store.audit_of_user(7, 0, None).count(),
            1,
            "the log is kept"
        );
        assert_eq!(store.link(7).unwrap().as_deref(), Some("legacy-7"));
        assert_eq!(store.link_owner("legacy-7").unwrap(), Some(7));
    }

    #[test]
    fn format_1_checkpoints_are_still_read() {
        #[derive(serde::Serialize)]
        struct V1<'a> {
            ext_id: &'a str,
            login_id: &'a str,
            first_name: &'a str,
            family_name: &'a str,
            email: &'a str,
            language_code: &'a str,
            state: UserState,
        }
        let body = postcard::to_allocvec(&V1 {
            ext_id: "nexudus-1",
            login_id: "a@b.c",
            first_name: "A",
            family_name: "B",
            email: "a@b.c",
            language_code: "en",
            state: UserState::Active,
        })
        .unwrap();
        let mut bytes = 0u64.to_le_bytes().to_vec();
        bytes.push(1);
        bytes.extend_from_slice(&body);
        assert_eq!(decode(&bytes).unwrap(), user());
    }

    #[test]
    fn format_2_checkpoints_are_read_without_a_version_and_format_3_keeps_it() {
        let store = Store::temporary().unwrap();
        let mut bytes = fingerprint(&user()).to_le_bytes().to_vec();
        bytes.push(2);
        bytes.extend_from_slice(&postcard::to_allocvec(&user()).unwrap());
        store.users.insert(7u64.to_be_bytes(), bytes).unwrap();
        assert_eq!(store.get(7).unwrap(), Some(user()));
        assert_eq!(store.version(7).unwrap(), None);
        assert!(matches!(
            store.lookup(7, fingerprint(&user())).unwrap(),
            Lookup::Same
        ));

        store
            .put_versioned(7, &user(), fingerprint(&user()), Some(41))
            .unwrap();
        assert_eq!(store.version(7).unwrap(), Some(41));
        assert_eq!(store.get(7).unwrap(), Some(user()));
        // Refiling without a write keeps the version; a write reporting none forgets it.
        store.put(7, &user()).unwrap();
        assert_eq!(store.version(7).unwrap(), Some(41));
        store
            .put_versioned(7, &user(), fingerprint(&user()), None)
            .unwrap();
        assert_eq!(store.version(7).unwrap(), None);
    }
}
