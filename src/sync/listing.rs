//! The listing: Nexudus pages fetched in a task of their own, up to two pages ahead of the page
//! being planned and written, handed out one by one through the [`Census`] until the last page,
//! the page bound, a failure or a shutdown.
//!
//! With adoption on, the listing is first read whole ([`Listing::read_whole`]): Nexudus users
//! sharing an email must be known before anything is written.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::census::{Census, End, Step};
use crate::nexudus::{Source, SourceError, SourcePage};

/// Users one listing may hold before it is cut off when it is read whole before the first write:
/// a bound on memory, far above any coworking account.
const MAX_LISTED_USERS: usize = 2_000_000;

/// What the listing task hands over.
pub enum Fetched {
    Page(SourcePage),
    Failed(SourceError),
}

/// How the listing ended.
pub enum Ending {
    /// A shutdown came first (while waiting for a page, or a write).
    Interrupted,
    /// Nexudus failed: nothing may be judged from the listing.
    Failed(SourceError),
    /// The listing is over; the census judges it.
    Listed(Census),
}

pub struct Listing {
    rx: mpsc::Receiver<Fetched>,
    cancel: CancellationToken,
    census: Census,
    interrupted: bool,
    failure: Option<SourceError>,
    /// Dropping the run (fatal error) stops the listing task too.
    _task: AbortOnDrop,
}

impl Listing {
    /// Starts fetching, from page 1 (with `since`: only users changed since then).
    pub fn start<S: Source>(
        source: Arc<S>,
        since: Option<String>,
        page_size: u64,
        cancel: CancellationToken,
    ) -> Listing {
        let (tx, rx) = mpsc::channel::<Fetched>(2);
        let task = tokio::spawn(
            async move {
                let mut page = 1u32;
                loop {
                    match source.fetch_page(page, since.as_deref()).await {
                        Ok(p) => {
                            let more = p.has_next_page;
                            if tx.send(Fetched::Page(p)).await.is_err() || !more {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Fetched::Failed(e)).await;
                            return;
                        }
                    }
                    page += 1;
                }
            }
            .in_current_span(),
        );
        Listing {
            rx,
            cancel,
            census: Census::new(page_size),
            interrupted: false,
            failure: None,
            _task: AbortOnDrop(task),
        }
    }

    /// Reads the listing whole (up to the page bound, and a bound on users, so a listing that
    /// never ends cannot exhaust memory), to be replayed by [`Listing::next_page`]. Returns what
    /// was read, for a look at the whole before anything is written. A shutdown stops the reading;
    /// the replay then reports it.
    pub async fn read_whole(&mut self, page_size: u64) -> Vec<Fetched> {
        let mut buffered = Vec::new();
        let (mut end, mut users) = (End::new(page_size), 0usize);
        loop {
            let msg = tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                msg = self.rx.recv() => msg,
            };
            let Some(msg) = msg else { break };
            let mut stop = false;
            if let Fetched::Page(page) = &msg {
                users += page.records.len();
                stop = end.after(page) == Step::Bound;
                if page.has_next_page && users >= MAX_LISTED_USERS {
                    self.census.cut_off(format!(
                        "the listing went past {MAX_LISTED_USERS} users and was cut off there"
                    ));
                    stop = true;
                }
            }
            buffered.push(msg);
            if stop {
                break;
            }
        }
        buffered
    }

    /// Replays what [`Listing::read_whole`] read (and nothing after it).
    pub fn replay(&mut self, buffered: Vec<Fetched>) {
        let (tx, rx) = mpsc::channel(buffered.len().max(1));
        for msg in buffered {
            let _ = tx.try_send(msg);
        }
        self.rx = rx;
    }

    /// The next page, noted by the census; `None` when the listing is over, failed or a shutdown
    /// came first.
    pub async fn next_page(&mut self) -> Option<SourcePage> {
        if self.census.over() {
            return None;
        }
        let msg = tokio::select! {
            biased;
            () = self.cancel.cancelled() => {
                self.interrupted = true;
                return None;
            }
            msg = self.rx.recv() => msg?,
        };
        match msg {
            Fetched::Page(page) => {
                self.census.page(&page);
                Some(page)
            }
            Fetched::Failed(e) => {
                self.failure = Some(e);
                None
            }
        }
    }

    /// The census of the records, one at a time (`false`: skip this one, see [`Census::record`]).
    pub fn census(&mut self) -> &mut Census {
        &mut self.census
    }

    /// A shutdown stopped the run between pages' records (while a write waited).
    pub fn interrupt(&mut self) {
        self.interrupted = true;
    }

    /// How the listing ended. The listing task lives on until the `Listing` is dropped (at the
    /// end of the run), as it always has.
    pub fn end(&mut self) -> Ending {
        if self.interrupted {
            Ending::Interrupted
        } else if let Some(e) = self.failure.take() {
            Ending::Failed(e)
        } else {
            Ending::Listed(std::mem::replace(&mut self.census, Census::new(0)))
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
