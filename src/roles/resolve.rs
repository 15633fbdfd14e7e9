//! Resolution: each mapped name to its one UserRole Id, and the checks of nevisIDM (every owned
//! roleExtId exists, the caller holds the permissions the role sync needs). Done at start and at
//! every full listing; anything wrong here is fatal, naming what is wrong.
//!
//! The UserRole listing it reads ends, and is judged complete, by the users' listing's rule
//! (`sync::census`): only a complete listing can say that a name names no UserRole, or exactly
//! one, or that no mapped UserRole changed. From one that cannot be known complete a name it does
//! not show keeps its last Id, nothing is revoked in the run, and the next run resolves again.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{RoleSourceName, RolesConfig};
use crate::nevis::RoleTarget;
use crate::nexudus::{Source, UserRole, UserRolePage};

use super::RolesError;
use super::members::State;

/// Pages the listing may run past what `TotalItems` announced before it is declared
/// inconsistent (as the users' listing).
const PAGE_SLACK: u64 = 2;

/// Pages read at most of a listing that never announced `TotalItems` (then it is incomplete
/// anyway): a bound, so a listing that says `HasNextPage` forever cannot keep a run alive.
const MAX_PAGES: u64 = 100;

/// The permissions the role sync cannot work without. `RoleView` is for `GET /core/v1/roles/{extId}`,
/// the check below that every owned role exists: without it nevisIDM answers 403 there, and the
/// start would fail on a refusal instead of naming the missing permission.
pub const NEEDED: [&str; 5] = [
    "AccessControl.AuthorizationView",
    "AccessControl.AuthorizationCreate",
    "AccessControl.AuthorizationDelete",
    "AccessControl.ProfileView",
    "AccessControl.RoleView",
];

/// The UserRole listing as read (names, Ids, `UpdatedOn`; no members), and why it cannot be
/// known complete, if so.
#[derive(Debug, Default)]
pub struct Listing {
    pub roles: Vec<UserRole>,
    pub incomplete: Option<String>,
}

/// The whole UserRole listing, read to its end by the users' listing's rule; a listing that
/// cannot be known complete is said in a warning, and answered with its reason.
pub async fn list_all<S: Source>(source: &S, since: Option<&str>) -> Result<Listing, RolesError> {
    let mut judge = Judge::default();
    let mut roles = Vec::new();
    for page in 1u32.. {
        let listed = source
            .userroles_page(page, since)
            .await
            .map_err(RolesError::Source)?;
        let more = judge.page(&listed);
        roles.extend(listed.records.into_iter().filter(|r| judge.record(r.id)));
        if !more {
            break;
        }
    }
    let incomplete = judge.verdict();
    if let Some(reason) = &incomplete {
        let which = if since.is_some() { "changed " } else { "" };
        tracing::warn!(
            "the listing of {which}UserRoles is incomplete ({reason}): no role is revoked in \
             this run, and the next run reads it again"
        );
    }
    Ok(Listing { roles, incomplete })
}

/// The census of the UserRole listing, by the users' listing's rule: `HasNextPage` (or
/// `CurrentPage`/`TotalPages`) says where it ends, `TotalItems` is announced and stays, no page
/// is short of its size while more follow, no page runs past what was announced, each Id comes
/// once, and as many as `TotalItems`. The first reason found is kept: it explains the others.
#[derive(Debug, Default)]
struct Judge {
    pages: u64,
    total_items: Option<u64>,
    seen: HashSet<u64>,
    /// The last page read said none follows.
    finished: bool,
    reason: Option<String>,
}

impl Judge {
    /// Notes a page; whether another is to be read.
    fn page(&mut self, page: &UserRolePage) -> bool {
        self.pages += 1;
        let n = self.pages;
        match (self.total_items, page.total_items) {
            (_, None) => self.note(|| format!("page {n} did not report TotalItems")),
            (None, Some(t)) => self.total_items = Some(t),
            (Some(a), Some(b)) if a != b => {
                self.note(|| format!("TotalItems changed during the listing ({a} -> {b})"));
            }
            _ => {}
        }
        let Some(more) = page.has_next_page else {
            // Nothing says whether more follow: read no further, and know nothing from it.
            self.note(|| format!("page {n} said neither HasNextPage nor CurrentPage/TotalPages"));
            return false;
        };
        if !more {
            self.finished = true;
            return false;
        }
        let held = page.records.len() as u64;
        if held < page.page_size {
            self.note(|| format!("page {n} held {held} UserRoles but more pages followed"));
        }
        let limit = self.total_items.map_or(MAX_PAGES, |t| {
            t.div_ceil(page.page_size.max(1)) + PAGE_SLACK
        });
        if n >= limit {
            self.note(|| format!("the listing ran past {n} pages, beyond what it announced"));
            return false;
        }
        true
    }

    /// Notes a record; `false` for an Id already listed (pages shifted: the first is kept).
    fn record(&mut self, id: u64) -> bool {
        let first = self.seen.insert(id);
        if !first {
            self.note(|| format!("UserRole {id} was listed twice (pages shifted)"));
        }
        first
    }

    /// Why the listing cannot be known complete, if so.
    fn verdict(mut self) -> Option<String> {
        if !self.finished {
            self.note(|| "the listing stopped before its last page".into());
        }
        if let Some(total) = self.total_items
            && self.seen.len() as u64 != total
        {
            let distinct = self.seen.len();
            self.note(|| format!("{distinct} distinct UserRoles listed but TotalItems is {total}"));
        }
        self.reason
    }

    fn note(&mut self, reason: impl FnOnce() -> String) {
        self.reason.get_or_insert_with(reason);
    }
}

/// Resolution into `state`: the whole listing read, each mapped name resolved, nevisIDM checked.
/// `false` when the listing could not be known complete: then the names it did not show keep
/// the Ids they had (none at a first resolution), and the next run resolves again.
pub async fn resolve_into<S: Source>(
    cfg: &RolesConfig,
    source: &S,
    target: &dyn RoleTarget,
    state: &mut State,
    map_key: String,
) -> Result<bool, RolesError> {
    let listed = list_all(source, None).await?;
    let previous =
        (state.map_key == map_key && state.ids.len() == cfg.map.len()).then(|| state.ids.clone());
    state.ids = resolve(cfg, &listed, previous.as_deref())?;
    check_target(cfg, target).await?;
    state.map_key = map_key;
    state.resolve_again = listed.incomplete.is_some();
    state.saw(&listed.roles);
    Ok(listed.incomplete.is_none())
}

/// Pure: each mapping's UserRole Id (`None` for `@admin`), or the first name that names none or
/// several, with the candidates. From a listing that cannot be known complete a name or Id it
/// does not show is no error: a name keeps its `previous` Id (`None`, unknown, without one), an
/// `id:` mapping its Id; a name shown twice is an error all the same.
pub fn resolve(
    cfg: &RolesConfig,
    listing: &Listing,
    previous: Option<&[Option<u64>]>,
) -> Result<Vec<Option<u64>>, RolesError> {
    let listed = &listing.roles;
    let complete = listing.incomplete.is_none();
    cfg.map
        .iter()
        .enumerate()
        .map(|(i, m)| match &m.nexudus {
            RoleSourceName::Admin => Ok(None),
            RoleSourceName::Id(id) if !complete || listed.iter().any(|r| r.id == *id) => {
                Ok(Some(*id))
            }
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
                    [] if !complete => {
                        let kept = previous.and_then(|ids| ids.get(i).copied().flatten());
                        tracing::warn!(
                            name = name.as_str(),
                            kept,
                            "roles.map: {name:?} is not in the incomplete UserRole listing; it \
                             keeps the UserRole Id it had, if any"
                        );
                        Ok(kept)
                    }
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
        let listed = complete(&listed);
        let ids = resolve(&cfg(&["receptionist", "id:3", "@admin"]), &listed, None).unwrap();
        assert_eq!(ids, [Some(1), Some(3), None]);
        let e = resolve(&cfg(&["Finance Admin"]), &listed, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"Finance Admin\"") && e.contains("id:2") && e.contains("id:3"));
        assert!(e.contains("Harbour"), "{e}");
        let e = resolve(&cfg(&["Janitor"]), &listed, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"Janitor\"") && e.contains("id:1"), "{e}");
        let e = resolve(&cfg(&["id:99"]), &listed, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("id:99"), "{e}");
    }

    fn complete(roles: &[UserRole]) -> Listing {
        Listing {
            roles: roles.to_vec(),
            incomplete: None,
        }
    }

    #[test]
    fn an_incomplete_listing_fails_no_name_it_does_not_show() {
        let listing = Listing {
            roles: vec![
                role(1, "Receptionist", "Main St"),
                role(2, "Bar", "Main St"),
            ],
            incomplete: Some("cut".into()),
        };
        let map = cfg(&["Receptionist", "Finance Admin", "Janitor", "id:99"]);
        let previous = [Some(1), Some(7), None, Some(99)];
        let ids = resolve(&map, &listing, Some(&previous)).unwrap();
        assert_eq!(ids, [Some(1), Some(7), None, Some(99)]);
        assert_eq!(
            resolve(&map, &listing, None).unwrap(),
            [Some(1), None, None, Some(99)]
        );
        // Two UserRoles of one name stay an error: a complete listing would only show more.
        let twice = Listing {
            roles: vec![role(1, "Bar", "Main St"), role(2, "Bar", "Harbour")],
            incomplete: Some("cut".into()),
        };
        assert!(resolve(&cfg(&["Bar"]), &twice, None).is_err());
    }

    fn page(ids: &[u64], more: Option<bool>, total: Option<u64>) -> UserRolePage {
        UserRolePage {
            records: ids.iter().map(|&id| role(id, "R", "B")).collect(),
            has_next_page: more,
            total_items: total,
            page_size: 2,
        }
    }

    /// Feeds pages as `list_all` does, stopping where the judge says; the verdict and the pages
    /// read.
    fn judge(pages: &[UserRolePage]) -> (Option<String>, usize) {
        let mut judge = Judge::default();
        let mut read = 0;
        for p in pages {
            read += 1;
            let more = judge.page(p);
            for r in &p.records {
                judge.record(r.id);
            }
            if !more {
                break;
            }
        }
        (judge.verdict(), read)
    }

    #[test]
    fn the_userrole_listing_ends_and_is_complete_by_the_users_listings_rule() {
        let full = [
            page(&[1, 2], Some(true), Some(3)),
            page(&[3], Some(false), Some(3)),
        ];
        assert_eq!(judge(&full), (None, 2));
        assert_eq!(judge(&[page(&[], Some(false), Some(0))]), (None, 1));
        let cases: [(&[UserRolePage], &str); 6] = [
            (
                &[
                    page(&[1, 2], None, Some(3)),
                    page(&[3], Some(false), Some(3)),
                ],
                "page 1 said neither HasNextPage nor CurrentPage/TotalPages",
            ),
            (
                &[page(&[1, 2], Some(false), Some(3))],
                "2 distinct UserRoles listed but TotalItems is 3",
            ),
            (
                &[
                    page(&[1], Some(true), Some(2)),
                    page(&[2], Some(false), Some(2)),
                ],
                "page 1 held 1 UserRoles but more pages followed",
            ),
            (
                &[page(&[1, 2], Some(false), None)],
                "page 1 did not report TotalItems",
            ),
            (
                &[
                    page(&[1, 2], Some(true), Some(3)),
                    page(&[2], Some(false), Some(3)),
                ],
                "UserRole 2 was listed twice (pages shifted)",
            ),
            (
                &[
                    page(&[1, 2], Some(true), Some(2)),
                    page(&[3, 4], Some(true), Some(2)),
                    page(&[5, 6], Some(true), Some(2)),
                    page(&[7, 8], Some(true), Some(2)),
                ],
                "the listing ran past 3 pages, beyond what it announced",
            ),
        ];
        for (pages, reason) in cases {
            assert_eq!(judge(pages).0.as_deref(), Some(reason));
        }
    }
}
