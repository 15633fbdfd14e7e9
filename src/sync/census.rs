//! The listing census: the one judge of whether a Nexudus listing was complete.
//!
//! Only a complete listing may tell who is gone, so every sign that it was not is noted here, the
//! first one giving the reason: `TotalItems` missing or changing, a short page (fewer records than
//! `CurrentPageSize`, else the size asked for) while more pages followed, a listing running past
//! its page bound, an Id listed twice (pages shifted), a record without a usable Id, a listing
//! that stopped before its last page, and distinct Ids that do not add up to `TotalItems`.
//! Failures and interruptions end the run before a verdict is asked for ([`super::listing`]).

use std::collections::HashSet;

use crate::mapper::SourceUser;
use crate::nexudus::{InvalidRecord, SourcePage};

/// Pages the listing may run past what `TotalItems` announced before it is declared inconsistent.
const PAGE_SLACK: u64 = 2;

/// Pages a listing may run when it never announced `TotalItems` (then it is incomplete anyway):
/// a bound, so a listing that says `HasNextPage` forever cannot keep a run alive forever.
pub(crate) const MAX_PAGES_WITHOUT_TOTAL: u64 = 10_000;

/// The page after which a listing that still says `HasNextPage` has run too long.
fn page_limit(total_items: Option<u64>, served: u64) -> u64 {
    total_items.map_or(MAX_PAGES_WITHOUT_TOTAL, |t| {
        t.div_ceil(served.max(1)) + PAGE_SLACK
    })
}

/// The size Nexudus says it served a page with (`CurrentPageSize`), else the size asked for.
fn served_size(page: &SourcePage, asked: u64) -> u64 {
    page.page_size.filter(|&s| s > 0).unwrap_or(asked)
}

/// Where a listing stands after a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// More pages follow.
    More,
    /// The page said none follows.
    Last,
    /// The page said more follow, but the listing reached its bound (what `TotalItems`
    /// announced, plus slack; or [`MAX_PAGES_WITHOUT_TOTAL`]): read no further.
    Bound,
}

/// Where a listing ends: the one rule, used by the census and by the listing read whole.
#[derive(Debug)]
pub struct End {
    /// The page size asked for.
    page_size: u64,
    pages: u64,
    /// `TotalItems` as first announced.
    first_total: Option<u64>,
}

impl End {
    pub fn new(page_size: u64) -> End {
        End {
            page_size,
            pages: 0,
            first_total: None,
        }
    }

    /// Counts `page` and says whether the listing goes on.
    pub fn after(&mut self, page: &SourcePage) -> Step {
        self.pages += 1;
        self.first_total = self.first_total.or(page.total_items);
        if !page.has_next_page {
            return Step::Last;
        }
        let limit = page_limit(self.first_total, served_size(page, self.page_size));
        if self.pages >= limit {
            Step::Bound
        } else {
            Step::More
        }
    }
}

/// What the census concluded about a whole listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every page read, each Id once, as many as `TotalItems`: it can tell who is gone.
    Complete,
    /// Why nobody may be judged gone from this listing.
    Incomplete(String),
}

impl Verdict {
    pub fn into_reason(self) -> Option<String> {
        match self {
            Verdict::Complete => None,
            Verdict::Incomplete(reason) => Some(reason),
        }
    }
}

/// Pages and records in, one verdict out.
#[derive(Debug)]
pub struct Census {
    /// The page size asked for.
    page_size: u64,
    /// `TotalItems` as first announced.
    total_items: Option<u64>,
    pages: u64,
    end: End,
    /// Every Id listed, in scope or not (duplicates; the look-ups before disabling skip them).
    seen: HashSet<u64>,
    /// The first reason found, if any.
    incomplete: Option<String>,
    /// The last page read said no page follows.
    finished: bool,
    /// The last page read was at the page bound and said more follow.
    bounded: bool,
}

impl Census {
    pub fn new(page_size: u64) -> Census {
        Census {
            page_size,
            total_items: None,
            pages: 0,
            end: End::new(page_size),
            seen: HashSet::new(),
            incomplete: None,
            finished: false,
            bounded: false,
        }
    }

    /// Notes a page before its records are read.
    pub fn page(&mut self, page: &SourcePage) {
        self.pages += 1;
        let pages = self.pages;
        match (self.total_items, page.total_items) {
            (_, None) => self.note(|| "the listing did not report TotalItems".into()),
            (None, Some(t)) => self.total_items = Some(t),
            (Some(a), Some(b)) if a != b => {
                self.note(|| format!("TotalItems changed during the listing ({a} -> {b})"));
            }
            _ => {}
        }
        // A page shorter than the size Nexudus says it served while more pages follow: records
        // went missing between pages.
        let served = served_size(page, self.page_size);
        if page.has_next_page && (page.records.len() as u64) < served {
            let held = page.records.len();
            self.note(|| format!("page {pages} held {held} records but more pages followed"));
        }
        let step = self.end.after(page);
        if step == Step::Bound {
            self.note(|| format!("the listing ran past {pages} pages, beyond what it announced"));
        }
        self.finished = step == Step::Last;
        self.bounded = step == Step::Bound;
    }

    /// Whether no further page is to be read: the last one said so, or the bound is reached.
    pub fn over(&self) -> bool {
        self.finished || self.bounded
    }

    /// Notes one record; `false` when it is to be skipped (a user already listed: the first
    /// listing is kept). A record that could not be decoded is always kept (it is reported).
    pub fn record(&mut self, record: &Result<SourceUser, InvalidRecord>) -> bool {
        match record {
            Err(bad) => {
                match bad.id {
                    Some(id) => {
                        if !self.seen.insert(id) {
                            self.note(|| listed_twice(id));
                        }
                    }
                    None => self.note(|| "a record without a usable Id was listed".into()),
                }
                true
            }
            Ok(user) if !self.seen.insert(user.id) => {
                // Pages shifted under the listing (users added or removed meanwhile): someone
                // else may have been skipped, so nobody can be judged gone from it.
                tracing::warn!(
                    nexudus_id = user.id,
                    "listed twice; keeping the first and treating the listing as incomplete"
                );
                self.note(|| listed_twice(user.id));
                false
            }
            Ok(_) => true,
        }
    }

    /// A cut-off decided outside the page checks (the adoption pre-read's bound on users).
    pub fn cut_off(&mut self, reason: String) {
        self.note(|| reason);
    }

    /// `TotalItems` as the listing first announced it.
    pub fn total_items(&self) -> Option<u64> {
        self.total_items
    }

    /// The verdict on the whole listing, and every Id it listed.
    pub fn verdict(mut self) -> (Verdict, HashSet<u64>) {
        if !self.finished {
            self.note(|| "the listing stopped before its last page".into());
        }
        if self.incomplete.is_none()
            && let Some(total) = self.total_items
            && self.seen.len() as u64 != total
        {
            let distinct = self.seen.len();
            self.note(|| format!("{distinct} distinct users listed but TotalItems is {total}"));
        }
        let verdict = match self.incomplete {
            None => Verdict::Complete,
            Some(reason) => Verdict::Incomplete(reason),
        };
        (verdict, self.seen)
    }

    /// Keeps the first reason: it is the one that explains the others.
    fn note(&mut self, reason: impl FnOnce() -> String) {
        self.incomplete.get_or_insert_with(reason);
    }
}

fn listed_twice(id: u64) -> String {
    format!("Nexudus user {id} was listed twice (pages shifted during the listing)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nexudus::InvalidRecord;

    fn user(id: u64) -> Result<SourceUser, InvalidRecord> {
        Ok(SourceUser {
            id,
            ..SourceUser::default()
        })
    }

    fn page(ids: &[u64], total: Option<u64>, more: bool) -> SourcePage {
        SourcePage {
            records: ids.iter().map(|&id| user(id)).collect(),
            total_items: total,
            has_next_page: more,
            page_size: Some(2),
        }
    }

    /// Feeds pages through the census as the run does and returns the verdict.
    fn judge(pages: &[SourcePage]) -> Verdict {
        let mut census = Census::new(2);
        for p in pages {
            assert!(!census.over(), "no page is read after the last one");
            census.page(p);
            for r in &p.records {
                census.record(r);
            }
        }
        census.verdict().0
    }

    fn reason(v: Verdict) -> String {
        v.into_reason().expect("incomplete")
    }

    #[test]
    fn every_page_each_id_once_as_announced_is_complete() {
        let v = judge(&[
            page(&[1, 2], Some(5), true),
            page(&[3, 4], Some(5), true),
            page(&[5], Some(5), false),
        ]);
        assert_eq!(v, Verdict::Complete);
        assert_eq!(judge(&[page(&[], Some(0), false)]), Verdict::Complete);
    }

    #[test]
    fn missing_or_changing_total_items_is_incomplete() {
        let v = judge(&[page(&[1, 2], Some(3), true), page(&[3], None, false)]);
        assert_eq!(reason(v), "the listing did not report TotalItems");
        let v = judge(&[page(&[1, 2], Some(3), true), page(&[3], Some(4), false)]);
        assert_eq!(reason(v), "TotalItems changed during the listing (3 -> 4)");
    }

    #[test]
    fn a_short_page_followed_by_more_is_incomplete() {
        let v = judge(&[page(&[1], Some(3), true), page(&[3], Some(3), false)]);
        assert_eq!(reason(v), "page 1 held 1 records but more pages followed");
        // CurrentPageSize, not the size asked for, says what a full page is.
        let mut served = page(&[1], Some(2), true);
        served.page_size = Some(1);
        let v = judge(&[served, page(&[2], Some(2), false)]);
        assert_eq!(v, Verdict::Complete);
    }

    #[test]
    fn distinct_ids_must_add_up_to_total_items() {
        let v = judge(&[page(&[1, 2], Some(3), false)]);
        assert_eq!(reason(v), "2 distinct users listed but TotalItems is 3");
    }

    #[test]
    fn a_user_listed_twice_is_skipped_and_makes_the_listing_incomplete() {
        let mut census = Census::new(2);
        census.page(&page(&[1, 1], Some(1), false));
        assert!(census.record(&user(1)));
        assert!(!census.record(&user(1)), "the first listing is kept");
        let (v, ids) = census.verdict();
        assert_eq!(
            reason(v),
            "Nexudus user 1 was listed twice (pages shifted during the listing)"
        );
        assert_eq!(ids, HashSet::from([1]));
    }

    #[test]
    fn undecodable_records_are_kept_and_one_without_id_makes_it_incomplete() {
        let bad = |id| {
            Err(InvalidRecord {
                id,
                updated_on: None,
                reason: crate::mapper::InvalidReason::EmailMissing,
            })
        };
        let mut census = Census::new(2);
        census.page(&page(&[], Some(1), false));
        assert!(census.record(&bad(Some(7))));
        assert_eq!(census.verdict().0, Verdict::Complete);
        let mut census = Census::new(2);
        census.page(&page(&[], Some(1), false));
        assert!(census.record(&bad(None)));
        assert_eq!(
            reason(census.verdict().0),
            "a record without a usable Id was listed"
        );
    }

    #[test]
    fn a_listing_past_its_page_bound_is_over_and_incomplete() {
        // 4 users in pages of 2: 2 pages, plus 2 of slack.
        let mut census = Census::new(2);
        for n in 1..=4u64 {
            assert!(!census.over());
            census.page(&page(&[2 * n, 2 * n + 1], Some(4), true));
        }
        assert!(census.over());
        assert_eq!(
            reason(census.verdict().0),
            "the listing ran past 4 pages, beyond what it announced"
        );
        assert_eq!(page_limit(None, 100), MAX_PAGES_WITHOUT_TOTAL);
    }

    #[test]
    fn where_a_listing_ends_is_one_rule() {
        let mut end = End::new(2);
        let steps: Vec<Step> = (1..=4u64)
            .map(|n| end.after(&page(&[2 * n, 2 * n + 1], Some(4), true)))
            .collect();
        assert_eq!(steps, [Step::More, Step::More, Step::More, Step::Bound]);
        assert_eq!(End::new(2).after(&page(&[1], Some(4), false)), Step::Last);
        // CurrentPageSize rules over the size asked for: 4 users served 1 a page.
        let mut end = End::new(2);
        let mut served_one = page(&[1], Some(4), true);
        served_one.page_size = Some(1);
        let bound = (1..=10).position(|_| end.after(&served_one) == Step::Bound);
        assert_eq!(bound, Some(5));
    }

    #[test]
    fn a_listing_that_stopped_early_is_incomplete_and_the_first_reason_wins() {
        let v = judge(&[page(&[1, 2], Some(4), true)]);
        assert_eq!(reason(v), "the listing stopped before its last page");
        let mut census = Census::new(2);
        census.cut_off("cut".into());
        census.page(&page(&[1, 2], None, false));
        assert_eq!(reason(census.verdict().0), "cut");
    }
}
