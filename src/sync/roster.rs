//! The roster: who Nexudus held at the last full listing, and who appeared since — what an
//! incremental run compares the size-1 probe with to notice a deletion without a full listing.
//!
//! Nexudus hard-deletes users: a deletion is only visible as a smaller `TotalItems`. The roster
//! keeps the `TotalItems` of the last full listing (its *baseline*; the count of distinct Ids
//! when Nexudus did not report one), the Ids that listing held, and the Ids incremental listings
//! showed since that it did not hold (*new*). Expected now: `baseline + new`.
//!
//! An incremental run reads the probe (`TotalItems` of an unfiltered page of size 1) **first**,
//! then its listing, then compares. Any difference asks for a full listing in the same run:
//! - a deletion between two ticks: `TotalItems` drops below what is expected;
//! - a deletion and a creation between two ticks: `TotalItems` is unchanged, but the listing
//!   shows the created user as new, so expected is one more than `TotalItems`;
//! - a creation after the probe that the same run lists: counted as new but not in `TotalItems`,
//!   so a full listing is run that was not needed (a false positive, never a missed deletion);
//! - a deletion after the probe: the next tick's probe sees it;
//! - more users than expected (one created with an `UpdatedOn` older than the overlap, never
//!   listed incrementally): a full listing too, which learns it.
//!
//! A full listing that could not tell who is gone (pages shifted under it; its disables are held)
//! forgets nobody the roster expected: the deletions it held are still missing at the next probe
//! and are taken up at once — by the search even when it costs more than a listing (up to twice
//! its pages), since another listing would likely meet the same churn. After two such listings in
//! a row, a difference the search cannot settle waits for the scheduled full listing instead (a
//! lasting cause must not turn every tick into a full listing). A search that accounts for every
//! missing user settles the roster again.
//!
//! A drop is searched for before anything is listed ([`super::pinpoint`]): when `log2` of the
//! pages, a page read and a look-up per missing user cost fewer requests than a full listing, a
//! binary search over the listing's positions finds who was deleted, each confirmed by a look-up,
//! and the roster forgets them — after noting them as owed disables ([`super::owed`]), which the
//! store keeps until their disable is confirmed, so that a disable held or lost is decided again
//! by every later run. Whatever the search cannot account for still asks for the full listing.
//!
//! A user created and deleted between two ticks was never synced: nothing to revoke. What is
//! left to the scheduled full listings: a user who is never listed incrementally, created in the
//! same interval as another user is deleted (the two cancel out in `TotalItems`).
//!
//! Stored compactly in the store's meta tree (sorted Ids as varint deltas: one to three bytes a
//! user in a real account).

use std::collections::HashSet;

use super::owed::{Known, Owed};
use super::pinpoint;
use crate::nexudus::{Source, SourceError};
use crate::store::{Store, StoreError};

/// Meta key of the encoded roster.
const ROSTER_KEY: &str = "roster";
/// Encoding version, first byte of the value (1: without `unsettled`, still read).
const FORMAT: u8 = 2;

/// Full listings in a row that could not tell who is gone, after which a probe's difference no
/// longer brings another one (the scheduled full listings still run; the search still runs): a
/// listing that is incomplete for a lasting reason (a record without a usable Id, a `TotalItems`
/// that never adds up) must not turn every tick into a full listing.
const MAX_UNSETTLED: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    /// `TotalItems` of the last full listing (or its count of distinct Ids).
    baseline: u64,
    /// Ids of the last full listing, sorted.
    listed: Vec<u64>,
    /// Ids first shown by an incremental listing since, sorted.
    new: Vec<u64>,
    /// Full listings in a row that could not tell who is gone (see [`MAX_UNSETTLED`]).
    unsettled: u32,
}

/// What the probe and the incremental listing said together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// `TotalItems` is what the roster expects: nobody vanished.
    Steady,
    /// `TotalItems` differs from what is expected: a full listing must tell who is gone.
    Differs { total: u64, expected: u64 },
}

impl Roster {
    /// The roster after a full listing: `total_items` as it announced (else the count of `seen`).
    pub fn after_full_listing(total_items: Option<u64>, seen: &HashSet<u64>) -> Roster {
        let mut listed: Vec<u64> = seen.iter().copied().collect();
        listed.sort_unstable();
        Roster {
            baseline: total_items.unwrap_or(listed.len() as u64),
            listed,
            new: Vec::new(),
            unsettled: 0,
        }
    }

    /// The roster after a full listing that could not tell who is gone (pages shifted under it,
    /// a user it did not list is still there, its counts did not add up): nobody the previous
    /// roster expected is forgotten, since a user it did not list may be deleted (its disable is
    /// held with the rest) or skipped. The next probe compares with all of them, so a deletion
    /// held by this listing is searched for, or listed again, at the next tick instead of waiting
    /// for the scheduled full listing.
    pub fn after_incomplete_listing(
        previous: Option<Roster>,
        total_items: Option<u64>,
        seen: &HashSet<u64>,
    ) -> Roster {
        let Some(previous) = previous else {
            let mut roster = Roster::after_full_listing(total_items, seen);
            roster.unsettled = 1;
            return roster;
        };
        let mut ids: Vec<u64> = seen.iter().copied().collect();
        ids.extend_from_slice(&previous.listed);
        ids.extend_from_slice(&previous.new);
        ids.sort_unstable();
        ids.dedup();
        Roster {
            baseline: ids.len() as u64,
            listed: ids,
            new: Vec::new(),
            unsettled: previous.unsettled.saturating_add(1),
        }
    }

    /// Notes the Ids an incremental listing showed; those neither listed nor new so far are new.
    /// Answers whether there was any.
    pub fn note_incremental(&mut self, seen: &HashSet<u64>) -> bool {
        let mut added = false;
        for &id in seen {
            if self.listed.binary_search(&id).is_err() && self.new.binary_search(&id).is_err() {
                self.new.push(id);
                added = true;
            }
        }
        if added {
            self.new.sort_unstable();
            self.new.dedup();
        }
        added
    }

    /// Every Id Nexudus should hold now, sorted: the listing ordered by Id, were nobody deleted.
    /// `None` when the baseline is not the count of Ids listed (Nexudus's count and its listing
    /// disagreed): the positions cannot be trusted then.
    fn expected_ids(&self) -> Option<Vec<u64>> {
        if self.baseline != self.listed.len() as u64 {
            return None;
        }
        let mut ids = Vec::with_capacity(self.listed.len() + self.new.len());
        ids.extend_from_slice(&self.listed);
        ids.extend_from_slice(&self.new);
        ids.sort_unstable();
        ids.dedup();
        (ids.len() == self.listed.len() + self.new.len()).then_some(ids)
    }

    /// Forgets users known to be deleted.
    fn forget(&mut self, gone: &[u64]) {
        for id in gone {
            if let Ok(at) = self.listed.binary_search(id) {
                self.listed.remove(at);
                self.baseline = self.baseline.saturating_sub(1);
            } else if let Ok(at) = self.new.binary_search(id) {
                self.new.remove(at);
            }
        }
    }

    /// How many users Nexudus should hold now.
    pub fn expected(&self) -> u64 {
        self.baseline.saturating_add(self.new.len() as u64)
    }

    /// Compares the probe's `TotalItems` (read before the incremental listing) with the roster
    /// (after the listing was noted).
    pub fn judge(&self, total: u64) -> Judgement {
        let expected = self.expected();
        if total == expected {
            Judgement::Steady
        } else {
            Judgement::Differs { total, expected }
        }
    }

    /// The stored roster; `None` before the first full listing recorded one (or when it cannot
    /// be read, which a full listing repairs).
    pub fn load(store: &Store) -> Result<Option<Roster>, StoreError> {
        let Some(bytes) = store.meta_bytes(ROSTER_KEY)? else {
            return Ok(None);
        };
        let roster = decode(&bytes);
        if roster.is_none() {
            tracing::warn!("the stored roster cannot be read; the next run lists everyone");
        }
        Ok(roster)
    }

    pub fn save(&self, store: &Store) -> Result<(), StoreError> {
        store.set_meta_bytes(ROSTER_KEY, &self.encode())
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 2 * (self.listed.len() + self.new.len()));
        out.push(FORMAT);
        put_varint(&mut out, self.baseline);
        put_varint(&mut out, u64::from(self.unsettled));
        put_ids(&mut out, &self.listed);
        put_ids(&mut out, &self.new);
        out
    }
}

/// An incremental run's deletion probe: `TotalItems` read before its listing, and the roster to
/// judge it by once the listing is noted.
pub struct Probe {
    total: Option<u64>,
    roster: Roster,
    /// The disables earlier runs owe (held, refused, cut short), decided again by this run.
    owed: Owed,
}

impl Probe {
    /// Before an incremental listing: reads the probe (one request). `None` when there is no
    /// roster to compare with yet: the run must list everyone instead.
    pub async fn take<S: Source>(source: &S, store: &Store) -> Result<Option<Probe>, ProbeError> {
        let Some(roster) = Roster::load(store)? else {
            tracing::info!("no full listing recorded who Nexudus holds yet: listing everyone");
            return Ok(None);
        };
        let owed = Owed::load(store)?;
        let total = source.count_users().await?;
        if total.is_none() {
            tracing::warn!("Nexudus did not report TotalItems: deletions wait for a full listing");
        }
        Ok(Some(Probe {
            total,
            roster,
            owed,
        }))
    }

    /// After the incremental listing (`seen`: every Id it held): notes the new Ids, and when the
    /// probe says someone is missing, searches for them when that costs fewer requests than a
    /// full listing in pages of `page_size` (`None`: never search). What the roster learns is
    /// kept unless `dry_run` (an idle tick writes nothing). Whom the search finds gone is owed a
    /// disable, with those earlier runs owe.
    pub async fn judge_after<S: Source>(
        mut self,
        source: &S,
        seen: &HashSet<u64>,
        store: &Store,
        dry_run: bool,
        page_size: Option<u64>,
    ) -> Result<Vanished, StoreError> {
        if self.roster.note_incremental(seen) && !dry_run {
            self.roster.save(store)?;
        }
        let Some(total) = self.total else {
            return Ok(self.vanished(false));
        };
        let Judgement::Differs { total, expected } = self.roster.judge(total) else {
            return Ok(self.vanished(false));
        };
        let searched = match (page_size, self.roster.expected_ids()) {
            (Some(page_size), Some(ids)) if total < expected => {
                match self.search_budget(expected - total, ids.len(), page_size) {
                    Some(budget) => {
                        let page_size = u32::try_from(page_size).unwrap_or(u32::MAX);
                        Some(pinpoint::search(source, ids, total, page_size, budget).await)
                    }
                    None => None,
                }
            }
            _ => None,
        };
        let Some(found) = searched else {
            tracing::info!(
                total_items = total,
                expected,
                "Nexudus holds {total} users where {expected} were expected: someone was \
                 deleted (or created unseen)"
            );
            let due = self.full_listing_allowed();
            return Ok(self.vanished(due));
        };
        // Accounted for: the roster agrees with Nexudus's count again.
        let settled = found.unexplained.is_none() && self.roster.unsettled != 0;
        if !found.gone.is_empty() || settled {
            for &id in &found.gone {
                self.owed.insert(id, Known::Gone);
            }
            self.roster.forget(&found.gone);
            if settled {
                self.roster.unsettled = 0;
            }
            if !dry_run {
                // Owed first: a stop between the two leaves them owed and still expected (the
                // next search finds them again), never forgotten and not owed.
                if !found.gone.is_empty() {
                    self.owed.save(store)?;
                }
                self.roster.save(store)?;
            }
        }
        tracing::info!(
            total_items = total,
            expected,
            found = found.gone.len(),
            requests = found.requests,
            "Nexudus holds {total} users where {expected} were expected: searched who was deleted"
        );
        if let Some(reason) = &found.unexplained {
            tracing::info!(%reason, "the search did not account for every missing user");
        }
        let due = found.unexplained.is_some() && self.full_listing_allowed();
        Ok(self.vanished(due))
    }

    /// What the run learnt: the owed disables (with whom the search found gone) and whether a
    /// full listing must follow.
    fn vanished(self, full_listing_due: bool) -> Vanished {
        Vanished {
            may_list_everyone: self.roster.unsettled < MAX_UNSETTLED,
            owed: self.owed,
            full_listing_due,
        }
    }

    /// The requests a search for `missing` users among `n` may spend, if it is to run: when it
    /// costs less than a full listing, the pages of one. After a full listing that could not tell
    /// who is gone (deletions while it ran), twice that whatever it costs: another listing would
    /// likely meet the same churn, which the search copes with. Not after [`MAX_UNSETTLED`] such
    /// listings unless it is cheaper (a lasting cause must not make every tick pay for it).
    fn search_budget(&self, missing: u64, n: usize, page_size: u64) -> Option<u64> {
        let pages = pinpoint::pages(n, page_size);
        if pinpoint::worth_searching(missing, n, page_size) {
            Some(pages)
        } else if (1..MAX_UNSETTLED).contains(&self.roster.unsettled) {
            Some(pages.saturating_mul(2))
        } else {
            None
        }
    }

    /// Whether a difference the search did not settle may bring a full listing now: not after
    /// [`MAX_UNSETTLED`] incomplete ones in a row.
    fn full_listing_allowed(&self) -> bool {
        if self.roster.unsettled >= MAX_UNSETTLED {
            tracing::warn!(
                unsettled = self.roster.unsettled,
                "the last full listings could not tell who is gone: this difference waits for \
                 the scheduled full listing"
            );
            return false;
        }
        tracing::info!("listing everyone now");
        true
    }
}

/// Who an incremental run owes a disable, and whether a full listing must still follow.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Vanished {
    /// The disables owed: those earlier runs did not get confirmed, and whom this run's search
    /// found deleted (each confirmed by a look-up); all decided under the deletion safety.
    pub owed: Owed,
    /// Someone is missing whom the search did not find (or no search was worth it).
    pub full_listing_due: bool,
    /// A full listing may still follow in this run, were one needed to confirm who is gone (not
    /// after [`MAX_UNSETTLED`] incomplete ones in a row).
    pub may_list_everyone: bool,
}

/// After a full listing that ran to its end: the roster starts again from it when it was
/// `complete` (it could tell who is gone), and keeps everyone it expected besides when not.
pub fn record_full_listing(
    store: &Store,
    total_items: Option<u64>,
    seen: &HashSet<u64>,
    complete: bool,
) -> Result<(), StoreError> {
    let roster = if complete {
        Roster::after_full_listing(total_items, seen)
    } else {
        Roster::after_incomplete_listing(Roster::load(store)?, total_items, seen)
    };
    roster.save(store)
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn decode(bytes: &[u8]) -> Option<Roster> {
    let (&format, mut rest) = bytes.split_first()?;
    if format != 1 && format != FORMAT {
        return None;
    }
    let baseline = take_varint(&mut rest)?;
    let unsettled = match format {
        1 => 0,
        _ => u32::try_from(take_varint(&mut rest)?).ok()?,
    };
    let listed = take_ids(&mut rest)?;
    let new = take_ids(&mut rest)?;
    rest.is_empty().then_some(Roster {
        baseline,
        listed,
        new,
        unsettled,
    })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(rest: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, tail) = rest.split_first()?;
        *rest = tail;
        v |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Sorted Ids: their count, then each as the delta from the one before.
pub(super) fn put_ids(out: &mut Vec<u8>, ids: &[u64]) {
    put_varint(out, ids.len() as u64);
    let mut last = 0u64;
    for &id in ids {
        put_varint(out, id - last);
        last = id;
    }
}

pub(super) fn take_ids(rest: &mut &[u8]) -> Option<Vec<u64>> {
    let n = take_varint(rest)?;
    // Each Id takes at least a byte: a count beyond what is left is damage, not a reason to
    // reserve memory.
    if n > rest.len() as u64 {
        return None;
    }
    let mut ids = Vec::with_capacity(n as usize);
    let mut last = 0u64;
    for _ in 0..n {
        last = last.checked_add(take_varint(rest)?)?;
        ids.push(last);
    }
    Some(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> HashSet<u64> {
        v.iter().copied().collect()
    }

    #[test]
    fn round_trips_compactly_and_refuses_damage() {
        let seen: HashSet<u64> = (1_000_000_000..1_000_100_000).step_by(3).collect();
        let mut r = Roster::after_full_listing(Some(40_000), &seen);
        r.note_incremental(&ids(&[7, 2_000_000_000]));
        let bytes = r.encode();
        assert!(bytes.len() < seen.len() + 32, "{} bytes", bytes.len());
        assert_eq!(decode(&bytes), Some(r.clone()));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[9, 0, 0, 0]), None);
        assert_eq!(decode(&[FORMAT, 0, 0xff, 0xff, 0xff, 0x0f]), None);
    }

    #[test]
    fn a_deletion_a_creation_or_both_in_one_interval_are_noticed() {
        let r = Roster::after_full_listing(Some(3), &ids(&[10, 11, 12]));
        assert_eq!(r.judge(3), Judgement::Steady);
        // Deleted: the total drops.
        assert!(matches!(r.judge(2), Judgement::Differs { .. }));
        // Created and listed: steady.
        let mut created = r.clone();
        created.note_incremental(&ids(&[12, 13]));
        assert_eq!(created.judge(4), Judgement::Steady);
        // One deleted and one created: the total is unchanged, but the new Id gives it away.
        let mut both = r.clone();
        both.note_incremental(&ids(&[13]));
        assert_eq!(
            both.judge(3),
            Judgement::Differs {
                total: 3,
                expected: 4
            }
        );
        // New Ids are counted once across runs (nothing to store again).
        assert!(!both.note_incremental(&ids(&[13])));
        assert_eq!(both.expected(), 4);
        // More users than known: a full listing learns them.
        assert!(matches!(r.judge(4), Judgement::Differs { .. }));
    }

    #[test]
    fn an_incomplete_listing_forgets_nobody_and_stops_asking_after_two_in_a_row() {
        let before = Roster::after_full_listing(Some(4), &ids(&[1, 2, 3, 4]));
        // 2 and 4 were not listed (deleted, or skipped), 5 is new.
        let once = Roster::after_incomplete_listing(Some(before), Some(3), &ids(&[1, 3, 5]));
        assert_eq!(once.expected(), 5);
        assert_eq!(once.expected_ids(), Some(vec![1, 2, 3, 4, 5]));
        // Nexudus holds 3: the probe still sees the two deletions the listing held.
        assert!(matches!(once.judge(3), Judgement::Differs { .. }));
        assert_eq!(once.unsettled, 1);
        let probe = |roster: &Roster| Probe {
            total: Some(3),
            roster: roster.clone(),
            owed: Owed::default(),
        };
        assert!(probe(&once).full_listing_allowed());
        // The search runs even when dearer than a listing (here 1 page), with twice its pages.
        assert_eq!(probe(&once).search_budget(2, 5, 1000), Some(2));
        assert_eq!(
            probe(&Roster::after_full_listing(Some(5), &ids(&[1, 2, 3, 4, 5])))
                .search_budget(2, 5, 1000),
            None
        );
        let twice = Roster::after_incomplete_listing(Some(once), Some(3), &ids(&[1, 3, 5]));
        assert_eq!(probe(&twice).search_budget(2, 5, 1000), None);
        assert_eq!(twice.unsettled, 2);
        assert!(!probe(&twice).full_listing_allowed());
        // A complete listing settles it.
        let settled = Roster::after_full_listing(Some(3), &ids(&[1, 3, 5]));
        assert_eq!(
            (settled.unsettled, settled.judge(3)),
            (0, Judgement::Steady)
        );
        // Without an earlier roster, the listing is all there is to go by.
        let first = Roster::after_incomplete_listing(None, Some(3), &ids(&[1, 3]));
        assert_eq!((first.expected(), first.unsettled), (3, 1));
    }

    #[test]
    fn the_format_without_unsettled_is_still_read() {
        let mut old = vec![1u8];
        put_varint(&mut old, 2);
        put_ids(&mut old, &[10, 11]);
        put_ids(&mut old, &[]);
        let roster = decode(&old).expect("format 1");
        assert_eq!((roster.expected(), roster.unsettled), (2, 0));
        assert_eq!(decode(&roster.encode()), Some(roster));
    }

    #[test]
    fn without_total_items_the_baseline_is_the_count_listed() {
        let r = Roster::after_full_listing(None, &ids(&[1, 2]));
        assert_eq!(r.expected(), 2);
    }
}
