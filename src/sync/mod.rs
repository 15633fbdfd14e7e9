//! `run_once`: one sync, the pipeline wired together. Shared by `--sync-now`, `--demo` and the daemon.
//!
//! The stages, in the order a run meets them (each owns its state, in a file of its own):
//! - `listing`: Nexudus pages, fetched ahead while the current one is planned and written;
//!   its `census` alone judges whether the listing was complete, with one verdict and a reason;
//! - `planner`: one record in, at most one operation out (scope, mapping, shared emails, the
//!   plan from the checkpoint or, in a reconcile, from nevisIDM's real state in `remote`);
//! - the [`Dispatcher`]: creates, updates and explicit deactivations (`Active` false) go out at
//!   once, bounded, each checkpointed when confirmed;
//! - `settlement`: once the listing is over, who vanished and who is archived, under the
//!   deletion safety and the look-ups before disabling — every "remove access" rule; a disable
//!   decided but not confirmed stays `owed` and is decided again by every later run;
//! - `commit`: what the run records as true (watermark, stale failures, missing counts, flush);
//! - `roster`: who Nexudus held at the last full listing and who appeared since; an incremental
//!   run reads `TotalItems` first (one request, a page of size 1) and, when it differs from what
//!   the roster expects (someone was deleted), its `pinpoint` searches the listing's positions
//!   for who (`log2(pages)` + 2 requests each, every one confirmed by a look-up) before the
//!   settlement; what the search cannot account for is listed in full in the same run.
//!
//! A shutdown is heard in every phase by one rule (`stop`): the phase's future is dropped, with
//! whatever it waits on; writes already sent get `sync.shutdown_grace` (`commit`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::audit::Recorder;
use crate::audit::values::Redact;
use crate::config::{AdoptMode, Config, LoginIdSource};
use crate::directory::{Directory, SharedDirectory};
use crate::dispatch::{AdoptRules, DispatchError, Dispatcher, Op, PlanSink};
use crate::nevis::{Target, TargetError};
use crate::nexudus::{Source, SourceError};
use crate::ownership::Owners;
use crate::progress::Progress;
use crate::report::RunReport;
use crate::roles::{self, Admins, RolesError, RolesRun};
use crate::store::{Store, StoreError};
use crate::watermark;

mod census;
mod commit;
mod listing;
mod owed;
mod pinpoint;
mod planner;
mod roster;
mod settlement;
pub(crate) mod stop;

use commit::Commit;
use listing::{Ending, Listing};
use owed::Owed;
use planner::{Planner, SharedEmails};
use roster::{Probe, ProbeError, Vanished};
use settlement::{Earlier, Settlement};
use stop::{Stopped, until_stopped};

/// Per-run choices made on the command line.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Print the plan through this sink instead of writing anything.
    pub dry_run: Option<PlanSink>,
    /// Let this run exceed the deletion-safety limits.
    pub allow_mass_disable: bool,
    /// List only users changed since the stored watermark (minus the overlap), when there is one.
    /// Disappearances are never decided by such a listing.
    pub incremental: bool,
    /// Cancelled on shutdown: no new work starts, writes in flight get `sync.shutdown_grace` to
    /// finish and be checkpointed, and the run reports itself interrupted.
    pub shutdown: Option<CancellationToken>,
    /// Compare with nevisIDM's real state instead of the checkpoints: repair drift, refresh every
    /// checkpoint (`--reconcile`, and `--rebuild-store` on an emptied store).
    pub reconcile: bool,
    /// Counters of this run for whoever watches it (a terminal line, log lines, `/status`).
    pub progress: Option<Arc<Progress>>,
}

/// Errors that end a run without a trustworthy result (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("Nexudus listing failed: {0}")]
    Source(#[from] SourceError),
    #[error(transparent)]
    Target(#[from] DispatchError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read nevisIDM's users for the reconcile: {0}")]
    Reconcile(TargetError),
    #[error(transparent)]
    Roles(#[from] RolesError),
}

impl From<ProbeError> for SyncError {
    fn from(e: ProbeError) -> Self {
        match e {
            ProbeError::Source(e) => SyncError::Source(e),
            ProbeError::Store(e) => SyncError::Store(e),
        }
    }
}

/// The target and what a run reads of it once, shared by its passes.
struct Nevis<T> {
    target: Arc<T>,
    /// nevisIDM's user listing, read at most once per run (reconcile, adoption, versions).
    directory: SharedDirectory,
}

/// What a pass of the pipeline asks for next.
enum Pass {
    Done,
    /// The deletion probe says someone vanished: list everyone now.
    FullListingDue,
}

impl SyncError {
    /// The store failed (disk full, read-only, damaged): the operator must look at store.path.
    pub fn is_store(&self) -> bool {
        matches!(
            self,
            SyncError::Store(_)
                | SyncError::Target(DispatchError::Store(_))
                | SyncError::Source(SourceError::TokenStore(_))
                | SyncError::Roles(RolesError::Store(_))
        )
    }
}

/// Runs one sync and reports what happened. Fatal problems are `Err`; everything else, including
/// failed and invalid users, is in the report.
pub async fn run_once<S: Source, T: Target>(
    cfg: &Config,
    source: Arc<S>,
    target: Arc<T>,
    store: &Store,
    opts: &RunOptions,
) -> Result<RunReport, SyncError> {
    let run_id = new_run_id();
    let span = tracing::info_span!("run", run_id = %run_id);
    let mut report = RunReport::new(run_id, opts.dry_run.is_some());
    let started = Instant::now();
    let nevis = Nevis {
        target,
        directory: SharedDirectory::default(),
    };
    let mut admins = Admins::new(cfg.roles.as_ref());
    let mut result = run(
        cfg,
        Arc::clone(&source),
        &nevis,
        store,
        opts,
        &mut report,
        &mut admins,
    )
    .instrument(span.clone())
    .await;
    if let Ok(Pass::FullListingDue) = result {
        let full = RunOptions {
            incremental: false,
            ..opts.clone()
        };
        report.begin_full_pass();
        result = run(
            cfg,
            Arc::clone(&source),
            &nevis,
            store,
            &full,
            &mut report,
            &mut admins,
        )
        .instrument(span.clone())
        .await;
    }
    let result = match result {
        Ok(_) if !report.interrupted => {
            roles_stage(cfg, &*source, &nevis, store, opts, &mut report, admins)
                .instrument(span.clone())
                .await
        }
        other => other.map(|_| ()),
    };
    report.duration = started.elapsed();
    let _enter = span.enter();
    match &result {
        Ok(()) => tracing::info!(
            summary = %report.summary_line(),
            planning_s = report.planning.as_secs_f64(),
            "run finished"
        ),
        Err(e) => {
            tracing::error!(error = %e, "run failed");
            report.fatal = Some(e.to_string());
        }
    }
    if opts.dry_run.is_none() {
        let saved = serde_json::to_vec(&report)
            .map_err(|e| StoreError::Io(e.to_string()))
            .and_then(|json| store.set_last_run(&json));
        if let Err(e) = saved {
            tracing::warn!(error = %e, "cannot record the run report");
        }
        match crate::audit::prune(&cfg.audit, store) {
            Ok(pruned) if pruned.total() == 0 => {}
            Ok(pruned) => tracing::info!(
                aged = pruned.aged,
                within_retention = pruned.young,
                "provisioning-log entries past audit.retention or audit.max_entries pruned"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot prune the provisioning log"),
        }
    }
    result.map(|()| report)
}

/// What every stage of one pass reads.
struct Ctx<'a, S, T> {
    cfg: &'a Config,
    source: &'a Arc<S>,
    nevis: &'a Nevis<T>,
    store: &'a Store,
    opts: &'a RunOptions,
    cancel: CancellationToken,
    commit: Commit<'a>,
}

/// The stages of one pass over the listing, each owning its state.
struct Stages<'a, T: Target> {
    listing: Listing,
    planner: Planner<'a>,
    settlement: Settlement<'a>,
    dispatcher: Dispatcher<T>,
}

/// What a pass found out before its listing: where the listing starts, the deletion probe,
/// nevisIDM's state for a reconcile, and who owns which extId.
struct Start {
    /// The provisioning log of this pass (its mode is known once the probe has spoken).
    log: Recorder,
    since: Option<String>,
    remote: Option<Arc<Directory>>,
    owners: Option<Arc<Owners>>,
    known_before: u64,
}

/// The pipeline: the listing feeds the planner, the planner feeds the dispatcher; once the
/// listing is over, the settlement decides what disappeared and whether the deletion safety
/// holds, and the commit records what is true. An incremental pass reads the deletion probe
/// first and may ask for a full pass after it.
async fn run<S: Source, T: Target>(
    cfg: &Config,
    source: Arc<S>,
    nevis: &Nevis<T>,
    store: &Store,
    opts: &RunOptions,
    report: &mut RunReport,
    admins: &mut Admins,
) -> Result<Pass, SyncError> {
    let ctx = Ctx {
        cfg,
        source: &source,
        nevis,
        store,
        opts,
        cancel: opts.shutdown.clone().unwrap_or_default(),
        commit: Commit::new(store, opts),
    };
    let Some((start, probe)) = ctx.start(report).await? else {
        return stopped(&ctx.commit, report).await;
    };
    let mut stages = ctx.stages(&start).await?;
    if let Err(e) = stream(&ctx, &mut stages, admins, report).await {
        let _ = stages.dispatcher.finish(report).await;
        return Err(e);
    }
    let Stages {
        mut listing,
        settlement,
        mut dispatcher,
        ..
    } = stages;
    let census = match listing.end() {
        Ending::Interrupted => return ctx.stopped_writing(dispatcher, report).await,
        Ending::Failed(e) => {
            ctx.commit.after_failure(&mut dispatcher, report).await?;
            return Err(e.into());
        }
        Ending::Listed(census) => census,
    };
    let pass = (probe, census);
    ctx.settle(&start, pass, settlement, dispatcher, report)
        .await
}

impl<'a, S: Source, T: Target> Ctx<'a, S, T> {
    /// The deletion probe and nevisIDM's state for a reconcile, each heard by a stop (`None`).
    async fn start(
        &self,
        report: &mut RunReport,
    ) -> Result<Option<(Start, Option<Probe>)>, SyncError> {
        let known_before = self.store.len() as u64;
        let probed = probed_since(self.cfg, &**self.source, self.store, self.opts);
        let Ok(probed) = until_stopped(&self.cancel, probed).await else {
            return Ok(None);
        };
        let (since, probe) = probed?;
        report.incremental = since.is_some();
        report.reconcile = self.opts.reconcile;
        let remote = nevis_state(self.nevis, self.opts.reconcile, known_before);
        let Ok(remote) = until_stopped(&self.cancel, remote).await else {
            return Ok(None);
        };
        let remote = remote?;
        let owners = owners(self.cfg, self.store, self.opts)?;
        let start = Start {
            log: provisioning_log(self.cfg, self.store, self.opts, report)?,
            since,
            remote,
            owners,
            known_before,
        };
        Ok(Some((start, probe)))
    }

    /// The listing started and the stages that consume it. With adoption on, Nexudus users
    /// sharing an email must be known before anything is written (adopting one nevisIDM user
    /// for the wrong person is the worst outcome): the listing is read whole first, then
    /// replayed. Costs memory in proportion to the listing; adoption only (otherwise pages
    /// stream into writes).
    async fn stages<'s>(&self, start: &'s Start) -> Result<Stages<'s, T>, SyncError>
    where
        'a: 's,
    {
        let (cfg, store, opts) = (self.cfg, self.store, self.opts);
        let page_size = u64::from(cfg.nexudus.page_size);
        self.source.begin_run(start.since.is_none()).await;
        let source = Arc::clone(self.source);
        let since = start.since.clone();
        let mut listing = Listing::start(source, since, page_size, self.cancel.clone());
        let owners = start.owners.clone();
        let mut planner =
            Planner::new(cfg, store, opts, start.remote.as_deref())?.with_audit(start.log.clone());
        if cfg.sync.adopt == AdoptMode::Email {
            let buffered = listing.read_whole(page_size).await;
            planner.set_shared_emails(SharedEmails::of(&buffered, cfg));
            listing.replay(buffered);
        }
        Ok(Stages {
            listing,
            planner,
            settlement: Settlement::new(cfg, store, opts, start.known_before),
            dispatcher: dispatcher(cfg, self.nevis, store, opts, owners)
                .with_audit(start.log.clone())
                .with_redaction(redaction(cfg, store, opts)?),
        })
    }

    /// Once the listing is over: who vanished (the deletion search, the settlement and its
    /// look-ups), the removals, and what the pass records as true.
    async fn settle(
        &self,
        start: &Start,
        (probe, census): (Option<Probe>, census::Census),
        settlement: Settlement<'_>,
        mut dispatcher: Dispatcher<T>,
        report: &mut RunReport,
    ) -> Result<Pass, SyncError> {
        let total_items = census.total_items();
        let (verdict, listed) = census.verdict();
        let full = probe.is_none();
        let vanished = match probe {
            Some(probe) => {
                let search = search_page_size(self.cfg);
                let dry_run = self.opts.dry_run.is_some();
                let source = &**self.source;
                let judged = probe.judge_after(source, &listed, self.store, dry_run, search);
                let Ok(judged) = until_stopped(&self.cancel, judged).await else {
                    return self.stopped_writing(dispatcher, report).await;
                };
                judged?
            }
            None => Vanished {
                owed: Owed::load(self.store)?,
                ..Vanished::default()
            },
        };
        let earlier = if full {
            Earlier::Full(&vanished.owed)
        } else {
            Earlier::Incremental {
                owed: &vanished.owed,
                may_list_everyone: vanished.may_list_everyone,
            }
        };
        let remote = start.remote.as_deref().zip(start.owners.as_deref());
        let settled = settlement.settle(&**self.source, remote, verdict, &listed, earlier);
        let Ok(decision) = until_stopped(&self.cancel, settled).await else {
            return self.stopped_writing(dispatcher, report).await;
        };
        let mut decision = decision?;
        let (complete, missing, owed) = (
            decision.incomplete.is_none(),
            std::mem::take(&mut decision.missing),
            std::mem::take(&mut decision.owed),
        );
        let full_listing_due = vanished.full_listing_due || decision.full_listing_due;
        let removals = decision.record(report, &start.log)?;
        let Ok(written) = write_out(&mut dispatcher, removals, report, &self.cancel).await else {
            return self.stopped_writing(dispatcher, report).await;
        };
        written?;
        // Only now is the listing's account of who Nexudus holds true of nevisIDM too: an
        // interrupted run leaves the roster as it was, so its undone disables are found again.
        let full = full.then_some((total_items, &listed, complete));
        self.record_roster(full, owed, &vanished.owed)?;
        self.commit
            .after_listing(report, settlement.kept(), &missing)
            .await?;
        Ok(if full_listing_due {
            Pass::FullListingDue
        } else {
            Pass::Done
        })
    }

    /// Once a pass's writes are over: who is still owed a disable (those whose disable was not
    /// confirmed: held, refused), when it changed from `before`, and after a full listing
    /// (`(TotalItems, every Id listed, complete)`) the roster the next incremental runs compare
    /// their probe with. A dry run records nothing.
    fn record_roster(
        &self,
        full: Option<(Option<u64>, &HashSet<u64>, bool)>,
        owed: Owed,
        before: &Owed,
    ) -> Result<(), StoreError> {
        if self.opts.dry_run.is_some() {
            return Ok(());
        }
        let owed = owed.still_owed(self.store)?;
        // The owed first: a crash before the roster is saved leaves them owed and still expected
        // (found again), never forgotten by the roster without being owed.
        if owed != *before {
            owed.save(self.store)?;
        }
        match full {
            Some((total_items, listed, complete)) => {
                roster::record_full_listing(self.store, total_items, listed, complete)
            }
            None => Ok(()),
        }
    }

    /// A stop while writes may be in flight: they get `sync.shutdown_grace`.
    async fn stopped_writing(
        &self,
        dispatcher: Dispatcher<T>,
        report: &mut RunReport,
    ) -> Result<Pass, SyncError> {
        stopped_writing(&self.commit, dispatcher, self.cfg, report).await
    }
}

/// The listing's pages through the census and the planner into the dispatcher. A record that
/// says `Active` false is an explicit instruction from the source and goes out at once, like any
/// change: access must not outlive its revocation. A stop while a write waits for a slot
/// interrupts the listing.
async fn stream<S: Source, T: Target>(
    ctx: &Ctx<'_, S, T>,
    stages: &mut Stages<'_, T>,
    admins: &mut Admins,
    report: &mut RunReport,
) -> Result<(), SyncError> {
    while let Some(page) = stages.listing.next_page().await {
        if let Some(progress) = &ctx.opts.progress {
            progress.listed(page.records.len() as u64);
            if let Some(total) = page.total_items {
                progress.set_total(total);
            }
        }
        for record in page.records {
            if !stages.listing.census().record(&record) {
                continue;
            }
            admins.note(&record);
            let planning = Instant::now();
            let planned = stages.planner.plan(record, report)?;
            stages.settlement.keep(planned.kept);
            report.planning += planning.elapsed();
            let Some(op) = planned.op else { continue };
            let dispatcher = &mut stages.dispatcher;
            if !submit_unless_cancelled(dispatcher, op, report, &ctx.cancel).await? {
                stages.listing.interrupt();
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The role stage (`[[roles.map]]`, issue 21), once the users' own writes are confirmed: a user
/// must exist before their profile gets a role. A shutdown drops its reads at once and gives its
/// writes in flight `sync.shutdown_grace`, as the users' own writes get (`roles::Shutdown`).
/// Without a map: nothing, no request.
async fn roles_stage<S: Source, T: Target>(
    cfg: &Config,
    source: &S,
    nevis: &Nevis<T>,
    store: &Store,
    opts: &RunOptions,
    report: &mut RunReport,
    admins: Admins,
) -> Result<(), SyncError> {
    if cfg.roles.is_none() {
        return Ok(());
    }
    let cancel = opts.shutdown.clone().unwrap_or_default();
    let run = RolesRun {
        full_listing: !report.incremental,
        listing_complete: report.listing_complete,
        reconcile: opts.reconcile,
        allow_mass_revoke: opts.allow_mass_disable,
        dry_run: opts.dry_run.as_ref(),
        overlap: cfg.sync.incremental_overlap,
        admins,
        log: provisioning_log(cfg, store, opts, report)?,
        shutdown: roles::Shutdown {
            cancel,
            grace: cfg.sync.shutdown_grace,
        },
    };
    match roles::sync_roles(cfg, source, nevis.target.roles(), store, run, report).await? {
        Ok(()) => Ok(()),
        Err(Stopped) => {
            tracing::warn!("the role stage stops here, interrupted by a shutdown");
            report.interrupted = true;
            Ok(())
        }
    }
}

/// The provisioning log of a run in its mode; a dry run writes none.
fn provisioning_log(
    cfg: &Config,
    store: &Store,
    opts: &RunOptions,
    report: &RunReport,
) -> Result<Recorder, StoreError> {
    match opts.dry_run {
        Some(_) => Ok(Recorder::off()),
        None => Recorder::start(&cfg.audit, store, &report.run_id, report.mode()),
    }
}

/// How the run's own words show a value nevisIDM did not take: as `audit.values` says. A dry run
/// writes nothing (and so makes no hashing key in the store).
fn redaction(cfg: &Config, store: &Store, opts: &RunOptions) -> Result<Redact, StoreError> {
    match opts.dry_run {
        Some(_) => Ok(Redact::None),
        None => Redact::new(cfg.audit.values, store),
    }
}

/// Where the listing starts, and the deletion probe of an incremental one (read before it). An
/// incremental run without a roster to compare the probe with lists everyone instead.
async fn probed_since<S: Source>(
    cfg: &Config,
    source: &S,
    store: &Store,
    opts: &RunOptions,
) -> Result<(Option<String>, Option<Probe>), SyncError> {
    let Some(since) = listing_since(cfg, store, opts)? else {
        return Ok((None, None));
    };
    Ok(match Probe::take(source, store).await? {
        Some(probe) => (Some(since), Some(probe)),
        None => (None, None),
    })
}

/// The page size whose full listing a search for deleted users must undercut; `None` when users
/// must be missing from several complete listings before they are disabled (a search is no
/// listing, so it cannot count them).
fn search_page_size(cfg: &Config) -> Option<u64> {
    (cfg.sync.missing_runs_before_disable == 1).then_some(u64::from(cfg.nexudus.page_size))
}

/// With `--incremental` and a stored watermark: list only users changed since then (minus the
/// overlap).
fn listing_since(
    cfg: &Config,
    store: &Store,
    opts: &RunOptions,
) -> Result<Option<String>, StoreError> {
    let since = if opts.incremental {
        store
            .watermark()?
            .and_then(|mark| watermark::minus(&mark, cfg.sync.incremental_overlap))
    } else {
        None
    };
    if let Some(since) = &since {
        tracing::info!(from_updated_on = %since, "incremental listing");
    }
    Ok(since)
}

/// nevisIDM's real state for a reconcile (the run's shared read of its listing); `None` for an
/// ordinary run, which trusts its checkpoints.
async fn nevis_state<T: Target>(
    nevis: &Nevis<T>,
    reconcile: bool,
    known_before: u64,
) -> Result<Option<Arc<Directory>>, SyncError> {
    if !reconcile {
        if known_before == 0 {
            tracing::info!(
                "the store holds no checkpoints: a first import (if the store was lost, \
                 --sync-now --rebuild-store rebuilds it without rewriting correct users)"
            );
        }
        return Ok(None);
    }
    let remote = nevis
        .directory
        .get(&*nevis.target)
        .await
        .map_err(|e| match e {
            e if e.is_fatal() => SyncError::Target(DispatchError::Auth(e)),
            e => SyncError::Reconcile(e),
        })?;
    tracing::info!(
        users = remote.users.len(),
        "reconcile: read nevisIDM's users"
    );
    Ok(Some(remote))
}

/// Who owns each extId, read before any write when the run needs it: adoption (never adopt
/// another user's account) and the reconcile (disable only owned users).
fn owners(
    cfg: &Config,
    store: &Store,
    opts: &RunOptions,
) -> Result<Option<Arc<Owners>>, StoreError> {
    if !opts.reconcile && cfg.sync.adopt != AdoptMode::Email {
        return Ok(None);
    }
    Owners::read(store, &cfg.mapping.ext_id_prefix).map(|o| Some(Arc::new(o)))
}

fn dispatcher<T: Target>(
    cfg: &Config,
    nevis: &Nevis<T>,
    store: &Store,
    opts: &RunOptions,
    owners: Option<Arc<Owners>>,
) -> Dispatcher<T> {
    let dispatcher = Dispatcher::new(
        Arc::clone(&nevis.target),
        store.clone(),
        cfg.sync.concurrency,
        opts.dry_run.clone(),
    )
    .with_progress(opts.progress.clone())
    .with_directory(nevis.directory.clone());
    match owners {
        Some(owners) if cfg.sync.adopt == AdoptMode::Email => dispatcher.with_adoption(
            AdoptRules::new(owners, cfg.mapping.login_id == LoginIdSource::ExtId),
        ),
        _ => dispatcher,
    }
}

/// Submits `op` unless a shutdown comes first; `Ok(false)` means the shutdown won.
async fn submit_unless_cancelled<T: Target>(
    dispatcher: &mut Dispatcher<T>,
    op: Op,
    report: &mut RunReport,
    cancel: &CancellationToken,
) -> Result<bool, DispatchError> {
    match until_stopped(cancel, dispatcher.submit(op, report)).await {
        Ok(submitted) => submitted.map(|()| true),
        Err(Stopped) => Ok(false),
    }
}

/// Sends the settlement's `removals`, then waits for every write of the run to be confirmed,
/// unless a shutdown comes first (`Err(Stopped)`: the writes in flight are then the commit's).
async fn write_out<T: Target>(
    dispatcher: &mut Dispatcher<T>,
    removals: Vec<Op>,
    report: &mut RunReport,
    cancel: &CancellationToken,
) -> Result<Result<(), DispatchError>, Stopped> {
    for op in removals {
        match submit_unless_cancelled(dispatcher, op, report, cancel).await {
            Ok(true) => {}
            Ok(false) => return Err(Stopped),
            Err(e) => {
                let _ = dispatcher.finish(report).await;
                return Ok(Err(e));
            }
        }
    }
    until_stopped(cancel, dispatcher.finish(report)).await
}

/// A shutdown before anything was written: the run records itself interrupted.
async fn stopped(commit: &Commit<'_>, report: &mut RunReport) -> Result<Pass, SyncError> {
    commit.interrupted(report).await?;
    Ok(Pass::Done)
}

/// A shutdown once writes may be in flight: they get `sync.shutdown_grace` to be confirmed and
/// checkpointed, then the run records itself interrupted.
async fn stopped_writing<T: Target>(
    commit: &Commit<'_>,
    dispatcher: Dispatcher<T>,
    cfg: &Config,
    report: &mut RunReport,
) -> Result<Pass, SyncError> {
    let grace = cfg.sync.shutdown_grace;
    commit.after_shutdown(dispatcher, grace, report).await?;
    Ok(Pass::Done)
}

fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:012x}", (nanos as u64) & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    //! The pipeline against in-memory source and target (no sockets); the HTTP paths are covered
    //! by the integration tests against the sandbox fakes.
    use super::census::MAX_PAGES_WITHOUT_TOTAL;
    use super::*;
    use crate::config::testing::config;
    use crate::diff::Changes;
    use crate::mapper::UserState;
    use crate::mapper::{DesiredUser, SourceUser};
    use crate::nevis::{PageCursor, TargetError};
    use crate::nexudus::SourcePage;
    use crate::nexudus::{PageIds, Presence};
    use serde_json::Value;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// Small pages and a tight deletion safety, over the crate's test config.
    const SETTINGS: &str =
        "[nexudus]\npage_size = 2\n[sync]\nmax_disables = 3\nmax_disable_percent = 50";

    struct MemSource {
        users: Mutex<Vec<SourceUser>>,
        total_skew: Mutex<i64>,
    }

    impl MemSource {
        fn new(n: u64) -> Arc<Self> {
            let users = (1..=n)
                .map(|id| SourceUser {
                    id,
                    full_name: Some(format!("User Number{id}")),
                    email: Some(format!("user{id}@example.com")),
                    language: Some(1),
                    active: true,
                    is_admin: id % 2 == 0,
                    ..SourceUser::default()
                })
                .collect();
            Arc::new(MemSource {
                users: Mutex::new(users),
                total_skew: Mutex::new(0),
            })
        }
        fn edit(&self, f: impl FnOnce(&mut Vec<SourceUser>)) {
            f(&mut self.users.lock().unwrap())
        }
    }

    impl Source for MemSource {
        async fn fetch_page(
            &self,
            page: u32,
            _since: Option<&str>,
        ) -> Result<SourcePage, SourceError> {
            let users = self.users.lock().unwrap().clone();
            let size = 2usize;
            let start = (page as usize - 1) * size;
            let records = users
                .iter()
                .skip(start)
                .take(size)
                .cloned()
                .map(Ok)
                .collect();
            Ok(SourcePage {
                records,
                total_items: Some((users.len() as i64 + *self.total_skew.lock().unwrap()) as u64),
                has_next_page: start + size < users.len(),
                page_size: Some(size as u64),
            })
        }

        async fn fetch_user(&self, id: u64) -> Result<Presence, SourceError> {
            let users = self.users.lock().unwrap();
            Ok(match users.iter().find(|u| u.id == id) {
                None => Presence::Gone,
                Some(u) if u.active => Presence::Active,
                Some(_) => Presence::Inactive,
            })
        }

        async fn ids_at(&self, page: u32, size: u32) -> Result<PageIds, SourceError> {
            let users = self.users.lock().unwrap();
            let mut ids: Vec<u64> = users.iter().map(|u| u.id).collect();
            ids.sort_unstable();
            let start = (page as usize - 1) * size as usize;
            Ok(PageIds {
                ids: ids
                    .iter()
                    .skip(start)
                    .take(size as usize)
                    .map(|&id| Some(id))
                    .collect(),
                total_items: Some((ids.len() as i64 + *self.total_skew.lock().unwrap()) as u64),
            })
        }
    }

    #[derive(Default)]
    struct MemTarget {
        users: Mutex<BTreeMap<String, DesiredUser>>,
        writes: Mutex<Vec<(String, String)>>,
        reject: Mutex<Option<String>>,
    }

    impl Target for MemTarget {
        async fn create(&self, user: &DesiredUser) -> Result<(), TargetError> {
            if self.reject.lock().unwrap().as_deref() == Some(user.ext_id.as_str()) {
                return Err(TargetError::Rejected {
                    status: 422,
                    code: "errors.invalidData".into(),
                    message: "nope".into(),
                });
            }
            self.writes
                .lock()
                .unwrap()
                .push(("create".into(), user.ext_id.clone()));
            self.users
                .lock()
                .unwrap()
                .insert(user.ext_id.clone(), user.clone());
            Ok(())
        }
        async fn update(
            &self,
            ext_id: &str,
            changes: &Changes,
            _version: Option<i64>,
        ) -> Result<Option<Value>, TargetError> {
            self.writes
                .lock()
                .unwrap()
                .push(("update".into(), ext_id.into()));
            let mut users = self.users.lock().unwrap();
            let user = users.get_mut(ext_id).ok_or(TargetError::NotFound)?;
            *user = changes.apply_to(user);
            Ok(None)
        }
        async fn get(&self, ext_id: &str) -> Result<Option<Value>, TargetError> {
            Ok(self.users.lock().unwrap().get(ext_id).map(nevis_json))
        }
        async fn list_page(
            &self,
            filters: &[(&str, &str)],
            limit: u32,
            cursor: &PageCursor,
        ) -> Result<crate::nevis::UserPage, TargetError> {
            let offset: usize = match cursor {
                PageCursor::Start => 0,
                PageCursor::Token(t) => t.parse().unwrap(),
                PageCursor::Offset(o) => usize::try_from(*o).unwrap(),
            };
            let all: Vec<Value> = self
                .users
                .lock()
                .unwrap()
                .values()
                .map(nevis_json)
                .filter(|u| {
                    filters.iter().all(|(k, v)| {
                        let ptr = format!("/{}", k.replace('.', "/"));
                        u.pointer(&ptr)
                            .and_then(Value::as_str)
                            .is_some_and(|have| have.eq_ignore_ascii_case(v))
                    })
                })
                .collect();
            let end = (offset + limit as usize).min(all.len());
            Ok(crate::nevis::UserPage {
                items: all[offset..end].to_vec(),
                continuation: (end < all.len()).then(|| end.to_string()),
                total: Some(all.len() as u64),
            })
        }
        async fn archive(&self, ext_id: &str) -> Result<(), TargetError> {
            self.writes
                .lock()
                .unwrap()
                .push(("archive".into(), ext_id.into()));
            let mut users = self.users.lock().unwrap();
            let user = users.get_mut(ext_id).ok_or(TargetError::NotFound)?;
            user.state = UserState::Archived;
            Ok(())
        }
    }

    async fn run(
        source: &Arc<MemSource>,
        target: &Arc<MemTarget>,
        store: &Store,
        allow: bool,
    ) -> RunReport {
        run_with(source, target, store, allow, "").await
    }

    async fn run_with(
        source: &Arc<MemSource>,
        target: &Arc<MemTarget>,
        store: &Store,
        allow: bool,
        extra: &str,
    ) -> RunReport {
        let cfg = config(&[SETTINGS, extra]);
        let opts = RunOptions {
            dry_run: None,
            allow_mass_disable: allow,
            incremental: false,
            shutdown: None,
            reconcile: extra.contains("# reconcile"),
            progress: None,
        };
        run_once(&cfg, Arc::clone(source), Arc::clone(target), store, &opts)
            .await
            .unwrap()
    }

    fn nevis_json(user: &DesiredUser) -> Value {
        crate::diff::create_body(user)
    }

    /// A source of `n` users, an empty target and an empty store.
    fn fresh(n: u64) -> (Arc<MemSource>, Arc<MemTarget>, Store) {
        (
            MemSource::new(n),
            Arc::new(MemTarget::default()),
            Store::temporary().unwrap(),
        )
    }

    fn state(target: &MemTarget, ext_id: &str) -> &'static str {
        target.users.lock().unwrap()[ext_id].state.as_str()
    }

    #[tokio::test]
    async fn import_then_rerun_writes_nothing() {
        let (source, target, store) = fresh(5);
        let r = run(&source, &target, &store, false).await;
        assert_eq!((r.counts().created, r.exit_code()), (5, 0));
        let r = run(&source, &target, &store, false).await;
        assert_eq!(
            (
                r.counts().unchanged,
                r.counts().created + r.counts().updated
            ),
            (5, 0)
        );
        assert_eq!(target.writes.lock().unwrap().len(), 5);
    }

    #[tokio::test]
    async fn progress_counts_what_the_run_listed_and_wrote() {
        let (source, target, store) = fresh(5);
        let counters = crate::progress::Progress::new();
        let opts = RunOptions {
            progress: Some(Arc::clone(&counters)),
            ..RunOptions::default()
        };
        let cfg = config(&[SETTINGS]);
        let r = run_once(
            &cfg,
            Arc::clone(&source),
            Arc::clone(&target),
            &store,
            &opts,
        )
        .await
        .unwrap();
        assert_eq!(r.counts().created, 5);
        let now = counters.snapshot();
        assert_eq!(
            (
                now.listed,
                now.total,
                now.written,
                now.in_flight,
                now.failed
            ),
            (5, Some(5), 5, 0, 0)
        );
    }

    #[tokio::test]
    async fn disappeared_user_is_disabled_and_comes_back_active() {
        let (source, target, store) = fresh(5);
        run(&source, &target, &store, false).await;
        let gone = source.users.lock().unwrap()[2].clone();
        source.edit(|u| u.retain(|x| x.id != 3));
        let r = run(&source, &target, &store, false).await;
        assert_eq!((r.counts().disabled, r.exit_code()), (1, 0));
        assert_eq!(state(&target, "nexudus-3"), "disabled");
        source.edit(|u| u.push(gone));
        let r = run(&source, &target, &store, false).await;
        assert_eq!(r.counts().updated, 1);
        assert_eq!(state(&target, "nexudus-3"), "active");
    }

    #[tokio::test]
    async fn mass_disable_is_held_unless_allowed() {
        let (source, target, store) = fresh(10);
        run(&source, &target, &store, false).await;
        source.edit(|u| u.truncate(6)); // 4 gone > max_disables = 3
        let r = run(&source, &target, &store, false).await;
        assert_eq!(
            (r.counts().disabled, r.counts().held_disables, r.exit_code()),
            (0, 4, 1)
        );
        assert_eq!(state(&target, "nexudus-10"), "active");
        let r = run(&source, &target, &store, true).await;
        assert_eq!(
            (r.counts().disabled, r.counts().held_disables, r.exit_code()),
            (4, 0, 0)
        );
    }

    #[tokio::test]
    async fn explicit_deactivations_are_applied_at_once_whatever_their_number() {
        let (source, target, store) = fresh(4);
        run(&source, &target, &store, false).await;
        source.edit(|u| u.iter_mut().take(3).for_each(|x| x.active = false)); // 75% > 50%
        let r = run(&source, &target, &store, false).await;
        assert_eq!(
            (r.counts().disabled, r.counts().held_disables, r.exit_code()),
            (3, 0, 0)
        );
        assert_eq!(state(&target, "nexudus-1"), "disabled");
    }

    #[tokio::test]
    async fn inconsistent_total_disables_nobody() {
        let (source, target, store) = fresh(5);
        run(&source, &target, &store, false).await;
        source.edit(|u| u.retain(|x| x.id != 2));
        *source.total_skew.lock().unwrap() = 1; // claims 5 while listing 4
        let r = run(&source, &target, &store, false).await;
        assert!(!r.listing_complete);
        assert_eq!((r.counts().disabled, r.exit_code()), (0, 1));
        assert_eq!(state(&target, "nexudus-2"), "active");
    }

    #[tokio::test]
    async fn rejected_user_is_reported_and_retried_after_its_wait() {
        let (source, target, store) = fresh(3);
        let clock = crate::clock::Clock::manual(1_000_000);
        let store = store.with_clock(clock.clone());
        *target.reject.lock().unwrap() = Some("nexudus-2".into());
        let r = run(&source, &target, &store, false).await;
        assert_eq!(
            (r.counts().created, r.counts().failed, r.exit_code()),
            (2, 1, 1)
        );
        assert!(
            r.failures()[0].reason.contains("errors.invalidData"),
            "{:?}",
            r.failures()
        );
        assert!(
            store.get(2).unwrap().is_none(),
            "no checkpoint for a refused write"
        );
        *target.reject.lock().unwrap() = None;
        // The same values are not sent again before their next try: still failing, and saying
        // when that is.
        let r = run(&source, &target, &store, false).await;
        assert_eq!((r.counts().created, r.counts().failed), (0, 1));
        assert!(
            r.failures()[0].reason.contains("next try at"),
            "{:?}",
            r.failures()
        );
        clock.advance(crate::refusal::FIRST_WAIT);
        let r = run(&source, &target, &store, false).await;
        assert_eq!(
            (r.counts().created, r.counts().unchanged, r.exit_code()),
            (1, 2, 0)
        );
    }

    #[tokio::test]
    async fn scope_limits_who_is_created_and_leaving_it_disables_under_the_safety() {
        let (source, target, store) = fresh(6);
        // Even Ids are admins in MemSource.
        let r = run_with(
            &source,
            &target,
            &store,
            false,
            "[scope]\nadmins = \"exclude\"\nexclude_ids = [5]",
        )
        .await;
        assert_eq!(
            (r.counts().created, r.exit_code()),
            (2, 0),
            "only users 1 and 3"
        );
        let r = run_with(
            &source,
            &target,
            &store,
            false,
            "[scope]\nadmins = \"include\"",
        )
        .await;
        assert_eq!(r.counts().created, 4);
        // Narrowing the scope to one domain takes 5 users out: held by the safety first.
        source.edit(|u| u[0].email = Some("keep@kept.example".into()));
        let narrow = "[scope]\nemail_domains = [\"KEPT.example\"]";
        let r = run_with(&source, &target, &store, false, narrow).await;
        assert_eq!(
            (
                r.counts().disabled,
                r.counts().held_disables,
                r.counts().updated
            ),
            (0, 5, 1),
            "the email change still goes out"
        );
        let r = run_with(&source, &target, &store, true, narrow).await;
        assert_eq!((r.counts().disabled, r.exit_code()), (5, 0));
        assert_eq!(state(&target, "nexudus-1"), "active");
        assert_eq!(state(&target, "nexudus-2"), "disabled");
    }

    #[tokio::test]
    async fn vanished_user_is_disabled_only_after_the_configured_missing_runs() {
        let (source, target, store) = fresh(5);
        let twice = "[sync]\nmissing_runs_before_disable = 2";
        run_with(&source, &target, &store, false, twice).await;
        let gone = source.users.lock().unwrap()[2].clone();
        source.edit(|u| u.retain(|x| x.id != 3));
        let r = run_with(&source, &target, &store, false, twice).await;
        assert_eq!(
            (r.counts().disabled, r.exit_code()),
            (0, 0),
            "first miss only counts"
        );
        // Back in between: the count starts over.
        source.edit(|u| u.push(gone));
        run_with(&source, &target, &store, false, twice).await;
        source.edit(|u| u.retain(|x| x.id != 3));
        let r = run_with(&source, &target, &store, false, twice).await;
        assert_eq!(r.counts().disabled, 0);
        let r = run_with(&source, &target, &store, false, twice).await;
        assert_eq!(r.counts().disabled, 1);
        assert_eq!(state(&target, "nexudus-3"), "disabled");
    }

    #[tokio::test]
    async fn users_disabled_longer_than_archive_after_are_archived_once() {
        let (source, target, store) = fresh(5);
        // The age is reached by moving the store's clock, not by waiting.
        let clock = crate::clock::Clock::manual(1_700_000_000);
        let store = store.with_clock(clock.clone());
        let second = std::time::Duration::from_secs(1);
        let archive = "[sync]\narchive_after = \"1s\"";
        run_with(&source, &target, &store, false, archive).await;
        source.edit(|u| u.retain(|x| x.id != 3));
        source.edit(|u| u[0].active = false); // user 1
        let r = run_with(&source, &target, &store, false, archive).await;
        assert_eq!(
            (r.counts().disabled, r.counts().archived),
            (2, 0),
            "not yet: just disabled"
        );
        clock.advance(second);
        let r = run_with(&source, &target, &store, false, archive).await;
        assert_eq!((r.counts().archived, r.exit_code()), (2, 0));
        assert_eq!(state(&target, "nexudus-3"), "archived");
        assert_eq!(state(&target, "nexudus-1"), "archived");
        let r = run_with(&source, &target, &store, false, archive).await;
        assert_eq!(
            (r.counts().archived, r.counts().updated, r.counts().disabled),
            (0, 0, 0),
            "archived once, then left alone"
        );
        // Also once the period has passed again: an archived user's clock is not restarted,
        // neither by an ordinary run nor by a reconcile.
        assert_eq!(store.get(1).unwrap().unwrap().state, UserState::Archived);
        let reconcile = format!("{archive}\n# reconcile");
        let r = run_with(&source, &target, &store, false, &reconcile).await;
        assert_eq!(
            (r.counts().archived, r.counts().updated, r.counts().disabled),
            (0, 0, 0)
        );
        assert_eq!(store.get(1).unwrap().unwrap().state, UserState::Archived);
        clock.advance(second);
        let r = run_with(&source, &target, &store, false, archive).await;
        assert_eq!(
            (r.counts().archived, r.counts().updated, r.counts().disabled),
            (0, 0, 0),
            "never archived twice"
        );
        let archives =
            |w: &Vec<(String, String)>| w.iter().filter(|(op, _)| op == "archive").count();
        assert_eq!(archives(&target.writes.lock().unwrap()), 2);
        // Without archive_after nothing is ever archived.
        source.edit(|u| u[1].active = false);
        run(&source, &target, &store, false).await;
        clock.advance(second);
        let r = run(&source, &target, &store, false).await;
        assert_eq!(r.counts().archived, 0);
    }

    #[tokio::test]
    async fn mapping_changes_update_only_affected_users_and_keep_ext_ids() {
        let (source, target, store) = fresh(4);
        run(&source, &target, &store, false).await;
        // A new prefix and a new language default touch nobody whose mapped value is unchanged.
        source.edit(|u| u[0].language = Some(9));
        let r = run_with(
            &source,
            &target,
            &store,
            false,
            "[mapping]\next_id_prefix = \"nx-\"\ndefault_language = \"de\"",
        )
        .await;
        assert_eq!(
            (r.counts().updated, r.counts().created, r.counts().unchanged),
            (1, 0, 3)
        );
        assert_eq!(
            target.users.lock().unwrap()["nexudus-1"].language_code,
            "de"
        );
        // New users get the new prefix.
        source.edit(|u| {
            u.push(SourceUser {
                id: 77,
                ..u[1].clone()
            })
        });
        source.edit(|u| u[4].email = Some("new@example.com".into()));
        let r = run_with(
            &source,
            &target,
            &store,
            false,
            "[mapping]\next_id_prefix = \"nx-\"\ndefault_language = \"de\"",
        )
        .await;
        assert_eq!(
            (r.counts().created, r.counts().updated, r.counts().unchanged),
            (1, 0, 4)
        );
        assert!(target.users.lock().unwrap().contains_key("nx-77"));
        // Splitting names the other way updates exactly the users whose names change.
        let r = run_with(&source, &target, &store, false, "[mapping]\next_id_prefix = \"nx-\"\ndefault_language = \"de\"\nname_split = \"first_word\"").await;
        assert_eq!((r.counts().updated, r.counts().created), (5, 0));
    }

    /// Says "more pages" forever, announcing this TotalItems (or none).
    struct EndlessSource(Option<u64>);

    impl Source for EndlessSource {
        async fn fetch_page(
            &self,
            page: u32,
            _since: Option<&str>,
        ) -> Result<SourcePage, SourceError> {
            let records = (0..2u64)
                .map(|i| {
                    Ok(SourceUser {
                        id: u64::from(page) * 2 + i,
                        full_name: Some("Endless User".into()),
                        email: Some(format!("e{page}-{i}@example.com")),
                        active: true,
                        ..SourceUser::default()
                    })
                })
                .collect();
            Ok(SourcePage {
                records,
                total_items: self.0,
                has_next_page: true,
                page_size: Some(2),
            })
        }

        async fn fetch_user(&self, _id: u64) -> Result<Presence, SourceError> {
            Ok(Presence::Active)
        }

        async fn ids_at(&self, _: u32, _: u32) -> Result<PageIds, SourceError> {
            unreachable!("a full listing searches nobody")
        }
    }

    #[tokio::test]
    async fn a_listing_that_never_ends_is_cut_off_and_disables_nobody() {
        // Streaming, and with adoption (where the listing is read whole before writing); with
        // TotalItems 6 the bound is 3 pages and 2 of slack.
        for (adopt, total, created) in [
            ("", None, 2 * MAX_PAGES_WITHOUT_TOTAL),
            ("", Some(6), 10),
            ("adopt = \"email\"\n", Some(6), 10),
        ] {
            let cfg = config(&[SETTINGS, &format!("[sync]\n{adopt}")]);
            let (target, store) = (Arc::new(MemTarget::default()), Store::temporary().unwrap());
            let opts = RunOptions::default();
            let r = run_once(
                &cfg,
                Arc::new(EndlessSource(total)),
                Arc::clone(&target),
                &store,
                &opts,
            )
            .await
            .unwrap();
            assert!(!r.listing_complete, "{adopt}");
            assert_eq!(r.counts().created, created, "{adopt}");
            assert_eq!((r.counts().disabled, r.exit_code()), (0, 1), "{adopt}");
        }
    }

    #[tokio::test]
    async fn invalid_records_are_reported_and_not_disabled() {
        let (source, target, store) = fresh(4);
        run(&source, &target, &store, false).await;
        source.edit(|u| u[1].email = Some("broken".into()));
        let r = run(&source, &target, &store, false).await;
        assert_eq!(
            (r.counts().invalid, r.counts().disabled, r.exit_code()),
            (1, 0, 1)
        );
        assert_eq!(r.invalid_records()[0].nexudus_id, Some(2));
        assert_eq!(state(&target, "nexudus-2"), "active");
    }

    const RECONCILE: &str = "# reconcile\n";

    fn edit_target(target: &MemTarget, ext_id: &str, f: impl FnOnce(&mut DesiredUser)) {
        f(target.users.lock().unwrap().get_mut(ext_id).unwrap())
    }

    fn writes(target: &MemTarget) -> usize {
        target.writes.lock().unwrap().len()
    }

    #[tokio::test]
    async fn reconcile_sets_back_hand_edits_that_checkpoints_cannot_see() {
        let (source, target, store) = fresh(4);
        run(&source, &target, &store, false).await;
        edit_target(&target, "nexudus-2", |u| u.family_name = "Edited".into());
        // An ordinary run trusts its checkpoints: nothing to do.
        let r = run(&source, &target, &store, false).await;
        assert_eq!(r.counts().updated, 0);
        let r = run_with(&source, &target, &store, false, RECONCILE).await;
        assert_eq!(
            (
                r.counts().drift,
                r.counts().updated,
                r.counts().unchanged,
                r.exit_code()
            ),
            (1, 1, 3, 0)
        );
        assert_eq!(
            target.users.lock().unwrap()["nexudus-2"].family_name,
            "Number2"
        );
    }

    #[tokio::test]
    async fn hand_disabled_user_is_reported_and_left_disabled_by_every_later_run() {
        let (source, target, store) = fresh(4);
        run(&source, &target, &store, false).await;
        edit_target(&target, "nexudus-3", |u| u.state = UserState::Disabled);
        let before = writes(&target);
        let r = run_with(&source, &target, &store, false, RECONCILE).await;
        assert_eq!((r.counts().hand_disabled, r.counts().updated), (1, 0));
        assert_eq!(r.hand_disabled_users(), vec!["nexudus-3".to_string()]);
        assert_eq!(state(&target, "nexudus-3"), "disabled");
        // Ordinary runs do not undo it through the checkpoint either.
        let r = run(&source, &target, &store, false).await;
        assert_eq!((r.counts().updated, r.exit_code()), (0, 0));
        assert_eq!(writes(&target), before);
        assert_eq!(state(&target, "nexudus-3"), "disabled");
        // Opting in re-enables it.
        let r = run_with(
            &source,
            &target,
            &store,
            false,
            "[sync]\nreenable_on_reconcile = true\n# reconcile",
        )
        .await;
        assert_eq!((r.counts().updated, r.counts().hand_disabled), (1, 0));
        assert_eq!(state(&target, "nexudus-3"), "active");
        let r = run(&source, &target, &store, false).await;
        assert_eq!(r.counts().updated + r.counts().disabled, 0);
    }

    #[tokio::test]
    async fn rebuild_from_nevis_writes_nothing_for_correct_users() {
        let (source, target, _) = fresh(5);
        let store = Store::temporary().unwrap();
        run(&source, &target, &store, false).await;
        edit_target(&target, "nexudus-4", |u| u.first_name = "Wrong".into());
        let before = writes(&target);
        let rebuilt = Store::temporary().unwrap();
        let r = run_with(&source, &target, &rebuilt, false, RECONCILE).await;
        assert_eq!(
            (r.counts().unchanged, r.counts().updated, r.counts().created),
            (4, 1, 0)
        );
        assert_eq!(writes(&target), before + 1);
        assert_eq!(rebuilt.len(), 5);
        let r = run(&source, &target, &rebuilt, false).await;
        assert_eq!((r.counts().unchanged, writes(&target)), (5, before + 1));
    }

    #[tokio::test]
    async fn reconcile_disables_owned_active_users_missing_from_nexudus_only() {
        let (source, target, store) = fresh(6);
        run(&source, &target, &store, false).await;
        let mut stranger = target.users.lock().unwrap()["nexudus-1"].clone();
        stranger.ext_id = "hr-42".into();
        target
            .users
            .lock()
            .unwrap()
            .insert("hr-42".into(), stranger);
        let mut orphan = target.users.lock().unwrap()["nexudus-1"].clone();
        orphan.ext_id = "nexudus-99".into();
        target
            .users
            .lock()
            .unwrap()
            .insert("nexudus-99".into(), orphan);
        let r = run_with(
            &source,
            &target,
            &Store::temporary().unwrap(),
            false,
            RECONCILE,
        )
        .await;
        assert_eq!((r.counts().disabled, r.counts().unchanged), (1, 6));
        assert_eq!(state(&target, "nexudus-99"), "disabled");
        assert_eq!(state(&target, "hr-42"), "active", "not ours: never touched");
    }

    #[tokio::test]
    async fn reconcile_refreshes_the_checkpoint_of_a_gone_user_already_disabled_by_hand() {
        let (source, target, store) = fresh(4);
        run(&source, &target, &store, false).await;
        source.edit(|u| u.retain(|x| x.id != 2));
        target
            .users
            .lock()
            .unwrap()
            .get_mut("nexudus-2")
            .unwrap()
            .state = UserState::Disabled;
        let r = run_with(&source, &target, &store, false, RECONCILE).await;
        assert_eq!(
            (r.counts().disabled, r.counts().updated, r.exit_code()),
            (0, 0, 0)
        );
        assert_eq!(store.get(2).unwrap().unwrap().state, UserState::Disabled);
        let writes = target.writes.lock().unwrap().len();
        let r = run(&source, &target, &store, false).await;
        assert_eq!((r.counts().disabled, r.exit_code()), (0, 0));
        assert_eq!(
            target.writes.lock().unwrap().len(),
            writes,
            "no redundant disable"
        );
    }

    fn legacy(target: &MemTarget, ext_id: &str, email: &str) {
        let user = DesiredUser {
            ext_id: ext_id.into(),
            login_id: email.into(),
            first_name: "Old".into(),
            family_name: "Account".into(),
            email: email.into(),
            language_code: "de".into(),
            state: UserState::Active,
            properties: Default::default(),
        };
        target.users.lock().unwrap().insert(ext_id.into(), user);
    }

    const ADOPT: &str = "[sync]\nadopt = \"email\"\n";

    #[tokio::test]
    async fn adopts_a_unique_match_and_keeps_it_linked() {
        let (source, target, store) = fresh(2);
        legacy(&target, "legacy-1", "USER1@example.com");
        let r = run_with(&source, &target, &store, false, ADOPT).await;
        assert_eq!(
            (r.counts().adopted, r.counts().created, r.exit_code()),
            (1, 1, 0)
        );
        assert_eq!(store.link(1).unwrap().as_deref(), Some("legacy-1"));
        let users = target.users.lock().unwrap().clone();
        assert!(!users.contains_key("nexudus-1"));
        assert_eq!(users["legacy-1"].family_name, "Number1");
        // loginIds compare case-insensitively: no write for case alone.
        assert_eq!(users["legacy-1"].login_id, "USER1@example.com");
        drop(users);
        let r = run_with(&source, &target, &store, false, ADOPT).await;
        assert_eq!(
            (r.counts().unchanged, r.counts().adopted, r.exit_code()),
            (2, 0, 0)
        );
        source.edit(|u| u[0].full_name = Some("User Renamed".into()));
        let r = run_with(&source, &target, &store, false, ADOPT).await;
        assert_eq!(r.counts().updated, 1);
        assert_eq!(
            target.users.lock().unwrap()["legacy-1"].family_name,
            "Renamed"
        );
    }

    #[tokio::test]
    async fn ambiguous_or_already_linked_matches_are_conflicts_with_nothing_written() {
        let (source, target, store) = fresh(2);
        legacy(&target, "legacy-a", "user1@example.com");
        legacy(&target, "legacy-b", "someone@else.org");
        edit_target(&target, "legacy-b", |u| {
            u.login_id = "user1@example.com".into()
        });
        // user 2's email belongs to a user this tool created for Nexudus user 7.
        legacy(&target, "nexudus-7", "user2@example.com");
        let before = writes(&target);
        let r = run_with(&source, &target, &store, false, ADOPT).await;
        assert_eq!(
            (
                r.counts().conflicts,
                r.counts().adopted,
                r.counts().created,
                r.exit_code()
            ),
            (2, 0, 0, 1)
        );
        assert_eq!(writes(&target), before);
        let conflicts = r.conflict_records();
        let c1 = conflicts.iter().find(|c| c.nexudus_id == 1).unwrap();
        assert_eq!(c1.candidates, vec!["legacy-a", "legacy-b"]);
        let c2 = conflicts.iter().find(|c| c.nexudus_id == 2).unwrap();
        assert_eq!(c2.candidates, vec!["nexudus-7"]);
        assert!(store.link(1).unwrap().is_none());
    }

    #[tokio::test]
    async fn nexudus_users_sharing_an_email_are_conflicts_before_any_write() {
        let (source, target, store) = fresh(4);
        source.edit(|u| u[3].email = Some("USER1@example.com".into()));
        let r = run_with(&source, &target, &store, false, ADOPT).await;
        assert_eq!(
            (r.counts().conflicts, r.counts().created, r.exit_code()),
            (2, 2, 1)
        );
        let users = target.users.lock().unwrap();
        assert!(!users.contains_key("nexudus-1") && !users.contains_key("nexudus-4"));
    }

    #[tokio::test]
    async fn changing_static_properties_updates_exactly_the_property() {
        let (source, target, store) = fresh(3);
        run(&source, &target, &store, false).await;
        let r = run_with(
            &source,
            &target,
            &store,
            false,
            "[mapping.properties]\nsource = \"nexudus\"\n",
        )
        .await;
        assert_eq!(r.counts().updated, 3);
        assert_eq!(
            target.users.lock().unwrap()["nexudus-1"].properties["source"],
            "nexudus"
        );
        let r = run_with(
            &source,
            &target,
            &store,
            false,
            "[mapping.properties]\nsource = \"nexudus\"\n",
        )
        .await;
        assert_eq!((r.counts().updated, r.counts().unchanged), (0, 3));
        // Dropping the option removes what this tool set.
        let r = run(&source, &target, &store, false).await;
        assert_eq!(r.counts().updated, 3);
        assert!(
            target.users.lock().unwrap()["nexudus-1"]
                .properties
                .is_empty()
        );
    }

    /// What a randomized run does to its users before the run under test.
    #[derive(Debug, Clone)]
    struct Scenario {
        users: u64,
        /// Per user: 0 nothing, 1 renamed, 2 email broken, 3 Active false, 4 deleted, 5 made
        /// an admin (outside the scope when `scope` is set).
        edits: Vec<u8>,
        /// This user's write is refused by nevisIDM in the run under test.
        reject: Option<u64>,
        scope: bool,
        mode: u8,
    }

    fn scenario() -> impl proptest::strategy::Strategy<Value = Scenario> {
        use proptest::prelude::*;
        (1u64..14).prop_flat_map(|users| {
            (
                proptest::collection::vec(0u8..6, users as usize),
                proptest::option::of(1..=users),
                any::<bool>(),
                0u8..3,
            )
                .prop_map(move |(edits, reject, scope, mode)| Scenario {
                    users,
                    edits,
                    reject,
                    scope,
                    mode,
                })
        })
    }

    /// Runs `scenario`: an import, the edits, then one run (full, incremental — which may list
    /// everyone again when the probe sees a deletion — or reconcile).
    async fn account_of(s: &Scenario) -> (RunReport, Vec<u64>, Vec<u64>) {
        let (source, target, store) = fresh(s.users);
        source.edit(|u| {
            for user in u.iter_mut() {
                user.is_admin = false;
                user.updated_on = Some("2025-01-15T10:30:00Z".into());
            }
        });
        let scope = if s.scope {
            "[scope]\nadmins = \"exclude\"\n"
        } else {
            ""
        };
        let cfg = config(&[SETTINGS, "[sync]\nmax_disables = 5", scope]);
        let go = |opts: RunOptions| {
            let (cfg, source, target, store) = (&cfg, &source, &target, &store);
            async move {
                run_once(cfg, Arc::clone(source), Arc::clone(target), store, &opts)
                    .await
                    .unwrap()
            }
        };
        go(RunOptions::default()).await;
        let mut deleted = Vec::new();
        source.edit(|u| {
            for (user, edit) in u.iter_mut().zip(&s.edits) {
                match edit {
                    1 => user.full_name = Some(format!("Renamed Person{}", user.id)),
                    2 => user.email = Some("broken".into()),
                    3 => user.active = false,
                    4 => deleted.push(user.id),
                    5 => user.is_admin = true,
                    _ => {}
                }
            }
            u.retain(|user| !deleted.contains(&user.id));
        });
        *target.reject.lock().unwrap() = s.reject.map(|id| format!("nexudus-{id}"));
        let listed: Vec<u64> = source.users.lock().unwrap().iter().map(|u| u.id).collect();
        let opts = RunOptions {
            incremental: s.mode == 1,
            reconcile: s.mode == 2,
            ..RunOptions::default()
        };
        (go(opts).await, listed, deleted)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Whatever paths a run takes, every user listed has one outcome, a deleted user at
        /// most one (a removal), the counts add up to them, and each problem line is printed
        /// once.
        #[test]
        fn every_user_has_one_outcome_and_the_counts_add_up(s in scenario()) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (r, listed, deleted) = rt.block_on(account_of(&s));
            for id in &listed {
                proptest::prop_assert!(r.outcome(*id).is_some(), "user {id} has no outcome: {s:?}");
            }
            let mut removed = 0;
            for id in &deleted {
                match r.outcome(*id) {
                    None => {}
                    Some(crate::report::Outcome::Disabled | crate::report::Outcome::Held { .. }) => removed += 1,
                    Some(other) => proptest::prop_assert!(false, "deleted user {id}: {other:?}"),
                }
            }
            let c = r.counts();
            proptest::prop_assert_eq!(c.users(), listed.len() as u64 + removed, "{:?} {}", s, r.summary_line());
            let lines = r.problem_lines();
            let unique: std::collections::HashSet<&String> = lines.iter().collect();
            proptest::prop_assert_eq!(unique.len(), lines.len(), "{:?}", lines);
            let starting = |p: &str| lines.iter().filter(|l| l.starts_with(p)).count() as u64;
            proptest::prop_assert_eq!(starting("invalid:"), c.invalid);
            proptest::prop_assert_eq!(starting("failed:"), c.failed);
            proptest::prop_assert_eq!(starting("hand-disabled:"), c.hand_disabled);
        }
    }
}
