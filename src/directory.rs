//! nevisIDM's user listing, read at most once per run and shared by everyone who needs it: the
//! reconcile (what nevisIDM really holds), adoption (who already has this loginId or email) and
//! the versions of updates whose version is unknown ([`crate::versions`]). A run that needs it
//! for two reasons reads it once.
//!
//! 1,000 users a request (nevisIDM's default and documented limit), bounded in pages: a listing
//! that never ends is an error, not a hang.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::OnceCell;

use crate::diff::Observed;
use crate::nevis::{Target, TargetError, for_each_page};

/// Users a listing page asks for.
const PAGE_LIMIT: u32 = 1000;
/// Pages read at most (10 million users).
const MAX_PAGES: u32 = 10_000;

/// Every nevisIDM user of the client that has an extId: extId -> the fields we own.
#[derive(Debug, Default)]
pub struct Directory {
    pub users: HashMap<String, Observed>,
}

impl Directory {
    pub async fn read<T: Target>(target: &T) -> Result<Directory, TargetError> {
        let mut users = HashMap::new();
        for_each_page(target, &[], PAGE_LIMIT, MAX_PAGES, |items: Vec<Value>| {
            for item in &items {
                if let Some(ext_id) = item.get("extId").and_then(Value::as_str) {
                    users.insert(ext_id.to_string(), Observed::from_nevis_json(item));
                }
            }
        })
        .await?;
        Ok(Directory { users })
    }

    /// nevisIDM's `version` of `ext_id`, when the listing reported one.
    pub fn version(&self, ext_id: &str) -> Option<i64> {
        self.users.get(ext_id)?.version
    }
}

/// The run's one read of the [`Directory`], made by whoever needs it first; a failed read is
/// the answer for the rest of the run too (each reader decides what that means for it).
#[derive(Clone, Default)]
pub struct SharedDirectory(Arc<OnceCell<Result<Arc<Directory>, TargetError>>>);

impl SharedDirectory {
    pub async fn get<T: Target>(&self, target: &T) -> Result<Arc<Directory>, TargetError> {
        self.0
            .get_or_init(|| async {
                let read = Directory::read(target).await.map(Arc::new);
                match &read {
                    Ok(d) => tracing::info!(
                        users = d.users.len(),
                        "read nevisIDM's user listing for this run"
                    ),
                    Err(e) => tracing::warn!(error = %e, "cannot read nevisIDM's user listing"),
                }
                read
            })
            .await
            .clone()
    }

    /// Whether the listing was read (successfully or not) in this run.
    pub fn is_read(&self) -> bool {
        self.0.initialized()
    }
}
