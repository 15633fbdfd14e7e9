//! nevisIDM's real state, read once at the start of a reconcile: what the planner compares each
//! user with, and where the settlement looks for owned users Nexudus no longer lists.

use std::collections::HashMap;

use crate::diff::Observed;
use crate::nevis::{Target, TargetError, for_each_page};

/// Page size and page bound of the reconcile's nevisIDM listing.
const REMOTE_PAGE_LIMIT: u32 = 500;
const REMOTE_MAX_PAGES: u32 = 20_000;

/// extId -> the fields we own, for every nevisIDM user with an extId.
pub struct Remote {
    pub users: HashMap<String, Observed>,
}

impl Remote {
    pub async fn read<T: Target>(target: &T) -> Result<Remote, TargetError> {
        let mut users = HashMap::new();
        for_each_page(target, &[], REMOTE_PAGE_LIMIT, REMOTE_MAX_PAGES, |items| {
            for item in &items {
                if let Some(ext_id) = item.get("extId").and_then(serde_json::Value::as_str) {
                    users.insert(ext_id.to_string(), Observed::from_nevis_json(item));
                }
            }
        })
        .await?;
        Ok(Remote { users })
    }
}
