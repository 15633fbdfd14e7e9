//! The role checkpoint of one user: the profile the sync uses, the owned roles nevisIDM
//! confirmed granting (each with its authorization's extId when known), and the grants sent but
//! not yet confirmed. A role is checkpointed as held only after a confirmed write; a grant is
//! marked pending *before* it is sent (write-ahead), so that a run stopped or killed while nevisIDM
//! was answering leaves a mark the next run settles by reading the profile. The store keeps it as
//! JSON in its `roles` tree; checkpoints written before `pending` existed read as none pending.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    /// The nevisIDM user, so a holding can be acted on without the user checkpoint.
    pub ext_id: String,
    /// The profile the authorizations hang off.
    pub profile: Option<String>,
    /// roleExtId -> the authorization's extId (`None`: granted, id not answered).
    pub granted: BTreeMap<String, Option<String>>,
    /// Owned roles whose grant was sent to `profile` and not (yet) answered: nevisIDM may hold
    /// them. Settled by the next run (`Writer::settle`), never forgotten unread.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub pending: BTreeSet<String>,
}

impl Holding {
    pub fn roles(&self) -> BTreeSet<String> {
        self.granted.keys().cloned().collect()
    }

    pub fn read(store: &Store, id: u64) -> Result<Option<Holding>, StoreError> {
        match store.role_holding(id)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("role checkpoint of {id}: {e}"))),
        }
    }

    /// Writes the checkpoint; one without roles, held or pending, is removed.
    pub fn write(&self, store: &Store, id: u64) -> Result<(), StoreError> {
        store.set_role_holding(id, self.encoded()?.as_deref())
    }

    /// The checkpoint as the store keeps it; `None` without roles, held or pending (removed).
    pub fn encoded(&self) -> Result<Option<Vec<u8>>, StoreError> {
        if self.granted.is_empty() && self.pending.is_empty() {
            return Ok(None);
        }
        serde_json::to_vec(self)
            .map(Some)
            .map_err(|e| StoreError::Io(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_from_before_pending_marks_reads_and_one_pending_role_is_kept() {
        let store = Store::temporary().unwrap();
        let old = br#"{"ext_id":"nexudus-1","profile":"p","granted":{"frontdesk":"a-1"}}"#;
        store.set_role_holding(1, Some(old)).unwrap();
        let read = Holding::read(&store, 1).unwrap().unwrap();
        assert_eq!(read.roles(), BTreeSet::from(["frontdesk".to_string()]));
        assert!(read.pending.is_empty());

        let pending = Holding {
            pending: BTreeSet::from(["finance".to_string()]),
            ..Holding::default()
        };
        pending.write(&store, 2).unwrap();
        assert_eq!(Holding::read(&store, 2).unwrap(), Some(pending));
        Holding::default().write(&store, 2).unwrap();
        assert_eq!(Holding::read(&store, 2).unwrap(), None);
    }
}
