//! The role writes of one run: `sync.concurrency` users at a time (each user's own writes in
//! order), and how they end. A stop or a fatal error starts no new user; the writes already sent
//! get `sync.shutdown_grace` to be confirmed, logged and checkpointed, as the users' own writes do
//! (`sync::commit`). What is still unanswered after that is abandoned: logged and reported failed,
//! a grant's pending mark left in its checkpoint for the next run to settle. Nothing sent is
//! dropped unrecorded.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;

use crate::report::{RoleChange, RunReport};
use crate::sync::stop::Stopped;

use super::plan::Holds;
use super::write::{Who, Writer};
use super::{Planned, RolesError};

/// How the role stage hears a stop: the run's shutdown, and the grace its writes in flight get.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    pub cancel: CancellationToken,
    pub grace: Duration,
}

/// A role change of a user, for the report: Nexudus Id, extId, roleExtId, grant (`true`) or
/// revocation, and what it came to.
type Note = (u64, String, String, bool, RoleChange);

/// What the users' role writes came to, noted as each happens rather than when a user's writes
/// end: a user's writes may be dropped when the shutdown grace runs out, and what they did
/// before, and what they had sent, must still reach the report.
#[derive(Debug, Default)]
pub struct Ledger(Mutex<Book>);

#[derive(Debug, Default)]
struct Book {
    notes: Vec<Note>,
    /// The write each user has sent and not yet settled: (extId, roleExtId, grant).
    sent: BTreeMap<u64, (String, String, bool)>,
}

impl Ledger {
    fn book(&self) -> MutexGuard<'_, Book> {
        // Notes are plain data: a panic elsewhere leaves them as usable as before.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `who`'s write of `role` is about to be sent.
    pub fn sending(&self, who: Who<'_>, role: &str, grant: bool) {
        let sent = (who.ext_id.to_string(), role.to_string(), grant);
        self.book().sent.insert(who.id, sent);
    }

    /// `who`'s write (or decision) about `role` came to `change`.
    pub fn done(&self, who: Who<'_>, role: &str, grant: bool, change: RoleChange) {
        let mut book = self.book();
        book.sent.remove(&who.id);
        let note = (
            who.id,
            who.ext_id.to_string(),
            role.to_string(),
            grant,
            change,
        );
        book.notes.push(note);
    }

    /// User `id`'s writes ended (a fatal error included): nothing of theirs is in flight.
    fn ended(&self, id: u64) {
        self.book().sent.remove(&id);
    }

    /// The writes in flight, taken out: (Nexudus Id, extId, roleExtId, grant).
    pub fn abandon(&self) -> Vec<(u64, String, String, bool)> {
        let sent = std::mem::take(&mut self.book().sent);
        sent.into_iter()
            .map(|(id, (ext_id, role, grant))| (id, ext_id, role, grant))
            .collect()
    }

    /// Moves the notes so far into `report`.
    pub fn report_to(&self, report: &mut RunReport) {
        for (id, ext_id, role, grant, change) in std::mem::take(&mut self.book().notes) {
            report.note_role(id, &ext_id, &role, grant, change);
        }
    }
}

/// How the writing ended before the grace.
enum Ending {
    Done,
    Stopped,
    Fatal(RolesError),
}

/// Writes every planned user, the revocations `held` holds back logged as held; `Err(Stopped)`
/// inside when a stop ended it early (the writes in flight then had their grace).
pub async fn write_all(
    writer: &Writer<'_>,
    planned: Vec<Planned>,
    held: &Holds,
    concurrency: usize,
    shutdown: &Shutdown,
) -> Result<Result<(), Stopped>, RolesError> {
    // A dry run one user at a time, so that its plan lines come in the order of the users.
    let concurrency = match writer.dry_run {
        Some(_) => 1,
        None => concurrency.max(1),
    };
    let mut queue = planned.into_iter().peekable();
    let mut running = FuturesUnordered::new();
    let ending = loop {
        if queue.peek().is_none() && running.is_empty() {
            break Ending::Done;
        }
        if shutdown.cancel.is_cancelled() {
            break Ending::Stopped;
        }
        while running.len() < concurrency {
            let Some(user) = queue.next() else { break };
            running.push(one(writer, user, held));
        }
        tokio::select! {
            biased;
            () = shutdown.cancel.cancelled() => break Ending::Stopped,
            Some((id, out)) = running.next() => {
                writer.ledger.ended(id);
                if let Err(e) = out {
                    break Ending::Fatal(e);
                }
            }
        }
    };
    if !matches!(ending, Ending::Done) && !running.is_empty() {
        tracing::warn!(
            users = running.len(),
            "the role stage stops: finishing the role writes in flight"
        );
        let drained = tokio::time::timeout(shutdown.grace, async {
            while let Some((id, out)) = running.next().await {
                writer.ledger.ended(id);
                if let Err(e) = out {
                    tracing::error!(error = %e, "a role write in flight failed too");
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(grace = ?shutdown.grace, "shutdown grace over: abandoning unconfirmed role writes");
            drop(running);
            writer.abandoned()?;
        }
    }
    if writer.dry_run.is_none() {
        writer.store.flush().await.map_err(RolesError::Store)?;
    }
    match ending {
        Ending::Done => Ok(Ok(())),
        Ending::Stopped => Ok(Err(Stopped)),
        Ending::Fatal(e) => Err(e),
    }
}

/// One user's writes; answers their Id with the outcome, for the ledger.
async fn one(
    writer: &Writer<'_>,
    (id, ext_id, mut holding, plan): Planned,
    held: &Holds,
) -> (u64, Result<(), RolesError>) {
    let who = Who {
        id,
        ext_id: &ext_id,
    };
    (id, writer.apply(who, &mut holding, &plan, held).await)
}
