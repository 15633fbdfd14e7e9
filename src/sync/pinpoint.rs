//! The pinpoint: who was deleted, found by a search over the listing's positions instead of a
//! full listing.
//!
//! When the deletion probe says Nexudus holds fewer users than the roster expects, the roster's
//! Ids, sorted, are what the listing ordered by Id would show were nobody deleted: the user at
//! position `i` is the roster's `i`-th Id exactly when nobody before it was deleted, and from the
//! first deletion on, every position shows a later Id. So a binary search over the pages finds the
//! first page holding a deletion, reading only the user at each page's last position (one request:
//! page `i` of size 1), `log2(pages)` requests (7 for 100,000 users in pages of 1,000, where a full
//! listing takes 100); one read of that page then shows every user missing from it.
//!
//! Nothing found this way is trusted blindly: every user missing from the page is looked up
//! (`GET /api/sys/users/{id}`) and counts as gone only on Nexudus's own 404. A page that shows
//! nobody missing, or a missing user still there, means the listing changed under the search (a
//! deletion while it ran): it starts again from where it was sure, up to [`MAX_RESTARTS`] times. A
//! failed step or look-up, an order not by Id (the notes call the order untrusted), a count that
//! stays off, or a search that runs past its request budget leaves the rest *unexplained*: a full
//! listing follows in the same run. Users created while the search runs sort after the roster's
//! Ids and move no position it reads.

use crate::nexudus::{PageIds, Presence, Source};

/// Times a search starts again after the listing changed under it.
const MAX_RESTARTS: u32 = 3;

/// What the search found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Users deleted from Nexudus, each confirmed by a 404.
    pub gone: Vec<u64>,
    /// Why the search could not account for the whole difference (a full listing must), if so.
    pub unexplained: Option<String>,
    /// Requests spent (steps, page reads and look-ups).
    pub requests: u64,
}

/// The pages of a full listing of `n` users in pages of `page_size`.
pub fn pages(n: usize, page_size: u64) -> u64 {
    (n as u64).div_ceil(page_size.max(1))
}

/// Requests the search expects to spend per deleted user among `n` in pages of `page_size`: a
/// step per halving of the pages, the page read, and the look-up.
pub fn cost_per_deletion(n: usize, page_size: u64) -> u64 {
    u64::from(u64::BITS - pages(n, page_size).leading_zeros()) + 2
}

/// Whether searching for `deleted` users among `n` is cheaper than listing them all in pages of
/// `page_size`.
pub fn worth_searching(deleted: u64, n: usize, page_size: u64) -> bool {
    deleted.saturating_mul(cost_per_deletion(n, page_size)) < pages(n, page_size)
}

/// Searches `expected` (the roster's Ids, sorted ascending) for the users Nexudus no longer holds,
/// in pages of `page_size`, until `total` (the probe's `TotalItems`, then each request's) is
/// accounted for, spending at most `max_requests`.
pub async fn search<S: Source>(
    source: &S,
    expected: Vec<u64>,
    total: u64,
    page_size: u32,
    max_requests: u64,
) -> Found {
    let mut search = Search {
        source,
        expected,
        total,
        page_size: page_size.max(1),
        max_requests,
        restarts: 0,
        found: Found::default(),
    };
    if let Err(reason) = search.run().await {
        search.found.unexplained = Some(reason);
    }
    search.found
}

struct Search<'a, S> {
    source: &'a S,
    /// Who Nexudus should hold, less those found gone so far: position `i + 1` of the listing
    /// should show `expected[i]`.
    expected: Vec<u64>,
    /// The latest `TotalItems`.
    total: u64,
    page_size: u32,
    max_requests: u64,
    restarts: u32,
    found: Found,
}

/// What one page read showed.
enum PageRead {
    /// Everyone up to the page's end is accounted for; the next index to check.
    Settled(usize),
    /// The listing changed under the search: start again from where it was sure.
    Changed,
}

impl<S: Source> Search<'_, S> {
    /// Deleted users not yet found, by the latest `TotalItems` (users created meanwhile can make
    /// it fall short: they are learnt from the next incremental listing).
    fn remaining(&self) -> u64 {
        (self.expected.len() as u64).saturating_sub(self.total)
    }

    async fn run(&mut self) -> Result<(), String> {
        // Every index before `from` is known to sit where it should.
        let mut from = 0usize;
        while self.remaining() > 0 {
            let Some(page) = self.first_page_out_of_place(from).await? else {
                // Every Id in place: a difference now gone (a creation the probe was read too
                // early to count) is settled; one still there is not explained.
                return match self.remaining() {
                    0 => Ok(()),
                    left => Err(format!(
                        "every user is where the listing ordered by Id should show them, yet \
                         {left} are missing"
                    )),
                };
            };
            match self.read_page(page, from).await? {
                PageRead::Settled(next) => from = next,
                PageRead::Changed => {
                    self.restarts += 1;
                    if self.restarts > MAX_RESTARTS {
                        return Err(format!(
                            "the listing changed under the search {MAX_RESTARTS} times"
                        ));
                    }
                    tracing::debug!(page, "the listing changed under the search; again");
                }
            }
        }
        Ok(())
    }

    /// The first page at or after the one holding index `from` whose last position does not show
    /// the Id it should (one request per halving); `None` when the last one does.
    async fn first_page_out_of_place(&mut self, from: usize) -> Result<Option<u32>, String> {
        let n = self.expected.len();
        if from >= n {
            return Ok(None);
        }
        let size = self.page_size as usize;
        let last_page = (n - 1) / size;
        // Pages counted from 0 here; the answer lies in [low, high], `last_page + 1` for "none".
        let (mut low, mut high) = (from / size, last_page + 1);
        while low < high {
            let mid = low + (high - low) / 2;
            let end = ((mid + 1) * size).min(n) - 1;
            if self.in_place(end).await? {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        if low > last_page {
            return Ok(None);
        }
        let page = u32::try_from(low + 1)
            .map_err(|_| format!("page {} is beyond what a page number can say", low + 1))?;
        Ok(Some(page))
    }

    /// Whether `expected[index]` is at its position (one request: a page of size 1).
    async fn in_place(&mut self, index: usize) -> Result<bool, String> {
        let position = u32::try_from(index + 1).map_err(|_| {
            format!(
                "position {} is beyond what a page number can say",
                index + 1
            )
        })?;
        let at = self.ids_at(position, 1).await?;
        Ok(at.ids.first().copied().flatten() == Some(self.expected[index]))
    }

    /// Reads page `page` whole, names who is missing from it (from index `from` on), and looks
    /// each of them up.
    async fn read_page(&mut self, page: u32, from: usize) -> Result<PageRead, String> {
        let size = self.page_size as usize;
        let start = (page as usize - 1) * size;
        let served = self.ids_at(page, self.page_size).await?.ids;
        // A page shorter than asked is the listing's last: whoever the walk has not met by its
        // end is missing too.
        let last = served.len() < size;
        let mut k = from.max(start);
        let mut missing = Vec::new();
        for id in served.into_iter().skip(k - start) {
            let id = id.ok_or("a record without a usable Id was listed")?;
            while k < self.expected.len() && self.expected[k] < id {
                missing.push(self.expected[k]);
                k += 1;
            }
            match self.expected.get(k) {
                // Beyond the roster: created since.
                None => break,
                Some(&want) if want == id => k += 1,
                Some(_) => {
                    return Err(format!(
                        "page {page} holds Nexudus user {id} where the roster has none: the \
                         listing may not be ordered by Id"
                    ));
                }
            }
        }
        if last {
            missing.extend_from_slice(&self.expected[k..]);
            k = self.expected.len();
        }
        if missing.is_empty() {
            return Ok(PageRead::Changed);
        }
        let left = self.remaining();
        if missing.len() as u64 > left + u64::from(MAX_RESTARTS) {
            return Err(format!(
                "page {page} misses {} users where {left} are missing: the listing may not be \
                 ordered by Id",
                missing.len()
            ));
        }
        let mut changed = false;
        for id in missing {
            self.spend()?;
            match self.source.fetch_user(id).await {
                Ok(Presence::Gone) => {
                    tracing::info!(
                        nexudus_id = id,
                        "deleted from Nexudus (found by the position search, confirmed by a look-up)"
                    );
                    self.found.gone.push(id);
                    if let Ok(at) = self.expected.binary_search(&id) {
                        self.expected.remove(at);
                        k -= 1;
                    }
                }
                Ok(_) => changed = true,
                Err(e) => return Err(format!("could not look up Nexudus user {id}: {e}")),
            }
        }
        Ok(if changed {
            PageRead::Changed
        } else {
            PageRead::Settled(k)
        })
    }

    async fn ids_at(&mut self, page: u32, size: u32) -> Result<PageIds, String> {
        self.spend()?;
        let at = self
            .source
            .ids_at(page, size)
            .await
            .map_err(|e| format!("could not read page {page} of size {size}: {e}"))?;
        if let Some(total) = at.total_items {
            self.total = total;
        }
        Ok(at)
    }

    fn spend(&mut self) -> Result<(), String> {
        if self.found.requests >= self.max_requests {
            return Err(format!(
                "the search spent its {} requests before accounting for every missing user",
                self.max_requests
            ));
        }
        self.found.requests += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nexudus::{SourceError, SourcePage};
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    /// Nexudus holding `ids`, listed in Id order (or reversed), counting requests.
    struct Held {
        ids: Mutex<BTreeSet<u64>>,
        reversed: bool,
        /// Deleted when the n-th request comes (after the first step, say).
        deleted_on_request: Mutex<Option<(u64, u64)>>,
        /// Created (with a higher Id) when the first request comes.
        created_on_first_request: Mutex<Option<u64>>,
        /// Added to the `TotalItems` reported.
        total_skew: i64,
        requests: Mutex<u64>,
    }

    impl Held {
        fn new(ids: impl IntoIterator<Item = u64>) -> Held {
            Held {
                ids: Mutex::new(ids.into_iter().collect()),
                reversed: false,
                deleted_on_request: Mutex::new(None),
                created_on_first_request: Mutex::new(None),
                total_skew: 0,
                requests: Mutex::new(0),
            }
        }

        fn count(&self) -> u64 {
            let mut requests = self.requests.lock().unwrap();
            *requests += 1;
            if let Some(id) = self.created_on_first_request.lock().unwrap().take() {
                self.ids.lock().unwrap().insert(id);
            }
            let mut deleted = self.deleted_on_request.lock().unwrap();
            if let Some((at, id)) = *deleted
                && at == *requests
            {
                self.ids.lock().unwrap().remove(&id);
                *deleted = None;
            }
            *requests
        }
    }

    impl Source for Held {
        async fn fetch_page(&self, _: u32, _: Option<&str>) -> Result<SourcePage, SourceError> {
            unreachable!("the search never lists")
        }
        async fn fetch_user(&self, id: u64) -> Result<Presence, SourceError> {
            self.count();
            Ok(if self.ids.lock().unwrap().contains(&id) {
                Presence::Active
            } else {
                Presence::Gone
            })
        }
        async fn ids_at(&self, page: u32, size: u32) -> Result<PageIds, SourceError> {
            self.count();
            let ids = self.ids.lock().unwrap();
            let start = (page as usize - 1) * size as usize;
            let order: Vec<u64> = if self.reversed {
                ids.iter().rev().copied().collect()
            } else {
                ids.iter().copied().collect()
            };
            Ok(PageIds {
                ids: order
                    .into_iter()
                    .skip(start)
                    .take(size as usize)
                    .map(Some)
                    .collect(),
                total_items: Some((ids.len() as i64 + self.total_skew) as u64),
            })
        }
    }

    fn roster(n: u64) -> Vec<u64> {
        (0..n).map(|i| 1_000_000_000 + 7 * i).collect()
    }

    fn held_without(expected: &[u64], deleted: &[u64]) -> Held {
        Held::new(expected.iter().copied().filter(|id| !deleted.contains(id)))
    }

    #[tokio::test]
    async fn finds_each_deleted_user_in_a_few_requests() {
        let expected = roster(100_000);
        for deleted in [
            vec![expected[0]],
            vec![expected[99_999]],
            vec![expected[31_337]],
            vec![expected[999], expected[1000]],
            vec![expected[5], expected[6], expected[70_000]],
            vec![expected[99_998], expected[99_999]],
        ] {
            let held = held_without(&expected, &deleted);
            let total = expected.len() as u64 - deleted.len() as u64;
            let found = search(&held, expected.clone(), total, 1000, 100).await;
            assert_eq!(found.gone, deleted);
            assert_eq!(found.unexplained, None);
            let budget = deleted.len() as u64 * cost_per_deletion(expected.len(), 1000);
            assert!(found.requests <= budget, "{} > {budget}", found.requests);
            assert_eq!(found.requests, *held.requests.lock().unwrap());
        }
    }

    #[tokio::test]
    async fn a_creation_the_probe_missed_is_settled_without_a_look_up() {
        // The roster counts a user the probe was read too early to count: nobody is gone.
        let expected = roster(10_000);
        let held = Held::new(expected.iter().copied());
        let found = search(&held, expected.clone(), 9_999, 1000, 100).await;
        assert_eq!(found.gone, Vec::<u64>::new());
        assert_eq!(found.unexplained, None);
        assert!(found.requests <= 5, "{}", found.requests);
    }

    #[tokio::test]
    async fn users_created_during_the_search_move_nothing() {
        let expected = roster(10_000);
        let held = held_without(&expected, &[expected[4000]]);
        *held.created_on_first_request.lock().unwrap() = Some(2_000_000_000);
        let found = search(&held, expected.clone(), 9_999, 1000, 100).await;
        // TotalItems is back to 10,000 from the first step on, the creation cancelling the
        // deletion out: the search still runs to the deleted user. The created one is left to
        // the next incremental listing.
        assert_eq!(found.gone, vec![expected[4000]]);
        assert_eq!(found.unexplained, None);
    }

    #[tokio::test]
    async fn a_deletion_during_the_search_is_found_too() {
        let expected = roster(10_000);
        // One deleted before, one (earlier in the order) after the first step.
        let held = held_without(&expected, &[expected[7000]]);
        *held.deleted_on_request.lock().unwrap() = Some((2, expected[2500]));
        let found = search(&held, expected.clone(), 9_999, 1000, 100).await;
        assert_eq!(found.unexplained, None);
        let mut gone = found.gone.clone();
        gone.sort_unstable();
        assert_eq!(gone, vec![expected[2500], expected[7000]]);
    }

    #[tokio::test]
    async fn an_order_not_by_id_disables_nobody() {
        let expected = roster(10_000);
        let mut held = held_without(&expected, &[expected[10]]);
        held.reversed = true;
        let found = search(&held, expected.clone(), 9_999, 1000, 100).await;
        assert!(found.gone.is_empty());
        assert!(
            found
                .unexplained
                .as_deref()
                .unwrap()
                .contains("ordered by Id"),
            "{found:?}"
        );
    }

    #[tokio::test]
    async fn a_difference_no_position_explains_or_a_spent_budget_is_unexplained() {
        // Two missing by the count, but every user in place (the count is off).
        let expected = roster(10_000);
        let mut held = Held::new(expected.iter().copied());
        held.total_skew = -2;
        let found = search(&held, expected.clone(), 9_998, 1000, 100).await;
        assert!(found.gone.is_empty());
        assert!(found.unexplained.unwrap().contains("yet 2 are missing"));

        let held = held_without(&expected, &[expected[1], expected[5000], expected[9000]]);
        let found = search(&held, expected.clone(), 9_997, 1000, 8).await;
        assert_eq!(found.requests, 8);
        assert!(found.unexplained.unwrap().contains("spent its 8 requests"));
    }

    #[test]
    fn searching_pays_only_when_cheaper_than_the_pages() {
        assert_eq!(cost_per_deletion(100_000, 1000), 9);
        assert!(worth_searching(11, 100_000, 1000));
        assert!(!worth_searching(12, 100_000, 1000));
        assert!(worth_searching(2, 20_000, 1000));
        assert!(!worth_searching(3, 20_000, 1000));
        assert!(!worth_searching(1, 1000, 1000));
        assert!(!worth_searching(1, 10, 1000));
    }
}
