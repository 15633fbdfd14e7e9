//! Roles (issue 21): what a person may do in nevisIDM follows their UserRoles in Nexudus.
//!
//! The sync owns exactly the roleExtIds on the right-hand side of `[[roles.map]]`: it grants the
//! owned roles a user's UserRoles imply and they lack, revokes the owned roles no longer implied,
//! and never touches any other role (hand grants, the profile policy's defaults). Without a map
//! this module is never entered: no request to either API.
//!
//! The stage runs after the users' own writes (a user must exist before their profile gets a
//! role), one file per step:
//! - `resolve`: each mapped name to its one UserRole Id, and nevisIDM's roles and permissions,
//!   at start and at every full listing; a problem here is fatal (exit 2);
//! - `members`: memberships per mapped UserRole, kept between runs, with the cheap change
//!   detection and the slower full read;
//! - `plan`: pure: desired owned roles against held ones, and the revocation safety;
//! - `holding`: the per-user checkpoint of the roles the sync granted, and of grants sent and
//!   not yet answered (write-ahead);
//! - `write`: profile selection or creation, grants and revocations, each checkpointed;
//! - `batch`: the users' writes, `sync.concurrency` at a time, under a stop or a fatal error.
//!
//! A stop drops the reads at once; the writes already sent get `sync.shutdown_grace` (`batch`).

mod batch;
mod holding;
mod members;
mod plan;
mod resolve;
mod write;

use std::collections::BTreeSet;

use futures::StreamExt;

use crate::config::{Config, RolesConfig};
use crate::dispatch::PlanSink;
use crate::mapper::UserState;
use crate::nevis::{RoleTarget, TargetError};
use crate::nexudus::{Source, SourceError};
use crate::report::{RoleChange, RunReport};
use crate::store::{Store, StoreError};
use crate::sync::stop::{Stopped, until_stopped};

pub use batch::Shutdown;
pub use members::Admins;

use holding::Holding;
use members::State;
use write::{Who, Writer};

/// What ends the run (exit 2): a name that resolves to none or several UserRoles, an unknown
/// roleExtId, a missing permission, or an API that refuses us.
#[derive(Debug, thiserror::Error)]
pub enum RolesError {
    #[error("{0}")]
    Fatal(String),
    #[error("roles: Nexudus UserRoles: {0}")]
    Source(SourceError),
    #[error("roles: nevisIDM: {0}")]
    Target(TargetError),
    #[error(transparent)]
    Store(StoreError),
}

/// How this run meets the roles.
pub struct RolesRun<'a> {
    /// The run listed every user, completely or not (`complete`).
    pub full_listing: bool,
    pub listing_complete: bool,
    pub reconcile: bool,
    pub allow_mass_revoke: bool,
    pub dry_run: Option<&'a PlanSink>,
    /// The overlap incremental reads reach back before the watermark.
    pub overlap: std::time::Duration,
    pub admins: Admins,
    /// The provisioning log (off in a dry run).
    pub log: crate::audit::Recorder,
    /// The run's shutdown and its grace for the role writes in flight.
    pub shutdown: Shutdown,
}

/// The role stage of one run. Does nothing without `[[roles.map]]`. `Err(Stopped)` inside: a
/// stop ended it early (its writes in flight had their grace).
pub async fn sync_roles<S: Source>(
    cfg: &Config,
    source: &S,
    target: Option<&dyn RoleTarget>,
    store: &Store,
    run: RolesRun<'_>,
    report: &mut RunReport,
) -> Result<Result<(), Stopped>, RolesError> {
    let Some(roles) = &cfg.roles else {
        return Ok(Ok(()));
    };
    let target = target.ok_or_else(|| RolesError::Fatal("this target holds no roles".into()))?;
    let mut state = State::load(store).map_err(RolesError::Store)?;
    let refreshed = refresh(roles, source, target, store, &run, &mut state);
    let Ok(reads_complete) = until_stopped(&run.shutdown.cancel, refreshed).await else {
        return Ok(Err(Stopped));
    };
    let reads_complete = reads_complete?;
    let full = run.full_listing && run.listing_complete;
    run.admins.record(&mut state, full);
    if run.dry_run.is_none() {
        state.save(store).map_err(RolesError::Store)?;
    }
    let members = state.members(roles, reads_complete);
    if !members.complete {
        report.roles_incomplete = Some(
            "the UserRole listing or a membership read failed or was incomplete (or @admin is \
             not known yet)"
                .into(),
        );
    }
    let writer = Writer {
        target,
        store,
        dry_run: run.dry_run,
        profile_unit: roles.profile_unit_ext_id.as_deref(),
        log: &run.log,
        cancel: &run.shutdown.cancel,
        ledger: batch::Ledger::default(),
    };
    let steps = Steps {
        roles,
        writer: &writer,
        members: &members,
        reconcile: run.reconcile,
        allow: run.allow_mass_revoke,
        concurrency: cfg.sync.concurrency,
        shutdown: &run.shutdown,
    };
    let applied = steps.apply(store, report).await;
    writer.ledger.report_to(report);
    applied
}

/// Brings `state` up to date with Nexudus: resolution (when due), then memberships, in full or
/// only the changed UserRoles. `false` when a membership read failed or was incomplete.
async fn refresh<S: Source>(
    roles: &RolesConfig,
    source: &S,
    target: &dyn RoleTarget,
    store: &Store,
    run: &RolesRun<'_>,
    state: &mut State,
) -> Result<bool, RolesError> {
    let map_key = format!("{:?}", roles.map);
    let now = store.clock().now();
    if run.full_listing
        || state.map_key != map_key
        || state.ids.len() != roles.map.len()
        || state.resolve_again
    {
        let listed_complete = resolve::resolve_into(roles, source, target, state, map_key).await?;
        state.members.retain(|id, _| state.ids.contains(&Some(*id)));
        let ids = &state.ids;
        state
            .read_updated_on
            .retain(|id, _| ids.contains(&Some(*id)));
        return Ok(full_read(source, state, now).await && listed_complete);
    }
    let due = state
        .full_read_at
        .is_none_or(|at| now.saturating_sub(at) >= roles.full_read_every.as_secs());
    if due || run.reconcile {
        return Ok(full_read(source, state, now).await);
    }
    // The cheap path: one request for the UserRoles changed since the watermark, and a read of
    // each mapped one whose `UpdatedOn` is not the one its last read answered.
    let since = state
        .watermark
        .as_deref()
        .and_then(|w| crate::watermark::minus(w, run.overlap));
    let changed = match resolve::list_all(source, since.as_deref()).await {
        Ok(changed) => changed,
        Err(RolesError::Source(e)) if !e.is_auth() => {
            tracing::warn!(error = %e, "cannot list changed UserRoles: nothing is revoked in this run");
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    let read = state.moved(&changed.roles);
    // An incomplete listing may have missed a changed UserRole: its watermark stays.
    let complete =
        members::read_members(source, &read, state).await && changed.incomplete.is_none();
    if complete {
        state.saw(&changed.roles);
    }
    Ok(complete)
}

async fn full_read<S: Source>(source: &S, state: &mut State, now: u64) -> bool {
    let ids = state.mapped_ids();
    let complete = members::read_members(source, &ids, state).await;
    if complete {
        state.full_read_at = Some(now);
    }
    complete
}

/// The plan and its writes over every user concerned.
struct Steps<'a> {
    roles: &'a RolesConfig,
    writer: &'a Writer<'a>,
    members: &'a plan::Members,
    reconcile: bool,
    allow: bool,
    /// Users written at the same time (`sync.concurrency`).
    concurrency: usize,
    shutdown: &'a Shutdown,
}

/// A user the plan concerns: Nexudus Id, nevisIDM extId, the checkpoint, and the plan.
type Planned = (u64, String, Holding, plan::UserPlan);

/// A user as the stage finds them: the checkpoint (in a reconcile, rebuilt from nevisIDM), and
/// whether a reconcile could read their roles (`Err`: why not; the checkpoint is the old one).
struct Current {
    id: u64,
    ext_id: String,
    holding: Holding,
    read: Result<(), String>,
}

impl Steps<'_> {
    async fn apply(
        &self,
        store: &Store,
        report: &mut RunReport,
    ) -> Result<Result<(), Stopped>, RolesError> {
        let planned = until_stopped(&self.shutdown.cancel, self.plan(store, report)).await;
        let Ok(planned) = planned else {
            return Ok(Err(Stopped));
        };
        let (planned, tally) = planned?;
        let holds = self.holds(&tally, report);
        let (writer, shutdown) = (self.writer, self.shutdown);
        batch::write_all(writer, planned, &holds, self.concurrency, shutdown).await
    }

    /// The revocations the safety holds back in this run (none when approved), each reason
    /// logged and reported once.
    fn holds(&self, tally: &plan::Tally, report: &mut RunReport) -> plan::Holds {
        if self.allow {
            return plan::Holds::default();
        }
        let holds = plan::revocations_held(self.roles, tally);
        for reason in holds.reasons() {
            tracing::warn!("role revocations held back: {reason}");
            report.role_holds.push(reason.to_string());
        }
        holds
    }

    /// Every user in a mapped role or holding a role the sync granted (in a reconcile: every
    /// user), with their plan, and the tally of holders and leavers the safety counts on.
    async fn plan(
        &self,
        store: &Store,
        report: &mut RunReport,
    ) -> Result<(Vec<Planned>, plan::Tally), RolesError> {
        let owned: BTreeSet<String> = self.roles.owned().into_iter().collect();
        let owned = &owned;
        // A reconcile reads each user's profile and authorizations (two requests a user):
        // `sync.concurrency` users at a time, as the writes go.
        let mut found = futures::stream::iter(
            self.users(store)?
                .into_iter()
                .map(|id| self.current(store, id, owned)),
        )
        .buffer_unordered(self.concurrency.max(1));
        let mut tally = plan::Tally::default();
        let mut out = Vec::new();
        while let Some(current) = found.next().await {
            let Some(Current {
                id,
                ext_id,
                holding,
                read,
            }) = current?
            else {
                continue; // not (yet) in nevisIDM, or archived
            };
            let held = holding.roles();
            let desired = plan::desired(self.roles, self.members, id);
            if let Err(reason) = read {
                tally.count(owned, &held, &[]);
                let at_stake = at_stake(owned, &desired, &held);
                report.note_role(id, &ext_id, &at_stake, false, RoleChange::Unread { reason });
                continue;
            }
            let user_plan = plan::plan(owned, &desired, &held, self.members.complete);
            tally.count(owned, &held, &user_plan.revoke);
            if !user_plan.is_empty() {
                out.push((id, ext_id, holding, user_plan));
            }
        }
        // In the order of the users, whatever order the reads finished in (a dry run's lines).
        out.sort_by_key(|p| p.0);
        Ok((out, tally))
    }

    /// The Nexudus Ids the stage concerns, from the store's keys (no checkpoint decoded): the
    /// members of mapped roles, the users with a role checkpoint, and in a reconcile every user
    /// (an owned role granted by hand to anyone is the sync's too).
    fn users(&self, store: &Store) -> Result<BTreeSet<u64>, RolesError> {
        let mut users = self.members.everyone();
        for id in store.role_holding_ids() {
            users.insert(id.map_err(RolesError::Store)?);
        }
        if self.reconcile {
            for id in store.user_ids() {
                users.insert(id.map_err(RolesError::Store)?);
            }
        }
        Ok(users)
    }

    /// User `id` with their checkpoint; in a reconcile, the checkpoint rebuilt from nevisIDM's
    /// authorizations and written back. `None`: not (yet) in nevisIDM, planned once its create is
    /// confirmed, or archived.
    async fn current(
        &self,
        store: &Store,
        id: u64,
        owned: &BTreeSet<String>,
    ) -> Result<Option<Current>, RolesError> {
        let Some(user) = store.get(id).map_err(RolesError::Store)? else {
            return Ok(None);
        };
        if user.state == UserState::Archived {
            return Ok(None);
        }
        let mut holding = Holding::read(store, id)
            .map_err(RolesError::Store)?
            .unwrap_or_default();
        // Grants a run before left pending are settled before anything is planned: a leaver
        // with only a mark must still get a plan.
        let who = Who {
            id,
            ext_id: &user.ext_id,
        };
        self.writer.settle(who, &mut holding).await?;
        let mut read = Ok(());
        if self.reconcile {
            read = self
                .writer
                .actual(&user.ext_id, owned, &mut holding)
                .await?;
            if read.is_ok() && self.writer.dry_run.is_none() {
                holding.write(store, id).map_err(RolesError::Store)?;
            }
        }
        Ok(Some(Current {
            id,
            ext_id: user.ext_id,
            holding,
            read,
        }))
    }
}

/// The owned roles a user whose roles could not be read holds or should hold, for the report
/// (`*` when none is known: the reconcile was to find any owned role granted by hand).
fn at_stake(
    owned: &BTreeSet<String>,
    desired: &BTreeSet<String>,
    held: &BTreeSet<String>,
) -> String {
    let roles: Vec<&str> = desired
        .union(held)
        .filter(|r| owned.contains(*r))
        .map(String::as_str)
        .collect();
    match roles.is_empty() {
        true => "*".into(),
        false => roles.join(","),
    }
}
