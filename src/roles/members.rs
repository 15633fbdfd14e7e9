//! Memberships: who holds each mapped UserRole, read per UserRole (`GET …/userroles/{id}` →
//! `Users`), never per user, and kept in the store between runs so that an idle tick reads only
//! what changed.
//!
//! Cost and timeliness: an ordinary tick asks the UserRole listing for the UserRoles whose
//! `UpdatedOn` moved since the roles watermark (minus `sync.incremental_overlap`): one request,
//! then one read per changed mapped UserRole. Because Nexudus may change members without moving
//! `UpdatedOn`, every mapped UserRole is read in full at every full listing and at least every
//! `roles.full_read_every` (default 10 minutes) as the safety net. `@admin` comes from the users
//! listing's `IsAdmin` (the full listing replaces it, an incremental one updates it).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::config::{RoleSourceName, RolesConfig};
use crate::mapper::SourceUser;
use crate::nexudus::{InvalidRecord, Source, UserRole};
use crate::store::{Store, StoreError};

use super::plan::Members;

/// Meta key of the [`State`].
const KEY: &str = "roles_state";

/// What the role sync keeps between runs (one JSON document in the store's `meta` tree).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The map the Ids were resolved for: another map resolves again.
    pub map_key: String,
    /// Each mapping's UserRole Id (`None` for `@admin`), in map order.
    pub ids: Vec<Option<u64>>,
    /// Members of each mapped UserRole as last read completely.
    pub members: BTreeMap<u64, BTreeSet<u64>>,
    /// Full administrators, and whether a complete listing has told them yet.
    pub admins: BTreeSet<u64>,
    pub admins_known: bool,
    /// Newest UserRole `UpdatedOn` seen (minute precision).
    pub watermark: Option<String>,
    /// Unix seconds of the last full read of every mapped UserRole.
    pub full_read_at: Option<u64>,
    /// Each mapped UserRole's `UpdatedOn` as its last complete read answered it. The cheap
    /// path's listing reaches back `sync.incremental_overlap` before the watermark, so it shows
    /// the recently changed UserRoles tick after tick: only one whose `UpdatedOn` differs from
    /// this is read again (else an idle tick would read them all, every tick, for ten minutes).
    #[serde(default)]
    pub read_updated_on: BTreeMap<u64, String>,
    /// The last resolution read a UserRole listing that could not be known complete: the next
    /// run resolves again (one listing request a tick while it lasts).
    #[serde(default)]
    pub resolve_again: bool,
}

impl State {
    pub fn load(store: &Store) -> Result<State, StoreError> {
        match store.meta_bytes(KEY)? {
            None => Ok(State::default()),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("{KEY}: {e}"))),
        }
    }

    pub fn save(&self, store: &Store) -> Result<(), StoreError> {
        let json = serde_json::to_vec(self).map_err(|e| StoreError::Io(e.to_string()))?;
        store.set_meta_bytes(KEY, &json)
    }

    pub fn mapped_ids(&self) -> Vec<u64> {
        self.ids.iter().flatten().copied().collect()
    }

    /// The mapped UserRoles among `listed` whose `UpdatedOn` moved since their last complete
    /// read (or was never read, or is not given).
    pub fn moved(&self, listed: &[UserRole]) -> Vec<u64> {
        let mapped: BTreeSet<u64> = self.mapped_ids().into_iter().collect();
        listed
            .iter()
            .filter(|r| mapped.contains(&r.id))
            .filter(|r| {
                r.updated_on.is_none() || r.updated_on.as_ref() != self.read_updated_on.get(&r.id)
            })
            .map(|r| r.id)
            .collect()
    }

    /// Moves the watermark to the newest `UpdatedOn` among `roles`.
    pub fn saw(&mut self, roles: &[UserRole]) {
        for m in roles
            .iter()
            .filter_map(|r| r.updated_on.as_deref())
            .filter_map(crate::watermark::minute)
        {
            if self.watermark.as_ref().is_none_or(|w| m > *w) {
                self.watermark = Some(m);
            }
        }
    }

    /// The memberships of every mapping as this state knows them; `complete` when every one is
    /// known and `reads_complete` (this run's reads all succeeded).
    pub fn members(&self, cfg: &RolesConfig, reads_complete: bool) -> Members {
        let mut out = Members {
            complete: reads_complete,
            ..Members::default()
        };
        for (m, id) in cfg.map.iter().zip(&self.ids) {
            let known = match (&m.nexudus, id) {
                (RoleSourceName::Admin, _) if self.admins_known => Some(self.admins.clone()),
                (RoleSourceName::Admin, _) => None,
                (_, Some(id)) => self.members.get(id).cloned(),
                (_, None) => None,
            };
            match known {
                Some(set) => {
                    out.of.insert(m.nexudus.clone(), set);
                }
                None => out.complete = false,
            }
        }
        out
    }
}

/// Reads `ids` in full into `state`; `false` when any read failed or was incomplete (its old
/// membership stays, and nothing is revoked in this run).
pub async fn read_members<S: Source>(source: &S, ids: &[u64], state: &mut State) -> bool {
    let mut complete = true;
    for &id in ids {
        match source.userrole(id).await {
            Ok(Some(UserRole {
                users: Some(users),
                updated_on,
                ..
            })) => {
                state.members.insert(id, users.into_iter().collect());
                match updated_on {
                    Some(at) => state.read_updated_on.insert(id, at),
                    None => state.read_updated_on.remove(&id),
                };
            }
            Ok(Some(_)) => {
                tracing::warn!(
                    id,
                    "UserRole answered without Users: nothing is revoked in this run"
                );
                complete = false;
            }
            Ok(None) => {
                tracing::warn!(
                    id,
                    "mapped UserRole id:{id} no longer exists in Nexudus (check roles.map): \
                     nothing is revoked in this run"
                );
                complete = false;
            }
            Err(e) => {
                tracing::warn!(id, error = %e, "cannot read UserRole {id}: nothing is revoked in this run");
                complete = false;
            }
        }
    }
    complete
}

/// Who the users listing of this run said is a full administrator (only with `@admin` mapped).
#[derive(Debug, Default)]
pub struct Admins {
    on: bool,
    seen: BTreeMap<u64, bool>,
}

impl Admins {
    pub fn new(cfg: Option<&RolesConfig>) -> Admins {
        Admins {
            on: cfg.is_some_and(|c| c.map.iter().any(|m| m.nexudus == RoleSourceName::Admin)),
            seen: BTreeMap::new(),
        }
    }

    pub fn note(&mut self, record: &Result<SourceUser, InvalidRecord>) {
        if self.on
            && let Ok(user) = record
        {
            self.seen.insert(user.id, user.is_admin);
        }
    }

    /// Into `state`: a complete full listing replaces what is known, any other updates it.
    pub fn record(self, state: &mut State, full_and_complete: bool) {
        if !self.on {
            return;
        }
        if full_and_complete {
            state.admins.clear();
            state.admins_known = true;
        }
        for (id, admin) in self.seen {
            if admin {
                state.admins.insert(id);
            } else {
                state.admins.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(id: u64, updated_on: Option<&str>) -> UserRole {
        UserRole {
            id,
            name: format!("Role {id}"),
            business_id: None,
            business_name: None,
            updated_on: updated_on.map(String::from),
            users: None,
        }
    }

    #[test]
    fn only_mapped_userroles_whose_updated_on_moved_since_their_read_are_read_again() {
        let mut state = State {
            ids: vec![Some(1), Some(2), Some(3), None],
            ..State::default()
        };
        state
            .read_updated_on
            .insert(1, "2026-12-05T07:00:00Z".into());
        state
            .read_updated_on
            .insert(2, "2026-12-05T07:00:00Z".into());
        let listing = [
            listed(1, Some("2026-12-05T07:00:00Z")), // as read: not again
            listed(2, Some("2026-12-05T07:00:01Z")), // moved
            listed(3, Some("2026-12-05T07:00:00Z")), // never read
            listed(4, Some("2026-12-05T07:05:00Z")), // not mapped
            listed(1, None),                         // no UpdatedOn: cannot tell, read
        ];
        assert_eq!(state.moved(&listing), [2, 3, 1]);
    }
}
