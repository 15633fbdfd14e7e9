//! nevisIDM `version`s in bulk, for runs that update many users whose version is unknown.
//!
//! Every PATCH carries the user's `version`; a user whose version the store does not hold (created
//! by this tool, whose `201` carries none, or a store written before versions were kept) is read
//! first — two requests per update. A run that meets more than [`BULK_AFTER`] such users (a
//! mapping change touching everyone, the first update after an import) reads the client's user
//! listing once instead, 1,000 users a request, and keeps extId -> version in memory for the rest
//! of the run (100,000 users: a few MiB). A version read this way can be stale by the time the
//! PATCH goes out; the PATCH's `409` path reads the user and tries once more, as always.

use std::collections::HashMap;

use serde_json::Value;

use crate::nevis::{Target, TargetError, for_each_page, version_of};

/// Users with an unknown version a run reads one by one before it reads the listing instead.
pub const BULK_AFTER: u32 = 32;
/// Users a listing page asks for (nevisIDM's default and documented limit).
const PAGE_LIMIT: u32 = 1000;
/// Pages read at most (10 million users): a listing that never ends is an error, not a hang.
const MAX_PAGES: u32 = 10_000;

/// The versions of one run.
#[derive(Default)]
pub struct BulkVersions {
    /// Updates met so far whose version was unknown.
    unknown: u32,
    /// extId -> version, once the listing was read.
    table: Option<HashMap<String, i64>>,
    /// The listing could not be read: single reads for the rest of the run.
    failed: bool,
}

impl BulkVersions {
    /// The version of `ext_id` from the listing, read once when this run has met more than
    /// [`BULK_AFTER`] users with an unknown version; `None`: read the user itself (as before).
    pub async fn lookup<T: Target>(&mut self, target: &T, ext_id: &str) -> Option<i64> {
        self.unknown = self.unknown.saturating_add(1);
        if self.table.is_none() && !self.failed && self.unknown > BULK_AFTER {
            match read(target).await {
                Ok(table) => {
                    tracing::info!(
                        users = table.len(),
                        "many updates without a known version: read nevisIDM's versions from its \
                         user listing"
                    );
                    self.table = Some(table);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read nevisIDM's user listing for versions; reading users one by one");
                    self.failed = true;
                }
            }
        }
        self.table.as_ref()?.get(ext_id).copied()
    }
}

async fn read<T: Target>(target: &T) -> Result<HashMap<String, i64>, TargetError> {
    let mut table = HashMap::new();
    for_each_page(target, &[], PAGE_LIMIT, MAX_PAGES, |items: Vec<Value>| {
        for item in &items {
            if let (Some(ext_id), Some(version)) =
                (item.get("extId").and_then(Value::as_str), version_of(item))
            {
                table.insert(ext_id.to_string(), version);
            }
        }
    })
    .await?;
    Ok(table)
}
