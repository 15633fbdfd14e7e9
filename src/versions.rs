//! nevisIDM `version`s in bulk, for runs that update many users whose version is unknown.
//!
//! Every PATCH carries the user's `version`; a user whose version the store does not hold (created
//! by this tool, whose `201` carries none, or a store written before versions were kept) is read
//! first — two requests per update. A run that meets more than [`BULK_AFTER`] such users (a
//! mapping change touching everyone, the first update after an import) takes the versions from
//! the run's one read of nevisIDM's user listing ([`crate::directory`]) instead, 1,000 users a
//! request. A version read this way can be stale by the time the PATCH goes out; the PATCH's
//! `409` path reads the user and tries once more, as always.

use crate::directory::SharedDirectory;
use crate::nevis::Target;

/// Users with an unknown version a run reads one by one before it reads the listing instead.
pub const BULK_AFTER: u32 = 32;

/// The versions of one run.
#[derive(Default)]
pub struct BulkVersions {
    /// Updates met so far whose version was unknown.
    unknown: u32,
    directory: SharedDirectory,
}

impl BulkVersions {
    /// Versions from `directory`, the run's shared listing.
    pub fn new(directory: SharedDirectory) -> BulkVersions {
        BulkVersions {
            unknown: 0,
            directory,
        }
    }

    /// The version of `ext_id` from the listing, once this run has met more than [`BULK_AFTER`]
    /// users with an unknown version (or another reader already read the listing); `None`: read
    /// the user itself (as before; also when the listing cannot be read).
    pub async fn lookup<T: Target>(&mut self, target: &T, ext_id: &str) -> Option<i64> {
        self.unknown = self.unknown.saturating_add(1);
        if self.unknown <= BULK_AFTER && !self.directory.is_read() {
            return None;
        }
        let directory = self.directory.get(target).await.ok()?;
        directory.version(ext_id)
    }
}
