//! The write stage: for each user with a plan, the profile (the checkpoint's, else the default
//! one, else the only active one, else one created in `roles.profile_unit_ext_id`), then each
//! grant and revocation, each logged and checkpointed as soon as nevisIDM confirmed it, and noted
//! in the run's [`Ledger`] with its outcome.
//!
//! Three rules keep a write from being lost or claimed wrongly:
//! - **write-ahead**: a grant is marked pending in the checkpoint (made durable) before it is
//!   sent; its answer turns the mark into a held role, a refusal clears it, and a mark left by a
//!   stop or a crash is settled by the next run from the profile's authorizations ([`Writer::settle`]);
//! - **a revocation is done when the role is gone**: a `404` for the stored authorization is not
//!   proof (a hand re-grant has a new extId), so the profile's authorizations are read and every
//!   one of the role revoked before the checkpoint says so;
//! - **a stale profile is chosen again**: a checkpointed profile that answers `404` or refuses a
//!   write is dropped and the profile chosen afresh, once per user and run, instead of failing
//!   every run.

use std::collections::BTreeSet;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::audit::{Change, Code, Draft, Operation, Recorder, Verdict, cause};
use crate::dispatch::PlanSink;
use crate::nevis::{Profile, RoleTarget, TargetError};
use crate::report::RoleChange;
use crate::store::{Checkpoint, Store};

use super::RolesError;
use super::batch::Ledger;
use super::holding::Holding;
use super::plan::{Holds, UserPlan};

/// What the stage writes with.
pub struct Writer<'a> {
    pub target: &'a dyn RoleTarget,
    pub store: &'a Store,
    pub dry_run: Option<&'a PlanSink>,
    pub profile_unit: Option<&'a str>,
    /// The provisioning log: each grant and revocation, written before its checkpoint.
    pub log: &'a Recorder,
    /// The run's shutdown: once cancelled, a user's next write is left to the next run.
    pub cancel: &'a CancellationToken,
    /// What each write came to, as it happens (users are written concurrently).
    pub ledger: Ledger,
}

/// The user a write is for: Nexudus Id and nevisIDM extId.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub id: u64,
    pub ext_id: &'a str,
}

/// The cause of a grant or a revocation, in words.
const GRANT_CAUSE: &str = "in a Nexudus UserRole mapped to this role ([[roles.map]])";
const REVOKE_CAUSE: &str = "no longer in a Nexudus UserRole mapped to this role ([[roles.map]])";

/// The provisioning-log entry of one grant (`true`) or revocation.
fn entry(who: Who<'_>, role: &str, grant: bool, outcome: Verdict) -> Draft {
    let (operation, before, after, cause) = match grant {
        true => (Operation::Grant, None, Some(role.to_string()), GRANT_CAUSE),
        false => (
            Operation::Revoke,
            Some(role.to_string()),
            None,
            REVOKE_CAUSE,
        ),
    };
    Draft {
        nexudus_id: Some(who.id),
        ext_id: who.ext_id.to_string(),
        operation,
        changes: vec![Change {
            field: "roles".into(),
            before,
            after,
        }],
        outcome,
        status: None,
        reason: None,
        cause: cause.into(),
    }
}

/// The entry of a role found already held and now owned: no grant was made, so the role is
/// there before and after.
fn owned_entry(who: Who<'_>, role: &str) -> Draft {
    let mut draft = entry(who, role, true, Verdict::Confirmed);
    draft.changes[0].before = Some(role.to_string());
    Draft {
        reason: Some(cause::ROLE_ALREADY_HELD.into()),
        ..draft
    }
}

/// The entry of a grant or revocation nevisIDM did not make (`Err` when the error is fatal).
fn not_made(
    e: TargetError,
    (who, role, grant): (Who<'_>, &str, bool),
    log: &Recorder,
) -> Result<RoleChange, RolesError> {
    let (outcome, status) = Verdict::of_target_error(&e);
    let reason = per_user(e)?;
    let draft = Draft {
        status,
        reason: Some(reason.clone()),
        ..entry(who, role, grant, outcome)
    };
    log.write(draft).map_err(RolesError::Store)?;
    Ok(RoleChange::Failed { reason })
}

/// A user failed for a reason that is theirs (not the run's).
type UserResult<T> = Result<T, String>;

/// One write's answer: what it came to, or nevisIDM's error, not yet logged (the caller may try
/// it again on another profile); `Err` outside is the run's.
type Tried = Result<Result<RoleChange, TargetError>, RolesError>;

/// Fatal errors end the run; the others fail this user only.
fn per_user(e: TargetError) -> Result<String, RolesError> {
    if e.is_fatal() {
        Err(RolesError::Target(e))
    } else {
        Ok(e.to_string())
    }
}

/// nevisIDM answered that it did not make the write: a refusal, or no such profile (then the
/// profile the write went to may be the fault: gone, or refusing it).
fn not_applied(e: &TargetError) -> bool {
    matches!(e, TargetError::NotFound | TargetError::Rejected { .. })
}

/// The profile authorizations go on: the default one, else the only active one.
pub fn choose(profiles: &[Profile]) -> UserResult<Option<String>> {
    if let Some(p) = profiles.iter().find(|p| p.is_default && p.active) {
        return Ok(Some(p.ext_id.clone()));
    }
    let active: Vec<&Profile> = profiles.iter().filter(|p| p.active).collect();
    match active[..] {
        [] => Ok(None),
        [one] => Ok(Some(one.ext_id.clone())),
        _ => Err(format!(
            "{} active profiles and none is the default: cannot tell which one gets the roles",
            active.len()
        )),
    }
}

impl Writer<'_> {
    /// The user's profile: the checkpoint's, else chosen among nevisIDM's, else created.
    pub async fn profile(
        &self,
        ext_id: &str,
        holding: &mut Holding,
    ) -> Result<UserResult<String>, RolesError> {
        if let Some(p) = &holding.profile {
            return Ok(Ok(p.clone()));
        }
        let profiles = match self.target.profiles(ext_id).await {
            Ok(p) => p,
            Err(e) => return per_user(e).map(Err),
        };
        match choose(&profiles) {
            Ok(Some(p)) => {
                holding.profile = Some(p.clone());
                return Ok(Ok(p));
            }
            Ok(None) => {}
            Err(why) => return Ok(Err(why)),
        }
        let Some(unit) = self.profile_unit else {
            return Ok(Err(
                "the user has no profile in nevisIDM and roles.profile_unit_ext_id is not set"
                    .into(),
            ));
        };
        if self.dry_run.is_some() {
            return Ok(Ok(format!("(new profile in {unit})")));
        }
        let created = match self.target.create_profile(ext_id, unit).await {
            Ok(p) => p,
            Err(e) => return per_user(e).map(|why| Err(format!("creating a profile: {why}"))),
        };
        let p = match created {
            Some(p) => p,
            None => match self.target.profiles(ext_id).await {
                Ok(profiles) => match choose(&profiles) {
                    Ok(Some(p)) => p,
                    _ => return Ok(Err("the profile created cannot be found".into())),
                },
                Err(e) => return per_user(e).map(Err),
            },
        };
        tracing::info!(ext_id, profile = %p, unit, "created a profile for the user's roles");
        holding.profile = Some(p.clone());
        Ok(Ok(p))
    }

    /// The profile chosen again after the checkpoint's `failed` one answered `404` or refused a
    /// write; `None` when the choice falls on it again or cannot be made (its answer stands).
    /// The roles the checkpoint held were on the old profile, gone or refusing: they are
    /// forgotten, so that the next run grants the implied ones on the new profile (a grant
    /// finding one there already owns it).
    async fn rechoose(
        &self,
        ext_id: &str,
        failed: &str,
        holding: &mut Holding,
    ) -> Result<Option<String>, RolesError> {
        holding.profile = None;
        match self.profile(ext_id, holding).await? {
            Ok(p) if p != failed => {
                tracing::warn!(ext_id, from = failed, to = %p, "the checkpoint's profile is gone or refuses writes: chose the profile again");
                holding.granted.clear();
                holding.pending.clear();
                Ok(Some(p))
            }
            _ => {
                holding.profile = Some(failed.to_string());
                Ok(None)
            }
        }
    }

    /// Applies `plan` to user `who`, the revocations `held` holds back logged as held, each outcome noted in the
    /// ledger as it comes (users are written concurrently; the report is the caller's).
    pub async fn apply(
        &self,
        who: Who<'_>,
        holding: &mut Holding,
        plan: &UserPlan,
        held: &Holds,
    ) -> Result<(), RolesError> {
        let mut revoke = Vec::new();
        for role in &plan.revoke {
            let Some(reason) = held.reason(role) else {
                revoke.push(role.as_str());
                continue;
            };
            let draft = Draft {
                reason: Some(reason.to_string()),
                ..entry(who, role, false, Verdict::Held)
            };
            self.log
                .write_once(draft, Code::RevocationSafety, &[])
                .map_err(RolesError::Store)?;
            self.ledger.done(who, role, false, RoleChange::Held);
        }
        let grants = plan.grant.iter().map(|r| (r.as_str(), true));
        let revokes = revoke.into_iter().map(|r| (r, false));
        let writes: Vec<(&str, bool)> = grants.chain(revokes).collect();
        if writes.is_empty() {
            return Ok(());
        }
        let cached = holding.profile.is_some();
        match self.profile(who.ext_id, holding).await? {
            Ok(profile) => {
                self.write_each(who, profile, cached, &writes, holding)
                    .await
            }
            Err(why) => {
                for &(role, grant) in &writes {
                    let draft = Draft {
                        reason: Some(why.clone()),
                        ..entry(who, role, grant, Verdict::Failed)
                    };
                    self.log.write(draft).map_err(RolesError::Store)?;
                    let reason = why.clone();
                    self.ledger
                        .done(who, role, grant, RoleChange::Failed { reason });
                }
                Ok(())
            }
        }
    }

    /// The user's writes in order on `profile`; a `cached` one (the checkpoint's) that answers
    /// `404` or refuses is chosen again once. After a stop, the next write is not started.
    async fn write_each(
        &self,
        who: Who<'_>,
        mut profile: String,
        cached: bool,
        writes: &[(&str, bool)],
        holding: &mut Holding,
    ) -> Result<(), RolesError> {
        let mut may_rechoose = cached;
        for &(role, grant) in writes {
            if self.cancel.is_cancelled() {
                break;
            }
            self.ledger.sending(who, role, grant);
            let mut tried = self.write(who, &profile, role, grant, holding).await?;
            if let Err(e) = &tried
                && may_rechoose
                && not_applied(e)
            {
                may_rechoose = false;
                if let Some(other) = self.rechoose(who.ext_id, &profile, holding).await? {
                    profile = other;
                    tried = self.write(who, &profile, role, grant, holding).await?;
                }
            }
            let change = match tried {
                Ok(change) => change,
                Err(e) => not_made(e, (who, role, grant), self.log)?,
            };
            self.ledger.done(who, role, grant, change);
        }
        Ok(())
    }

    async fn write(
        &self,
        who: Who<'_>,
        profile: &str,
        role: &str,
        grant: bool,
        holding: &mut Holding,
    ) -> Tried {
        if let Some(sink) = self.dry_run {
            let op = if grant { "grant" } else { "revoke" };
            sink(&json!({"op": op, "extId": who.ext_id, "roleExtId": role}));
            return Ok(Ok(if grant {
                RoleChange::Granted
            } else {
                RoleChange::Revoked
            }));
        }
        if grant {
            self.grant(who, profile, role, holding).await
        } else {
            self.revoke(who, profile, role, holding).await
        }
    }

    async fn grant(&self, who: Who<'_>, profile: &str, role: &str, holding: &mut Holding) -> Tried {
        // Write-ahead: the mark is durable before nevisIDM can make the grant, so that no stop
        // or crash leaves a role the sync does not know it may have granted.
        holding.ext_id = who.ext_id.to_string();
        holding.profile = Some(profile.to_string());
        holding.pending.insert(role.to_string());
        holding
            .write(self.store, who.id)
            .map_err(RolesError::Store)?;
        self.store.flush().await.map_err(RolesError::Store)?;
        let (authorization, already) = match self.target.grant(profile, role).await {
            Ok(a) => (a, false),
            // Held already (by hand, or a grant whose answer was lost): the sync owns it now.
            Err(TargetError::Duplicate { .. }) => (self.find(profile, role).await, true),
            Err(e) => {
                // Unanswered (a timeout, a 5xx) it may have been made: the mark stays for the
                // next run to settle.
                if not_applied(&e) {
                    holding.pending.remove(role);
                    holding
                        .write(self.store, who.id)
                        .map_err(RolesError::Store)?;
                }
                return Ok(Err(e));
            }
        };
        self.own(who, role, authorization, already, holding)?;
        tracing::info!(ext_id = who.ext_id, role, profile, already, "granted");
        Ok(Ok(RoleChange::Granted))
    }

    /// Checkpoints `role` as held, its log entry first: a grant made, or one found `already`
    /// held.
    fn own(
        &self,
        who: Who<'_>,
        role: &str,
        authorization: Option<String>,
        already: bool,
        holding: &mut Holding,
    ) -> Result<(), RolesError> {
        let draft = match already {
            true => owned_entry(who, role),
            false => entry(who, role, true, Verdict::Confirmed),
        };
        holding.pending.remove(role);
        holding.granted.insert(role.to_string(), authorization);
        self.checkpoint(who, draft, holding)
    }

    /// Writes `draft` and `holding` as one atomic step (the checkpoint alone with the log off).
    fn checkpoint(&self, who: Who<'_>, draft: Draft, holding: &Holding) -> Result<(), RolesError> {
        let encoded = holding.encoded().map_err(RolesError::Store)?;
        let checkpoint = Checkpoint::Roles {
            nexudus_id: who.id,
            holding: encoded.as_deref(),
        };
        self.log
            .write_with(self.store, draft, checkpoint)
            .map_err(RolesError::Store)
    }

    /// The extId of the profile's authorization of `role`, if a read finds one.
    async fn find(&self, profile: &str, role: &str) -> Option<String> {
        let list = self.target.authorizations(profile).await.ok()?;
        list.into_iter()
            .find(|a| a.role_ext_id == role)
            .map(|a| a.ext_id)
    }

    async fn revoke(
        &self,
        who: Who<'_>,
        profile: &str,
        role: &str,
        holding: &mut Holding,
    ) -> Tried {
        if let Some(known) = holding.granted.get(role).cloned().flatten() {
            match self.target.revoke(profile, &known).await {
                Ok(()) => return self.revoked(who, profile, role, holding).map(Ok),
                // Not proof the role is gone: a hand re-grant has a new extId. Look.
                Err(TargetError::NotFound) => {}
                Err(e) => return Ok(Err(e)),
            }
        }
        let found = match self.target.authorizations(profile).await {
            Ok(list) => list.into_iter().filter(|a| a.role_ext_id == role),
            Err(e) => return Ok(Err(e)),
        };
        for authorization in found {
            match self.target.revoke(profile, &authorization.ext_id).await {
                Ok(()) | Err(TargetError::NotFound) => {}
                Err(e) => return Ok(Err(e)),
            }
        }
        self.revoked(who, profile, role, holding).map(Ok)
    }

    /// Checkpoints `role` as no longer held, its log entry first.
    fn revoked(
        &self,
        who: Who<'_>,
        profile: &str,
        role: &str,
        holding: &mut Holding,
    ) -> Result<RoleChange, RolesError> {
        let draft = entry(who, role, false, Verdict::Confirmed);
        holding.granted.remove(role);
        holding.pending.remove(role);
        self.checkpoint(who, draft, holding)?;
        tracing::info!(ext_id = who.ext_id, role, profile, "revoked");
        Ok(RoleChange::Revoked)
    }

    /// Settles the grants a run before left pending (stopped or killed before their answer):
    /// reads the profile's authorizations; a pending role found there is owned (checkpointed
    /// with its authorization, logged "already held; now owned"), one not found is cleared. A
    /// read that fails keeps the marks for the next run and fails their roles in this one.
    pub async fn settle(&self, who: Who<'_>, holding: &mut Holding) -> Result<(), RolesError> {
        if holding.pending.is_empty() {
            return Ok(());
        }
        // A mark is written with its profile; without one, nothing can hold the grant.
        let listed = match &holding.profile {
            Some(profile) => self.target.authorizations(profile).await,
            None => Err(TargetError::NotFound),
        };
        let found = match listed {
            Ok(list) => list,
            // The profile is gone, and every grant on it: the next write chooses another.
            Err(TargetError::NotFound) => {
                holding.profile = None;
                Vec::new()
            }
            Err(e) => {
                let why = per_user(e)?;
                let reason = format!("cannot read whether a grant left pending was made: {why}");
                for role in &holding.pending {
                    let reason = reason.clone();
                    self.ledger
                        .done(who, role, true, RoleChange::Failed { reason });
                }
                return Ok(());
            }
        };
        for role in std::mem::take(&mut holding.pending) {
            let Some(a) = found.iter().find(|a| a.role_ext_id == role) else {
                tracing::info!(
                    ext_id = who.ext_id,
                    role,
                    "a grant left pending was not made"
                );
                continue;
            };
            let authorization = Some(a.ext_id.clone());
            if self.dry_run.is_some() {
                holding.granted.insert(role, authorization);
            } else {
                self.own(who, &role, authorization, true, holding)?;
            }
        }
        if self.dry_run.is_none() {
            holding
                .write(self.store, who.id)
                .map_err(RolesError::Store)?;
        }
        Ok(())
    }

    /// Logs and notes the writes still in flight when the shutdown grace ran out: failed, their
    /// grants' pending marks left for the next run.
    pub fn abandoned(&self) -> Result<(), RolesError> {
        for (id, ext_id, role, grant) in self.ledger.abandon() {
            let who = Who {
                id,
                ext_id: &ext_id,
            };
            let reason = cause::ABANDONED_AT_SHUTDOWN.to_string();
            let draft = Draft {
                reason: Some(reason.clone()),
                ..entry(who, &role, grant, Verdict::Failed)
            };
            self.log.write(draft).map_err(RolesError::Store)?;
            self.ledger
                .done(who, &role, grant, RoleChange::Failed { reason });
        }
        Ok(())
    }

    /// A reconcile: the owned roles the user's profile really holds, with their authorizations
    /// (the checkpoint is rebuilt from them, pending marks settled by the same read). `Err`
    /// fails the user.
    pub async fn actual(
        &self,
        ext_id: &str,
        owned: &BTreeSet<String>,
        holding: &mut Holding,
    ) -> Result<UserResult<()>, RolesError> {
        holding.profile = None;
        let profile = match self.target.profiles(ext_id).await {
            Ok(profiles) => match choose(&profiles) {
                Ok(Some(p)) => p,
                Ok(None) => {
                    holding.granted.clear();
                    holding.pending.clear();
                    return Ok(Ok(()));
                }
                Err(why) => return Ok(Err(why)),
            },
            Err(e) => return per_user(e).map(Err),
        };
        let list = match self.target.authorizations(&profile).await {
            Ok(list) => list,
            Err(e) => return per_user(e).map(Err),
        };
        holding.profile = Some(profile);
        holding.ext_id = ext_id.to_string();
        holding.pending.clear();
        holding.granted = list
            .into_iter()
            .filter(|a| owned.contains(&a.role_ext_id))
            .map(|a| (a.role_ext_id, Some(a.ext_id)))
            .collect();
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(ext_id: &str, is_default: bool, active: bool) -> Profile {
        Profile {
            ext_id: ext_id.into(),
            is_default,
            active,
        }
    }

    #[test]
    fn the_default_profile_else_the_only_active_one() {
        assert_eq!(
            choose(&[p("a", false, true), p("b", true, true)]),
            Ok(Some("b".into()))
        );
        assert_eq!(
            choose(&[p("a", false, true), p("b", false, false)]),
            Ok(Some("a".into()))
        );
        assert_eq!(choose(&[p("a", false, false)]), Ok(None));
        assert!(choose(&[p("a", false, true), p("b", false, true)]).is_err());
    }
}
