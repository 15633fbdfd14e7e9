//! The role checkpoint of one user: the profile the sync uses and the owned roles nevisIDM
//! confirmed granting, each with its authorization's extId when known. Written only after a
//! confirmed write (the store keeps it as JSON in its `roles` tree).

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

    /// Writes the checkpoint; one without roles is removed.
    pub fn write(&self, store: &Store, id: u64) -> Result<(), StoreError> {
        if self.granted.is_empty() {
            return store.set_role_holding(id, None);
        }
        let json = serde_json::to_vec(self).map_err(|e| StoreError::Io(e.to_string()))?;
        store.set_role_holding(id, Some(&json))
    }
}
