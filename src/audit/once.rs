//! Once per decision: a decision against a write (a held disable or revocation, an invalid
//! record, a conflict) is logged once while it stays the same, however many runs repeat it.
//!
//! A person's decisions are told apart by operation and target (the role of a grant or a
//! revocation, else the field(s) the decision is about), each with a mark of its own, so two
//! held revocations of one person do not overwrite each other's. Two decisions are the same
//! when their [`Code`], operation, outcome, cause, fields and values are: never by the reason's
//! words, which carry counts that move from run to run ("36 disables exceed …", then 37).
//!
//! A confirmed write forgets the marks it concerns (a role's write that role's, a user's write
//! every mark of the user but the roles'): a decision that comes back after it is news again.

use super::entry::{Draft, Operation};

/// Why the sync decided against a write, as a stable code (it is part of a stored digest: a
/// name never changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The deletion safety held the disables (`sync.max_disables`, `sync.max_disable_percent`).
    DeletionSafety,
    /// An incomplete Nexudus listing held the disables.
    ListingIncomplete,
    /// Disables held by an earlier run, of people never looked up, wait for a complete full
    /// listing (which looks each one up first).
    AwaitingFullListing,
    /// The revocation safety held the revocations (`roles.max_revokes`,
    /// `roles.max_revoke_percent`), or an incomplete membership read did.
    RevocationSafety,
    /// The Nexudus record cannot be mapped: the rule it breaks
    /// ([`crate::mapper::InvalidReason::rule`]).
    Invalid(&'static str),
    /// Nexudus users share the email: adoption cannot tell who is who.
    SharedEmail,
    /// Several nevisIDM users could be this person, or the one that could is someone else's.
    Conflict,
    /// Disabled by hand in nevisIDM, left so (`sync.reenable_on_reconcile = false`).
    HandDisabledKept,
}

impl Code {
    fn name(self) -> String {
        match self {
            Code::DeletionSafety => "held.deletion_safety".into(),
            Code::ListingIncomplete => "held.listing_incomplete".into(),
            Code::AwaitingFullListing => "held.awaiting_full_listing".into(),
            Code::RevocationSafety => "held.revocation_safety".into(),
            Code::Invalid(rule) => format!("invalid.{rule}"),
            Code::SharedEmail => "conflict.shared_email".into(),
            Code::Conflict => "conflict.candidates".into(),
            Code::HandDisabledKept => "held.hand_disabled".into(),
        }
    }

    /// What a decision whose entry lists no field is about. An invalid record is one decision
    /// whatever rule it breaks: a record breaking another rule replaces it.
    fn target(self) -> Option<&'static str> {
        match self {
            Code::Invalid(_) => Some("record"),
            Code::SharedEmail => Some("contacts.email"),
            Code::HandDisabledKept => Some("userState"),
            _ => None,
        }
    }
}

/// The role a grant's or revocation's entry is about.
fn role_of(draft: &Draft) -> Option<&str> {
    if !matches!(draft.operation, Operation::Grant | Operation::Revoke) {
        return None;
    }
    let change = draft.changes.iter().find(|c| c.field == "roles")?;
    change.after.as_deref().or(change.before.as_deref())
}

/// The marks a written entry concerns: a role's (`r` + role), or the user's (`u`).
pub(super) fn scope(draft: &Draft) -> Vec<u8> {
    match role_of(draft) {
        Some(role) => [b"r\0", role.as_bytes(), b"\0"].concat(),
        None => b"u\0".to_vec(),
    }
}

/// The mark of a decision: its scope, operation and target.
pub(super) fn slot(draft: &Draft, code: Code) -> Vec<u8> {
    let target = match (role_of(draft), code.target()) {
        (Some(_), _) => String::new(),
        (None, Some(target)) => target.to_string(),
        (None, None) => {
            let mut fields: Vec<&str> = draft.changes.iter().map(|c| c.field.as_str()).collect();
            fields.sort_unstable();
            fields.join(",")
        }
    };
    [
        scope(draft).as_slice(),
        draft.operation.as_str().as_bytes(),
        b"\0",
        target.as_bytes(),
    ]
    .concat()
}

/// What makes two decisions the same: the code, the operation, the outcome, the cause, the
/// fields with their values, and `values` (what else the decision is about: the candidates of
/// a conflict, the record's value a rule refuses). Never the reason's words.
pub(super) fn digest(draft: &Draft, code: Code, values: &[&str]) -> u64 {
    let mut text = Vec::new();
    let mut part = |bytes: &[u8]| {
        // Length-prefixed: no two lists of parts read the same.
        text.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        text.extend_from_slice(bytes);
    };
    part(code.name().as_bytes());
    part(draft.operation.as_str().as_bytes());
    part(draft.outcome.as_str().as_bytes());
    part(draft.cause.as_bytes());
    for change in &draft.changes {
        part(change.field.as_bytes());
        for value in [&change.before, &change.after] {
            match value {
                Some(v) => part(format!("={v}").as_bytes()),
                None => part(b"-"),
            }
        }
    }
    for value in values {
        part(value.as_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Change, Verdict};

    fn revoke(role: &str, reason: &str) -> Draft {
        Draft {
            nexudus_id: Some(1),
            ext_id: "nexudus-1".into(),
            operation: Operation::Revoke,
            changes: vec![Change {
                field: "roles".into(),
                before: Some(role.into()),
                after: None,
            }],
            outcome: Verdict::Held,
            status: None,
            reason: Some(reason.into()),
            cause: "no longer in a UserRole".into(),
        }
    }

    #[test]
    fn each_role_has_its_own_mark_and_the_reason_text_is_not_the_decision() {
        let (a, b) = (revoke("a", "36 users"), revoke("b", "36 users"));
        assert_ne!(
            slot(&a, Code::RevocationSafety),
            slot(&b, Code::RevocationSafety)
        );
        assert_eq!(scope(&a), b"r\0a\0");
        let recounted = revoke("a", "37 users");
        assert_eq!(
            digest(&a, Code::RevocationSafety, &[]),
            digest(&recounted, Code::RevocationSafety, &[])
        );
        assert_ne!(
            digest(&a, Code::RevocationSafety, &[]),
            digest(&a, Code::DeletionSafety, &[])
        );
        assert_ne!(
            digest(&a, Code::Conflict, &["x"]),
            digest(&a, Code::Conflict, &["y"])
        );
    }

    #[test]
    fn an_invalid_record_is_one_decision_whatever_the_rule() {
        let draft = Draft::decision(
            (1, "nexudus-1"),
            Operation::Skip,
            Verdict::Invalid,
            "email is missing".into(),
            "cannot be mapped",
        );
        assert_eq!(
            slot(&draft, Code::Invalid("email_missing")),
            slot(&draft, Code::Invalid("name_missing"))
        );
        assert_eq!(scope(&draft), b"u\0");
    }
}
