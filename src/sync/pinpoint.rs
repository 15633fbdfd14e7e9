//! The pinpoint: who was deleted, found by a search over the listing's positions instead of a
//! full listing.
//!
//! When the deletion probe says Nexudus holds `d` fewer users than the roster expects, the
//! roster's Ids, sorted, are what the listing ordered by Id would show were nobody deleted. The
//! user at position `i` of the real listing (one request: page `i` of size 1) is the roster's
//! `i`-th Id exactly when nobody before it was deleted; from the first deletion on, every position
//! shows a later Id. So a binary search over the roster finds the first deleted user in
//! `log2(n)` requests (17 for 100,000 users, where a full listing takes 100 pages), and the next
//! one from there, knowing how many were found before it.
//!
//! Nothing found this way is trusted blindly: every user the search points at is looked up
//! (`GET /api/sys/users/{id}`) and counts as gone only on Nexudus's own 404. A user still there, a
//! look-up or a step that fails, a listing that is not ordered by Id (the notes call the order
//! untrusted), more users than expected, or a search that runs past its request budget leaves the
//! rest *unexplained*: a full listing follows in the same run, as before the search existed.
//! Users created while the search runs sort after the roster's Ids and move no position it reads.

use crate::nexudus::{Presence, Source};

/// What the search found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Users deleted from Nexudus, each confirmed by a 404.
    pub gone: Vec<u64>,
    /// Why the search could not account for the whole difference (a full listing must), if so.
    pub unexplained: Option<String>,
    /// Requests spent (steps and look-ups).
    pub requests: u64,
}

/// Requests the search expects to spend per deleted user among `n`: a step per halving of the
/// roster, plus its look-up.
pub fn cost_per_deletion(n: usize) -> u64 {
    u64::from(usize::BITS - n.leading_zeros()) + 1
}

/// Whether searching for `deleted` users among `n` is cheaper than listing them all in pages of
/// `page_size`.
pub fn worth_searching(deleted: u64, n: usize, page_size: u64) -> bool {
    let pages = (n as u64).div_ceil(page_size.max(1));
    deleted.saturating_mul(cost_per_deletion(n)) < pages
}

/// Searches `expected` (the roster's Ids, sorted ascending) for the users Nexudus no longer holds,
/// until `total` (the probe's `TotalItems`, then each step's) is accounted for, spending at most
/// `max_requests`.
pub async fn search<S: Source>(
    source: &S,
    expected: &[u64],
    total: u64,
    max_requests: u64,
) -> Found {
    let mut search = Search {
        source,
        expected,
        total,
        max_requests,
        found: Found::default(),
    };
    if let Err(reason) = search.run().await {
        search.found.unexplained = Some(reason);
    }
    search.found
}

struct Search<'a, S> {
    source: &'a S,
    expected: &'a [u64],
    /// The latest `TotalItems`.
    total: u64,
    max_requests: u64,
    found: Found,
}

impl<S: Source> Search<'_, S> {
    /// Deleted users not yet found, by the latest `TotalItems` (users created meanwhile can make
    /// it fall short: they are learnt from the next incremental listing).
    fn remaining(&self) -> u64 {
        let left = self.expected.len() as u64 - self.found.gone.len() as u64;
        left.saturating_sub(self.total)
    }

    async fn run(&mut self) -> Result<(), String> {
        let mut from = 0usize;
        while self.remaining() > 0 {
            let Some(index) = self.first_deleted_from(from).await? else {
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
            let id = self.expected[index];
            self.spend()?;
            match self.source.fetch_user(id).await {
                Ok(Presence::Gone) => {
                    tracing::info!(
                        nexudus_id = id,
                        "deleted from Nexudus (found by the position search, confirmed by a look-up)"
                    );
                    self.found.gone.push(id);
                }
                Ok(presence) => {
                    return Err(format!(
                        "the search pointed at Nexudus user {id}, who is still there ({presence:?}): \
                         the listing may not be ordered by Id"
                    ));
                }
                Err(e) => return Err(format!("could not look up Nexudus user {id}: {e}")),
            }
            from = index + 1;
        }
        Ok(())
    }

    /// The index of the first roster Id at or after `from` that Nexudus no longer holds, knowing
    /// that the ones found so far (all before `from`) are gone; `None` when every one still sits
    /// where it should. The search runs to its end whatever `TotalItems` says meanwhile: a user
    /// created during it would cancel a deletion out in the count.
    async fn first_deleted_from(&mut self, from: usize) -> Result<Option<usize>, String> {
        let n = self.expected.len();
        // The answer lies in [low, high]; `n` stands for "nobody".
        let (mut low, mut high) = (from, n);
        while low < high {
            let mid = low + (high - low) / 2;
            if self.in_place(mid).await? {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        Ok((low < n).then_some(low))
    }

    /// Whether the roster's `index`-th Id is where it should be: at its index less the users
    /// found gone before it (one request).
    async fn in_place(&mut self, index: usize) -> Result<bool, String> {
        let position = index - self.found.gone.len() + 1;
        let position = u32::try_from(position)
            .map_err(|_| format!("position {position} is beyond what a page number can say"))?;
        self.spend()?;
        let at = self
            .source
            .id_at(position)
            .await
            .map_err(|e| format!("could not read position {position} of the listing: {e}"))?;
        if let Some(total) = at.total_items {
            self.total = total;
        }
        Ok(at.id == Some(self.expected[index]))
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
    use crate::nexudus::{AtPosition, SourceError, SourcePage};
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    /// Nexudus holding `ids`, listed in Id order (or reversed), counting requests.
    struct Held {
        ids: Mutex<BTreeSet<u64>>,
        reversed: bool,
        /// Created (with a higher Id) when the first step is read.
        created_on_first_step: Mutex<Option<u64>>,
        /// Added to the `TotalItems` reported.
        total_skew: i64,
        requests: Mutex<u64>,
    }

    impl Held {
        fn new(ids: impl IntoIterator<Item = u64>) -> Held {
            Held {
                ids: Mutex::new(ids.into_iter().collect()),
                reversed: false,
                created_on_first_step: Mutex::new(None),
                total_skew: 0,
                requests: Mutex::new(0),
            }
        }
    }

    impl Source for Held {
        async fn fetch_page(&self, _: u32, _: Option<&str>) -> Result<SourcePage, SourceError> {
            unreachable!("the search never lists")
        }
        async fn fetch_user(&self, id: u64) -> Result<Presence, SourceError> {
            *self.requests.lock().unwrap() += 1;
            Ok(if self.ids.lock().unwrap().contains(&id) {
                Presence::Active
            } else {
                Presence::Gone
            })
        }
        async fn id_at(&self, position: u32) -> Result<AtPosition, SourceError> {
            *self.requests.lock().unwrap() += 1;
            if let Some(id) = self.created_on_first_step.lock().unwrap().take() {
                self.ids.lock().unwrap().insert(id);
            }
            let ids = self.ids.lock().unwrap();
            let index = position as usize - 1;
            let id = if self.reversed {
                ids.iter().rev().nth(index)
            } else {
                ids.iter().nth(index)
            };
            Ok(AtPosition {
                id: id.copied(),
                total_items: Some((ids.len() as i64 + self.total_skew) as u64),
            })
        }
    }

    fn roster(n: u64) -> Vec<u64> {
        (0..n).map(|i| 1_000_000_000 + 7 * i).collect()
    }

    #[tokio::test]
    async fn finds_each_deleted_user_in_logarithmic_requests() {
        let expected = roster(100_000);
        for deleted in [
            vec![expected[0]],
            vec![expected[99_999]],
            vec![expected[31_337]],
            vec![expected[5], expected[6], expected[70_000]],
        ] {
            let held = Held::new(expected.iter().copied().filter(|id| !deleted.contains(id)));
            let total = expected.len() as u64 - deleted.len() as u64;
            let found = search(&held, &expected, total, 100).await;
            assert_eq!(found.gone, deleted);
            assert_eq!(found.unexplained, None);
            let budget = deleted.len() as u64 * cost_per_deletion(expected.len());
            assert!(found.requests <= budget, "{} > {budget}", found.requests);
            assert_eq!(found.requests, *held.requests.lock().unwrap());
        }
    }

    #[tokio::test]
    async fn a_creation_the_probe_missed_is_settled_without_a_look_up() {
        // The roster counts a user the probe was read too early to count: nobody is gone.
        let expected = roster(1000);
        let held = Held::new(expected.iter().copied());
        let found = search(&held, &expected, 999, 100).await;
        assert_eq!(found.gone, Vec::<u64>::new());
        assert_eq!(found.unexplained, None);
        assert!(
            found.requests < cost_per_deletion(expected.len()),
            "{}",
            found.requests
        );
    }

    #[tokio::test]
    async fn users_created_during_the_search_move_nothing() {
        let expected = roster(1000);
        let held = Held::new(expected.iter().copied().filter(|&id| id != expected[400]));
        *held.created_on_first_step.lock().unwrap() = Some(2_000_000_000);
        let found = search(&held, &expected, 999, 100).await;
        // TotalItems is back to 1000 after the first step, the creation cancelling the deletion
        // out: the search still runs to the deleted user. The created one is left to the next
        // incremental listing.
        assert_eq!(found.gone, vec![expected[400]]);
        assert_eq!(found.unexplained, None);
    }

    #[tokio::test]
    async fn an_order_not_by_id_is_caught_by_the_look_up_and_disables_nobody() {
        let expected = roster(1000);
        let mut held = Held::new(expected.iter().copied().filter(|&id| id != expected[10]));
        held.reversed = true;
        let found = search(&held, &expected, 999, 100).await;
        assert!(found.gone.is_empty());
        assert!(found.unexplained.unwrap().contains("still there"));
    }

    #[tokio::test]
    async fn a_difference_no_position_explains_or_a_spent_budget_is_unexplained() {
        // Two missing by the count, but every user in place (the count is off).
        let expected = roster(1000);
        let mut held = Held::new(expected.iter().copied());
        held.total_skew = -2;
        let found = search(&held, &expected, 998, 100).await;
        assert!(found.gone.is_empty());
        assert!(found.unexplained.unwrap().contains("yet 2 are missing"));

        let held = Held::new(expected.iter().copied().skip(3));
        let found = search(&held, &expected, 997, 12).await;
        assert_eq!(found.requests, 12);
        assert!(found.unexplained.unwrap().contains("spent its 12 requests"));
    }

    #[test]
    fn searching_pays_only_when_cheaper_than_the_pages() {
        assert_eq!(cost_per_deletion(100_000), 18);
        assert!(worth_searching(5, 100_000, 1000));
        assert!(!worth_searching(6, 100_000, 1000));
        assert!(worth_searching(1, 20_000, 1000));
        assert!(!worth_searching(1, 1000, 1000));
        assert!(!worth_searching(1, 10, 1000));
    }
}
