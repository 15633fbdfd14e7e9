//! The provisioning log's tree (`audit`): entries kept in time order, found by time, by Nexudus
//! Id and by extId, pruned from the oldest. The entries themselves are opaque here (encoded
//! by [`crate::audit`]); this file only knows how they are keyed. An entry is written with its
//! index keys and marks in one step ([`super::step`]), so none is ever without the others.
//!
//! Layout (one tree, key prefix -> value):
//! - `e` + time (Unix seconds, u64 BE) + sequence (u64 BE) -> header + entry. The header names
//!   what the index keys hold, so that pruning removes them without decoding the entry: the
//!   Nexudus Id (u64 BE, `u64::MAX` when the record had none), then the extId's length (u16 BE)
//!   and bytes.
//! - `i` + Nexudus Id (u64 BE) + time + sequence -> empty: the entries of one Nexudus user.
//! - `x` + extId + `0x00` + time + sequence -> empty: the entries of one extId.
//! - `o` + Nexudus Id -> the person's "logged once" marks: [`MARKS_FORMAT`] + postcard of
//!   (slot, digest) pairs. A slot names a person's decision by operation and target (a field, a
//!   role); its digest says what the decision was, so the same decision in the next run writes
//!   nothing new ([`Mark`]).
//! - `d` + Nexudus Id -> digest (u64 BE): the single mark per person of earlier versions. Never
//!   matched; removed when the person's marks are next written.
//!
//! The sequence is sled's monotonic id generator: entries of the same second keep their order,
//! across restarts too.

use std::sync::atomic::Ordering;

use sled::transaction::{ConflictableTransactionResult, TransactionalTree};

use super::{Store, StoreError, id_of};

const ENTRY: u8 = b'e';
const BY_ID: u8 = b'i';
const BY_EXT_ID: u8 = b'x';
const MARKS: u8 = b'o';
/// The one-digest mark of earlier versions (see the layout).
const OLD_MARK: u8 = b'd';
/// The first byte of a person's marks value: its encoding.
const MARKS_FORMAT: u8 = 1;
/// The count is not known yet (counted on first use).
pub(super) const UNCOUNTED: u64 = u64::MAX;
const NO_ID: u64 = u64::MAX;
/// Entries removed per atomic batch when pruning (a batch holds an entry and its index keys).
const PRUNE_BATCH: usize = 1_000;
/// The `meta` key of the entries the size bound pruned inside `audit.retention`, ever (u64 LE).
const PRUNED_YOUNG_KEY: &str = "audit_pruned_within_retention";

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

/// What an entry does to its person's "logged once" marks (only entries with a Nexudus Id have
/// any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark<'a> {
    /// Leaves them.
    Keep,
    /// Forgets those whose slot starts with these bytes: something happened to the person, so
    /// a decision repeated after it is news again.
    Forget(&'a [u8]),
    /// Writes the entry unless the mark at `slot` holds `digest`, and then sets it.
    Once { slot: &'a [u8], digest: u64 },
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

impl AuditEntry {
    /// Where the entry stands in the log: (time, sequence), unique and in the log's order.
    pub fn position(&self) -> (u64, u64) {
        (self.at, self.seq)
    }
}

/// What a pruning removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Entries older than `audit.retention`.
    pub aged: u64,
    /// Entries still inside `audit.retention` that `audit.max_entries` made room for.
    pub young: u64,
}

impl Pruned {
    pub fn total(self) -> u64 {
        self.aged + self.young
    }
}

/// An entry ready to be staged in a transaction: every key and value computed beforehand (a
/// transaction's body may run more than once).
pub(super) struct Prepared<'a> {
    nexudus_id: Option<u64>,
    entry_key: Vec<u8>,
    value: Vec<u8>,
    index_keys: Vec<Vec<u8>>,
    mark: Mark<'a>,
}

impl Store {
    /// Appends an entry (leaving its person's marks as they are); answers how many entries the
    /// log holds now.
    pub fn audit_append(&self, record: AuditRecord<'_>) -> Result<u64, StoreError> {
        self.commit(
            Some((record, Mark::Keep)),
            &super::step::Checkpoint::Nothing,
        )?;
        self.audit_len()
    }

    /// The keys and values of `record`, with a fresh sequence number.
    pub(super) fn prepare<'a>(
        &self,
        record: AuditRecord<'_>,
        mark: Mark<'a>,
    ) -> Result<Prepared<'a>, StoreError> {
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
        let mut index_keys = vec![key(BY_EXT_ID, &[ext, &[0], &stamp])];
        if let Some(id) = record.nexudus_id {
            index_keys.push(key(BY_ID, &[&id.to_be_bytes(), &stamp]));
        }
        Ok(Prepared {
            nexudus_id: record.nexudus_id,
            entry_key: key(ENTRY, &[&stamp]),
            value,
            index_keys,
            mark,
        })
    }

    /// Counts `added` entries committed.
    pub(super) fn audit_added(&self, added: u64) {
        if self.audit_count.load(Ordering::SeqCst) != UNCOUNTED {
            self.audit_count.fetch_add(added, Ordering::SeqCst);
        }
    }

    /// Entries before `before` (a position, exclusive; `None`: the newest) and at or after
    /// `since` (Unix seconds), newest first, read as they are needed.
    pub fn audit_newest(
        &self,
        since: u64,
        before: Option<(u64, u64)>,
    ) -> impl Iterator<Item = Result<AuditEntry, StoreError>> + '_ {
        let start = key(ENTRY, &[&since.to_be_bytes()]);
        let end = match before {
            Some((at, seq)) => key(ENTRY, &[&stamp(at, seq)]),
            None => key(ENTRY + 1, &[]),
        };
        self.audit.range(start..end).rev().map(|item| {
            let (k, v) = item?;
            entry(&k[1..], &v)
        })
    }

    /// Entries at or after `since` (Unix seconds), newest first.
    pub fn audit_since(
        &self,
        since: u64,
    ) -> impl Iterator<Item = Result<AuditEntry, StoreError>> + '_ {
        self.audit_newest(since, None)
    }

    /// The entries of one Nexudus user, newest first, as [`Store::audit_newest`] bounds them.
    pub fn audit_of_user(
        &self,
        nexudus_id: u64,
        since: u64,
        before: Option<(u64, u64)>,
    ) -> impl Iterator<Item = Result<AuditEntry, StoreError>> + '_ {
        self.audit_indexed(key(BY_ID, &[&nexudus_id.to_be_bytes()]), since, before)
    }

    /// The entries of one extId, newest first, as [`Store::audit_newest`] bounds them.
    pub fn audit_of_ext_id(
        &self,
        ext_id: &str,
        since: u64,
        before: Option<(u64, u64)>,
    ) -> impl Iterator<Item = Result<AuditEntry, StoreError>> + '_ {
        self.audit_indexed(key(BY_EXT_ID, &[ext_id.as_bytes(), &[0]]), since, before)
    }

    /// The entries an index lists under `prefix`, newest first, each read when reached.
    fn audit_indexed(
        &self,
        prefix: Vec<u8>,
        since: u64,
        before: Option<(u64, u64)>,
    ) -> impl Iterator<Item = Result<AuditEntry, StoreError>> + '_ {
        let start = key(prefix[0], &[&prefix[1..], &since.to_be_bytes()]);
        // Past every stamp (16 bytes) under the prefix.
        let end = match before {
            Some((at, seq)) => key(prefix[0], &[&prefix[1..], &stamp(at, seq)]),
            None => key(prefix[0], &[&prefix[1..], &[0xFF; 17]]),
        };
        let skip = prefix.len();
        self.audit
            .range(start..end)
            .keys()
            .rev()
            .filter_map(move |k| {
                let read = k.map_err(StoreError::from).and_then(|k| {
                    let stamp = &k[skip..];
                    // An index key whose entry was pruned between the two reads: gone, skip it.
                    self.audit
                        .get(key(ENTRY, &[stamp]))?
                        .map(|v| entry(stamp, &v))
                        .transpose()
                });
                read.transpose()
            })
    }

    /// How many entries the log holds.
    pub fn audit_len(&self) -> Result<u64, StoreError> {
        let known = self.audit_count.load(Ordering::SeqCst);
        if known != UNCOUNTED {
            return Ok(known);
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

    /// Removes every entry older than `older_than` (Unix seconds: `audit.retention`) first;
    /// then, only if more than `max_entries` are left, the oldest of the younger ones down to
    /// `keep` (at most `max_entries`), counted apart ([`Store::audit_pruned_within_retention`]).
    /// Each entry goes with its index keys, in atomic batches.
    pub fn audit_prune(
        &self,
        older_than: u64,
        max_entries: u64,
        keep: u64,
    ) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned {
            aged: self.prune_oldest(|at, _| at < older_than)?,
            young: 0,
        };
        let excess = self.audit_len()?.saturating_sub(max_entries);
        if excess > 0 {
            let young = self.audit_len()?.saturating_sub(keep.min(max_entries));
            pruned.young = self.prune_oldest(|_, removed| removed < young)?;
            self.count_pruned_young(pruned.young)?;
        }
        Ok(pruned)
    }

    /// Entries the size bound pruned while still inside `audit.retention`, ever (kept in the
    /// store, for the `audit_pruned_within_retention_total` metric).
    pub fn audit_pruned_within_retention(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta
            .get(PRUNED_YOUNG_KEY)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_le_bytes))
    }

    fn count_pruned_young(&self, young: u64) -> Result<(), StoreError> {
        if young == 0 {
            return Ok(());
        }
        let total = self.audit_pruned_within_retention()? + young;
        self.meta.insert(PRUNED_YOUNG_KEY, &total.to_le_bytes())?;
        Ok(())
    }

    /// Removes entries from the oldest while `go(time, removed so far)` says so; answers how
    /// many it removed.
    fn prune_oldest(&self, go: impl Fn(u64, u64) -> bool) -> Result<u64, StoreError> {
        let mut removed = 0u64;
        loop {
            let mut batch = sled::Batch::default();
            let mut in_batch = 0u64;
            let mut done = true;
            for item in self.audit.scan_prefix([ENTRY]) {
                let (k, v) = item?;
                let (at, _) = stamp_parts(&k[1..])?;
                if !go(at, removed + in_batch) {
                    break;
                }
                remove_entry(&mut batch, &k, &v)?;
                in_batch += 1;
                if in_batch as usize == PRUNE_BATCH {
                    done = false;
                    break;
                }
            }
            if in_batch == 0 {
                return Ok(removed);
            }
            // An entry and its index keys go together or not at all.
            self.audit.apply_batch(batch)?;
            removed += in_batch;
            if self.audit_count.load(Ordering::SeqCst) != UNCOUNTED {
                self.audit_count.fetch_sub(in_batch, Ordering::SeqCst);
            }
            if done {
                return Ok(removed);
            }
        }
    }
}

impl Prepared<'_> {
    /// Stages the entry, its index keys and its marks in `audit`; answers whether the entry is
    /// written (a [`Mark::Once`] whose decision was logged already writes nothing).
    pub(super) fn stage(
        &self,
        audit: &TransactionalTree,
    ) -> ConflictableTransactionResult<bool, StoreError> {
        if let Some(id) = self.nexudus_id
            && !stage_marks(audit, id, self.mark)?
        {
            return Ok(false);
        }
        audit.insert(self.entry_key.as_slice(), self.value.as_slice())?;
        for index in &self.index_keys {
            audit.insert(index.as_slice(), &[][..])?;
        }
        Ok(true)
    }
}

/// Applies `mark` to person `id`'s marks; false when the decision was logged already.
fn stage_marks(
    audit: &TransactionalTree,
    id: u64,
    mark: Mark<'_>,
) -> ConflictableTransactionResult<bool, StoreError> {
    if mark == Mark::Keep {
        return Ok(true);
    }
    let at = key(MARKS, &[&id.to_be_bytes()]);
    let mut marks = audit
        .get(at.as_slice())?
        .map(|v| decode_marks(&v))
        .unwrap_or_default();
    match mark {
        Mark::Keep => return Ok(true),
        Mark::Forget(prefix) => {
            let before = marks.len();
            marks.retain(|(slot, _)| !slot.starts_with(prefix));
            if marks.len() == before {
                return Ok(true);
            }
        }
        Mark::Once { slot, digest } => {
            if marks.iter().any(|(s, d)| s == slot && *d == digest) {
                return Ok(false);
            }
            marks.retain(|(s, _)| s != slot);
            marks.push((slot.to_vec(), digest));
            audit.remove(key(OLD_MARK, &[&id.to_be_bytes()]))?;
        }
    }
    if marks.is_empty() {
        audit.remove(at)?;
    } else {
        audit.insert(at, encode_marks(&marks))?;
    }
    Ok(true)
}

/// A person's marks; none when unreadable (a decision is then logged once more, never lost).
fn decode_marks(value: &[u8]) -> Vec<(Vec<u8>, u64)> {
    match value.split_first() {
        Some((&MARKS_FORMAT, rest)) => postcard::from_bytes(rest).unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn encode_marks(marks: &[(Vec<u8>, u64)]) -> Vec<u8> {
    let mut out = vec![MARKS_FORMAT];
    out.extend(postcard::to_allocvec(marks).expect("encoding into memory cannot fail"));
    out
}

/// Adds the removal of an entry and its index keys to `batch`.
fn remove_entry(batch: &mut sled::Batch, k: &[u8], v: &[u8]) -> Result<(), StoreError> {
    let stamp = &k[1..];
    let (id, ext_id, _) = split(v)?;
    if id != NO_ID {
        batch.remove(key(BY_ID, &[&id.to_be_bytes(), stamp]));
    }
    batch.remove(key(BY_EXT_ID, &[ext_id, &[0], stamp]));
    batch.remove(k);
    Ok(())
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
    use crate::store::Checkpoint;

    fn append(store: &Store, at: u64, id: Option<u64>, ext_id: &str, body: &str) -> u64 {
        let record = AuditRecord {
            at,
            nexudus_id: id,
            ext_id,
            body: body.as_bytes(),
        };
        store.audit_append(record).unwrap()
    }

    fn bodies(entries: impl Iterator<Item = Result<AuditEntry, StoreError>>) -> Vec<String> {
        entries
            .map(|e| String::from_utf8(e.unwrap().body).unwrap())
            .collect()
    }

    #[test]
    fn entries_are_found_by_user_by_ext_id_and_by_time_newest_first() {
        let store = Store::temporary().unwrap();
        append(&store, 100, Some(1), "nexudus-1", "a");
        append(&store, 100, Some(2), "nexudus-2", "b");
        append(&store, 200, Some(1), "nexudus-1", "c");
        assert_eq!(append(&store, 300, None, "", "d"), 4);
        assert_eq!(bodies(store.audit_of_user(1, 0, None)), ["c", "a"]);
        assert_eq!(bodies(store.audit_of_ext_id("nexudus-2", 0, None)), ["b"]);
        // "nexudus-1" is not a prefix match for "nexudus-10".
        append(&store, 400, Some(10), "nexudus-10", "e");
        assert_eq!(
            bodies(store.audit_of_ext_id("nexudus-1", 0, None)),
            ["c", "a"]
        );
        assert_eq!(bodies(store.audit_since(200)), ["e", "d", "c"]);
        assert_eq!(store.audit_len().unwrap(), 5);
        // Bounded by time and by a position, on every way in.
        let c = store.audit_of_user(1, 0, None).next().unwrap().unwrap();
        assert_eq!(bodies(store.audit_of_user(1, 0, Some(c.position()))), ["a"]);
        assert_eq!(bodies(store.audit_of_user(1, 150, None)), ["c"]);
        assert_eq!(
            bodies(store.audit_of_ext_id("nexudus-1", 0, Some(c.position()))),
            ["a"]
        );
        assert_eq!(
            bodies(store.audit_newest(0, Some(c.position()))),
            ["b", "a"]
        );
    }

    #[test]
    fn pruning_removes_aged_entries_first_then_the_oldest_beyond_the_bound_with_their_index_keys() {
        let store = Store::temporary().unwrap();
        for at in 1..=10 {
            append(&store, at * 100, Some(at % 2), &format!("x{}", at % 2), "v");
        }
        let pruned = store.audit_prune(300, u64::MAX, u64::MAX).unwrap();
        assert_eq!((pruned.aged, pruned.young), (2, 0));
        assert_eq!(store.audit_len().unwrap(), 8);
        let pruned = store.audit_prune(0, 5, 5).unwrap();
        assert_eq!((pruned.aged, pruned.young), (0, 3));
        assert_eq!(store.audit_pruned_within_retention().unwrap(), 3);
        let left: Vec<u64> = store.audit_since(0).map(|e| e.unwrap().at).collect();
        assert_eq!(left, [1000, 900, 800, 700, 600]);
        // No index key outlives its entry.
        let indexed =
            store.audit_of_user(0, 0, None).count() + store.audit_of_user(1, 0, None).count();
        assert_eq!(indexed, 5);
        let keys = store.audit.len();
        assert_eq!(keys, 5 * 3, "one entry key and two index keys each");
        // Aged entries go even when the bound would keep them; a bound with room prunes no young one.
        let pruned = store.audit_prune(800, 5, 4).unwrap();
        assert_eq!((pruned.aged, pruned.young), (2, 0));
    }

    #[test]
    fn a_decision_is_written_once_per_mark_and_a_forget_lets_it_be_written_again() {
        let store = Store::temporary().unwrap();
        let record = AuditRecord {
            at: 1,
            nexudus_id: Some(7),
            ext_id: "x7",
            body: b"held",
        };
        let commit = |mark| {
            store
                .commit(Some((record, mark)), &Checkpoint::Nothing)
                .unwrap()
        };
        let once = |slot: &'static [u8], digest| Mark::Once { slot, digest };
        // A mark of an earlier version never matches, and is dropped.
        store
            .audit
            .insert(key(OLD_MARK, &[&7u64.to_be_bytes()]), &42u64.to_be_bytes())
            .unwrap();
        assert!(commit(once(b"u\0disable\0userState", 42)));
        assert!(
            store
                .audit
                .get(key(OLD_MARK, &[&7u64.to_be_bytes()]))
                .unwrap()
                .is_none()
        );
        assert!(!commit(once(b"u\0disable\0userState", 42)));
        // Another slot keeps its own mark: the two do not overwrite each other.
        assert!(commit(once(b"r\0a\0revoke\0", 42)));
        assert!(commit(once(b"r\0b\0revoke\0", 42)));
        assert!(!commit(once(b"r\0a\0revoke\0", 42)));
        assert!(!commit(once(b"r\0b\0revoke\0", 42)));
        assert!(commit(once(b"u\0disable\0userState", 43)));
        // An entry that keeps the marks changes nothing; one that forgets a role's forgets only it.
        assert!(commit(Mark::Keep));
        assert!(!commit(once(b"u\0disable\0userState", 43)));
        assert!(commit(Mark::Forget(b"r\0a\0")));
        assert!(commit(once(b"r\0a\0revoke\0", 42)));
        assert!(!commit(once(b"r\0b\0revoke\0", 42)));
        assert!(!commit(once(b"u\0disable\0userState", 43)));
        assert_eq!(store.audit_len().unwrap(), 7);
    }
}
