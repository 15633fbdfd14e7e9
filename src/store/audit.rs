//! The provisioning log's tree (`audit`): entries kept in time order, found by time, by Nexudus
//! Id and by extId, pruned from the oldest. The entries themselves are opaque here (encoded
//! by [`crate::audit`]); this file only knows how they are keyed.
//!
//! Layout (one tree, key prefix -> value):
//! - `e` + time (Unix seconds, u64 BE) + sequence (u64 BE) -> header + entry. The header names
//!   what the index keys hold, so that pruning removes them without decoding the entry: the
//!   Nexudus Id (u64 BE, `u64::MAX` when the record had none), then the extId's length (u16 BE)
//!   and bytes.
//! - `i` + Nexudus Id (u64 BE) + time + sequence -> empty: the entries of one Nexudus user.
//! - `x` + extId + `0x00` + time + sequence -> empty: the entries of one extId.
//! - `d` + Nexudus Id -> digest (u64 BE) of the last entry written "once" for the user (a held
//!   disable, an invalid record): the same decision in the next run writes nothing new. Any
//!   other entry of the user forgets it.
//!
//! The sequence is sled's monotonic id generator: entries of the same second keep their order,
//! across restarts too.

use std::sync::atomic::Ordering;

use super::{Store, StoreError, id_of};

const ENTRY: u8 = b'e';
const BY_ID: u8 = b'i';
const BY_EXT_ID: u8 = b'x';
const ONCE: u8 = b'd';
/// The count is not known yet (counted on first use).
pub(super) const UNCOUNTED: u64 = u64::MAX;
const NO_ID: u64 = u64::MAX;

/// One entry as the store keeps it.
#[derive(Debug, Clone, Copy)]
pub struct AuditRecord<'a> {
    /// Unix seconds.
    pub at: u64,
    pub nexudus_id: Option<u64>,
    pub ext_id: &'a str,
    /// The entry, as [`crate::audit`] encodes it.
    pub body: &'a [u8],
}

/// An entry read back: its time and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: u64,
    /// The order among entries of the same second (unique in the log).
    pub seq: u64,
    pub nexudus_id: Option<u64>,
    pub ext_id: String,
    pub body: Vec<u8>,
}

impl Store {
    /// Appends an entry; answers how many entries the log holds now. Forgets the user's "once"
    /// digest: a decision repeated after this entry is news again.
    pub fn audit_append(&self, record: AuditRecord<'_>) -> Result<u64, StoreError> {
        let stamp = stamp(record.at, self.db.generate_id()?);
        let id = record.nexudus_id.unwrap_or(NO_ID);
        let ext = record.ext_id.as_bytes();
        let ext_len = u16::try_from(ext.len())
            .map_err(|_| StoreError::Io(format!("extId of {} bytes", ext.len())))?;
        let mut value = Vec::with_capacity(10 + ext.len() + record.body.len());
        value.extend_from_slice(&id.to_be_bytes());
        value.extend_from_slice(&ext_len.to_be_bytes());
        value.extend_from_slice(ext);
        value.extend_from_slice(record.body);
        self.audit.insert(key(ENTRY, &[&stamp]), value)?;
        if let Some(id) = record.nexudus_id {
            self.audit
                .insert(key(BY_ID, &[&id.to_be_bytes(), &stamp]), &[])?;
            self.audit.remove(key(ONCE, &[&id.to_be_bytes()]))?;
        }
        self.audit
            .insert(key(BY_EXT_ID, &[ext, &[0], &stamp]), &[])?;
        self.audit_counted(1)
    }

    /// Appends an entry unless the last entry written once for this user had the same
    /// `digest`; answers whether it was written.
    pub fn audit_append_once(
        &self,
        record: AuditRecord<'_>,
        nexudus_id: u64,
        digest: u64,
    ) -> Result<bool, StoreError> {
        let mark = key(ONCE, &[&nexudus_id.to_be_bytes()]);
        if self.audit.get(&mark)?.as_deref() == Some(&digest.to_be_bytes()[..]) {
            return Ok(false);
        }
        self.audit_append(record)?;
        self.audit.insert(mark, &digest.to_be_bytes())?;
        Ok(true)
    }

    /// Entries at or after `since` (Unix seconds), newest first.
    pub fn audit_since(
        &self,
        since: u64,
    ) -> impl Iterator<Item = Result<AuditEntry, StoreError>> + '_ {
        let start = key(ENTRY, &[&since.to_be_bytes()]);
        self.audit
            .range(start..key(ENTRY + 1, &[]))
            .rev()
            .map(|item| {
                let (k, v) = item?;
                entry(&k[1..], &v)
            })
    }

    /// The entries of one Nexudus user, newest first.
    pub fn audit_of_user(&self, nexudus_id: u64) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit_indexed(key(BY_ID, &[&nexudus_id.to_be_bytes()]))
    }

    /// The entries of one extId, newest first.
    pub fn audit_of_ext_id(&self, ext_id: &str) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit_indexed(key(BY_EXT_ID, &[ext_id.as_bytes(), &[0]]))
    }

    fn audit_indexed(&self, prefix: Vec<u8>) -> Result<Vec<AuditEntry>, StoreError> {
        let mut found = Vec::new();
        for k in self.audit.scan_prefix(&prefix).keys().rev() {
            let k = k?;
            let stamp = &k[prefix.len()..];
            // An index key whose entry was pruned between the two reads: gone, skip it.
            if let Some(v) = self.audit.get(key(ENTRY, &[stamp]))? {
                found.push(entry(stamp, &v)?);
            }
        }
        Ok(found)
    }

    /// How many entries the log holds.
    pub fn audit_len(&self) -> Result<u64, StoreError> {
        self.audit_counted(0)
    }

    /// Removes entries older than `older_than` (Unix seconds), then the oldest ones beyond
    /// `max_entries`; answers how many it removed.
    pub fn audit_prune(&self, older_than: u64, max_entries: u64) -> Result<u64, StoreError> {
        let mut excess = self.audit_len()?.saturating_sub(max_entries);
        let mut removed = 0;
        for item in self.audit.scan_prefix([ENTRY]) {
            let (k, v) = item?;
            let (at, _) = stamp_parts(&k[1..])?;
            if at >= older_than && excess == 0 {
                break;
            }
            self.remove_entry(&k, &v)?;
            excess = excess.saturating_sub(1);
            removed += 1;
        }
        if removed > 0 {
            self.audit_count.fetch_sub(removed, Ordering::SeqCst);
        }
        Ok(removed)
    }

    fn remove_entry(&self, k: &[u8], v: &[u8]) -> Result<(), StoreError> {
        let stamp = &k[1..];
        let (id, ext_id, _) = split(v)?;
        if id != NO_ID {
            self.audit.remove(key(BY_ID, &[&id.to_be_bytes(), stamp]))?;
        }
        self.audit.remove(key(BY_EXT_ID, &[ext_id, &[0], stamp]))?;
        self.audit.remove(k)?;
        Ok(())
    }

    /// The entry count after adding `added`, counting the tree once when not yet known.
    fn audit_counted(&self, added: u64) -> Result<u64, StoreError> {
        let known = self.audit_count.load(Ordering::SeqCst);
        if known != UNCOUNTED {
            return Ok(self.audit_count.fetch_add(added, Ordering::SeqCst) + added);
        }
        let mut counted = 0u64;
        for k in self.audit.scan_prefix([ENTRY]).keys() {
            k?;
            counted += 1;
        }
        // Entries appended while counting are in the scan already.
        let _ = self.audit_count.compare_exchange(
            UNCOUNTED,
            counted,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        Ok(self.audit_count.load(Ordering::SeqCst))
    }
}

/// Time (u64 BE) + sequence (u64 BE).
fn stamp(at: u64, seq: u64) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&at.to_be_bytes());
    s[8..].copy_from_slice(&seq.to_be_bytes());
    s
}

/// The time and the sequence of a stamp.
fn stamp_parts(stamp: &[u8]) -> Result<(u64, u64), StoreError> {
    match (stamp.get(..8), stamp.get(8..)) {
        (Some(at), Some(seq)) => Ok((id_of(at, "audit time")?, id_of(seq, "audit sequence")?)),
        _ => Err(StoreError::Corrupt("audit entry key is too short".into())),
    }
}

fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    k.push(prefix);
    for part in parts {
        k.extend_from_slice(part);
    }
    k
}

/// The header (Nexudus Id, extId) and the body of a stored entry.
fn split(v: &[u8]) -> Result<(u64, &[u8], &[u8]), StoreError> {
    let corrupt = || StoreError::Corrupt("audit entry header is damaged".into());
    let id = id_of(v.get(..8).ok_or_else(corrupt)?, "audit header")?;
    let len = v.get(8..10).ok_or_else(corrupt)?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let ext_id = v.get(10..10 + len).ok_or_else(corrupt)?;
    Ok((id, ext_id, &v[10 + len..]))
}

fn entry(stamp: &[u8], v: &[u8]) -> Result<AuditEntry, StoreError> {
    let (id, ext_id, body) = split(v)?;
    let (at, seq) = stamp_parts(stamp)?;
    Ok(AuditEntry {
        at,
        seq,
        nexudus_id: (id != NO_ID).then_some(id),
        ext_id: String::from_utf8_lossy(ext_id).into_owned(),
        body: body.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(store: &Store, at: u64, id: Option<u64>, ext_id: &str, body: &str) -> u64 {
        let record = AuditRecord {
            at,
            nexudus_id: id,
            ext_id,
            body: body.as_bytes(),
        };
        store.audit_append(record).unwrap()
    }

    fn bodies(entries: Vec<AuditEntry>) -> Vec<String> {
        entries
            .into_iter()
            .map(|e| String::from_utf8(e.body).unwrap())
            .collect()
    }

    #[test]
    fn entries_are_found_by_user_by_ext_id_and_by_time_newest_first() {
        let store = Store::temporary().unwrap();
        append(&store, 100, Some(1), "nexudus-1", "a");
        append(&store, 100, Some(2), "nexudus-2", "b");
        append(&store, 200, Some(1), "nexudus-1", "c");
        assert_eq!(append(&store, 300, None, "", "d"), 4);
        assert_eq!(bodies(store.audit_of_user(1).unwrap()), ["c", "a"]);
        assert_eq!(bodies(store.audit_of_ext_id("nexudus-2").unwrap()), ["b"]);
        // "nexudus-1" is not a prefix match for "nexudus-10".
        append(&store, 400, Some(10), "nexudus-10", "e");
        assert_eq!(
            bodies(store.audit_of_ext_id("nexudus-1").unwrap()),
            ["c", "a"]
        );
        let since: Result<Vec<_>, _> = store.audit_since(200).collect();
        assert_eq!(bodies(since.unwrap()), ["e", "d", "c"]);
        assert_eq!(store.audit_len().unwrap(), 5);
    }

    #[test]
    fn pruning_removes_old_entries_then_the_oldest_beyond_the_bound_with_their_index_keys() {
        let store = Store::temporary().unwrap();
        for at in 1..=10 {
            append(&store, at * 100, Some(at % 2), &format!("x{}", at % 2), "v");
        }
        assert_eq!(store.audit_prune(300, u64::MAX).unwrap(), 2);
        assert_eq!(store.audit_len().unwrap(), 8);
        assert_eq!(store.audit_prune(0, 5).unwrap(), 3);
        let left: Vec<u64> = store
            .audit_since(0)
            .map(|e| e.unwrap().at)
            .collect::<Vec<_>>();
        assert_eq!(left, [1000, 900, 800, 700, 600]);
        // No index key outlives its entry.
        let indexed = store.audit_of_user(0).unwrap().len() + store.audit_of_user(1).unwrap().len();
        assert_eq!(indexed, 5);
        let keys = store.audit.len();
        assert_eq!(keys, 5 * 3, "one entry key and two index keys each");
    }

    #[test]
    fn an_entry_written_once_is_not_repeated_until_another_entry_of_the_user() {
        let store = Store::temporary().unwrap();
        let record = AuditRecord {
            at: 1,
            nexudus_id: Some(7),
            ext_id: "x7",
            body: b"held",
        };
        assert!(store.audit_append_once(record, 7, 42).unwrap());
        assert!(!store.audit_append_once(record, 7, 42).unwrap());
        assert!(store.audit_append_once(record, 7, 43).unwrap());
        append(&store, 2, Some(7), "x7", "disabled");
        assert!(store.audit_append_once(record, 7, 43).unwrap());
        assert_eq!(store.audit_len().unwrap(), 4);
    }
}
