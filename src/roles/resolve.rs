//! Resolution: each mapped name to its one UserRole Id, and the checks of nevisIDM (every owned
//! roleExtId exists, the caller holds the permissions the role sync needs). Done at start and at
//! every full listing; anything wrong here is fatal, naming what is wrong.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{RoleSourceName, RolesConfig};
use crate::nevis::RoleTarget;
use crate::nexudus::{Source, UserRole};

use super::RolesError;

/// Pages of the UserRole listing read at most (a listing that says `HasNextPage` forever).
const MAX_PAGES: u32 = 100;

/// The permissions the role sync cannot work without.
pub const NEEDED: [&str; 4] = [
    "AccessControl.AuthorizationView",
    "AccessControl.AuthorizationCreate",
    "AccessControl.AuthorizationDelete",
    "AccessControl.ProfileView",
];

/// The whole UserRole listing (names, Ids, `UpdatedOn`; no members).
pub async fn list_all<S: Source>(
    source: &S,
    since: Option<&str>,
) -> Result<Vec<UserRole>, RolesError> {
    let mut all = Vec::new();
    for page in 1..=MAX_PAGES {
        let listed = source
            .userroles_page(page, since)
            .await
            .map_err(RolesError::Source)?;
        all.extend(listed.records);
        if !listed.has_next_page {
            return Ok(all);
        }
    }
    Err(RolesError::Fatal(format!(
        "the UserRole listing did not end within {MAX_PAGES} pages"
    )))
}

/// Pure: each mapping's UserRole Id (`None` for `@admin`), or the first name that names none or
/// several, with the candidates.
pub fn resolve(cfg: &RolesConfig, listed: &[UserRole]) -> Result<Vec<Option<u64>>, RolesError> {
    cfg.map
        .iter()
        .map(|m| match &m.nexudus {
            RoleSourceName::Admin => Ok(None),
            RoleSourceName::Id(id) if listed.iter().any(|r| r.id == *id) => Ok(Some(*id)),
            RoleSourceName::Id(id) => Err(RolesError::Fatal(format!(
                "roles.map: Nexudus has no UserRole id:{id}"
            ))),
            RoleSourceName::Name(name) => {
                let found: Vec<&UserRole> = listed
                    .iter()
                    .filter(|r| r.name.trim().eq_ignore_ascii_case(name.trim()))
                    .collect();
                match found[..] {
                    [one] => Ok(Some(one.id)),
                    [] => Err(RolesError::Fatal(format!(
                        "roles.map: no Nexudus UserRole is named {name:?} (UserRoles: {})",
                        candidates(listed.iter())
                    ))),
                    _ => Err(RolesError::Fatal(format!(
                        "roles.map: {name:?} names {} Nexudus UserRoles, one per location: {}; \
                         pick one with nexudus = \"id:<Id>\"",
                        found.len(),
                        candidates(found.into_iter())
                    ))),
                }
            }
        })
        .collect()
}

/// `id:7 "Receptionist" (Main Street)`, the first 20.
fn candidates<'a>(roles: impl Iterator<Item = &'a UserRole>) -> String {
    let mut shown: Vec<String> = roles
        .map(|r| {
            let place = r
                .business_name
                .clone()
                .or_else(|| r.business_id.map(|b| format!("business {b}")))
                .unwrap_or_else(|| "no business".into());
            format!("id:{} {:?} ({place})", r.id, r.name)
        })
        .collect();
    if shown.is_empty() {
        return "none".into();
    }
    let more = shown.len().saturating_sub(20);
    shown.truncate(20);
    if more > 0 {
        shown.push(format!("and {more} more"));
    }
    shown.join(", ")
}

/// Whether "the permissions endpoint does not exist" was said already (said once a process).
static NO_PERMISSIONS_ENDPOINT: AtomicBool = AtomicBool::new(false);

/// Every owned role exists, and the caller holds [`NEEDED`] where nevisIDM can say so.
pub async fn check_target(cfg: &RolesConfig, target: &dyn RoleTarget) -> Result<(), RolesError> {
    match target.permissions().await.map_err(RolesError::Target)? {
        None => {
            if !NO_PERMISSIONS_ENDPOINT.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "nevisIDM has no GET /principal/v1/permissions (an older release): the \
                     permissions of the role sync cannot be checked up front; going on"
                );
            }
        }
        Some(held) => {
            let missing: Vec<&str> = NEEDED
                .iter()
                .copied()
                .filter(|p| !held.iter().any(|h| h == p))
                .collect();
            if !missing.is_empty() {
                return Err(RolesError::Fatal(format!(
                    "nevisIDM: the sync's technical user lacks the permission(s) {} that the \
                     role sync ([[roles.map]]) needs",
                    missing.join(", ")
                )));
            }
            if cfg.profile_unit_ext_id.is_some()
                && !held.iter().any(|h| h == "AccessControl.ProfileCreate")
            {
                tracing::warn!(
                    "nevisIDM: the technical user lacks AccessControl.ProfileCreate; users \
                     without a profile will fail (roles.profile_unit_ext_id is set)"
                );
            }
        }
    }
    let mut unknown = BTreeMap::new();
    for role in cfg.owned() {
        if !target
            .role_exists(&role)
            .await
            .map_err(RolesError::Target)?
        {
            unknown.insert(role, ());
        }
    }
    if !unknown.is_empty() {
        let names: Vec<String> = unknown.into_keys().collect();
        return Err(RolesError::Fatal(format!(
            "roles.map: nevisIDM has no role with roleExtId {}",
            names.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RoleMapping;

    fn role(id: u64, name: &str, business: &str) -> UserRole {
        UserRole {
            id,
            name: name.into(),
            business_name: Some(business.into()),
            ..UserRole::default()
        }
    }

    fn cfg(names: &[&str]) -> RolesConfig {
        RolesConfig {
            map: names
                .iter()
                .map(|n| RoleMapping {
                    nexudus: RoleSourceName::parse(n).unwrap(),
                    nevis: vec!["x".into()],
                })
                .collect(),
            profile_unit_ext_id: None,
            max_revokes: 50,
            max_revoke_percent: 10,
            full_read_every: std::time::Duration::from_secs(600),
        }
    }

    #[test]
    fn a_name_resolves_to_exactly_one_userrole() {
        let listed = [
            role(1, "Receptionist", "Main St"),
            role(2, "Finance Admin", "Main St"),
            role(3, "Finance Admin", "Harbour"),
        ];
        let ids = resolve(&cfg(&["receptionist", "id:3", "@admin"]), &listed).unwrap();
        assert_eq!(ids, [Some(1), Some(3), None]);
        let e = resolve(&cfg(&["Finance Admin"]), &listed)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"Finance Admin\"") && e.contains("id:2") && e.contains("id:3"));
        assert!(e.contains("Harbour"), "{e}");
        let e = resolve(&cfg(&["Janitor"]), &listed)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"Janitor\"") && e.contains("id:1"), "{e}");
        let e = resolve(&cfg(&["id:99"]), &listed).unwrap_err().to_string();
        assert!(e.contains("id:99"), "{e}");
    }
}
