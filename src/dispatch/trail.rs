//! The provisioning-log entry of each write the dispatcher settles: confirmed (with nevisIDM's
//! status), refused (with its errors), failed, or a conflict that wrote nothing.

use super::{Applied, Op, OpKind, WriteError};
use crate::audit::{Draft, Operation, Verdict, changes_of};
use crate::mapper::UserState;

/// The operation an entry names: an update that makes a user active again is an `enable`.
fn operation(op: &Op) -> Operation {
    match op.kind {
        OpKind::Create => Operation::Create,
        OpKind::Disable => Operation::Disable,
        OpKind::Archive => Operation::Archive,
        OpKind::Update
            if op
                .changes
                .as_ref()
                .is_some_and(|c| c.state == Some(UserState::Active)) =>
        {
            Operation::Enable
        }
        OpKind::Update => Operation::Update,
    }
}

impl Op {
    /// The provisioning-log entry of this write with `outcome` (a held disable, say): the
    /// fields with their values before and after, and the cause.
    pub fn draft(&self, outcome: Verdict) -> Draft {
        draft(self, operation(self), outcome)
    }
}

fn draft(op: &Op, operation: Operation, outcome: Verdict) -> Draft {
    Draft {
        nexudus_id: Some(op.nexudus_id),
        ext_id: op.after.ext_id.clone(),
        operation,
        changes: changes_of(&op.after, op.changes.as_ref(), op.why.before.as_ref()),
        outcome,
        status: None,
        reason: None,
        cause: op.why.cause.clone(),
    }
}

/// A write nevisIDM confirmed (or found already made).
pub(super) fn confirmed(op: &Op, applied: Applied) -> Draft {
    let (operation, reason) = match applied {
        Applied::Adopted { wrote: false } => (
            Operation::Adopt,
            Some("linked without a write: it already held the desired values"),
        ),
        Applied::Adopted { wrote: true } => (Operation::Adopt, None),
        Applied::AlreadyRight => (
            operation(op),
            Some("nevisIDM already held the desired values (an earlier write's answer was lost)"),
        ),
        Applied::Written => (operation(op), None),
    };
    Draft {
        status: op.why.status,
        reason: reason.map(str::to_string),
        ..draft(op, operation, Verdict::Confirmed)
    }
}

/// A write that did not happen: refused by nevisIDM, failed, or a conflict.
pub(super) fn refused(op: &Op, e: &WriteError) -> Draft {
    let (outcome, status) = match e {
        WriteError::Conflict { .. } => (Verdict::Conflict, None),
        WriteError::Target(e) => Verdict::of_target_error(e),
        WriteError::Contended { .. } => (Verdict::Refused, Some(409)),
        // The duplicate's status is not kept with it.
        WriteError::ArchivedHolder { .. } => (Verdict::Refused, None),
        WriteError::NotTaken { status, .. } => (Verdict::Refused, Some(*status)),
    };
    let reason = match e {
        WriteError::Conflict { reason, candidates } => {
            format!("{reason}; candidates: [{}]", candidates.join(", "))
        }
        other => other.to_string(),
    };
    Draft {
        status,
        reason: Some(reason),
        ..draft(op, operation(op), outcome)
    }
}
