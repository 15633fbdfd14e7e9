//! The write stage: for each user with a plan, the profile (the default one, else the only
//! active one, else one created in `roles.profile_unit_ext_id`), then each grant and revocation,
//! each checkpointed as soon as nevisIDM confirmed it and noted in the report with its cause.

use std::collections::BTreeSet;

use serde_json::json;

use crate::audit::{Change, Code, Draft, Operation, Recorder, Verdict};
use crate::dispatch::PlanSink;
use crate::nevis::{Profile, RoleTarget, TargetError};
use crate::report::RoleChange;
use crate::store::Store;

use super::RolesError;
use super::holding::Holding;
use super::plan::UserPlan;

/// What the stage writes with.
pub struct Writer<'a> {
    pub target: &'a dyn RoleTarget,
    pub store: &'a Store,
    pub dry_run: Option<&'a PlanSink>,
    pub profile_unit: Option<&'a str>,
    /// The provisioning log: each grant and revocation, written before its checkpoint.
    pub log: &'a Recorder,
}

/// The cause of a grant or a revocation, in words.
const GRANT_CAUSE: &str = "in a Nexudus UserRole mapped to this role ([[roles.map]])";
const REVOKE_CAUSE: &str = "no longer in a Nexudus UserRole mapped to this role ([[roles.map]])";

/// The provisioning-log entry of one grant (`true`) or revocation.
fn entry(id: u64, ext_id: &str, role: &str, grant: bool, outcome: Verdict) -> Draft {
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
        nexudus_id: Some(id),
        ext_id: ext_id.to_string(),
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

/// The entry of a grant or revocation nevisIDM did not make (`Err` when the error is fatal).
fn not_made(
    e: TargetError,
    (id, ext_id, role, grant): (u64, &str, &str, bool),
    log: &Recorder,
) -> Result<RoleChange, RolesError> {
    let (outcome, status) = Verdict::of_target_error(&e);
    let reason = per_user(e)?;
    let draft = Draft {
        status,
        reason: Some(reason.clone()),
        ..entry(id, ext_id, role, grant, outcome)
    };
    log.write(draft).map_err(RolesError::Store)?;
    Ok(RoleChange::Failed { reason })
}

/// What one user's plan came to: each role, grant (`true`) or revocation, and its outcome.
pub type Outcomes = Vec<(String, bool, RoleChange)>;

/// A user failed for a reason that is theirs (not the run's).
type UserResult<T> = Result<T, String>;

/// Fatal errors end the run; the others fail this user only.
fn per_user(e: TargetError) -> Result<String, RolesError> {
    if e.is_fatal() {
        Err(RolesError::Target(e))
    } else {
        Ok(e.to_string())
    }
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

    /// Applies `plan` to user `id` (`ext_id`), revocations only unless `held`: what each role
    /// came to, for the report (users are written concurrently; the report is the caller's).
    pub async fn apply(
        &self,
        id: u64,
        ext_id: &str,
        holding: &mut Holding,
        plan: &UserPlan,
        held: Option<&str>,
    ) -> Result<Outcomes, RolesError> {
        let mut out = Outcomes::new();
        if let Some(reason) = held {
            for role in &plan.revoke {
                let draft = Draft {
                    reason: Some(reason.to_string()),
                    ..entry(id, ext_id, role, false, Verdict::Held)
                };
                self.log
                    .write_once(draft, Code::RevocationSafety, &[])
                    .map_err(RolesError::Store)?;
                out.push((role.clone(), false, RoleChange::Held));
            }
        }
        let revoke: &[String] = if held.is_some() { &[] } else { &plan.revoke };
        if plan.grant.is_empty() && revoke.is_empty() {
            return Ok(out);
        }
        let profile = match self.profile(ext_id, holding).await? {
            Ok(p) => p,
            Err(why) => {
                for (role, grant) in plan
                    .grant
                    .iter()
                    .map(|r| (r, true))
                    .chain(revoke.iter().map(|r| (r, false)))
                {
                    let draft = Draft {
                        reason: Some(why.clone()),
                        ..entry(id, ext_id, role, grant, Verdict::Failed)
                    };
                    self.log.write(draft).map_err(RolesError::Store)?;
                    let reason = why.clone();
                    out.push((role.clone(), grant, RoleChange::Failed { reason }));
                }
                return Ok(out);
            }
        };
        for role in &plan.grant {
            let change = self.grant(id, ext_id, &profile, role, holding).await?;
            out.push((role.clone(), true, change));
        }
        for role in revoke {
            let change = self.revoke(id, ext_id, &profile, role, holding).await?;
            out.push((role.clone(), false, change));
        }
        Ok(out)
    }

    async fn grant(
        &self,
        id: u64,
        ext_id: &str,
        profile: &str,
        role: &str,
        holding: &mut Holding,
    ) -> Result<RoleChange, RolesError> {
        if let Some(sink) = self.dry_run {
            sink(&json!({"op": "grant", "extId": ext_id, "roleExtId": role}));
            return Ok(RoleChange::Granted);
        }
        let authorization = match self.target.grant(profile, role).await {
            Ok(a) => a,
            // Already granted (by hand, or a grant whose answer was lost): the sync owns it now.
            Err(TargetError::Duplicate { .. }) => None,
            Err(e) => return not_made(e, (id, ext_id, role, true), self.log),
        };
        let draft = entry(id, ext_id, role, true, Verdict::Confirmed);
        self.log.write(draft).map_err(RolesError::Store)?;
        holding.ext_id = ext_id.to_string();
        holding.granted.insert(role.to_string(), authorization);
        holding.write(self.store, id).map_err(RolesError::Store)?;
        tracing::info!(ext_id, role, profile, "granted");
        Ok(RoleChange::Granted)
    }

    async fn revoke(
        &self,
        id: u64,
        ext_id: &str,
        profile: &str,
        role: &str,
        holding: &mut Holding,
    ) -> Result<RoleChange, RolesError> {
        if let Some(sink) = self.dry_run {
            sink(&json!({"op": "revoke", "extId": ext_id, "roleExtId": role}));
            return Ok(RoleChange::Revoked);
        }
        let known = holding.granted.get(role).cloned().flatten();
        let authorizations = match known {
            Some(a) => vec![a],
            None => match self.target.authorizations(profile).await {
                Ok(list) => list
                    .into_iter()
                    .filter(|a| a.role_ext_id == role)
                    .map(|a| a.ext_id)
                    .collect(),
                Err(e) => return not_made(e, (id, ext_id, role, false), self.log),
            },
        };
        for authorization in authorizations {
            match self.target.revoke(profile, &authorization).await {
                Ok(()) | Err(TargetError::NotFound) => {}
                Err(e) => return not_made(e, (id, ext_id, role, false), self.log),
            }
        }
        let draft = entry(id, ext_id, role, false, Verdict::Confirmed);
        self.log.write(draft).map_err(RolesError::Store)?;
        holding.granted.remove(role);
        holding.write(self.store, id).map_err(RolesError::Store)?;
        tracing::info!(ext_id, role, profile, "revoked");
        Ok(RoleChange::Revoked)
    }

    /// A reconcile: the owned roles the user's profile really holds, with their authorizations
    /// (the checkpoint is rebuilt from them). `Err` fails the user.
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
