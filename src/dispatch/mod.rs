//! Applies operations to nevisIDM with at most `sync.concurrency` writes in flight, and records a
//! checkpoint for each write nevisIDM confirmed — right after the confirmation, in the same task,
//! so that a crash can only lose the checkpoint of a write, never invent one. Each write settled
//! (confirmed, refused, failed or a conflict) gets its provisioning-log entry (`trail.rs`), a
//! confirmed one in one atomic step with its checkpoint.
//!
//! A create answered "already exists" reads the user and brings it to the desired state; an update
//! answered "not found" (the user was removed by hand) recreates it. In dry-run mode the operation
//! is printed instead of sent, through the same path.
//!
//! With `sync.adopt = "email"`, a create first looks for a pre-existing nevisIDM user with the
//! same loginId or email, ignoring case: exactly one, not linked to anyone else, is adopted (linked
//! in the store and updated); zero goes on to create; several, or one already linked, is a
//! conflict and nothing is written. The candidates come from one read of the client's users per
//! run (made only when a create needs it), never from nevisIDM's query filters.
//!
//! A write nevisIDM refuses for the user's own values (a 4xx about the user, an archived account
//! holding its loginId) is kept with the user's failure record as a [`Refusal`]: an ordinary run
//! does not send the same values again before its next try ([`crate::refusal`]). A PATCH
//! nevisIDM confirms but whose answer holds a value sent as no form of it ([`forms::not_taken`])
//! was not taken: a refusal too, logged as one, with the checkpoint recording what nevisIDM holds.
//!
//! Every PATCH carries the `version` nevisIDM last reported for the user (optimistic locking);
//! a `409` is answered by reading the user, diffing again and sending one fresh PATCH. When many
//! updates of a run have no known version, they come from one read of nevisIDM's user listing
//! ([`crate::versions`]) instead of a read of each user.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::audit::values::Redact;
use crate::audit::{Change, Code, Recorder, Why, cause};
use crate::diff::{Changes, Field, Observed, changes_between, create_body};
use crate::directory::{Directory, SharedDirectory};
use crate::forms::{self, Form, Forms};
use crate::mapper::DesiredUser;
use crate::nevis::{Target, TargetError, list_all, version_of};
use crate::ownership::Owners;
use crate::progress::Progress;
use crate::refusal::Refusal;
use crate::report::{Outcome, RunReport};
use crate::store::{Checkpoint, Store, StoreError, UserCheckpoint, fingerprint};
use crate::versions::BulkVersions;

mod trail;

/// After this many users in a row failed because nevisIDM was unavailable (retries exhausted),
/// the run stops as fatal rather than grinding through every remaining user.
const UNAVAILABLE_TRIP: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Create,
    Update,
    Disable,
    /// `POST …/archive` after `sync.archive_after`; `changes` says `userState: archived`.
    Archive,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Create => "create",
            OpKind::Update => "update",
            OpKind::Disable => "disable",
            OpKind::Archive => "archive",
        }
    }
}

/// One write to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub nexudus_id: u64,
    pub kind: OpKind,
    /// The full user as it will be once the write is confirmed (what the checkpoint becomes).
    pub after: DesiredUser,
    /// `None` for a create; the changed fields for an update or disable.
    pub changes: Option<Changes>,
    /// `UpdatedOn` of the source record, if any (a failure holds the watermark back to it).
    pub updated_on: Option<String>,
    /// The checkpoint is filed under this fingerprint (the user as mapped) instead of that of
    /// `after`, when the two differ only by kept identifiers (see [`Store::put_as`]).
    pub fingerprint: Option<u64>,
    /// A create that may adopt a pre-existing user (`sync.adopt = "email"`, no link yet).
    pub adopt: bool,
    /// nevisIDM's `version` of the user as last reported, when the plan knows it (a reconcile's
    /// listing); else the one kept with the checkpoint is used, else the user is read first.
    /// After the write: the version nevisIDM reported for it, kept with the checkpoint.
    pub version: Option<i64>,
    /// The directory's forms around this write ([`crate::forms`]).
    pub forms: FormNotes,
    /// Why the write is made, and what nevisIDM held before: for its provisioning-log entry.
    pub why: Why,
}

/// The directory's forms around one write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormNotes {
    /// The forms to keep with the checkpoint once the write is confirmed (a reconcile's reading
    /// of the user); `None` keeps what is stored.
    pub keep: Option<Forms>,
    /// nevisIDM's answer to the PATCH (the user), with what that PATCH sent.
    answer: Option<(Changes, Observed)>,
    /// Forms the answer taught.
    pub learned: Vec<(Field, Form)>,
    /// Read the user back after a PATCH answered `204` (without the user), to see whether
    /// nevisIDM took the values: set for a user whose values were refused or not taken before.
    pub verify: bool,
}

impl Op {
    /// The dry-run plan line: `{"op":…,"extId":…,"changes":{…}}`.
    pub fn plan_json(&self) -> Value {
        let changes = match &self.changes {
            None => create_body(&self.after),
            Some(c) => c.to_json(),
        };
        json!({ "op": self.kind.as_str(), "extId": self.after.ext_id, "changes": changes })
    }
}

/// Receives dry-run plan lines.
pub type PlanSink = Arc<dyn Fn(&Value) + Send + Sync>;

/// How adoption recognises users (`sync.adopt = "email"`).
pub struct AdoptRules {
    /// `mapping.login_id = "ext_id"`: an adopted user's loginId follows its kept extId.
    pub login_from_ext_id: bool,
    /// Who owns an extId, read before the run's writes start.
    owners: Arc<Owners>,
    /// The client's users by case-folded loginId and email, built once from the run's read of
    /// nevisIDM's listing, when the first create of the run looks for a user to adopt.
    index: tokio::sync::OnceCell<Result<AdoptIndex, TargetError>>,
}

/// Every user of the client, indexed by case-folded loginId and by case-folded email. Adoption
/// decides from this rather than from the listing's `loginId=` / `contacts.email=` filters: how
/// nevisIDM compares filter values is not documented, and a filter that compares exactly would
/// hide a second account whose email differs only in case — the wrong-person case the rule
/// exists to prevent. Emails are stored as people typed them.
#[derive(Debug, Default)]
struct AdoptIndex {
    directory: Arc<Directory>,
    by_login: HashMap<String, Vec<String>>,
    by_email: HashMap<String, Vec<String>>,
}

fn fold(value: &str) -> String {
    value.trim().to_lowercase()
}

impl AdoptIndex {
    fn of(directory: Arc<Directory>) -> AdoptIndex {
        let mut by_login: HashMap<String, Vec<String>> = HashMap::new();
        let mut by_email: HashMap<String, Vec<String>> = HashMap::new();
        // An archived account is never adopted: archiving cannot be undone.
        let adoptable = directory
            .users
            .iter()
            .filter(|(_, seen)| seen.state.as_deref() != Some("archived"));
        for (ext_id, seen) in adoptable {
            if let Some(login) = seen.login_id.as_deref().map(fold).filter(|l| !l.is_empty()) {
                by_login.entry(login).or_default().push(ext_id.clone());
            }
            if let Some(email) = seen.email.as_deref().map(fold).filter(|e| !e.is_empty()) {
                by_email.entry(email).or_default().push(ext_id.clone());
            }
        }
        AdoptIndex {
            directory,
            by_login,
            by_email,
        }
    }

    /// Users whose loginId is `desired`'s loginId, or whose email is its email, ignoring case.
    fn matches(&self, desired: &DesiredUser) -> BTreeMap<String, Observed> {
        let mut keys: Vec<&Vec<String>> = Vec::new();
        if !desired.login_id.trim().is_empty() {
            keys.extend(self.by_login.get(&fold(&desired.login_id)));
        }
        keys.extend(self.by_email.get(&fold(&desired.email)));
        keys.into_iter()
            .flatten()
            .filter_map(|ext_id| Some((ext_id.clone(), self.directory.users.get(ext_id)?.clone())))
            .collect()
    }
}

impl AdoptRules {
    pub fn new(owners: Arc<Owners>, login_from_ext_id: bool) -> Self {
        AdoptRules {
            login_from_ext_id,
            owners,
            index: tokio::sync::OnceCell::new(),
        }
    }
}

/// What adoption decided for one create.
enum Decision {
    /// No other user matches: create (a duplicate then converges on our own extId).
    Create,
    Adopt {
        ext_id: String,
        changes: Changes,
        /// nevisIDM's version of the adopted user, as the candidate read reported it.
        version: Option<i64>,
        /// The adopted user as nevisIDM holds it (the log's "before").
        held: Box<Observed>,
    },
    Conflict {
        reason: String,
        candidates: Vec<String>,
    },
}

/// Errors that end the run.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// A nevisIDM answer every later request would meet too ([`TargetError::is_fatal`]):
    /// credentials refused, TLS, a redirect or login page, OAuth2.
    #[error(transparent)]
    Auth(TargetError),
    #[error("nevisIDM unavailable: {0} users in a row failed after retries (last: {1})")]
    Unavailable(u32, String),
    #[error("cannot record checkpoint: {0}")]
    Store(#[from] StoreError),
}

/// Why a write did not happen: nevisIDM's answer, or a decision of the dispatcher's own.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Target(#[from] TargetError),
    /// Adoption could not pick one nevisIDM user, or a create collided with a user this tool
    /// does not own: nothing was written.
    #[error("conflict: {reason}; candidates: [{}]", candidates.join(", "))]
    Conflict {
        reason: String,
        candidates: Vec<String>,
    },
    /// A PATCH answered 409 again after the user was read afresh: left for the next run.
    #[error(
        "nevisIDM answered 409 (concurrent modification) twice: user {ext_id} changed again \
         between our read and our write; left as it is in this run, the next run tries again"
    )]
    Contended { ext_id: String },
    /// A create refused because an archived account holds the loginId (a person who
    /// re-registered in Nexudus with the same email): archiving cannot be undone.
    #[error(
        "creating extId {ext_id} was refused: the archived nevisIDM account {holder} holds \
         loginId {login_id:?} (an archived account keeps its loginId and extId for good); free \
         the loginId in nevisIDM or give this user another email"
    )]
    ArchivedHolder {
        ext_id: String,
        login_id: String,
        holder: String,
    },
    /// nevisIDM confirmed the PATCH (`status`) but holds a value sent as neither that value nor
    /// a form of it ([`forms::not_taken`]): a policy or a read-only attribute kept the old one.
    /// `detail` names each field with its values as `audit.values` shows them.
    #[error("{detail}")]
    NotTaken {
        status: u16,
        detail: String,
        /// Each field not taken, with the value sent and the value nevisIDM holds.
        fields: Vec<(Field, Form)>,
    },
}

impl WriteError {
    fn is_unavailable(&self) -> bool {
        matches!(self, WriteError::Target(TargetError::Unavailable { .. }))
    }

    /// nevisIDM refused the user's own values: the same values will be refused again, so they
    /// wait for their next try ([`crate::refusal`]). Not a failure of nevisIDM itself
    /// (unavailable, a version conflict), nor a conflict between users.
    fn refuses_values(&self) -> bool {
        matches!(
            self,
            WriteError::Target(TargetError::Rejected { .. })
                | WriteError::ArchivedHolder { .. }
                | WriteError::NotTaken { .. }
        )
    }
}

/// How a confirmed operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    Written,
    /// nevisIDM already held exactly the desired user; only the checkpoint was refreshed.
    AlreadyRight,
    /// A pre-existing user was linked (and updated, if `Written`).
    Adopted {
        wrote: bool,
    },
}

type Done = (Op, Result<Result<Applied, WriteError>, StoreError>);

pub struct Dispatcher<T: Target> {
    target: Arc<T>,
    store: Store,
    permits: Arc<Semaphore>,
    tasks: JoinSet<Done>,
    /// The user of each write in flight (Nexudus Id, extId): a write whose task ends without an
    /// answer (a panic, or abandoned at shutdown) still gets its outcome.
    in_flight: HashMap<tokio::task::Id, (u64, String)>,
    dry_run: Option<PlanSink>,
    unavailable_streak: u32,
    adopt: Option<Arc<AdoptRules>>,
    /// extIds adopted (or being adopted) in this run: one nevisIDM user is never adopted twice.
    claimed: Arc<Mutex<HashSet<String>>>,
    /// Writes in flight and done, for whoever watches the run.
    progress: Option<Arc<Progress>>,
    /// The run's one read of nevisIDM's user listing (adoption, versions).
    directory: SharedDirectory,
    /// Versions read in bulk when many updates of this run have none.
    versions: BulkVersions,
    /// The provisioning log: an entry per write settled, written with its checkpoint.
    log: Recorder,
    /// How the dispatcher's own words (a value not taken) show personal values.
    redact: Redact,
}

impl<T: Target> Dispatcher<T> {
    pub fn new(
        target: Arc<T>,
        store: Store,
        concurrency: usize,
        dry_run: Option<PlanSink>,
    ) -> Self {
        Dispatcher {
            target,
            store,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            tasks: JoinSet::new(),
            in_flight: HashMap::new(),
            dry_run,
            unavailable_streak: 0,
            adopt: None,
            claimed: Arc::default(),
            progress: None,
            directory: SharedDirectory::default(),
            versions: BulkVersions::default(),
            log: Recorder::off(),
            redact: Redact::Full,
        }
    }

    /// Shows the values nevisIDM did not take as `audit.values` says ([`Redact`]).
    pub fn with_redaction(mut self, redact: Redact) -> Self {
        self.redact = redact;
        self
    }

    /// Writes an entry of the provisioning log for every write settled.
    pub fn with_audit(mut self, log: Recorder) -> Self {
        self.log = log;
        self
    }

    /// Counts writes in flight and done into `progress`.
    pub fn with_progress(mut self, progress: Option<Arc<Progress>>) -> Self {
        self.progress = progress;
        self
    }

    /// Shares the run's read of nevisIDM's user listing.
    pub fn with_directory(mut self, directory: SharedDirectory) -> Self {
        self.versions = BulkVersions::new(directory.clone());
        self.directory = directory;
        self
    }

    /// Enables adoption for creates marked `adopt`.
    pub fn with_adoption(mut self, rules: AdoptRules) -> Self {
        self.adopt = Some(Arc::new(rules));
        self
    }

    /// Starts `op` once a slot is free, accounting for any operations that finished meanwhile.
    pub async fn submit(&mut self, op: Op, report: &mut RunReport) -> Result<(), DispatchError> {
        if let Some(sink) = &self.dry_run {
            let sink = Arc::clone(sink);
            return self.plan(op, &sink, report).await;
        }
        let permit = self.slot(report).await?;
        let mut op = op;
        if op.changes.is_some() && op.version.is_none() {
            op.version = known_version(&self.store, &op)?;
            if op.version.is_none() {
                op.version = self.versions.lookup(&*self.target, &op.after.ext_id).await;
            }
        }
        let user = (op.nexudus_id, op.after.ext_id.clone());
        let task = self.write_task(op, permit);
        let handle = self.tasks.spawn(task);
        self.in_flight.insert(handle.id(), user);
        if let Some(progress) = &self.progress {
            progress.write_started();
        }
        Ok(())
    }

    /// A free write slot, settling whatever finished first, so a fatal outcome stops new work
    /// promptly.
    async fn slot(
        &mut self,
        report: &mut RunReport,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, DispatchError> {
        loop {
            while let Some(done) = self.tasks.try_join_next_with_id() {
                self.settle(done, report)?;
            }
            match Arc::clone(&self.permits).try_acquire_owned() {
                Ok(p) => return Ok(p),
                Err(_) => match self.tasks.join_next_with_id().await {
                    Some(done) => self.settle(done, report)?,
                    None => {
                        return Ok(Arc::clone(&self.permits)
                            .acquire_owned()
                            .await
                            .expect("dispatcher semaphore is never closed"));
                    }
                },
            }
        }
    }

    /// The write of `op` and its checkpoint, as a task of its own.
    fn write_task(
        &self,
        mut op: Op,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> impl std::future::Future<Output = Done> + Send + 'static {
        let target = Arc::clone(&self.target);
        let store = self.store.clone();
        let adopt = self.adopt.clone().filter(|_| op.adopt);
        let claimed = Arc::clone(&self.claimed);
        let directory = self.directory.clone();
        let log = self.log.clone();
        let redact = self.redact.clone();
        let span = tracing::info_span!("user", extId = %op.after.ext_id);
        async move {
            let result = match adopt {
                Some(rules) => {
                    let ctx = AdoptCtx {
                        target: &*target,
                        store: &store,
                        rules: &rules,
                        claimed: &claimed,
                        directory: &directory,
                    };
                    adopt_or_create(&ctx, &mut op).await
                }
                None => Ok(apply(&*target, &mut op).await),
            };
            // The slot bounds nevisIDM writes in flight, not disk work: the next write may
            // start while this checkpoint is made durable (flushes are group-committed, so a
            // SIGKILL loses at most the checkpoints of writes confirmed within one flush).
            drop(permit);
            let recorded = match result {
                Ok(Ok(applied)) => match not_taken(&op, &redact) {
                    None => record(&store, &log, &mut op, applied)
                        .await
                        .map(|()| Ok(applied)),
                    Some(e) => record_not_taken(&store, &log, &op, applied, e)
                        .await
                        .map(Err),
                },
                other => other,
            };
            (op, recorded)
        }
        .instrument(span)
    }

    /// Dry run: decides as a real run would (adoption reads nevisIDM) and prints the decision.
    async fn plan(
        &mut self,
        op: Op,
        sink: &PlanSink,
        report: &mut RunReport,
    ) -> Result<(), DispatchError> {
        let decision = match self.adopt.clone().filter(|_| op.adopt) {
            Some(rules) => {
                let ctx = AdoptCtx {
                    target: &*self.target,
                    store: &self.store,
                    rules: &rules,
                    claimed: &self.claimed,
                    directory: &self.directory,
                };
                match decide(&ctx, &op).await? {
                    Ok(d) => d,
                    Err(WriteError::Target(e)) if e.is_fatal() => {
                        return Err(DispatchError::Auth(e));
                    }
                    Err(e) => {
                        let mut line = op.plan_json();
                        line["op"] = json!("error");
                        line["reason"] = json!(e.to_string());
                        sink(&line);
                        let reason = e.to_string();
                        report.record(
                            op.nexudus_id,
                            Outcome::failed(&op.after.ext_id, reason, false),
                        );
                        return Ok(());
                    }
                }
            }
            None => Decision::Create,
        };
        plan_line(&op, decision, sink, report);
        Ok(())
    }

    /// Waits for every operation in flight.
    pub async fn finish(&mut self, report: &mut RunReport) -> Result<(), DispatchError> {
        let mut first_fatal = None;
        while let Some(done) = self.tasks.join_next_with_id().await {
            if let Err(e) = self.settle(done, report) {
                first_fatal.get_or_insert(e);
            }
        }
        first_fatal.map_or(Ok(()), Err)
    }

    /// A shutdown's grace is over: the writes still in flight are abandoned, unconfirmed and
    /// not checkpointed, each reported failed (the next run redoes them).
    pub fn abandon(mut self, report: &mut RunReport) {
        self.tasks.abort_all();
        for (_, (nexudus_id, ext_id)) in self.in_flight.drain() {
            report.record(
                nexudus_id,
                Outcome::failed(
                    &ext_id,
                    "abandoned at shutdown: the write was not confirmed in time",
                    false,
                ),
            );
        }
    }

    fn settle(
        &mut self,
        done: Result<(tokio::task::Id, Done), tokio::task::JoinError>,
        report: &mut RunReport,
    ) -> Result<(), DispatchError> {
        if let Some(progress) = &self.progress {
            progress.write_done(matches!(done, Ok((_, (_, Ok(Ok(_)))))));
        }
        let (op, result) = match done {
            Ok((id, outcome)) => {
                self.in_flight.remove(&id);
                outcome
            }
            // A panicking write task is a bug; the user is not checkpointed and will be retried.
            Err(e) => {
                tracing::error!(error = %e, "write task failed");
                if let Some((nexudus_id, ext_id)) = self.in_flight.remove(&e.id()) {
                    let reason = format!("internal error: the write task failed ({e})");
                    report.record(nexudus_id, Outcome::failed(&ext_id, reason, false));
                }
                return Ok(());
            }
        };
        match result? {
            Ok(applied) => {
                self.unavailable_streak = 0;
                tracing::debug!(extId = %op.after.ext_id, op = op.kind.as_str(), "confirmed");
                report.record(op.nexudus_id, outcome_of(&op, applied));
                note_forms(&op, report);
                Ok(())
            }
            Err(e) => self.refused(&op, e, report),
        }
    }

    /// A write that did not happen: fatal, a conflict, or a failure retried next run.
    fn refused(
        &mut self,
        op: &Op,
        e: WriteError,
        report: &mut RunReport,
    ) -> Result<(), DispatchError> {
        let ext_id = &op.after.ext_id;
        let e = match e {
            WriteError::Target(e) if e.is_fatal() => return Err(DispatchError::Auth(e)),
            e => e,
        };
        report.watermark.problem(op.updated_on.as_deref());
        let entry = trail::refused(op, &e);
        if let WriteError::Conflict { reason, candidates } = e {
            // A conflict stays until an operator resolves it: logged once while it lasts.
            let values: Vec<&str> = candidates.iter().map(String::as_str).collect();
            self.log.write_once(entry, Code::Conflict, &values)?;
            self.unavailable_streak = 0;
            tracing::warn!(extId = %ext_id, %reason, ?candidates, "conflict: nothing written");
            self.store.record_failure(
                op.nexudus_id,
                &format!(
                    "conflict: {reason}; candidates: [{}]",
                    candidates.join(", ")
                ),
            )?;
            report.record(op.nexudus_id, conflict(op, reason, candidates));
            return Ok(());
        }
        let not_taken = matches!(e, WriteError::NotTaken { .. });
        if !not_taken {
            // (A value not taken was logged with the checkpoint of what nevisIDM holds.)
            self.log.write(entry)?;
        }
        let reason = self.keep_failure(op, &e)?;
        if not_taken {
            report.note_not_taken(op.nexudus_id);
        }
        let unavailable = e.is_unavailable();
        report.record(
            op.nexudus_id,
            Outcome::failed(ext_id, reason.clone(), unavailable),
        );
        if !unavailable {
            self.unavailable_streak = 0;
            return Ok(());
        }
        self.unavailable_streak += 1;
        if self.unavailable_streak >= UNAVAILABLE_TRIP {
            return Err(DispatchError::Unavailable(self.unavailable_streak, reason));
        }
        Ok(())
    }
}

impl<T: Target> Dispatcher<T> {
    /// Keeps why `op` failed with the user's failure record — with its [`Refusal`] when its
    /// values wait for their next try — and answers the reason the run reports.
    fn keep_failure(&self, op: &Op, e: &WriteError) -> Result<String, StoreError> {
        let (ext_id, reason) = (&op.after.ext_id, e.to_string());
        let Some(refusal) = self.backoff(op, e)? else {
            tracing::warn!(extId = %ext_id, op = op.kind.as_str(), error = %e, "write failed; will retry next run");
            self.store.record_failure(op.nexudus_id, &reason)?;
            return Ok(reason);
        };
        tracing::warn!(extId = %ext_id, op = op.kind.as_str(), error = %e, next_try = refusal.next_at, "refused; these values wait for their next try");
        self.store
            .record_refusal(op.nexudus_id, &reason, &refusal)?;
        Ok(format!("{reason}; {}", refusal.note()))
    }

    /// The refusal `e` makes of `op`'s values, when they are to wait for their next try: a
    /// create or update refused for the user's own values. A disable (or archive) is never
    /// backed off: a refused disable is access kept, tried every run.
    fn backoff(&self, op: &Op, e: &WriteError) -> Result<Option<Refusal>, StoreError> {
        if !e.refuses_values() || !matches!(op.kind, OpKind::Create | OpKind::Update) {
            return Ok(None);
        }
        let digest = op.fingerprint.unwrap_or_else(|| fingerprint(&op.after));
        let before = self.store.refusal(op.nexudus_id)?;
        let now = self.store.clock().now();
        let not_taken = matches!(e, WriteError::NotTaken { .. });
        Ok(Some(Refusal::after(
            before.as_ref(),
            digest,
            now,
            not_taken,
        )))
    }
}

/// A write nevisIDM confirmed whose answer (or the read after a `204`, when verified) holds a
/// value sent as no form of it: the values not taken, as an error; `None` when every value was
/// taken (or nothing says otherwise).
fn not_taken(op: &Op, redact: &Redact) -> Option<WriteError> {
    let (sent, answer) = op.forms.answer.as_ref()?;
    let fields = forms::not_taken(&op.after, sent, answer);
    if fields.is_empty() {
        return None;
    }
    let status = op.why.status.unwrap_or(200);
    let shown: Vec<String> = fields
        .iter()
        .map(|(field, form)| not_taken_words(*field, form, redact))
        .collect();
    let detail = format!(
        "nevisIDM answered {status} but did not take {}: not a form of the same value (a \
         policy or a read-only attribute in nevisIDM keeps it)",
        shown.join(", ")
    );
    Some(WriteError::NotTaken {
        status,
        detail,
        fields,
    })
}

/// One field not taken, its values as `audit.values` shows them (from the structure: the value
/// held and the value sent, never parsed out of a text).
fn not_taken_words(field: Field, form: &Form, redact: &Redact) -> String {
    let change = Change {
        field: field.as_str().to_string(),
        before: Some(form.held.clone()),
        after: Some(form.sent.clone()),
    };
    let shown = redact.apply(vec![change]);
    match shown.first().map(|c| (&c.before, &c.after)) {
        Some((Some(held), Some(sent))) => format!(
            "{}: it still holds {} (sent {})",
            field.as_str(),
            crate::mapper::shown(held),
            crate::mapper::shown(sent)
        ),
        _ => format!(
            "{}: it holds another value than the one sent (values withheld by audit.values)",
            field.as_str()
        ),
    }
}

/// Reports the forms nevisIDM's answer taught. A write whose every field the answer showed in
/// the directory's own form set back no drift: the difference was that form.
fn note_forms(op: &Op, report: &mut RunReport) {
    let learned = &op.forms.learned;
    for (field, form) in learned {
        tracing::info!(extId = %op.after.ext_id, field = field.as_str(), "nevisIDM keeps this value in its own form; not written again");
        report.note_form(
            op.nexudus_id,
            &op.after.ext_id,
            (field.as_str(), &form.sent, &form.held),
        );
    }
    let Some(changes) = &op.changes else { return };
    let explained = |f: Field| learned.iter().any(|(l, _)| *l == f);
    let all = changes.state.is_none()
        && changes.properties.is_empty()
        && (changes.login_id.is_none() || explained(Field::LoginId))
        && (changes.email.is_none() || explained(Field::Email))
        && (changes.language_code.is_none() || explained(Field::LanguageCode))
        && (changes.name.is_none() || explained(Field::FirstName) || explained(Field::FamilyName));
    if !learned.is_empty() && all {
        report.unnote_drift(op.nexudus_id);
    }
}

/// A dry run's line for one decision, and the outcome it would have.
fn plan_line(op: &Op, decision: Decision, sink: &PlanSink, report: &mut RunReport) {
    match decision {
        Decision::Create => {
            sink(&op.plan_json());
            report.record(op.nexudus_id, outcome_of(op, Applied::Written));
        }
        Decision::Adopt {
            ext_id, changes, ..
        } => {
            sink(&json!({
                "op": "adopt",
                "extId": ext_id,
                "nexudusId": op.nexudus_id,
                "changes": changes.to_json(),
            }));
            report.record(op.nexudus_id, Outcome::Adopted { ext_id });
        }
        Decision::Conflict { reason, candidates } => {
            sink(&json!({
                "op": "conflict",
                "extId": op.after.ext_id,
                "nexudusId": op.nexudus_id,
                "candidates": candidates,
                "reason": reason,
            }));
            report.record(op.nexudus_id, conflict(op, reason, candidates));
        }
    }
}

fn conflict(op: &Op, reason: String, candidates: Vec<String>) -> Outcome {
    Outcome::Conflict {
        ext_id: op.after.ext_id.clone(),
        reason,
        candidates,
    }
}

/// Checkpoints a confirmed operation (with the link of an adoption and the directory's forms)
/// and its provisioning-log entry in one atomic step, and makes them durable: a checkpoint is
/// never without the entry that explains it, nor an entry without its checkpoint.
async fn record(
    store: &Store,
    log: &Recorder,
    op: &mut Op,
    applied: Applied,
) -> Result<(), StoreError> {
    let forms = forms_to_keep(store, op)?;
    let checkpoint = UserCheckpoint {
        nexudus_id: op.nexudus_id,
        user: &op.after,
        fingerprint: op.fingerprint.unwrap_or_else(|| fingerprint(&op.after)),
        version: op.version,
        forms: forms.as_ref(),
        link: matches!(applied, Applied::Adopted { .. }).then_some(op.after.ext_id.as_str()),
    };
    log.write_with(
        store,
        trail::confirmed(op, applied),
        Checkpoint::User(checkpoint),
    )?;
    store.flush().await
}

/// A write nevisIDM confirmed without taking every value: its entry says so (refused, with the
/// status nevisIDM answered), an adoption keeps its link, and the checkpoint records what
/// nevisIDM holds — the values it kept, not those sent, under their own fingerprint — so that the
/// next run still sees the difference (and the refusal decides when it is sent again).
async fn record_not_taken(
    store: &Store,
    log: &Recorder,
    op: &Op,
    applied: Applied,
    e: WriteError,
) -> Result<WriteError, StoreError> {
    log.write(trail::refused(op, &e))?;
    if let Applied::Adopted { .. } = applied {
        store.set_link(op.nexudus_id, &op.after.ext_id)?;
    }
    let mut held = op.after.clone();
    if let WriteError::NotTaken { fields, .. } = &e {
        for (field, form) in fields {
            field.set(&mut held, &form.held);
        }
    }
    store.put_still_failing(op.nexudus_id, &held, fingerprint(&held), op.version)?;
    store.flush().await?;
    Ok(e)
}

/// The forms to keep with a confirmed write (`None`: leave the stored ones): a reconcile's
/// reading, and what nevisIDM's answer to the PATCH taught (noted in `op.forms.learned` for the
/// report).
fn forms_to_keep(store: &Store, op: &mut Op) -> Result<Option<Forms>, StoreError> {
    let notes = &mut op.forms;
    if notes.keep.is_none() && notes.answer.is_none() {
        return Ok(None);
    }
    let mut forms = match notes.keep.take() {
        Some(forms) => forms,
        None => store.forms(op.nexudus_id)?,
    };
    if let Some((sent, answer)) = notes.answer.take() {
        notes.learned = forms.learn_from_answer(&op.after, &sent, &answer);
    }
    Ok(Some(forms))
}

/// The outcome of a confirmed operation.
fn outcome_of(op: &Op, applied: Applied) -> Outcome {
    match (applied, op.kind) {
        (Applied::Adopted { .. }, _) => Outcome::Adopted {
            ext_id: op.after.ext_id.clone(),
        },
        (Applied::AlreadyRight, _) => Outcome::Unchanged,
        (Applied::Written, OpKind::Create) => Outcome::Created,
        (Applied::Written, OpKind::Update) => Outcome::Updated,
        (Applied::Written, OpKind::Disable) => Outcome::Disabled,
        (Applied::Written, OpKind::Archive) => Outcome::Archived,
    }
}

/// Adoption reads at most this many matches per lookup (more is a conflict anyway).
const ADOPT_LOOKUP_LIMIT: u32 = 10;

/// What adoption decides from: the rules and the run's shared state.
struct AdoptCtx<'a, T: Target> {
    target: &'a T,
    store: &'a Store,
    rules: &'a AdoptRules,
    claimed: &'a Mutex<HashSet<String>>,
    directory: &'a SharedDirectory,
}

impl<T: Target> AdoptCtx<'_, T> {
    /// The adoption index, built once from the run's read of nevisIDM's listing.
    async fn index(&self) -> Result<&AdoptIndex, TargetError> {
        let index = self
            .rules
            .index
            .get_or_init(|| async {
                let directory = self.directory.get(self.target).await?;
                Ok(AdoptIndex::of(directory))
            })
            .await;
        index.as_ref().map_err(Clone::clone)
    }
}

/// Looks for pre-existing nevisIDM users with this user's loginId or email and decides.
async fn decide<T: Target>(
    ctx: &AdoptCtx<'_, T>,
    op: &Op,
) -> Result<Result<Decision, WriteError>, StoreError> {
    let desired = &op.after;
    let mut found = match ctx.index().await {
        Ok(index) => index.matches(desired),
        Err(e) => return Ok(Err(e.into())),
    };
    // Our own user (same extId) is not a candidate: creating it converges on it.
    if found.remove(&desired.ext_id).is_some() || found.is_empty() {
        return Ok(Ok(Decision::Create));
    }
    if found.len() > 1 {
        return Ok(Ok(Decision::Conflict {
            reason: format!(
                "{} nevisIDM users match loginId {:?} or email {:?}",
                found.len(),
                desired.login_id,
                desired.email
            ),
            candidates: found.into_keys().collect(),
        }));
    }
    let (ext_id, existing) = found.into_iter().next().expect("exactly one candidate");
    let owner = ctx.rules.owners.owner(ctx.store, &ext_id)?;
    if let Some(owner) = owner.filter(|o| *o != op.nexudus_id) {
        return Ok(Ok(Decision::Conflict {
            reason: format!("the matching nevisIDM user is already linked to Nexudus user {owner}"),
            candidates: vec![ext_id],
        }));
    }
    if !ctx
        .claimed
        .lock()
        .expect("claims lock is never poisoned")
        .insert(ext_id.clone())
    {
        return Ok(Ok(Decision::Conflict {
            reason: "the matching nevisIDM user is being adopted for another Nexudus user".into(),
            candidates: vec![ext_id],
        }));
    }
    let after = adopted_as(desired, &ext_id, ctx.rules);
    let changes = changes_between(&after, &existing);
    let version = existing.version;
    Ok(Ok(Decision::Adopt {
        ext_id,
        changes,
        version,
        held: Box::new(existing),
    }))
}

enum Lookup {
    Found(BTreeMap<String, Value>),
    /// More matches than one page holds; some of their extIds.
    TooMany(Vec<String>),
}

/// nevisIDM users whose loginId or email is this user's (case-insensitive), by extId.
///
/// How nevisIDM compares filter values is not documented, so the lookup does not depend on it:
/// each value is asked for normalised (trimmed, lower-case) and, when it differs, as spelled, and
/// only answers that really match (case-insensitively) are kept: a server that matches by
/// substring or prefix cannot produce false conflicts.
async fn candidates<T: Target>(target: &T, desired: &DesiredUser) -> Result<Lookup, TargetError> {
    let mut found: BTreeMap<String, Value> = BTreeMap::new();
    let mut lookups: Vec<(&str, &str, &[&str])> = Vec::new();
    if !desired.login_id.is_empty() {
        lookups.push(("loginId", desired.login_id.trim(), &["loginId"]));
    }
    lookups.push((
        "contacts.email",
        desired.email.trim(),
        &["contacts", "email"],
    ));
    for (filter, value, path) in lookups {
        let normalised = value.to_lowercase();
        let mut spellings = vec![normalised.as_str()];
        if value != normalised {
            spellings.push(value);
        }
        for spelling in spellings {
            let items = match list_all(target, &[(filter, spelling)], ADOPT_LOOKUP_LIMIT, 1).await {
                Ok(items) => items,
                // More than one page of matches: certainly ambiguous.
                Err(TargetError::EndlessListing { .. }) => {
                    return Ok(Lookup::TooMany(found.into_keys().collect()));
                }
                Err(e) => return Err(e),
            };
            for item in items {
                let held = path
                    .iter()
                    .try_fold(&item, |v, key| v.get(*key))
                    .and_then(Value::as_str);
                if held.is_none_or(|h| h.trim().to_lowercase() != normalised) {
                    continue;
                }
                if let Some(ext) = item.get("extId").and_then(Value::as_str) {
                    found.insert(ext.to_string(), item.clone());
                }
            }
        }
    }
    Ok(Lookup::Found(found))
}

/// The desired user under an adopted extId.
fn adopted_as(desired: &DesiredUser, ext_id: &str, rules: &AdoptRules) -> DesiredUser {
    let mut after = desired.clone();
    after.ext_id = ext_id.to_string();
    if rules.login_from_ext_id {
        after.login_id = ext_id.to_string();
    }
    after
}

/// A create under `sync.adopt = "email"`: adopt, create, or report a conflict.
async fn adopt_or_create<T: Target>(
    ctx: &AdoptCtx<'_, T>,
    op: &mut Op,
) -> Result<Result<Applied, WriteError>, StoreError> {
    let decision = match decide(ctx, op).await? {
        Ok(d) => d,
        Err(e) => return Ok(Err(e)),
    };
    Ok(match decision {
        Decision::Create => apply(ctx.target, op).await,
        Decision::Conflict { reason, candidates } => {
            Err(WriteError::Conflict { reason, candidates })
        }
        Decision::Adopt {
            ext_id,
            changes,
            version,
            held,
        } => {
            tracing::info!(adopted = %ext_id, nexudus_id = op.nexudus_id, "adopting the pre-existing nevisIDM user");
            op.after = adopted_as(&op.after, &ext_id, ctx.rules);
            op.version = version;
            op.changes = Some(changes.clone());
            op.why = Why::new(cause::ADOPTED, Some(*held));
            if changes.is_empty() {
                Ok(Applied::Adopted { wrote: false })
            } else {
                patch(ctx.target, &op.after, &changes, version, op.forms.verify)
                    .await
                    .map(|patched| {
                        patched.into_op(op);
                        Applied::Adopted { wrote: true }
                    })
            }
        }
    })
}

/// The version a PATCH of `op` starts from when its plan did not bring one: the one kept with
/// the checkpoint. (A step of its own: a caller holding versions in bulk, from a listing, sets
/// `Op::version` instead.)
fn known_version(store: &Store, op: &Op) -> Result<Option<i64>, StoreError> {
    store.version(op.nexudus_id)
}

/// The version a PATCH of `ext_id` carries: the one known, else read from nevisIDM now (a
/// create's 201 carries none). `Err(NotFound)` when nevisIDM has no such user. `Ok(None)` when
/// nevisIDM reports no version at all: the PATCH then goes without one, as such a server expects.
pub async fn version_for<T: Target>(
    target: &T,
    ext_id: &str,
    known: Option<i64>,
) -> Result<Option<i64>, TargetError> {
    if known.is_some() {
        return Ok(known);
    }
    match target.get(ext_id).await? {
        Some(user) => Ok(version_of(&user)),
        None => Err(TargetError::NotFound),
    }
}

/// What a PATCH left: the version nevisIDM reported after it, and its answer (the user, when it
/// answered 200 with one) with the changes that PATCH sent.
#[derive(Debug, Default)]
struct Patched {
    version: Option<i64>,
    answer: Option<(Changes, Observed)>,
    /// nevisIDM's status for the PATCH (`None`: nothing was sent).
    status: Option<u16>,
    /// What the PATCH sent, when one was sent.
    sent: Option<Changes>,
}

impl Patched {
    fn of(sent: &Changes, answer: Option<Value>) -> Patched {
        Patched {
            version: answer.as_ref().and_then(version_of),
            status: Some(if answer.is_some() { 200 } else { 204 }),
            answer: answer.map(|user| (sent.clone(), Observed::from_nevis_json(&user))),
            sent: Some(sent.clone()),
        }
    }

    /// A PATCH answered `204` (without the user) of a user to verify: the user read back
    /// stands for the answer, so that a value nevisIDM did not take is seen at once.
    async fn verified<T: Target>(
        mut self,
        target: &T,
        ext_id: &str,
        verify: bool,
    ) -> Result<Patched, WriteError> {
        let Some(sent) = self
            .sent
            .clone()
            .filter(|_| verify && self.answer.is_none())
        else {
            return Ok(self);
        };
        let user = target.get(ext_id).await?.ok_or(TargetError::NotFound)?;
        self.version = version_of(&user).or(self.version);
        self.answer = Some((sent, Observed::from_nevis_json(&user)));
        Ok(self)
    }

    /// Notes what the PATCH left in `op`.
    fn into_op(self, op: &mut Op) {
        op.version = self.version;
        op.forms.answer = self.answer;
        op.why.status = self.status;
    }
}

/// PATCHes `changes` towards `desired` (see [`patch_locked`]); with `verify`, a `204` is
/// followed by a read of the user ([`Patched::verified`]).
async fn patch<T: Target>(
    target: &T,
    desired: &DesiredUser,
    changes: &Changes,
    known: Option<i64>,
    verify: bool,
) -> Result<Patched, WriteError> {
    patch_locked(target, desired, changes, known)
        .await?
        .verified(target, &desired.ext_id, verify)
        .await
}

/// PATCHes `changes` towards `desired` under optimistic locking. A 409 (the user changed under
/// us) is never retried with the same body: the user is read, `desired` is diffed against what
/// nevisIDM holds now (owned fields are set back, fields this tool does not own keep the hand
/// edit) and PATCHed once more with the fresh version. A second 409 fails the user for this run.
async fn patch_locked<T: Target>(
    target: &T,
    desired: &DesiredUser,
    changes: &Changes,
    known: Option<i64>,
) -> Result<Patched, WriteError> {
    let ext_id = desired.ext_id.as_str();
    let version = version_for(target, ext_id, known).await?;
    match target.update(ext_id, changes, version).await {
        Err(TargetError::Stale { .. }) => {}
        other => return Ok(Patched::of(changes, other?)),
    }
    tracing::info!(extId = %ext_id, "changed in nevisIDM meanwhile (409); reading it and diffing again");
    let current = target.get(ext_id).await?.ok_or(TargetError::NotFound)?;
    let seen = Observed::from_nevis_json(&current);
    let mut again = changes_between(desired, &seen);
    // Properties this tool removes are still removed where they are still there.
    for (name, value) in &changes.properties {
        if value.is_none() && seen.properties.contains_key(name) {
            again.properties.insert(name.clone(), None);
        }
    }
    let fresh = version_of(&current);
    if again.is_empty() {
        return Ok(Patched {
            version: fresh,
            ..Patched::default()
        });
    }
    match target.update(ext_id, &again, fresh).await {
        Err(TargetError::Stale { .. }) => Err(WriteError::Contended {
            ext_id: ext_id.to_string(),
        }),
        other => Ok(Patched::of(&again, other?)),
    }
}

/// Makes one operation true in nevisIDM; `op.version` becomes the version nevisIDM reported.
async fn apply<T: Target>(target: &T, op: &mut Op) -> Result<Applied, WriteError> {
    if op.kind == OpKind::Archive {
        target.archive(&op.after.ext_id).await?;
        // Archiving changes the version; its answer is not read.
        op.version = None;
        return Ok(Applied::Written);
    }
    let Some(changes) = op.changes.clone() else {
        return create_or_converge(target, op).await;
    };
    match patch(target, &op.after, &changes, op.version, op.forms.verify).await {
        Ok(patched) => {
            patched.into_op(op);
            Ok(Applied::Written)
        }
        Err(WriteError::Target(TargetError::NotFound)) => {
            tracing::warn!(extId = %op.after.ext_id, "user missing in nevisIDM; creating it again");
            op.why.cause = format!("{}; {}", op.why.cause, cause::MISSING_IN_NEVIS);
            create_or_converge(target, op).await
        }
        Err(e) => Err(e),
    }
}

/// The extId of an archived account among the users holding a loginId or email, if any: an
/// archived account keeps its `loginId` and `extId` for good.
fn archived_holder(found: &BTreeMap<String, Value>) -> Option<String> {
    found
        .iter()
        .find(|(_, user)| user.get("userState").and_then(Value::as_str) == Some("archived"))
        .map(|(ext_id, _)| ext_id.clone())
}

/// Creates `op.after`; a duplicate converges on the existing user.
async fn create_or_converge<T: Target>(target: &T, op: &mut Op) -> Result<Applied, WriteError> {
    match target.create(&op.after).await {
        Ok(()) => {
            // A create's 201 carries no version: the first update reads the user first.
            op.version = None;
            op.why.status = Some(201);
            Ok(Applied::Written)
        }
        Err(dup @ TargetError::Duplicate { .. }) => converge_existing(target, op, dup).await,
        Err(e) => Err(e.into()),
    }
}

/// The create collided: read our user and update it to the desired state. If nevisIDM has no user
/// under our extId, the collision is with someone else's user (same loginId): report it.
async fn converge_existing<T: Target>(
    target: &T,
    op: &mut Op,
    duplicate: TargetError,
) -> Result<Applied, WriteError> {
    let desired = &op.after;
    let Some(existing) = target.get(&desired.ext_id).await? else {
        // The loginId or email belongs to a user this tool does not own: a conflict for an
        // operator (or for `sync.adopt`), reported with whoever holds it.
        let held_by = match candidates(target, desired).await? {
            Lookup::Found(found) => {
                if let Some(archived) = archived_holder(&found) {
                    return Err(WriteError::ArchivedHolder {
                        ext_id: desired.ext_id.clone(),
                        login_id: desired.login_id.clone(),
                        holder: archived,
                    });
                }
                found.into_keys().collect()
            }
            Lookup::TooMany(some) => some,
        };
        return Err(WriteError::Conflict {
            reason: format!(
                "creating extId {} collided with a user this tool does not own ({duplicate})",
                desired.ext_id
            ),
            candidates: held_by,
        });
    };
    let seen = Observed::from_nevis_json(&existing);
    let changes = changes_between(desired, &seen);
    op.why.before = Some(seen);
    if changes.is_empty() {
        tracing::info!(extId = %desired.ext_id, "already present in nevisIDM with the desired values");
        op.version = version_of(&existing);
        return Ok(Applied::AlreadyRight);
    }
    tracing::info!(extId = %desired.ext_id, "already present in nevisIDM; updating it to the desired values");
    let verify = op.forms.verify;
    let patched = patch(target, desired, &changes, version_of(&existing), verify).await?;
    patched.into_op(op);
    Ok(Applied::Written)
}
