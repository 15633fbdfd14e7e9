//! Pure: what each user should hold of the owned roles, against what they hold, and the
//! revocation safety. No I/O: the stage feeds it memberships and holdings.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{RoleSourceName, RolesConfig};

/// Who is a member of each mapped source role, as far as this run knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// Members of each mapped source role (`@admin` included); a role missing here is unknown.
    pub of: BTreeMap<RoleSourceName, BTreeSet<u64>>,
    /// Every membership read of this run was complete: only then may anything be revoked.
    pub complete: bool,
}

impl Members {
    /// Every Nexudus user in any mapped source role.
    pub fn everyone(&self) -> BTreeSet<u64> {
        self.of.values().flatten().copied().collect()
    }
}

/// The owned roles each user's source roles imply.
pub fn desired(cfg: &RolesConfig, members: &Members, user: u64) -> BTreeSet<String> {
    cfg.map
        .iter()
        .filter(|m| {
            members
                .of
                .get(&m.nexudus)
                .is_some_and(|set| set.contains(&user))
        })
        .flat_map(|m| m.nevis.iter().cloned())
        .collect()
}

/// What to do for one user: owned roles to grant and to revoke.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPlan {
    pub grant: Vec<String>,
    pub revoke: Vec<String>,
}

impl UserPlan {
    pub fn is_empty(&self) -> bool {
        self.grant.is_empty() && self.revoke.is_empty()
    }
}

/// `held`: the owned roles the user holds (the checkpoint, or nevisIDM's authorizations in a
/// reconcile); anything not owned is never in a plan. Revocations only when `may_revoke`.
pub fn plan(
    owned: &BTreeSet<String>,
    desired: &BTreeSet<String>,
    held: &BTreeSet<String>,
    may_revoke: bool,
) -> UserPlan {
    UserPlan {
        grant: desired
            .iter()
            .filter(|r| owned.contains(*r) && !held.contains(*r))
            .cloned()
            .collect(),
        revoke: if may_revoke {
            held.iter()
                .filter(|r| owned.contains(*r) && !desired.contains(*r))
                .cloned()
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// Whether the revocations of a run are held: more users losing a role than `roles.max_revokes`,
/// or than `roles.max_revoke_percent` percent of the users the store knows.
pub fn revocations_held(cfg: &RolesConfig, losing: u64, known: u64) -> bool {
    losing > cfg.max_revokes || losing * 100 > cfg.max_revoke_percent * known
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RoleMapping;

    fn cfg() -> RolesConfig {
        RolesConfig {
            map: vec![
                RoleMapping {
                    nexudus: RoleSourceName::Name("Receptionist".into()),
                    nevis: vec!["frontdesk".into()],
                },
                RoleMapping {
                    nexudus: RoleSourceName::Id(9),
                    nevis: vec!["finance".into(), "reports".into()],
                },
                RoleMapping {
                    nexudus: RoleSourceName::Admin,
                    nevis: vec!["space-admin".into(), "reports".into()],
                },
            ],
            profile_unit_ext_id: None,
            max_revokes: 2,
            max_revoke_percent: 10,
            full_read_every: std::time::Duration::from_secs(600),
        }
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_user_wants_the_union_of_what_their_source_roles_imply() {
        let mut members = Members::default();
        members
            .of
            .insert(RoleSourceName::Name("Receptionist".into()), [1, 2].into());
        members.of.insert(RoleSourceName::Admin, [2].into());
        assert_eq!(desired(&cfg(), &members, 1), set(&["frontdesk"]));
        assert_eq!(
            desired(&cfg(), &members, 2),
            set(&["frontdesk", "reports", "space-admin"])
        );
        assert_eq!(desired(&cfg(), &members, 3), set(&[]));
        assert_eq!(members.everyone(), [1, 2].into());
    }

    #[test]
    fn only_owned_roles_are_granted_or_revoked() {
        let owned: BTreeSet<String> = cfg().owned().into_iter().collect();
        let p = plan(
            &owned,
            &set(&["frontdesk"]),
            &set(&["finance", "hand-granted", "policy-default"]),
            true,
        );
        assert_eq!(p.grant, ["frontdesk"]);
        assert_eq!(p.revoke, ["finance"], "foreign roles are never revoked");
        let unsure = plan(&owned, &set(&[]), &set(&["finance"]), false);
        assert!(unsure.is_empty(), "an incomplete read never revokes");
        assert!(plan(&owned, &set(&["reports"]), &set(&["reports"]), true).is_empty());
    }

    #[test]
    fn the_revocation_safety_counts_users_losing_a_role() {
        let c = cfg();
        assert!(!revocations_held(&c, 2, 100));
        assert!(revocations_held(&c, 3, 100), "more than max_revokes");
        assert!(revocations_held(&c, 2, 10), "more than 10 % of 10 users");
        assert!(!revocations_held(&c, 1, 10));
        assert!(!revocations_held(&c, 0, 0));
    }
}
