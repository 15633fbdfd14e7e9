//! The planner: one Nexudus record in, at most one operation out.
//!
//! In order: the scope (admins, excluded Ids, email domains) and the mapping ([`scope`], pure);
//! Nexudus users sharing an email (adoption only: neither is written); then the plan, from the
//! checkpoint (an ordinary run) or from nevisIDM's real state (a reconcile), with the extId kept
//! from creation or adoption and the users a reconcile found disabled by hand left so; last, a
//! user whose values nevisIDM refused waits for its next try ([`crate::refusal`]) unless this is
//! a reconcile, the values changed, or it is a disable. The planner also says which Nexudus Ids
//! the record keeps in scope ([`Kept`]): the settlement judges who vanished from that.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::json;

use super::RunOptions;
use super::listing::Fetched;
use crate::audit::{Code, Draft, Operation, Recorder, Verdict, Why, cause};
use crate::config::{AdoptMode, Config, LoginIdSource};
use crate::diff::{Changes, Observed, Plan, changes_between, diff};
use crate::directory::Directory;
use crate::dispatch::{Op, OpKind, PlanSink};
use crate::mapper::{DesiredUser, InvalidReason, SourceUser, UserState, ext_id_with, map_user};
use crate::nexudus::InvalidRecord;
use crate::report::{Outcome, RunReport};
use crate::store::{Lookup, Store, StoreError, fingerprint};

/// Where the scope and the mapping put one Nexudus user.
#[derive(Debug)]
pub enum Scoped {
    /// Outside the scope, and why: never written (and, once checkpointed, gone for the settlement).
    Out(&'static str),
    /// In the scope by Id and admin flag, but it cannot be mapped: reported, never disabled.
    Invalid(InvalidReason),
    In(DesiredUser),
}

/// The scope and the mapping of one user (pure).
pub fn scope(cfg: &Config, user: &SourceUser) -> Scoped {
    if !cfg.scope.admits(user.id, user.is_admin) {
        return Scoped::Out("outside scope.admins / scope.exclude_ids");
    }
    match map_user(user, &cfg.mapping) {
        Ok(d) if !cfg.scope.admits_email(&d.email) => {
            Scoped::Out("email domain outside scope.email_domains")
        }
        Ok(d) => Scoped::In(d),
        Err(reason) => Scoped::Invalid(reason),
    }
}

/// Nexudus users that share one (normalised) email with another, each with the others' Ids.
/// Only users in scope count: someone outside it is never written.
#[derive(Debug, Default)]
pub struct SharedEmails(HashMap<u64, Vec<u64>>);

impl SharedEmails {
    pub fn of(listing: &[Fetched], cfg: &Config) -> SharedEmails {
        let mut by_email: HashMap<String, BTreeSet<u64>> = HashMap::new();
        for msg in listing {
            let Fetched::Page(page) = msg else { continue };
            for user in page.records.iter().flatten() {
                if let Scoped::In(mapped) = scope(cfg, user) {
                    by_email
                        .entry(mapped.email.to_lowercase())
                        .or_default()
                        .insert(user.id);
                }
            }
        }
        let mut shared = HashMap::new();
        for ids in by_email.into_values().filter(|ids| ids.len() > 1) {
            for id in &ids {
                shared.insert(*id, ids.iter().copied().filter(|o| o != id).collect());
            }
        }
        SharedEmails(shared)
    }
}

/// A Nexudus Id a record keeps in scope, and whether Nexudus wants that user active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    pub id: u64,
    pub active: bool,
}

/// What the planner made of one record.
#[derive(Debug, Default)]
pub struct Planned {
    pub kept: Option<Kept>,
    /// What to send, if anything.
    pub op: Option<Op>,
}

pub struct Planner<'a> {
    cfg: &'a Config,
    store: &'a Store,
    opts: &'a RunOptions,
    /// nevisIDM's real state in a reconcile; `None` plans from the checkpoints.
    remote: Option<&'a Directory>,
    /// Users a reconcile found disabled by hand and left so, read once at the start of the run.
    hand_disabled: HashSet<u64>,
    shared: SharedEmails,
    /// The provisioning log: invalid records and conflicts (once while they last).
    log: Recorder,
}

impl<'a> Planner<'a> {
    pub fn new(
        cfg: &'a Config,
        store: &'a Store,
        opts: &'a RunOptions,
        remote: Option<&'a Directory>,
    ) -> Result<Planner<'a>, StoreError> {
        Ok(Planner {
            cfg,
            store,
            opts,
            remote,
            hand_disabled: store.hand_disabled_ids()?,
            shared: SharedEmails::default(),
            log: Recorder::off(),
        })
    }

    /// Writes invalid records and conflicts into the provisioning log.
    pub fn with_audit(mut self, log: Recorder) -> Self {
        self.log = log;
        self
    }

    /// An invalid record's entry (a record without an Id cannot be found by person, and would
    /// repeat every run: it stays in the run's report only).
    fn log_invalid(&self, id: Option<u64>, reason: &InvalidReason) -> Result<(), StoreError> {
        let Some(id) = id else { return Ok(()) };
        let ext_id = match self.store.get(id).ok().flatten() {
            Some(checkpoint) => checkpoint.ext_id,
            None => ext_id_with(&self.cfg.mapping.ext_id_prefix, id),
        };
        // The reason quotes only the record's own values (an email, a length), never a count:
        // the values of the decision.
        let text = reason.to_string();
        self.log.write_once(
            Draft::decision(
                (id, &ext_id),
                Operation::Skip,
                Verdict::Invalid,
                text.clone(),
                cause::INVALID_RECORD,
            ),
            Code::Invalid(reason.rule()),
            &[&text],
        )
    }

    /// With adoption on: the Nexudus users sharing an email, from the listing read whole.
    pub fn set_shared_emails(&mut self, shared: SharedEmails) {
        self.shared = shared;
    }

    fn dry_run(&self) -> bool {
        self.opts.dry_run.is_some()
    }

    /// Plans one record (already admitted by the census). Invalid records and conflicts are
    /// reported here; users with nothing to write are counted unchanged.
    pub fn plan(
        &self,
        record: Result<SourceUser, InvalidRecord>,
        report: &mut RunReport,
    ) -> Result<Planned, StoreError> {
        let user = match record {
            Ok(u) => u,
            Err(bad) => {
                report.watermark.seen(bad.updated_on.as_deref());
                report.watermark.problem(bad.updated_on.as_deref());
                // Scope unknown for an undecodable record: keep it, never disable it.
                let kept = bad.id.map(|id| Kept { id, active: false });
                self.log_invalid(bad.id, &bad.reason)?;
                note_invalid(
                    self.store,
                    report,
                    bad.id,
                    bad.reason.to_string(),
                    self.dry_run(),
                )?;
                return Ok(Planned { kept, op: None });
            }
        };
        report.watermark.seen(user.updated_on.as_deref());
        let desired = match scope(self.cfg, &user) {
            Scoped::Out(why) => {
                tracing::debug!(nexudus_id = user.id, "{why}");
                report.record(user.id, Outcome::OutOfScope);
                return Ok(Planned::default());
            }
            Scoped::Invalid(reason) => {
                report.watermark.problem(user.updated_on.as_deref());
                let kept = Some(Kept {
                    id: user.id,
                    active: false,
                });
                self.log_invalid(Some(user.id), &reason)?;
                note_invalid(
                    self.store,
                    report,
                    Some(user.id),
                    reason.to_string(),
                    self.dry_run(),
                )?;
                return Ok(Planned { kept, op: None });
            }
            Scoped::In(d) => d,
        };
        let kept = Some(Kept {
            id: user.id,
            active: desired.state == UserState::Active,
        });
        if let Some(others) = self.shared.0.get(&user.id) {
            self.shared_email_conflict(&user, &desired, others, report)?;
            return Ok(Planned { kept, op: None });
        }
        let op = match self.remote {
            None => self.against_checkpoint(desired, &user, report)?,
            Some(remote) => self.against_remote(remote, desired, &user, report)?,
        };
        let Some(op) = op else {
            report.record(user.id, Outcome::Unchanged);
            return Ok(Planned { kept, op: None });
        };
        let op = self.against_refusal(op, &user, report)?;
        Ok(Planned { kept, op })
    }

    /// A user whose values nevisIDM refused (or confirmed without taking): an ordinary run does
    /// not send the same values again before their next try, and reports the user failing with
    /// when that is; other values, a reconcile or a disable go at once — read back after a `204`,
    /// to see whether nevisIDM took them this time.
    fn against_refusal(
        &self,
        mut op: Op,
        user: &SourceUser,
        report: &mut RunReport,
    ) -> Result<Option<Op>, StoreError> {
        let Some(refusal) = self.store.refusal(user.id)? else {
            return Ok(Some(op));
        };
        let now = self.store.clock().now();
        let waits = self.remote.is_none()
            && matches!(op.kind, OpKind::Create | OpKind::Update)
            && op.fingerprint.is_some_and(|fp| refusal.defers(fp, now));
        if !waits {
            op.forms.verify = true;
            return Ok(Some(op));
        }
        let reason = self.store.failure(user.id)?.unwrap_or_default();
        let reason = format!("{reason}; {}", refusal.note());
        report.record(user.id, Outcome::failed(&op.after.ext_id, reason, false));
        if refusal.not_taken {
            report.note_not_taken(user.id);
        }
        report.watermark.problem(user.updated_on.as_deref());
        Ok(None)
    }

    /// Two Nexudus users with one email: neither is written (adoption could pick the wrong
    /// person), both are reported, and neither is ever disabled for it.
    fn shared_email_conflict(
        &self,
        user: &SourceUser,
        desired: &DesiredUser,
        others: &[u64],
        report: &mut RunReport,
    ) -> Result<(), StoreError> {
        let reason = format!(
            "email {:?} is shared with Nexudus user(s) {}",
            desired.email,
            others
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        report.watermark.problem(user.updated_on.as_deref());
        let candidates: Vec<String> = others.iter().map(|id| format!("nexudus:{id}")).collect();
        let mut values = vec![desired.email.as_str()];
        values.extend(candidates.iter().map(String::as_str));
        self.log.write_once(
            Draft::decision(
                (user.id, &desired.ext_id),
                Operation::Create,
                Verdict::Conflict,
                format!("{reason}; candidates: [{}]", candidates.join(", ")),
                cause::NEW_IN_NEXUDUS,
            ),
            Code::SharedEmail,
            &values,
        )?;
        note_conflict(
            self.store,
            report,
            self.opts.dry_run.as_ref(),
            user.id,
            &desired.ext_id,
            reason,
            candidates,
        )
    }

    /// An ordinary run: the mapped user against its checkpoint. `None` when nothing is to be written.
    fn against_checkpoint(
        &self,
        mut desired: DesiredUser,
        user: &SourceUser,
        report: &mut RunReport,
    ) -> Result<Option<Op>, StoreError> {
        let (cfg, store) = (self.cfg, self.store);
        // A reconcile found this user disabled by hand and left it so: ordinary runs keep it so.
        if desired.state == UserState::Active && self.hand_disabled.contains(&user.id) {
            desired.state = UserState::Disabled;
            let held = store.get(user.id).ok().flatten();
            let ext_id = held.map_or_else(|| desired.ext_id.clone(), |c| c.ext_id);
            report.note_hand_disabled(user.id, &ext_id);
        }
        let fp = fingerprint(&desired);
        match store.lookup(user.id, fp)? {
            Lookup::Same => Ok(None),
            Lookup::Missing => {
                let link = store.link(user.id)?;
                if let Some(linked) = &link {
                    keep_ext_id(&mut desired, linked, cfg);
                }
                let why = Why::new(cause::NEW_IN_NEXUDUS, None);
                let mut op = write_op(user, desired, None, fp, why);
                op.adopt = cfg.sync.adopt == AdoptMode::Email && link.is_none();
                Ok(Some(op))
            }
            Lookup::Changed(old) => {
                // extId is set once, at creation (or adoption): a changed mapping.ext_id_prefix
                // applies to new users only.
                keep_ext_id(&mut desired, &old.ext_id, cfg);
                match diff(&desired, Some(&old)) {
                    Plan::Unchanged => {
                        // Same user, older encoding or fingerprint: refile it so the next run
                        // recognises it without decoding. An archived user stays archived (it
                        // satisfies "disabled"; refiling it as disabled would restart the
                        // sync.archive_after clock and archive it again).
                        if old.state == UserState::Archived && desired.state == UserState::Disabled
                        {
                            desired.state = UserState::Archived;
                        }
                        if !self.dry_run() {
                            store.put_as(user.id, &desired, fp)?;
                        }
                        Ok(None)
                    }
                    Plan::Update(changes) => {
                        let why = Why::new(cause::update(&changes), Some(Observed::from(&old)));
                        Ok(Some(write_op(user, desired, Some(changes), fp, why)))
                    }
                    Plan::Create => {
                        let why = Why::new(cause::NEW_IN_NEXUDUS, None);
                        Ok(Some(write_op(user, desired, None, fp, why)))
                    }
                }
            }
        }
    }

    /// A reconcile: the mapped user against what nevisIDM really holds. Every user found right
    /// gets its checkpoint refreshed without a write.
    fn against_remote(
        &self,
        remote: &Directory,
        mut desired: DesiredUser,
        user: &SourceUser,
        report: &mut RunReport,
    ) -> Result<Option<Op>, StoreError> {
        let (cfg, store, dry_run) = (self.cfg, self.store, self.dry_run());
        let checkpoint = match store.get(user.id) {
            Ok(c) => c,
            Err(StoreError::Corrupt(e)) => {
                tracing::warn!(nexudus_id = user.id, error = %e, "unreadable checkpoint; going by nevisIDM");
                None
            }
            Err(e) => return Err(e),
        };
        let link = store.link(user.id)?;
        let kept = checkpoint
            .as_ref()
            .map(|c| c.ext_id.clone())
            .or_else(|| link.clone());
        let ext_id = kept.clone().unwrap_or_else(|| desired.ext_id.clone());
        let Some(seen) = remote.users.get(&ext_id) else {
            // Not in nevisIDM: new, or removed by hand. Create it (a stale hand marker is moot).
            if !dry_run {
                store.set_hand_disabled(user.id, false)?;
            }
            let fp = fingerprint(&desired);
            if let Some(kept) = &kept {
                keep_ext_id(&mut desired, kept, cfg);
            }
            let why = Why::new(cause::create(kept.is_some()), None);
            let mut op = write_op(user, desired, None, fp, why);
            op.adopt = cfg.sync.adopt == AdoptMode::Email && link.is_none() && checkpoint.is_none();
            return Ok(Some(op));
        };
        self.respect_hand_disable(
            &mut desired,
            checkpoint.as_ref(),
            seen,
            &ext_id,
            user.id,
            report,
        )?;
        let fp = fingerprint(&desired);
        if let Some(kept) = &kept {
            keep_ext_id(&mut desired, kept, cfg);
        }
        let stored = store.forms(user.id)?;
        let reading = stored.read(&desired, seen);
        for (field, form) in &reading.learned {
            report.note_form(user.id, &ext_id, (field.as_str(), &form.sent, &form.held));
        }
        let mut changes = reading.changes;
        // nevisIDM's properties include ones other tools set, so only the checkpoint can say
        // which were ours: one this tool set that the config no longer has is removed.
        if let Some(old) = &checkpoint {
            for key in old.properties.keys() {
                if !desired.properties.contains_key(key) && seen.properties.contains_key(key) {
                    changes.properties.insert(key.clone(), None);
                }
            }
        }
        if changes.is_empty() {
            // The checkpoint records what is there: an archived user stays archived.
            if desired.state == UserState::Disabled && seen.state.as_deref() == Some("archived") {
                desired.state = UserState::Archived;
            }
            if !dry_run {
                store.put_versioned(user.id, &desired, fp, seen.version)?;
                if reading.forms != stored {
                    store.set_forms(user.id, &reading.forms)?;
                }
            }
            return Ok(None);
        }
        tracing::info!(extId = %ext_id, changes = %changes.to_json(), "drift: nevisIDM differs from Nexudus; setting it back");
        report.note_drift(user.id);
        // Nexudus changed since the checkpoint, or nevisIDM was edited by hand.
        let since_checkpoint = checkpoint
            .as_ref()
            .map(|c| changes_between(&desired, &Observed::from(c)))
            .filter(|c| !c.is_empty());
        let cause = match since_checkpoint {
            Some(changed) => cause::update(&changed),
            None => cause::reconcile(&changes).to_string(),
        };
        let why = Why::new(cause, Some(seen.clone()));
        let mut op = write_op(user, desired, Some(changes), fp, why);
        op.version = seen.version;
        op.forms.keep = Some(reading.forms);
        // The last write did not stick: read this one back if nevisIDM answers without the user.
        op.forms.verify = !reading.not_taken.is_empty();
        Ok(Some(op))
    }

    /// A reconcile that finds a user inactive in nevisIDM while Nexudus wants it active, and not
    /// because this tool disabled it: disabled by hand. Left so (and marked, so that ordinary runs
    /// keep it so) unless `sync.reenable_on_reconcile`; a marked user enabled again by hand loses
    /// its mark.
    fn respect_hand_disable(
        &self,
        desired: &mut DesiredUser,
        checkpoint: Option<&DesiredUser>,
        seen: &Observed,
        ext_id: &str,
        nexudus_id: u64,
        report: &mut RunReport,
    ) -> Result<(), StoreError> {
        let (store, dry_run) = (self.store, self.dry_run());
        let inactive_there = matches!(seen.state.as_deref(), Some("disabled" | "archived"));
        let marked = self.hand_disabled.contains(&nexudus_id);
        // Disabled by us: the checkpoint says so (and not because of a hand marker).
        let disabled_by_us = !marked && checkpoint.is_some_and(|c| c.state != UserState::Active);
        if desired.state == UserState::Active && inactive_there && !disabled_by_us {
            if self.cfg.sync.reenable_on_reconcile {
                tracing::info!(extId = %ext_id, "disabled by hand in nevisIDM while active in Nexudus; re-enabling (sync.reenable_on_reconcile)");
                if !dry_run {
                    store.set_hand_disabled(nexudus_id, false)?;
                }
            } else {
                tracing::warn!(extId = %ext_id, "disabled by hand in nevisIDM while active in Nexudus; left disabled (sync.reenable_on_reconcile = false)");
                desired.state = UserState::Disabled;
                report.note_hand_disabled(nexudus_id, ext_id);
                self.log.write_once(
                    Draft::decision(
                        (nexudus_id, ext_id),
                        Operation::Enable,
                        Verdict::Held,
                        "sync.reenable_on_reconcile = false: left disabled".into(),
                        cause::HAND_DISABLE_KEPT,
                    ),
                    Code::HandDisabledKept,
                    &[],
                )?;
                match &self.opts.dry_run {
                    Some(sink) => sink(&json!({
                        "op": "keep-disabled",
                        "extId": ext_id,
                        "nexudusId": nexudus_id,
                        "reason": "disabled by hand in nevisIDM while active in Nexudus",
                    })),
                    None => store.set_hand_disabled(nexudus_id, true)?,
                }
            }
        } else if marked && !inactive_there && !dry_run {
            // Someone enabled it again by hand: nothing to respect any more.
            store.set_hand_disabled(nexudus_id, false)?;
        }
        Ok(())
    }
}

/// Sets the extId kept from creation or adoption; a loginId derived from the extId follows it.
fn keep_ext_id(desired: &mut DesiredUser, ext_id: &str, cfg: &Config) {
    if desired.ext_id != ext_id {
        if cfg.mapping.login_id == LoginIdSource::ExtId {
            desired.login_id = ext_id.to_string();
        }
        desired.ext_id = ext_id.to_string();
    }
}

fn write_op(
    user: &SourceUser,
    after: DesiredUser,
    changes: Option<Changes>,
    fp: u64,
    why: Why,
) -> Op {
    let kind = match &changes {
        None => OpKind::Create,
        Some(c) if c.disables() => OpKind::Disable,
        Some(_) => OpKind::Update,
    };
    Op {
        nexudus_id: user.id,
        kind,
        after,
        changes,
        updated_on: user.updated_on.clone(),
        fingerprint: Some(fp),
        adopt: false,
        version: None,
        forms: Default::default(),
        why,
    }
}

fn note_conflict(
    store: &Store,
    report: &mut RunReport,
    sink: Option<&PlanSink>,
    nexudus_id: u64,
    ext_id: &str,
    reason: String,
    candidates: Vec<String>,
) -> Result<(), StoreError> {
    tracing::warn!(nexudus_id, extId = %ext_id, %reason, ?candidates, "conflict: nothing written");
    match sink {
        Some(sink) => sink(&json!({
            "op": "conflict",
            "extId": ext_id,
            "nexudusId": nexudus_id,
            "candidates": candidates,
            "reason": reason,
        })),
        None => store.record_failure(
            nexudus_id,
            &format!(
                "conflict: {reason}; candidates: [{}]",
                candidates.join(", ")
            ),
        )?,
    }
    report.record(
        nexudus_id,
        Outcome::Conflict {
            ext_id: ext_id.to_string(),
            reason,
            candidates,
        },
    );
    Ok(())
}

fn note_invalid(
    store: &Store,
    report: &mut RunReport,
    nexudus_id: Option<u64>,
    reason: String,
    dry_run: bool,
) -> Result<(), StoreError> {
    tracing::warn!(nexudus_id = ?nexudus_id, %reason, "invalid Nexudus record skipped");
    if let (Some(id), false) = (nexudus_id, dry_run) {
        store.record_failure(id, &format!("invalid: {reason}"))?;
    }
    report.record_invalid(nexudus_id, reason);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nexudus::SourcePage;

    const SCOPE: &str = r#"
        [scope]
        admins = "exclude"
        exclude_ids = [5]
        email_domains = ["example.com"]
    "#;

    fn user(id: u64, email: &str, admin: bool) -> SourceUser {
        SourceUser {
            id,
            full_name: Some(format!("User Number{id}")),
            email: Some(email.into()),
            active: true,
            is_admin: admin,
            ..SourceUser::default()
        }
    }

    #[test]
    fn scope_and_mapping_decide_before_anything_is_planned() {
        let cfg = crate::config::testing::config(&[SCOPE]);
        assert!(matches!(
            scope(&cfg, &user(1, "a@example.com", true)),
            Scoped::Out("outside scope.admins / scope.exclude_ids")
        ));
        assert!(matches!(
            scope(&cfg, &user(5, "a@example.com", false)),
            Scoped::Out(_)
        ));
        assert!(matches!(
            scope(&cfg, &user(2, "a@other.org", false)),
            Scoped::Out("email domain outside scope.email_domains")
        ));
        assert!(matches!(
            scope(&cfg, &user(3, "broken", false)),
            Scoped::Invalid(_)
        ));
        match scope(&cfg, &user(4, "a@example.com", false)) {
            Scoped::In(d) => assert_eq!(d.ext_id, "nexudus-4"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn shared_emails_count_users_in_scope_only_whatever_the_case() {
        let cfg = crate::config::testing::config(&[SCOPE]);
        let page = SourcePage {
            records: vec![
                Ok(user(1, "Same@example.com", false)),
                Ok(user(2, "same@EXAMPLE.com", false)),
                Ok(user(3, "same@example.com", false)),
                Ok(user(4, "same@example.com", true)), // an admin: out of scope
                Ok(user(6, "alone@example.com", false)),
            ],
            ..SourcePage::default()
        };
        let shared = SharedEmails::of(&[Fetched::Page(page)], &cfg);
        assert_eq!(shared.0.len(), 3);
        assert_eq!(shared.0[&2], vec![1, 3]);
        assert!(!shared.0.contains_key(&4) && !shared.0.contains_key(&6));
    }
}
