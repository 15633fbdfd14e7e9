//! What a run did: one final outcome per user, from which every count, every problem line and
//! the metrics are derived (never kept beside it), held disables, and whether the listing was
//! complete. The exit code is derived from it, never guessed.
//!
//! A run may take several paths over the same user (an incremental pass, then the full listing a
//! deletion probe asked for; a create converged after a duplicate; a disable decided by the
//! settlement for a user listed outside the scope). Each user keeps **one** outcome: a later
//! outcome replaces an earlier one, except that a pass that found nothing to do (unchanged, out of
//! scope) never erases what an earlier pass did. Records without a usable Id cannot be told apart
//! across passes: the full pass that follows an incremental one replaces them
//! ([`RunReport::begin_full_pass`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// A user whose write was refused or could not be made; retried on the next run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub nexudus_id: u64,
    pub ext_id: String,
    pub reason: String,
}

/// A Nexudus record that could not be mapped; never sent, retried on every run until fixed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invalid {
    pub nexudus_id: Option<u64>,
    pub reason: String,
}

/// A user adoption could not settle (`sync.adopt`), or Nexudus users sharing one email: nothing
/// was written for it; an operator has to decide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub nexudus_id: u64,
    pub ext_id: String,
    pub reason: String,
    /// extIds of the nevisIDM users (or Nexudus Ids, for shared emails) in question.
    pub candidates: Vec<String>,
}

/// A pre-existing nevisIDM user taken over for a Nexudus user (`sync.adopt = "email"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Adoption {
    pub nexudus_id: u64,
    pub ext_id: String,
}

/// The one final outcome of a user in a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Disabled,
    Archived,
    /// Nothing to write: nevisIDM (or the checkpoint) already held the desired user.
    Unchanged,
    /// Listed, but outside `[scope]` (or the mapping's email domains): never written.
    OutOfScope,
    /// A pre-existing nevisIDM user was linked (and updated if it differed).
    Adopted {
        ext_id: String,
    },
    /// The write was refused or could not be made; `unavailable` when an API stayed unavailable
    /// (retries exhausted) rather than refusing.
    Failed {
        ext_id: String,
        reason: String,
        unavailable: bool,
    },
    /// The record could not be mapped; nothing was sent.
    Invalid {
        reason: String,
    },
    Conflict {
        ext_id: String,
        reason: String,
        candidates: Vec<String>,
    },
    /// A disable (or archive) held back by the deletion safety or an incomplete listing.
    Held {
        ext_id: String,
    },
}

impl Outcome {
    /// A pass that found nothing to do: never replaces what an earlier pass of the run did.
    fn is_quiet(&self) -> bool {
        matches!(self, Outcome::Unchanged | Outcome::OutOfScope)
    }

    pub fn failed(ext_id: &str, reason: impl Into<String>, unavailable: bool) -> Outcome {
        Outcome::Failed {
            ext_id: ext_id.to_string(),
            reason: reason.into(),
            unavailable,
        }
    }
}

/// A value nevisIDM keeps in its own form, learned in this run ([`crate::forms`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LearnedForm {
    pub nexudus_id: u64,
    pub ext_id: String,
    /// The field as nevisIDM names it (`contacts.email`).
    pub field: &'static str,
    pub sent: String,
    pub held: String,
}

/// What the role sync did to one owned role of a user ([`crate::roles`]): notes beside the
/// user's outcome, never an outcome of their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleChange {
    Granted,
    Revoked,
    /// A revocation held back by the revocation safety.
    Held,
    /// A grant or revocation that could not be made (retried on the next run).
    Failed {
        reason: String,
    },
    /// A reconcile could not read the user's profile or authorizations: none of their owned
    /// roles was checked (noted once per user, under the roles at stake).
    Unread {
        reason: String,
    },
}

/// A role change that needs an operator: a failure or a held revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleProblem {
    pub nexudus_id: u64,
    pub ext_id: String,
    pub role: String,
    /// `grant`, `revoke` or `held`.
    pub op: &'static str,
    pub reason: String,
}

/// Who an outcome belongs to: a Nexudus user, or a record without a usable Id (numbered in the
/// order the run met them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Subject {
    User(u64),
    Unidentified(u32),
}

/// What the run knows of one user: its outcome (none yet while its write is in flight) and what
/// a reconcile noticed on the way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Entry {
    outcome: Option<Outcome>,
    /// nevisIDM differed from Nexudus (reconcile); the write setting it back is the outcome.
    drift: bool,
    /// Disabled by hand in nevisIDM while active in Nexudus, left so: the user's extId.
    hand_disabled: Option<String>,
    /// nevisIDM confirmed a write of the user but did not take a value sent (the failure says
    /// which), now or at a try this run left waiting.
    not_taken: bool,
    /// Values nevisIDM keeps in its own form, learned in this run: (extId, field, sent, held).
    forms: Vec<(String, &'static str, String, String)>,
    /// Role changes of this run: (extId, roleExtId, wanted: grant or revoke, what happened).
    roles: Vec<(String, String, bool, RoleChange)>,
}

/// The counts of a run, derived from its outcomes ([`RunReport::counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub created: u64,
    pub updated: u64,
    pub disabled: u64,
    pub archived: u64,
    pub unchanged: u64,
    pub out_of_scope: u64,
    pub failed: u64,
    pub invalid: u64,
    pub held_disables: u64,
    /// Users adopted, and users left unwritten because of a conflict.
    pub adopted: u64,
    pub conflicts: u64,
    /// Users whose nevisIDM state differed from Nexudus (reconcile); the updates setting them
    /// back are counted in `updated`.
    pub drift: u64,
    /// Users disabled by hand in nevisIDM while active in Nexudus, left disabled
    /// (`sync.reenable_on_reconcile = false`).
    pub hand_disabled: u64,
    /// Failed users whose API stayed unavailable (retries exhausted), as opposed to users
    /// nevisIDM refused: these make the run unhealthy for `/readyz`.
    pub unavailable: u64,
    /// Values nevisIDM keeps in its own form, learned in this run (one per user and field).
    pub forms: u64,
    /// Failed users whose write nevisIDM confirmed without taking a value sent (counted in
    /// `failed` too).
    pub not_taken: u64,
    /// Owned nevisIDM roles granted, revoked, revocations held by the revocation safety, and
    /// role changes that failed (each role of each user once).
    pub granted: u64,
    pub revoked: u64,
    pub held_revokes: u64,
    pub role_failures: u64,
}

impl Counts {
    /// Every user with an outcome: each once.
    pub fn users(&self) -> u64 {
        self.created
            + self.updated
            + self.disabled
            + self.archived
            + self.unchanged
            + self.out_of_scope
            + self.failed
            + self.invalid
            + self.held_disables
            + self.adopted
            + self.conflicts
    }

    fn add(&mut self, entry: &Entry) {
        self.drift += u64::from(entry.drift);
        self.hand_disabled += u64::from(entry.hand_disabled.is_some());
        self.not_taken += u64::from(entry.not_taken);
        self.forms += entry.forms.len() as u64;
        for (_, _, _, change) in &entry.roles {
            *match change {
                RoleChange::Granted => &mut self.granted,
                RoleChange::Revoked => &mut self.revoked,
                RoleChange::Held => &mut self.held_revokes,
                RoleChange::Failed { .. } | RoleChange::Unread { .. } => &mut self.role_failures,
            } += 1;
        }
        let Some(outcome) = &entry.outcome else {
            return;
        };
        let slot = match outcome {
            Outcome::Created => &mut self.created,
            Outcome::Updated => &mut self.updated,
            Outcome::Disabled => &mut self.disabled,
            Outcome::Archived => &mut self.archived,
            Outcome::Unchanged => &mut self.unchanged,
            Outcome::OutOfScope => &mut self.out_of_scope,
            Outcome::Adopted { .. } => &mut self.adopted,
            Outcome::Failed { unavailable, .. } => {
                self.unavailable += u64::from(*unavailable);
                &mut self.failed
            }
            Outcome::Invalid { .. } => &mut self.invalid,
            Outcome::Conflict { .. } => &mut self.conflicts,
            Outcome::Held { .. } => &mut self.held_disables,
        };
        *slot += 1;
    }
}

#[derive(Debug, Clone, Default)]
pub struct RunReport {
    pub run_id: String,
    pub dry_run: bool,
    /// The run compared with nevisIDM's real state (`--reconcile`, `--rebuild-store`).
    pub reconcile: bool,
    /// The run was stopped by a shutdown before it finished.
    pub interrupted: bool,
    /// The fatal error that ended the run, if one did (the run then exits 2).
    pub fatal: Option<String>,
    /// Every page fetched and the distinct Ids equal `TotalItems`: only then may disappearance
    /// disable anyone.
    pub listing_complete: bool,
    /// Why the listing was not complete, when it was not.
    pub incomplete_reason: Option<String>,
    pub duration: Duration,
    /// Of `duration`, the time the run's driving task spent planning records: scope, mapping,
    /// the diff and the checkpoint look-up of each (the per-record store work between pages).
    pub planning: Duration,
    /// The listing asked only for users changed since the watermark.
    pub incremental: bool,
    /// What the run saw of `UpdatedOn`, for the next watermark.
    pub watermark: crate::watermark::Tracker,
    /// Every user's outcome: written only through [`RunReport::record`] and its siblings.
    pub ledger: Ledger,
    /// Why the role sync could not trust its memberships in this run (a read failed or was
    /// incomplete): nothing was revoked, and the run is not in sync.
    pub roles_incomplete: Option<String>,
    /// Why the revocation safety held revocations back in this run, each reason once (it names
    /// the role and the counts).
    pub role_holds: Vec<String>,
}

/// The outcomes of a run, one per user (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    entries: BTreeMap<Subject, Entry>,
    /// Records without a usable Id met so far.
    unidentified: u32,
}

impl RunReport {
    pub fn new(run_id: String, dry_run: bool) -> RunReport {
        RunReport {
            run_id,
            dry_run,
            ..RunReport::default()
        }
    }

    /// Records `outcome` as what happened to Nexudus user `id` (see the module doc for how it
    /// meets an outcome an earlier pass recorded).
    pub fn record(&mut self, id: u64, outcome: Outcome) {
        let entry = self.ledger.entries.entry(Subject::User(id)).or_default();
        if entry.outcome.is_none() || !outcome.is_quiet() {
            entry.outcome = Some(outcome);
        }
    }

    /// A record that could not be mapped (or decoded), with its Id when it has a usable one.
    pub fn record_invalid(&mut self, id: Option<u64>, reason: String) {
        let outcome = Outcome::Invalid { reason };
        match id {
            Some(id) => self.record(id, outcome),
            None => {
                self.ledger.unidentified += 1;
                let subject = Subject::Unidentified(self.ledger.unidentified);
                self.ledger.entries.insert(
                    subject,
                    Entry {
                        outcome: Some(outcome),
                        ..Entry::default()
                    },
                );
            }
        }
    }

    /// A reconcile found user `id` differing from Nexudus in nevisIDM.
    pub fn note_drift(&mut self, id: u64) {
        self.ledger
            .entries
            .entry(Subject::User(id))
            .or_default()
            .drift = true;
    }

    /// User `id` (nevisIDM `ext_id`) is disabled by hand while active in Nexudus, and left so.
    pub fn note_hand_disabled(&mut self, id: u64, ext_id: &str) {
        self.ledger
            .entries
            .entry(Subject::User(id))
            .or_default()
            .hand_disabled = Some(ext_id.to_string());
    }

    /// nevisIDM confirmed a write of user `id` without taking a value sent (the user's failure
    /// says which).
    pub fn note_not_taken(&mut self, id: u64) {
        self.ledger
            .entries
            .entry(Subject::User(id))
            .or_default()
            .not_taken = true;
    }

    /// nevisIDM keeps `field` of user `id` (`ext_id`) as `held` when sent `sent`: its own form,
    /// learned in this run.
    pub fn note_form(&mut self, id: u64, ext_id: &str, learned: (&'static str, &str, &str)) {
        let (field, sent, held) = learned;
        let entry = self.ledger.entries.entry(Subject::User(id)).or_default();
        entry.forms.push((
            ext_id.to_string(),
            field,
            sent.to_string(),
            held.to_string(),
        ));
    }

    /// The role sync granted (`grant`) or revoked `role` of user `id` (`ext_id`), or tried to:
    /// `change` says what happened.
    pub fn note_role(
        &mut self,
        id: u64,
        ext_id: &str,
        role: &str,
        grant: bool,
        change: RoleChange,
    ) {
        let entry = self.ledger.entries.entry(Subject::User(id)).or_default();
        entry
            .roles
            .push((ext_id.to_string(), role.to_string(), grant, change));
    }

    /// Role failures and held revocations, by Nexudus Id.
    pub fn role_problems(&self) -> Vec<RoleProblem> {
        let mut out = Vec::new();
        for (subject, entry) in &self.ledger.entries {
            let Subject::User(nexudus_id) = *subject else {
                continue;
            };
            for (ext_id, role, grant, change) in &entry.roles {
                let (op, reason) = match change {
                    RoleChange::Failed { reason } if *grant => ("grant", reason.clone()),
                    RoleChange::Failed { reason } => ("revoke", reason.clone()),
                    RoleChange::Held => ("held", "held back by the revocation safety".into()),
                    RoleChange::Unread { reason } => ("read", reason.clone()),
                    RoleChange::Granted | RoleChange::Revoked => continue,
                };
                out.push(RoleProblem {
                    nexudus_id,
                    ext_id: ext_id.clone(),
                    role: role.clone(),
                    op,
                    reason,
                });
            }
        }
        out
    }

    /// A reconcile's difference turned out to be the directory's form: not drift.
    pub fn unnote_drift(&mut self, id: u64) {
        if let Some(entry) = self.ledger.entries.get_mut(&Subject::User(id)) {
            entry.drift = false;
        }
    }

    /// Values nevisIDM keeps in its own form, learned in this run.
    pub fn learned_forms(&self) -> Vec<LearnedForm> {
        self.ledger
            .entries
            .iter()
            .filter_map(|(subject, e)| match subject {
                Subject::User(id) => Some((*id, e)),
                Subject::Unidentified(_) => None,
            })
            .flat_map(|(nexudus_id, e)| {
                e.forms
                    .iter()
                    .map(move |(ext_id, field, sent, held)| LearnedForm {
                        nexudus_id,
                        ext_id: ext_id.clone(),
                        field,
                        sent: sent.clone(),
                        held: held.clone(),
                    })
            })
            .collect()
    }

    /// The full listing after an incremental pass lists every record the pass listed again:
    /// records without a usable Id are forgotten, to be counted once, by the full listing.
    pub fn begin_full_pass(&mut self) {
        self.ledger
            .entries
            .retain(|subject, _| matches!(subject, Subject::User(_)));
    }

    /// The outcome recorded for Nexudus user `id`, if any.
    pub fn outcome(&self, id: u64) -> Option<&Outcome> {
        self.ledger
            .entries
            .get(&Subject::User(id))?
            .outcome
            .as_ref()
    }

    /// The counts, derived from the outcomes.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for entry in self.ledger.entries.values() {
            counts.add(entry);
        }
        counts
    }

    fn outcomes(&self) -> impl Iterator<Item = (Subject, &Outcome)> {
        self.ledger
            .entries
            .iter()
            .filter_map(|(subject, e)| Some((*subject, e.outcome.as_ref()?)))
    }

    fn users(&self) -> impl Iterator<Item = (u64, &Outcome)> {
        self.outcomes()
            .filter_map(|(subject, outcome)| match subject {
                Subject::User(id) => Some((id, outcome)),
                Subject::Unidentified(_) => None,
            })
    }

    /// Users whose write failed, by Nexudus Id.
    pub fn failures(&self) -> Vec<Failure> {
        self.users()
            .filter_map(|(nexudus_id, o)| match o {
                Outcome::Failed { ext_id, reason, .. } => Some(Failure {
                    nexudus_id,
                    ext_id: ext_id.clone(),
                    reason: reason.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// Records that could not be mapped: those with an Id by Id, then those without.
    pub fn invalid_records(&self) -> Vec<Invalid> {
        self.outcomes()
            .filter_map(|(subject, o)| match o {
                Outcome::Invalid { reason } => Some(Invalid {
                    nexudus_id: match subject {
                        Subject::User(id) => Some(id),
                        Subject::Unidentified(_) => None,
                    },
                    reason: reason.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    pub fn conflict_records(&self) -> Vec<Conflict> {
        self.users()
            .filter_map(|(nexudus_id, o)| match o {
                Outcome::Conflict {
                    ext_id,
                    reason,
                    candidates,
                } => Some(Conflict {
                    nexudus_id,
                    ext_id: ext_id.clone(),
                    reason: reason.clone(),
                    candidates: candidates.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    pub fn adoptions(&self) -> Vec<Adoption> {
        self.users()
            .filter_map(|(nexudus_id, o)| match o {
                Outcome::Adopted { ext_id } => Some(Adoption {
                    nexudus_id,
                    ext_id: ext_id.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// extIds of the users disabled by hand and left so.
    pub fn hand_disabled_users(&self) -> Vec<String> {
        self.ledger
            .entries
            .values()
            .filter_map(|e| e.hand_disabled.clone())
            .collect()
    }

    /// extIds whose disable was held back by the deletion safety.
    pub fn held(&self) -> Vec<String> {
        self.users()
            .filter_map(|(_, o)| match o {
                Outcome::Held { ext_id } => Some(ext_id.clone()),
                _ => None,
            })
            .collect()
    }

    /// 0 when everything is in sync; 1 when the run finished but something was left undone.
    pub fn exit_code(&self) -> u8 {
        let c = self.counts();
        let clean = !self.interrupted
            && c.failed == 0
            && c.invalid == 0
            && c.held_disables == 0
            && c.conflicts == 0
            && c.held_revokes == 0
            && c.role_failures == 0
            && self.roles_incomplete.is_none()
            && self.listing_complete;
        if clean { 0 } else { 1 }
    }

    /// The run completed and both APIs answered: what `/readyz` counts as a success.
    pub fn healthy(&self) -> bool {
        !self.interrupted && self.counts().unavailable == 0
    }

    /// `full`, `incremental` or `reconcile`.
    pub fn mode(&self) -> &'static str {
        if self.reconcile {
            "reconcile"
        } else if self.incremental {
            "incremental"
        } else {
            "full"
        }
    }

    /// The one-line summary printed at the end of every run.
    pub fn summary_line(&self) -> String {
        let c = self.counts();
        let mut s = String::from(if self.dry_run {
            "dry-run summary:"
        } else {
            "sync summary:"
        });
        let _ = write!(
            s,
            " mode={} created={} updated={} disabled={} archived={} unchanged={} failed={} invalid={} held_disables={} adopted={} conflicts={} drift={} hand_disabled={} out_of_scope={} forms={} not_taken={} granted={} revoked={} held_revokes={} listing_complete={} duration={:.3}s",
            self.mode(),
            c.created,
            c.updated,
            c.disabled,
            c.archived,
            c.unchanged,
            c.failed,
            c.invalid,
            c.held_disables,
            c.adopted,
            c.conflicts,
            c.drift,
            c.hand_disabled,
            c.out_of_scope,
            c.forms,
            c.not_taken,
            c.granted,
            c.revoked,
            c.held_revokes,
            self.listing_complete,
            self.duration.as_secs_f64()
        );
        s
    }

    /// Lines naming every user that needs attention, for stdout before the summary: each once.
    pub fn problem_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for i in self.invalid_records() {
            let id = i
                .nexudus_id
                .map_or_else(|| "?".to_string(), |id| id.to_string());
            lines.push(format!("invalid: nexudus_id={id} reason=\"{}\"", i.reason));
        }
        for f in self.failures() {
            lines.push(format!(
                "failed: nexudus_id={} extId={} reason=\"{}\"",
                f.nexudus_id, f.ext_id, f.reason
            ));
        }
        for c in self.conflict_records() {
            lines.push(format!(
                "conflict: nexudus_id={} extId={} candidates=[{}] reason=\"{}\"",
                c.nexudus_id,
                c.ext_id,
                c.candidates.join(","),
                c.reason
            ));
        }
        for a in self.adoptions() {
            lines.push(format!(
                "adopted: nexudus_id={} extId={}",
                a.nexudus_id, a.ext_id
            ));
        }
        for ext_id in self.hand_disabled_users() {
            lines.push(format!(
                "hand-disabled: extId={ext_id} is disabled in nevisIDM but active in Nexudus; left disabled (set sync.reenable_on_reconcile = true to re-enable)"
            ));
        }
        for f in self.learned_forms() {
            lines.push(format!(
                "form: nexudus_id={} extId={} nevisIDM keeps {} as {} (sent {}): its own form, not written again",
                f.nexudus_id,
                f.ext_id,
                f.field,
                crate::mapper::shown(&f.held),
                crate::mapper::shown(&f.sent)
            ));
        }
        let held = self.held();
        if !held.is_empty() {
            lines.push(format!(
                "held: {} disable(s) held back by the deletion safety: {}",
                held.len(),
                held.join(", ")
            ));
        }
        let problems = self.role_problems();
        let held: Vec<String> = problems
            .iter()
            .filter(|p| p.op == "held")
            .map(|p| format!("{}:{}", p.ext_id, p.role))
            .collect();
        for p in problems.iter().filter(|p| p.op != "held") {
            lines.push(format!(
                "role failed: nexudus_id={} extId={} op={} roleExtId={} reason=\"{}\"",
                p.nexudus_id, p.ext_id, p.op, p.role, p.reason
            ));
        }
        if !held.is_empty() {
            lines.push(format!(
                "held: {} role revocation(s) held back by the revocation safety (roles.max_revokes, \
                 roles.max_revoke_percent; --allow-mass-disable approves them for one run): {}",
                held.len(),
                held.join(", ")
            ));
        }
        for reason in &self.role_holds {
            lines.push(format!("revocation safety: {reason}"));
        }
        if let Some(reason) = &self.roles_incomplete {
            lines.push(format!("roles incomplete: {reason}; no role was revoked"));
        }
        if let Some(reason) = &self.incomplete_reason {
            lines.push(format!(
                "incomplete listing: {reason}; no user was disabled for disappearing"
            ));
        }
        lines
    }
}

/// The report as recorded in the store (`/status`, `--status`): the counts and the lists, derived.
#[derive(Serialize)]
struct Document<'a> {
    run_id: &'a str,
    dry_run: bool,
    #[serde(flatten)]
    counts: Counts,
    reconcile: bool,
    interrupted: bool,
    fatal: &'a Option<String>,
    listing_complete: bool,
    incomplete_reason: &'a Option<String>,
    failures: Vec<Failure>,
    invalid_records: Vec<Invalid>,
    conflict_records: Vec<Conflict>,
    adoptions: Vec<Adoption>,
    hand_disabled_users: Vec<String>,
    held: Vec<String>,
    learned_forms: Vec<LearnedForm>,
    role_problems: Vec<RoleProblem>,
    roles_incomplete: &'a Option<String>,
    role_holds: &'a [String],
    duration: f64,
    planning_seconds: f64,
    incremental: bool,
}

impl Serialize for RunReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Document {
            run_id: &self.run_id,
            dry_run: self.dry_run,
            counts: self.counts(),
            reconcile: self.reconcile,
            interrupted: self.interrupted,
            fatal: &self.fatal,
            listing_complete: self.listing_complete,
            incomplete_reason: &self.incomplete_reason,
            failures: self.failures(),
            invalid_records: self.invalid_records(),
            conflict_records: self.conflict_records(),
            adoptions: self.adoptions(),
            hand_disabled_users: self.hand_disabled_users(),
            held: self.held(),
            learned_forms: self.learned_forms(),
            role_problems: self.role_problems(),
            roles_incomplete: &self.roles_incomplete,
            role_holds: &self.role_holds,
            duration: self.duration.as_secs_f64(),
            planning_seconds: self.planning.as_secs_f64(),
            incremental: self.incremental,
        }
        .serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean() -> RunReport {
        RunReport {
            listing_complete: true,
            ..RunReport::default()
        }
    }

    #[test]
    fn exit_code_remembers_every_kind_of_trouble() {
        assert_eq!(clean().exit_code(), 0);
        let troubles = [
            Outcome::failed("x", "refused", false),
            Outcome::Invalid { reason: "r".into() },
            Outcome::Held { ext_id: "x".into() },
            Outcome::Conflict {
                ext_id: "x".into(),
                reason: "r".into(),
                candidates: vec![],
            },
        ];
        for outcome in troubles {
            let mut r = clean();
            r.record(1, outcome.clone());
            assert_eq!(r.exit_code(), 1, "{outcome:?}");
        }
        for change in [
            RoleChange::Held,
            RoleChange::Failed { reason: "r".into() },
            RoleChange::Unread { reason: "r".into() },
        ] {
            let mut r = clean();
            r.note_role(1, "x", "frontdesk", false, change.clone());
            assert_eq!(r.exit_code(), 1, "{change:?}");
            assert_eq!(r.problem_lines().len(), 1, "{change:?}");
        }
        let mut r = clean();
        r.note_role(1, "x", "frontdesk", true, RoleChange::Granted);
        r.note_role(2, "y", "frontdesk", false, RoleChange::Revoked);
        assert_eq!(r.exit_code(), 0);
        assert!(
            r.summary_line()
                .contains(" granted=1 revoked=1 held_revokes=0 ")
        );
        assert_eq!(
            r.counts().users(),
            0,
            "role changes are notes, not outcomes"
        );
        let incomplete = RunReport::default();
        assert_eq!(incomplete.exit_code(), 1);
        let mut r = clean();
        r.interrupted = true;
        assert_eq!(r.exit_code(), 1);
    }

    #[test]
    fn summary_names_all_counts() {
        let mut r = clean();
        for id in 1..=3 {
            r.record(id, Outcome::Created);
        }
        let line = r.summary_line();
        for key in [
            "created=3",
            "updated=0",
            "disabled=0",
            "unchanged=0",
            "failed=0",
            "out_of_scope=0",
            "duration=",
        ] {
            assert!(line.contains(key), "{line}");
        }
    }

    #[test]
    fn one_outcome_per_user_whatever_the_passes() {
        let mut r = clean();
        // An incremental pass creates 1, fails 2, finds 3 invalid and a record without an Id.
        r.record(1, Outcome::Created);
        r.record(2, Outcome::failed("nexudus-2", "down", true));
        r.record_invalid(Some(3), "no email".into());
        r.record_invalid(None, "no Id".into());
        // The full pass after it: 1 is unchanged now (its checkpoint exists), 2 is written, 3
        // and the record without an Id are invalid again.
        r.begin_full_pass();
        r.record(1, Outcome::Unchanged);
        r.record(2, Outcome::Updated);
        r.record_invalid(Some(3), "no email".into());
        r.record_invalid(None, "no Id".into());
        r.record(4, Outcome::Unchanged);
        let c = r.counts();
        assert_eq!(
            (c.created, c.updated, c.failed, c.invalid, c.unchanged),
            (1, 1, 0, 2, 1)
        );
        assert_eq!((c.users(), c.unavailable), (5, 0));
        assert_eq!(r.problem_lines().len(), 2, "{:?}", r.problem_lines());
    }

    #[test]
    fn lists_follow_the_counts() {
        let mut r = clean();
        r.record(1, Outcome::OutOfScope);
        r.record(
            1,
            Outcome::Held {
                ext_id: "nexudus-1".into(),
            },
        );
        r.note_hand_disabled(2, "nexudus-2");
        r.record(2, Outcome::Unchanged);
        r.note_drift(3);
        r.record(3, Outcome::Updated);
        r.record(
            4,
            Outcome::Adopted {
                ext_id: "old-4".into(),
            },
        );
        let c = r.counts();
        assert_eq!((c.held_disables, c.out_of_scope), (1, 0));
        assert_eq!(r.held(), vec!["nexudus-1"]);
        assert_eq!((c.hand_disabled, r.hand_disabled_users().len()), (1, 1));
        assert_eq!((c.drift, c.updated, c.adopted), (1, 1, 1));
        assert_eq!(r.adoptions()[0].ext_id, "old-4");
        assert_eq!(c.users(), 4);
    }

    #[test]
    fn the_stored_document_carries_counts_and_lists() {
        let mut r = clean();
        r.record(7, Outcome::failed("nexudus-7", "refused", false));
        let doc = serde_json::to_value(&r).unwrap();
        assert_eq!(doc["failed"], 1);
        assert_eq!(doc["created"], 0);
        assert_eq!(doc["failures"][0]["nexudus_id"], 7);
        assert_eq!(doc["listing_complete"], true);
    }
}
