//! Who owns a nevisIDM extId: the one rule, used wherever the answer decides a write — adoption
//! (never adopt a user that belongs to another Nexudus user) and the reconcile (an owned user
//! Nexudus no longer lists is disabled; a user nobody owns is never touched).
//!
//! By precedence:
//! 1. an adoption link in the store (`sync.adopt`): an explicit record naming the Nexudus user;
//! 2. a checkpoint holding the extId: the tool created it (under any `ext_id_prefix`, past or
//!    present) or adopted it;
//! 3. the configured `mapping.ext_id_prefix` followed by a Nexudus Id.
//!
//! The checkpoints' extIds are read once, before any write of the run starts, so no write task
//! ever scans the store.

use std::collections::HashMap;

use crate::mapper::nexudus_id_of;
use crate::store::{Store, StoreError};

pub struct Owners {
    prefix: String,
    /// extId -> Nexudus Id of every readable checkpoint.
    checkpoints: HashMap<String, u64>,
}

impl Owners {
    /// Reads the extId of every checkpoint (an unreadable one is skipped, loudly: what cannot be
    /// read owns nothing, and the prefix rule still applies).
    pub fn read(store: &Store, prefix: &str) -> Result<Owners, StoreError> {
        let mut checkpoints = HashMap::new();
        for item in store.iter() {
            match item {
                Ok((id, checkpoint)) => {
                    checkpoints.insert(checkpoint.ext_id, id);
                }
                Err(StoreError::Corrupt(e)) => {
                    tracing::warn!(error = %e, "unreadable checkpoint skipped for ownership");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Owners {
            prefix: prefix.to_string(),
            checkpoints,
        })
    }

    /// The Nexudus user that owns `ext_id`, if any (see the module doc for the precedence).
    /// Links are looked up live: an adoption earlier in the run counts at once.
    pub fn owner(&self, store: &Store, ext_id: &str) -> Result<Option<u64>, StoreError> {
        if let Some(owner) = store.link_owner(ext_id)? {
            return Ok(Some(owner));
        }
        if let Some(owner) = self.checkpoints.get(ext_id) {
            return Ok(Some(*owner));
        }
        Ok(nexudus_id_of(&self.prefix, ext_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapper::{DesiredUser, UserState};

    fn checkpoint(ext_id: &str) -> DesiredUser {
        DesiredUser {
            ext_id: ext_id.into(),
            login_id: format!("{ext_id}@example.com"),
            first_name: "A".into(),
            family_name: "B".into(),
            email: format!("{ext_id}@example.com"),
            language_code: "en".into(),
            state: UserState::Active,
            properties: Default::default(),
        }
    }

    #[test]
    fn a_link_beats_a_checkpoint_which_beats_the_prefix() {
        let store = Store::temporary().unwrap();
        // Created under an earlier prefix: owned by its checkpoint.
        store.put(4, &checkpoint("old-4")).unwrap();
        // A checkpoint naming an extId the prefix would give to someone else.
        store.put(5, &checkpoint("nx-6")).unwrap();
        // Adopted: the link names the owner, whatever a checkpoint says.
        store.put(8, &checkpoint("legacy-1")).unwrap();
        store.set_link(9, "legacy-1").unwrap();
        let owners = Owners::read(&store, "nx-").unwrap();
        assert_eq!(owners.owner(&store, "old-4").unwrap(), Some(4));
        assert_eq!(owners.owner(&store, "nx-6").unwrap(), Some(5));
        assert_eq!(owners.owner(&store, "legacy-1").unwrap(), Some(9));
        assert_eq!(owners.owner(&store, "nx-77").unwrap(), Some(77));
        assert_eq!(owners.owner(&store, "hr-1").unwrap(), None);
        // A link made after the read counts at once.
        store.set_link(3, "hr-1").unwrap();
        assert_eq!(owners.owner(&store, "hr-1").unwrap(), Some(3));
    }
}
