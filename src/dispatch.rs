//! Applies operations to nevisIDM with at most `sync.concurrency` writes in flight, and records a
//! checkpoint for each write nevisIDM confirmed — right after the confirmation, in the same task,
//! so that a crash can only lose the checkpoint of a write, never invent one.
//!
//! A create answered "already exists" reads the user and brings it to the desired state; an update
//! answered "not found" (the user was removed by hand) recreates it. In dry-run mode the operation
//! is printed instead of sent, through the same path.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::diff::{Changes, Observed, changes_between, create_body};
use crate::mapper::DesiredUser;
use crate::nevis::{Target, TargetError};
use crate::report::{Failure, RunReport};
use crate::store::{Store, StoreError};

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

/// Errors that end the run.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Auth(TargetError),
    #[error("nevisIDM unavailable: {0} users in a row failed after retries (last: {1})")]
    Unavailable(u32, String),
    #[error("cannot record checkpoint: {0}")]
    Store(#[from] StoreError),
}

/// How a confirmed operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    Written,
    /// nevisIDM already held exactly the desired user; only the checkpoint was refreshed.
    AlreadyRight,
}

type Outcome = (Op, Result<Result<Applied, TargetError>, StoreError>);

pub struct Dispatcher<T: Target> {
    target: Arc<T>,
    store: Store,
    permits: Arc<Semaphore>,
    tasks: JoinSet<Outcome>,
    dry_run: Option<PlanSink>,
    unavailable_streak: u32,
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
            dry_run,
            unavailable_streak: 0,
        }
    }

    /// Starts `op` once a slot is free, accounting for any operations that finished meanwhile.
    pub async fn submit(&mut self, op: Op, report: &mut RunReport) -> Result<(), DispatchError> {
        if let Some(sink) = &self.dry_run {
            sink(&op.plan_json());
            count(&op, Applied::Written, report);
            return Ok(());
        }
        let permit = loop {
            // Settle whatever finished first, so a fatal outcome stops new work promptly.
            while let Some(done) = self.tasks.try_join_next() {
                self.settle(done, report)?;
            }
            match Arc::clone(&self.permits).try_acquire_owned() {
                Ok(p) => break p,
                Err(_) => match self.tasks.join_next().await {
                    Some(done) => self.settle(done, report)?,
                    None => {
                        break Arc::clone(&self.permits)
                            .acquire_owned()
                            .await
                            .expect("dispatcher semaphore is never closed");
                    }
                },
            }
        };
        let target = Arc::clone(&self.target);
        let store = self.store.clone();
        let span = tracing::info_span!("user", extId = %op.after.ext_id);
        self.tasks.spawn(
            async move {
                let result = apply(&*target, &op).await;
                // The slot bounds nevisIDM writes in flight, not disk work: the next write may
                // start while this checkpoint is made durable (flushes are group-committed, so a
                // SIGKILL loses at most the checkpoints of writes confirmed within one flush).
                drop(permit);
                let recorded = match &result {
                    Ok(_) => match store.put(op.nexudus_id, &op.after) {
                        Ok(()) => store.flush().await.map(|()| result),
                        Err(e) => Err(e),
                    },
                    Err(_) => Ok(result),
                };
                (op, recorded)
            }
            .instrument(span),
        );
        Ok(())
    }

    /// Waits for every operation in flight.
    pub async fn finish(&mut self, report: &mut RunReport) -> Result<(), DispatchError> {
        let mut first_fatal = None;
        while let Some(done) = self.tasks.join_next().await {
            if let Err(e) = self.settle(done, report) {
                first_fatal.get_or_insert(e);
            }
        }
        first_fatal.map_or(Ok(()), Err)
    }

    fn settle(
        &mut self,
        done: Result<Outcome, tokio::task::JoinError>,
        report: &mut RunReport,
    ) -> Result<(), DispatchError> {
        let (op, result) = match done {
            Ok(outcome) => outcome,
            // A panicking write task is a bug; the user is not checkpointed and will be retried.
            Err(e) => {
                tracing::error!(error = %e, "write task failed");
                report.failed += 1;
                return Ok(());
            }
        };
        let ext_id = &op.after.ext_id;
        match result? {
            Ok(applied) => {
                self.unavailable_streak = 0;
                tracing::debug!(extId = %ext_id, op = op.kind.as_str(), "confirmed");
                count(&op, applied, report);
                Ok(())
            }
            Err(e @ TargetError::Auth { .. }) => Err(DispatchError::Auth(e)),
            Err(e) => {
                tracing::warn!(extId = %ext_id, op = op.kind.as_str(), error = %e, "write failed; will retry next run");
                let reason = e.to_string();
                self.store.record_failure(op.nexudus_id, &reason)?;
                report.failed += 1;
                report.watermark.problem(op.updated_on.as_deref());
                report.failures.push(Failure {
                    nexudus_id: op.nexudus_id,
                    ext_id: ext_id.clone(),
                    reason: reason.clone(),
                });
                if matches!(e, TargetError::Unavailable { .. }) {
                    report.unavailable += 1;
                    self.unavailable_streak += 1;
                    if self.unavailable_streak >= UNAVAILABLE_TRIP {
                        return Err(DispatchError::Unavailable(self.unavailable_streak, reason));
                    }
                } else {
                    self.unavailable_streak = 0;
                }
                Ok(())
            }
        }
    }
}

fn count(op: &Op, applied: Applied, report: &mut RunReport) {
    match (applied, op.kind) {
        (Applied::AlreadyRight, _) => report.unchanged += 1,
        (Applied::Written, OpKind::Create) => report.created += 1,
        (Applied::Written, OpKind::Update) => report.updated += 1,
        (Applied::Written, OpKind::Disable) => report.disabled += 1,
        (Applied::Written, OpKind::Archive) => report.archived += 1,
    }
}

/// Makes one operation true in nevisIDM.
async fn apply<T: Target>(target: &T, op: &Op) -> Result<Applied, TargetError> {
    if op.kind == OpKind::Archive {
        return target
            .archive(&op.after.ext_id)
            .await
            .map(|()| Applied::Written);
    }
    match &op.changes {
        None => match target.create(&op.after).await {
            Ok(()) => Ok(Applied::Written),
            Err(dup @ TargetError::Duplicate { .. }) => {
                converge_existing(target, &op.after, dup).await
            }
            Err(e) => Err(e),
        },
        Some(changes) => match target.update(&op.after.ext_id, changes).await {
            Ok(()) => Ok(Applied::Written),
            Err(TargetError::NotFound) => {
                tracing::warn!(extId = %op.after.ext_id, "user missing in nevisIDM; creating it again");
                match target.create(&op.after).await {
                    Ok(()) => Ok(Applied::Written),
                    Err(dup @ TargetError::Duplicate { .. }) => {
                        converge_existing(target, &op.after, dup).await
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        },
    }
}

/// The create collided: read our user and update it to the desired state. If nevisIDM has no user
/// under our extId, the collision is with someone else's user (same loginId): report it.
async fn converge_existing<T: Target>(
    target: &T,
    desired: &DesiredUser,
    duplicate: TargetError,
) -> Result<Applied, TargetError> {
    let Some(existing) = target.get(&desired.ext_id).await? else {
        let TargetError::Duplicate {
            status,
            code,
            message,
        } = duplicate
        else {
            return Err(duplicate);
        };
        return Err(TargetError::Rejected {
            status,
            code,
            message: format!(
                "{message} (no nevisIDM user has extId {}: the loginId or email belongs to another user)",
                desired.ext_id
            ),
        });
    };
    let changes = changes_between(desired, &Observed::from_nevis_json(&existing));
    if changes.is_empty() {
        tracing::info!(extId = %desired.ext_id, "already present in nevisIDM with the desired values");
        return Ok(Applied::AlreadyRight);
    }
    tracing::info!(extId = %desired.ext_id, "already present in nevisIDM; updating it to the desired values");
    target.update(&desired.ext_id, &changes).await?;
    Ok(Applied::Written)
}
