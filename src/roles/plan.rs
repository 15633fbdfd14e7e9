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

/// Who holds each owned role at the start of the stage and who would lose it: the base of the
/// revocation safety. Counted while the stage plans each user (no second pass over the store).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Per owned role: (users holding it, users whose plan revokes it).
    roles: BTreeMap<String, (u64, u64)>,
    /// Users holding any owned role, and users losing any.
    holders: u64,
    losing: u64,
}

impl Tally {
    /// Counts one user: the owned roles they hold and the ones their plan revokes.
    pub fn count(&mut self, owned: &BTreeSet<String>, held: &BTreeSet<String>, revoke: &[String]) {
        let mut holds_any = false;
        for role in held.iter().filter(|r| owned.contains(*r)) {
            self.roles.entry(role.clone()).or_default().0 += 1;
            holds_any = true;
        }
        for role in revoke {
            self.roles.entry(role.clone()).or_default().1 += 1;
        }
        self.holders += u64::from(holds_any);
        self.losing += u64::from(!revoke.is_empty());
    }
}

/// The revocations held back, each owned role to the reason why (none: every one goes ahead).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holds(BTreeMap<String, String>);

impl Holds {
    /// Why `role`'s revocations are held, if they are.
    pub fn reason(&self, role: &str) -> Option<&str> {
        self.0.get(role).map(String::as_str)
    }

    /// The reasons, each once (a hold of all owned roles together gives them one reason).
    pub fn reasons(&self) -> BTreeSet<&str> {
        self.0.values().map(String::as_str).collect()
    }
}

/// The revocation safety. A role's revocations are held when more of its holders would lose it
/// than `roles.max_revokes` (a floor: a one-person role, or a few leavers of a large one, are never
/// delayed, since a delayed revocation is access kept) **and** more than
/// `roles.max_revoke_percent` percent of them (so an emptied role trips it, however many members
/// Nexudus has). The same test over the users holding any owned role holds every revocation when
/// many small roles are emptied at once, none of them past the floor on its own.
pub fn revocations_held(cfg: &RolesConfig, tally: &Tally) -> Holds {
    let trips = |losing: u64, holders: u64| {
        losing > cfg.max_revokes && losing * 100 > cfg.max_revoke_percent * holders
    };
    let limits = format!(
        "roles.max_revokes = {}, roles.max_revoke_percent = {}; --allow-mass-disable approves \
         them for one run",
        cfg.max_revokes, cfg.max_revoke_percent
    );
    let all = trips(tally.losing, tally.holders).then(|| {
        format!(
            "{} of {} users holding the sync's roles would lose one ({limits})",
            tally.losing, tally.holders
        )
    });
    let held = tally
        .roles
        .iter()
        .filter(|(_, (_, losing))| *losing > 0)
        .filter_map(|(role, &(holders, losing))| {
            let reason = match trips(losing, holders) {
                true => {
                    format!("{losing} of {holders} holders of role {role} would lose it ({limits})")
                }
                false => all.clone()?,
            };
            Some((role.clone(), reason))
        });
    Holds(held.collect())
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

    /// A tally of `holders` users holding `role`, the first `losing` of them losing it.
    fn tally_of(tally: &mut Tally, role: &str, holders: u64, losing: u64) {
        let owned: BTreeSet<String> = cfg().owned().into_iter().collect();
        for i in 0..holders {
            let revoke = if i < losing {
                vec![role.to_string()]
            } else {
                vec![]
            };
            tally.count(&owned, &set(&[role]), &revoke);
        }
    }

    fn limits(max_revokes: u64, max_revoke_percent: u64) -> RolesConfig {
        RolesConfig {
            max_revokes,
            max_revoke_percent,
            ..cfg()
        }
    }

    fn held(max_revokes: u64, max_revoke_percent: u64, tally: &Tally) -> Vec<String> {
        let holds = revocations_held(&limits(max_revokes, max_revoke_percent), tally);
        holds.0.into_keys().collect()
    }

    #[test]
    fn the_revocation_safety_counts_the_holders_of_each_role() {
        let mut t = Tally::default();
        tally_of(&mut t, "frontdesk", 30, 30);
        tally_of(&mut t, "finance", 1, 1);
        tally_of(&mut t, "reports", 400, 4);
        // With the defaults: the emptied role is held, the one-person role and the few leavers of
        // the large one are not; over all 431 holders, 35 losing is under a quarter.
        assert_eq!(held(5, 25, &t), ["frontdesk"]);
        let holds = revocations_held(&limits(5, 25), &t);
        let reason = holds.reason("frontdesk").unwrap();
        assert!(
            reason.starts_with("30 of 30 holders of role frontdesk"),
            "{reason}"
        );
        assert!(reason.contains("roles.max_revokes = 5"), "{reason}");

        // Both conditions are needed: past the floor alone, or past the share alone, goes ahead.
        let mut t = Tally::default();
        tally_of(&mut t, "reports", 1000, 6);
        tally_of(&mut t, "finance", 4, 4);
        assert_eq!(held(5, 25, &t), Vec::<String>::new());
        // No share: past the floor is enough, for a role and for all holders together.
        assert_eq!(held(5, 0, &t), ["finance", "reports"]);
        assert_eq!(held(3, 25, &t), ["finance"]);
    }

    #[test]
    fn many_small_roles_emptied_at_once_hold_every_revocation() {
        let mut t = Tally::default();
        for role in ["frontdesk", "finance", "reports", "space-admin"] {
            tally_of(&mut t, role, 4, 4);
        }
        assert_eq!(
            held(5, 25, &t),
            ["finance", "frontdesk", "reports", "space-admin"]
        );
        let holds = revocations_held(&limits(5, 25), &t);
        let reasons = holds.reasons();
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons
                .iter()
                .all(|r| r.starts_with("16 of 16 users holding"))
        );
        assert_eq!(held(5, 25, &Tally::default()), Vec::<String>::new());
    }

    #[test]
    fn a_user_is_counted_once_among_all_holders_and_only_for_owned_roles() {
        let owned: BTreeSet<String> = cfg().owned().into_iter().collect();
        let mut t = Tally::default();
        t.count(
            &owned,
            &set(&["frontdesk", "finance", "vip"]),
            &["finance".into()],
        );
        t.count(&owned, &set(&["vip"]), &[]);
        assert_eq!((t.holders, t.losing), (1, 1));
        assert_eq!(t.roles.get("vip"), None);
        assert_eq!(t.roles["frontdesk"], (1, 0));
        assert_eq!(t.roles["finance"], (1, 1));
    }
}
