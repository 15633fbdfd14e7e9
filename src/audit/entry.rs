//! One provisioning-log entry, as written and as read back: what was done (or decided against)
//! to whom, the fields with their values before and after, the outcome, and the cause in words.

use serde::{Deserialize, Serialize};

use crate::diff::{Changes, Observed};
use crate::mapper::DesiredUser;
use crate::nevis::TargetError;

/// What the sync did, or decided against, for one person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Create,
    Update,
    Disable,
    /// A disabled user made active again.
    Enable,
    Archive,
    /// A pre-existing nevisIDM user linked to the Nexudus user (`sync.adopt`).
    Adopt,
    /// A role granted (`[[roles.map]]`).
    Grant,
    /// A role revoked.
    Revoke,
    /// Nothing was planned: the record could not be mapped (outcome `invalid`).
    Skip,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Disable => "disable",
            Operation::Enable => "enable",
            Operation::Archive => "archive",
            Operation::Adopt => "adopt",
            Operation::Grant => "grant",
            Operation::Revoke => "revoke",
            Operation::Skip => "skip",
        }
    }

    pub fn parse(s: &str) -> Option<Operation> {
        ALL_OPERATIONS.into_iter().find(|o| o.as_str() == s)
    }
}

pub const ALL_OPERATIONS: [Operation; 9] = [
    Operation::Create,
    Operation::Update,
    Operation::Disable,
    Operation::Enable,
    Operation::Archive,
    Operation::Adopt,
    Operation::Grant,
    Operation::Revoke,
    Operation::Skip,
];

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// nevisIDM confirmed the write (`status` says how).
    Confirmed,
    /// nevisIDM refused it (`status`, and its errors in `reason`).
    Refused,
    /// It could not be made: nevisIDM unreachable or failing, or the write not confirmed in time.
    Failed,
    /// The sync decided against it (`reason`): the deletion or revocation safety, an incomplete
    /// membership read.
    Held,
    /// Several nevisIDM users could be this person: nothing written (`reason`).
    Conflict,
    /// The Nexudus record cannot be mapped (`reason`).
    Invalid,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Confirmed => "confirmed",
            Verdict::Refused => "refused",
            Verdict::Failed => "failed",
            Verdict::Held => "held",
            Verdict::Conflict => "conflict",
            Verdict::Invalid => "invalid",
        }
    }

    pub fn parse(s: &str) -> Option<Verdict> {
        ALL_VERDICTS.into_iter().find(|v| v.as_str() == s)
    }
}

impl Verdict {
    /// How a write nevisIDM did not make reads in an entry: `refused` with the status nevisIDM
    /// answered (it judged the write), else `failed` (unreachable, failing, not understood).
    pub fn of_target_error(e: &TargetError) -> (Verdict, Option<u16>) {
        match e {
            TargetError::Rejected { status, .. } | TargetError::Duplicate { status, .. } => {
                (Verdict::Refused, Some(*status))
            }
            TargetError::Stale { .. } => (Verdict::Refused, Some(409)),
            _ => (Verdict::Failed, None),
        }
    }
}

pub const ALL_VERDICTS: [Verdict; 6] = [
    Verdict::Confirmed,
    Verdict::Refused,
    Verdict::Failed,
    Verdict::Held,
    Verdict::Conflict,
    Verdict::Invalid,
];

/// One field a write changed: what nevisIDM held before (from the checkpoint or a read; absent
/// for a create) and what was sent. Under `audit.values = "hashed"` both are keyed hashes, under
/// `"none"` both are left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// RFC 3339, UTC, whole seconds.
    pub time: String,
    /// Where the entry stands in the log (`<unix seconds>-<sequence>`, unique): a page that
    /// ends with it is followed by `--before` this.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cursor: String,
    pub run_id: String,
    /// `full`, `incremental` or `reconcile`.
    pub mode: String,
    pub ext_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nexudus_id: Option<u64>,
    pub operation: Operation,
    pub changes: Vec<Change>,
    pub outcome: Verdict,
    /// nevisIDM's HTTP status, when it answered one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why it was refused, held, failed or invalid; how a confirmation came about when it is
    /// worth saying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why the sync did it, in words.
    pub cause: String,
}

/// The first byte of a stored entry: its encoding.
const STORED_FORMAT: u8 = 1;

/// An entry as the store keeps it (postcard after [`STORED_FORMAT`]): the time, the Nexudus Id
/// and the extId are the store's keys and header, so they are not repeated here. Field order and
/// enum variant order are the format: new ones go last.
#[derive(Serialize, Deserialize)]
struct Stored {
    run_id: String,
    mode: String,
    operation: Operation,
    changes: Vec<(String, Option<String>, Option<String>)>,
    outcome: Verdict,
    status: Option<u16>,
    reason: Option<String>,
    cause: String,
}

impl Draft {
    /// The stored form of this entry of run `run_id` in `mode` (the time, Nexudus Id and extId
    /// are what the store keys it by, so they are not in it).
    pub fn to_stored(&self, run_id: &str, mode: &str) -> Vec<u8> {
        let stored = Stored {
            run_id: run_id.to_string(),
            mode: mode.to_string(),
            operation: self.operation,
            changes: self
                .changes
                .iter()
                .map(|c| (c.field.clone(), c.before.clone(), c.after.clone()))
                .collect(),
            outcome: self.outcome,
            status: self.status,
            reason: self.reason.clone(),
            cause: self.cause.clone(),
        };
        let mut out = vec![STORED_FORMAT];
        out.extend(postcard::to_allocvec(&stored).expect("encoding into memory cannot fail"));
        out
    }
}

impl Entry {
    /// Reads a stored entry back, with what the store keyed it by.
    pub fn from_stored(
        time: String,
        nexudus_id: Option<u64>,
        ext_id: String,
        body: &[u8],
    ) -> Result<Entry, String> {
        let Some((&STORED_FORMAT, rest)) = body.split_first() else {
            return Err("unknown entry format".into());
        };
        let s: Stored = postcard::from_bytes(rest).map_err(|e| e.to_string())?;
        Ok(Entry {
            time,
            cursor: String::new(),
            run_id: s.run_id,
            mode: s.mode,
            ext_id,
            nexudus_id,
            operation: s.operation,
            changes: s
                .changes
                .into_iter()
                .map(|(field, before, after)| Change {
                    field,
                    before,
                    after,
                })
                .collect(),
            outcome: s.outcome,
            status: s.status,
            reason: s.reason,
            cause: s.cause,
        })
    }
}

/// What a caller knows of one entry (the recorder adds the time, the run and the mode, and
/// applies `audit.values`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    pub nexudus_id: Option<u64>,
    pub ext_id: String,
    pub operation: Operation,
    /// Plain values; redacted by the recorder.
    pub changes: Vec<Change>,
    pub outcome: Verdict,
    pub status: Option<u16>,
    pub reason: Option<String>,
    pub cause: String,
}

impl Draft {
    /// A decision about user `nexudus_id` that changes no field (an invalid record, a conflict,
    /// a disabled user left so): `operation` would have been written, `outcome` says why not.
    pub fn decision(
        (nexudus_id, ext_id): (u64, &str),
        operation: Operation,
        outcome: Verdict,
        reason: String,
        cause: &str,
    ) -> Draft {
        Draft {
            nexudus_id: Some(nexudus_id),
            ext_id: ext_id.to_string(),
            operation,
            changes: Vec::new(),
            outcome,
            status: None,
            reason: Some(reason),
            cause: cause.to_string(),
        }
    }
}

/// Why a write is planned, carried with it to the entry its outcome writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Why {
    /// The cause in words ([`super::cause`]).
    pub cause: String,
    /// What nevisIDM held before the write: the checkpoint, or what a read showed. `None` for
    /// a create.
    pub before: Option<Observed>,
    /// nevisIDM's HTTP status for the write, once it answered one (set by the dispatcher).
    pub status: Option<u16>,
}

impl Why {
    pub fn new(cause: impl Into<String>, before: Option<Observed>) -> Why {
        Why {
            cause: cause.into(),
            before,
            status: None,
        }
    }
}

/// The fields a write sets with their values before and after: every field of a create, the
/// changed ones of an update (a name half that stays the same is left out).
pub fn changes_of(
    after: &DesiredUser,
    changes: Option<&Changes>,
    before: Option<&Observed>,
) -> Vec<Change> {
    let mut out = Vec::new();
    let mut push = |field: &str, held: Option<&str>, sent: Option<&str>| {
        if held.is_some() && held == sent {
            return;
        }
        out.push(Change {
            field: field.to_string(),
            before: held.map(str::to_string),
            after: sent.map(str::to_string),
        });
    };
    let b = before.cloned().unwrap_or_default();
    let Some(c) = changes else {
        if !after.login_id.is_empty() {
            push("loginId", b.login_id.as_deref(), Some(&after.login_id));
        }
        push(
            "name.firstName",
            b.first_name.as_deref(),
            Some(&after.first_name),
        );
        push(
            "name.familyName",
            b.family_name.as_deref(),
            Some(&after.family_name),
        );
        push("contacts.email", b.email.as_deref(), Some(&after.email));
        push(
            "languageCode",
            b.language_code.as_deref(),
            Some(&after.language_code),
        );
        push("userState", b.state.as_deref(), Some(after.state.as_str()));
        for (k, v) in &after.properties {
            push(
                &format!("properties.{k}"),
                b.properties.get(k).map(String::as_str),
                Some(v),
            );
        }
        return out;
    };
    if let Some(login) = &c.login_id {
        push("loginId", b.login_id.as_deref(), Some(login));
    }
    if let Some((first, family)) = &c.name {
        push("name.firstName", b.first_name.as_deref(), Some(first));
        push("name.familyName", b.family_name.as_deref(), Some(family));
    }
    if let Some(email) = &c.email {
        push("contacts.email", b.email.as_deref(), Some(email));
    }
    if let Some(lang) = &c.language_code {
        push("languageCode", b.language_code.as_deref(), Some(lang));
    }
    if let Some(state) = c.state {
        push("userState", b.state.as_deref(), Some(state.as_str()));
    }
    for (k, v) in &c.properties {
        push(
            &format!("properties.{k}"),
            b.properties.get(k).map(String::as_str),
            v.as_deref(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapper::UserState;

    fn user() -> DesiredUser {
        DesiredUser {
            ext_id: "nexudus-1".into(),
            login_id: "ada@example.com".into(),
            first_name: "Ada".into(),
            family_name: "Lovelace".into(),
            email: "ada@example.com".into(),
            language_code: "en".into(),
            state: UserState::Active,
            properties: Default::default(),
        }
    }

    #[test]
    fn a_create_lists_every_field_with_nothing_before() {
        let changes = changes_of(&user(), None, None);
        let fields: Vec<_> = changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "loginId",
                "name.firstName",
                "name.familyName",
                "contacts.email",
                "languageCode",
                "userState"
            ]
        );
        assert!(
            changes
                .iter()
                .all(|c| c.before.is_none() && c.after.is_some())
        );
    }

    #[test]
    fn an_update_lists_the_changed_fields_with_before_and_after() {
        let old = user();
        let mut new = user();
        new.family_name = "King".into();
        new.state = UserState::Disabled;
        let diff = crate::diff::changes_between(&new, &Observed::from(&old));
        let changes = changes_of(&new, Some(&diff), Some(&Observed::from(&old)));
        assert_eq!(
            changes,
            [
                Change {
                    field: "name.familyName".into(),
                    before: Some("Lovelace".into()),
                    after: Some("King".into()),
                },
                Change {
                    field: "userState".into(),
                    before: Some("active".into()),
                    after: Some("disabled".into()),
                },
            ]
        );
    }

    #[test]
    fn an_entry_reads_back_from_its_stored_form() {
        let draft = Draft {
            nexudus_id: Some(1),
            ext_id: "nexudus-1".into(),
            operation: Operation::Revoke,
            changes: changes_of(&user(), None, None),
            outcome: Verdict::Held,
            status: None,
            reason: Some("why".into()),
            cause: "because".into(),
        };
        let stored = draft.to_stored("r", "full");
        let time = "2026-12-05T09:00:00Z".to_string();
        let back = Entry::from_stored(time.clone(), Some(1), "nexudus-1".into(), &stored);
        let expected = Entry {
            time,
            cursor: String::new(),
            run_id: "r".into(),
            mode: "full".into(),
            ext_id: draft.ext_id,
            nexudus_id: draft.nexudus_id,
            operation: draft.operation,
            changes: draft.changes,
            outcome: draft.outcome,
            status: draft.status,
            reason: draft.reason,
            cause: draft.cause,
        };
        assert_eq!(back.unwrap(), expected);
        assert!(Entry::from_stored(String::new(), None, String::new(), b"{}").is_err());
    }

    #[test]
    fn a_write_nevis_judged_is_refused_with_its_status_anything_else_failed() {
        let rejected = TargetError::Rejected {
            status: 422,
            code: "errors.invalidData".into(),
            message: "no".into(),
        };
        assert_eq!(
            Verdict::of_target_error(&rejected),
            (Verdict::Refused, Some(422))
        );
        let stale = TargetError::Stale {
            detail: String::new(),
        };
        assert_eq!(
            Verdict::of_target_error(&stale),
            (Verdict::Refused, Some(409))
        );
        assert_eq!(
            Verdict::of_target_error(&TargetError::NotFound),
            (Verdict::Failed, None)
        );
    }

    #[test]
    fn names_parse_back() {
        for op in ALL_OPERATIONS {
            assert_eq!(Operation::parse(op.as_str()), Some(op));
        }
        for v in ALL_VERDICTS {
            assert_eq!(Verdict::parse(v.as_str()), Some(v));
        }
        assert_eq!(Operation::parse("delete"), None);
    }
}
