//! The settlement: every "remove access" rule that is not an explicit instruction from Nexudus.
//!
//! A user who *vanished* (no longer listed, or listed outside the scope) is only known once the
//! listing is over, and disabling them is guarded, because a vanishing is inferred, not stated:
//! - only a complete, full listing (not an incremental one) can tell who is gone;
//! - a user must be missing from `sync.missing_runs_before_disable` complete listings in a row;
//! - users disabled longer than `sync.archive_after` are archived, under the same guards;
//! - more than `sync.max_disables`, or more than `sync.max_disable_percent` of the known users,
//!   removes nobody unless the operator allowed it for this run (`--allow-mass-disable`): the
//!   whole batch is held;
//! - every user to be disabled for vanishing is looked up once before: a listing that skipped
//!   someone still in Nexudus was incomplete, whatever its counts said;
//! - a disable decided but not confirmed (held, refused, cut short) stays owed ([`super::owed`]):
//!   every later run, incremental or full, decides it again under the same safety — and holds
//!   and reports it again — until it is confirmed or the person is listed in scope again.
//!
//! (A record that says `Active` false is an instruction, planned and sent at once like any change.)

use std::collections::HashSet;

use super::RunOptions;
use super::census::Verdict;
use super::owed::{Known, Owed};
use super::planner::Kept;
use crate::audit::{self, Recorder, Why, cause};
use crate::config::Config;
use crate::diff::{Changes, Observed, disappeared};
use crate::directory::Directory;
use crate::dispatch::{Op, OpKind};
use crate::mapper::{DesiredUser, UserState};
use crate::nexudus::{Presence, Source};
use crate::ownership::Owners;
use crate::report::{Outcome, RunReport};
use crate::store::{Store, StoreError};

pub struct Settlement<'a> {
    cfg: &'a Config,
    store: &'a Store,
    dry_run: bool,
    allow_mass_disable: bool,
    /// Checkpoints before the run wrote anything: the base of `sync.max_disable_percent`.
    known_before: u64,
    /// The Ids in scope (a checkpointed user not among them after a complete listing vanished).
    kept: HashSet<u64>,
    /// Kept users Nexudus wants active: never archived, even if disabled until now. Only kept
    /// when archiving is on (it costs memory in proportion to the listing).
    wanted_active: HashSet<u64>,
}

/// What the settlement decided.
#[derive(Debug)]
pub struct Decision {
    /// Why the listing cannot tell who is gone, if it cannot.
    pub incomplete: Option<String>,
    /// Why every removal of this run is held back, if it is.
    pub held: Option<String>,
    /// Disables of vanished users and archives.
    pub removals: Vec<Op>,
    /// Owed disables of people never looked up ([`Known::Unconfirmed`]): held, in the batch the
    /// deletion safety counts, unless a full listing follows in this run to send them.
    pub unconfirmed: Vec<Op>,
    /// `unconfirmed` may go out: the run lists everyone next (which looks each one up).
    pub full_listing_due: bool,
    /// Users missing from this complete listing, counted towards
    /// `sync.missing_runs_before_disable` by the commit of a run that gets to its end (an
    /// interrupted run, or a dry run, counts nobody).
    pub missing: Vec<u64>,
    /// Whom this decision owes a disable, before its writes (see [`Owed::still_owed`]).
    pub owed: Owed,
}

/// What a pass brings to the settlement besides its listing.
pub enum Earlier<'a> {
    /// A full listing, and the disables earlier runs owe.
    Full(&'a Owed),
    /// An incremental listing, which tells nobody gone: the owed disables (with whom its deletion
    /// search found gone) are all it decides. `may_list_everyone`: a full listing may follow in
    /// this run.
    Incremental {
        owed: &'a Owed,
        may_list_everyone: bool,
    },
}

impl<'a> Settlement<'a> {
    pub fn new(
        cfg: &'a Config,
        store: &'a Store,
        opts: &RunOptions,
        known_before: u64,
    ) -> Settlement<'a> {
        Settlement {
            cfg,
            store,
            dry_run: opts.dry_run.is_some(),
            allow_mass_disable: opts.allow_mass_disable,
            known_before,
            kept: HashSet::new(),
            wanted_active: HashSet::new(),
        }
    }

    /// Notes an Id the listing keeps in scope.
    pub fn keep(&mut self, kept: Option<Kept>) {
        let Some(kept) = kept else { return };
        self.kept.insert(kept.id);
        if self.cfg.sync.archive_after.is_some() && kept.active {
            self.wanted_active.insert(kept.id);
        }
    }

    /// The Ids kept in scope by the listing.
    pub fn kept(&self) -> &HashSet<u64> {
        &self.kept
    }

    /// Decides who loses access for vanishing or age, and whether the deletion safety holds.
    /// `listed` is every Id the listing held, in scope or not; `earlier` the disables earlier
    /// runs owe, and what kind of listing this was.
    pub async fn settle<S: Source>(
        &self,
        source: &S,
        remote: Option<(&Directory, &Owners)>,
        verdict: Verdict,
        listed: &HashSet<u64>,
        earlier: Earlier<'_>,
    ) -> Result<Decision, StoreError> {
        let incomplete = verdict.into_reason();
        // Only a complete full listing can tell who is gone (and archiving needs one too); the
        // disables already owed are decided by every run — and held by an incomplete listing,
        // which disables nobody.
        let owed = match earlier {
            Earlier::Incremental {
                owed,
                may_list_everyone,
            } => return self.settle_owed(incomplete, owed, may_list_everyone),
            Earlier::Full(owed) => match &incomplete {
                Some(reason) => {
                    let held = format!("listing incomplete ({reason})");
                    let mut decision = self.settle_owed(incomplete.clone(), owed, false)?;
                    if !decision.removals.is_empty() || !decision.unconfirmed.is_empty() {
                        decision.held = Some(held);
                    }
                    return Ok(decision);
                }
                None => owed,
            },
        };
        let mut known = self.known_before;
        let gone = match remote {
            None => vanished_from_checkpoints(self.store, &self.kept)?,
            Some((remote, owners)) => {
                let (gone, owned) = self.vanished_from_remote(remote, owners)?;
                known = known.max(owned);
                gone
            }
        };
        let mut missing = Vec::new();
        let mut removals = self.disables(gone, &mut missing, listed)?;
        if let Some(age) = self.cfg.sync.archive_after {
            removals.extend(self.archives(age)?);
        }
        // The deletion safety first (a held batch needs no confirmation), then the look-ups.
        let too_many = mass_disable_reason(self.cfg, removals.len() as u64, known)
            .filter(|_| !self.allow_mass_disable);
        let mut incomplete = None;
        if too_many.is_none()
            && let Some(reason) = confirm_gone(source, &removals, listed).await
        {
            incomplete = Some(reason);
        }
        let owed = match incomplete {
            // Nobody was told gone: the owed stay as they were (but those listed in scope).
            Some(_) => self.not_kept(owed),
            None => owed_after_listing(&mut removals, listed, too_many.is_some(), owed),
        };
        Ok(Decision {
            missing,
            owed,
            ..Decision::new(incomplete, too_many, removals)
        })
    }

    /// The disables earlier runs owe (and, in an incremental run, whom its deletion search found
    /// gone, each already confirmed by Nexudus's 404), decided again: neither an incremental nor
    /// an incomplete listing can tell anyone else gone, and none is needed to tell these. A
    /// person the listing shows in scope again, or whose checkpoint is no longer active (the
    /// disable was confirmed after all), is owed nothing. The deletion safety counts them all
    /// together. Those never looked up (see [`Known::Unconfirmed`]) go out only through a full
    /// listing: when the batch may go out and `may_list_everyone`, one follows in this run.
    fn settle_owed(
        &self,
        incomplete: Option<String>,
        owed: &Owed,
        may_list_everyone: bool,
    ) -> Result<Decision, StoreError> {
        let (mut removals, mut unconfirmed, mut still) = (Vec::new(), Vec::new(), Owed::default());
        for (id, known) in owed.iter() {
            if self.kept.contains(&id) {
                continue;
            }
            let Some(checkpoint) = self.checkpoint_of(id, None)? else {
                continue;
            };
            let Some(changes) = disappeared(&checkpoint) else {
                continue;
            };
            still.insert(id, known);
            let op = removal(id, OpKind::Disable, &checkpoint, changes, cause_of(known));
            match known {
                Known::Unconfirmed => unconfirmed.push(op),
                Known::Gone | Known::OutOfScope => removals.push(op),
            }
        }
        let count = (removals.len() + unconfirmed.len()) as u64;
        let too_many = mass_disable_reason(self.cfg, count, self.known_before)
            .filter(|_| !self.allow_mass_disable);
        let full_listing_due = too_many.is_none() && !unconfirmed.is_empty() && may_list_everyone;
        Ok(Decision {
            incomplete,
            held: too_many,
            removals,
            unconfirmed,
            full_listing_due,
            missing: Vec::new(),
            owed: still,
        })
    }

    /// `owed` without those the listing kept in scope.
    fn not_kept(&self, owed: &Owed) -> Owed {
        let mut still = Owed::default();
        for (id, known) in owed.iter().filter(|(id, _)| !self.kept.contains(id)) {
            still.insert(id, known);
        }
        still
    }

    /// Disables for the vanished users that were missing from enough complete listings; with
    /// `sync.missing_runs_before_disable` above 1, every vanished user's Id goes to `missing`.
    /// `listed`: every Id the listing held.
    fn disables(
        &self,
        gone: Vec<(u64, DesiredUser)>,
        missing: &mut Vec<u64>,
        listed: &HashSet<u64>,
    ) -> Result<Vec<Op>, StoreError> {
        let mut disables = Vec::new();
        let threshold = self.cfg.sync.missing_runs_before_disable;
        for (id, checkpoint) in gone {
            let Some(changes) = disappeared(&checkpoint) else {
                continue;
            };
            if threshold > 1 {
                // The count so far plus this listing; stored by the commit once the run ends
                // (a dry run never stores it: it would bring real disables forward).
                missing.push(id);
                let count = self.store.missing_count(id)?.saturating_add(1);
                if count < threshold {
                    tracing::info!(
                        extId = %checkpoint.ext_id,
                        missing = count,
                        threshold,
                        "missing from a complete listing; disabled once sync.missing_runs_before_disable is reached"
                    );
                    continue;
                }
            }
            tracing::info!(extId = %checkpoint.ext_id, nexudus_id = id, "no longer listed by Nexudus or out of scope; disabling");
            let why = cause::vanished(listed.contains(&id));
            disables.push(removal(
                id,
                OpKind::Disable,
                &checkpoint,
                changes,
                why.into(),
            ));
        }
        Ok(disables)
    }

    /// Archives (`sync.archive_after`) of users disabled longer than `age` whom Nexudus does not
    /// want active.
    fn archives(&self, age: std::time::Duration) -> Result<Vec<Op>, StoreError> {
        let mut archives = Vec::new();
        for id in self.store.disabled_longer_than(age)? {
            if self.wanted_active.contains(&id) {
                continue;
            }
            let Some(checkpoint) = self.store.get(id).ok().flatten() else {
                continue;
            };
            if checkpoint.state != UserState::Disabled {
                continue;
            }
            let changes = Changes {
                state: Some(UserState::Archived),
                ..Changes::default()
            };
            tracing::info!(extId = %checkpoint.ext_id, "disabled longer than sync.archive_after; archiving");
            let why = cause::archive(age);
            archives.push(removal(id, OpKind::Archive, &checkpoint, changes, why));
        }
        Ok(archives)
    }

    /// Reconcile: the nevisIDM users this tool owns ([`Owners`]) whose Nexudus user a complete
    /// listing did not list (in scope) and that nevisIDM shows active, whatever the checkpoint
    /// says; and how many users this tool owns in nevisIDM (the base of
    /// `sync.max_disable_percent`). Nothing else in nevisIDM is ever touched.
    fn vanished_from_remote(
        &self,
        remote: &Directory,
        owners: &Owners,
    ) -> Result<(Vec<(u64, DesiredUser)>, u64), StoreError> {
        let mut gone = Vec::new();
        let mut owned = 0u64;
        for (ext_id, seen) in &remote.users {
            let Some(id) = owners.owner(self.store, ext_id)? else {
                continue;
            };
            owned += 1;
            if self.kept.contains(&id) {
                continue;
            }
            let checkpoint = self.checkpoint_of(id, Some(ext_id))?;
            if let Some(current) = self.still_active(ext_id, seen, id, checkpoint)? {
                gone.push((id, current));
            }
        }
        Ok((gone, owned))
    }

    /// The checkpoint of `id` (when `ext_id` is given, only if it is the one of `ext_id`).
    fn checkpoint_of(
        &self,
        id: u64,
        ext_id: Option<&str>,
    ) -> Result<Option<DesiredUser>, StoreError> {
        match self.store.get(id) {
            Ok(c) => Ok(c.filter(|c| ext_id.is_none_or(|e| c.ext_id == e))),
            Err(StoreError::Corrupt(e)) => {
                tracing::warn!(error = %e, "unreadable checkpoint skipped for disappearance");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// An owned user gone from Nexudus, as nevisIDM holds it when it is still active there.
    /// Already inactive in nevisIDM (by hand, or a disable whose checkpoint was lost): the
    /// checkpoint is refreshed to say so, so that no later run sends a disable that is true.
    fn still_active(
        &self,
        ext_id: &str,
        seen: &Observed,
        id: u64,
        checkpoint: Option<DesiredUser>,
    ) -> Result<Option<DesiredUser>, StoreError> {
        let inactive = match seen.state.as_deref() {
            Some("disabled") => Some(UserState::Disabled),
            Some("archived") => Some(UserState::Archived),
            Some("active") => None,
            _ => return Ok(None),
        };
        if let Some(state) = inactive {
            if !self.dry_run
                && let Some(mut c) = checkpoint
                && c.state == UserState::Active
            {
                c.state = state;
                self.store.put(id, &c)?;
            }
            return Ok(None);
        }
        // What nevisIDM holds now, active (the checkpoint may say otherwise: drift).
        let mut current = checkpoint.unwrap_or_else(|| observed_user(ext_id, seen));
        current.state = UserState::Active;
        Ok(Some(current))
    }
}

impl Decision {
    /// Holds every removal when the listing is incomplete (if there is any) or the deletion
    /// safety says too many.
    fn new(incomplete: Option<String>, too_many: Option<String>, removals: Vec<Op>) -> Decision {
        let held = if let Some(reason) = &incomplete {
            tracing::warn!(%reason, "listing incomplete: no user is disabled in this run");
            (!removals.is_empty()).then(|| format!("listing incomplete ({reason})"))
        } else {
            too_many
        };
        Decision {
            incomplete,
            held,
            removals,
            unconfirmed: Vec::new(),
            full_listing_due: false,
            missing: Vec::new(),
            owed: Owed::default(),
        }
    }

    /// Writes the decision into the report, and each held removal into the provisioning log;
    /// returns the removals to send (none when held).
    pub fn record(self, report: &mut RunReport, log: &Recorder) -> Result<Vec<Op>, StoreError> {
        report.listing_complete = self.incomplete.is_none();
        let code = match self.incomplete {
            Some(_) => audit::Code::ListingIncomplete,
            None => audit::Code::DeletionSafety,
        };
        report.incomplete_reason = self.incomplete;
        let Some(reason) = self.held else {
            if !self.full_listing_due && !self.unconfirmed.is_empty() {
                tracing::warn!(
                    held = self.unconfirmed.len(),
                    "disables held by an earlier run wait for a complete full listing, which \
                     looks each person up first"
                );
                let code = audit::Code::AwaitingFullListing;
                hold(self.unconfirmed, UNCONFIRMED, code, report, log)?;
            }
            return Ok(self.removals);
        };
        tracing::error!(
            held = self.removals.len() + self.unconfirmed.len(),
            %reason,
            "DELETION SAFETY: holding back every disable of this run; rerun with --allow-mass-disable to approve"
        );
        let reason = format!("{reason}; --allow-mass-disable approves");
        let batch = self.removals.into_iter().chain(self.unconfirmed);
        hold(batch, &reason, code, report, log)?;
        Ok(Vec::new())
    }
}

/// Why an owed disable never looked up is held when the deletion safety would let it go.
const UNCONFIRMED: &str = "waits for a complete full listing, which looks the person up first";

/// Records each of `ops` held, with `reason`, in the report and (once) in the provisioning log.
fn hold(
    ops: impl IntoIterator<Item = Op>,
    reason: &str,
    code: audit::Code,
    report: &mut RunReport,
    log: &Recorder,
) -> Result<(), StoreError> {
    for op in ops {
        let mut entry = op.draft(audit::Verdict::Held);
        entry.reason = Some(reason.to_string());
        log.write_once(entry, code, &[])?;
        let ext_id = op.after.ext_id;
        report.record(op.nexudus_id, Outcome::Held { ext_id });
    }
    Ok(())
}

/// The cause an owed disable is recorded with.
fn cause_of(known: Known) -> String {
    match known {
        Known::Gone => cause::GONE_CONFIRMED,
        Known::OutOfScope => cause::LEFT_SCOPE,
        Known::Unconfirmed => cause::NOT_LISTED,
    }
    .into()
}

/// Whom a complete full listing's `removals` owe a disable, by what is known of them: listed
/// outside the scope; gone, when looked up (the batch went out) or found gone by an earlier run
/// (`before`); else not looked up, since the deletion safety `held` the batch first — their
/// cause then says so.
fn owed_after_listing(
    removals: &mut [Op],
    listed: &HashSet<u64>,
    held: bool,
    before: &Owed,
) -> Owed {
    let mut owed = Owed::default();
    for op in removals.iter_mut().filter(|op| op.kind == OpKind::Disable) {
        let id = op.nexudus_id;
        let known = if listed.contains(&id) {
            Known::OutOfScope
        } else if held && before.known(id) != Some(Known::Gone) {
            Known::Unconfirmed
        } else {
            Known::Gone
        };
        op.why.cause = cause_of(known);
        owed.insert(id, known);
    }
    owed
}

fn removal(id: u64, kind: OpKind, checkpoint: &DesiredUser, changes: Changes, cause: String) -> Op {
    Op {
        why: Why::new(cause, Some(Observed::from(checkpoint))),
        nexudus_id: id,
        kind,
        after: changes.apply_to(checkpoint),
        changes: Some(changes),
        updated_on: None,
        fingerprint: None,
        adopt: false,
        version: None,
        forms: Default::default(),
    }
}

/// Why `count` removals exceed the deletion-safety limits, if they do.
fn mass_disable_reason(cfg: &Config, count: u64, known: u64) -> Option<String> {
    let limit = cfg.sync.max_disables;
    let percent = cfg.sync.max_disable_percent;
    if count > limit {
        return Some(format!(
            "{count} disables exceed sync.max_disables = {limit}"
        ));
    }
    if known > 0 && (count as f64) * 100.0 > percent * known as f64 {
        return Some(format!(
            "{count} disables of {known} known users exceed sync.max_disable_percent = {percent}"
        ));
    }
    None
}

/// Asks Nexudus for each user about to be disabled because the listing did not contain it (not
/// for users listed outside the scope, nor archives). `Some(reason)` when one is still there, or
/// cannot be looked up: then the listing cannot be trusted to tell who is gone.
async fn confirm_gone<S: Source>(
    source: &S,
    disables: &[Op],
    listed: &HashSet<u64>,
) -> Option<String> {
    for op in disables {
        if op.kind != OpKind::Disable || listed.contains(&op.nexudus_id) {
            continue;
        }
        match source.fetch_user(op.nexudus_id).await {
            Ok(Presence::Gone) => {}
            Ok(presence) => {
                tracing::warn!(
                    nexudus_id = op.nexudus_id,
                    ?presence,
                    "Nexudus still has a user its listing did not contain; the pages shifted while they were read"
                );
                return Some(format!(
                    "Nexudus user {} is still there but the listing did not contain it",
                    op.nexudus_id
                ));
            }
            Err(e) => {
                return Some(format!(
                    "could not confirm that Nexudus user {} is gone: {e}",
                    op.nexudus_id
                ));
            }
        }
    }
    None
}

/// Checkpointed users not listed (in scope) by a complete listing, with their checkpoint.
fn vanished_from_checkpoints(
    store: &Store,
    kept: &HashSet<u64>,
) -> Result<Vec<(u64, DesiredUser)>, StoreError> {
    let mut gone = Vec::new();
    for item in store.iter() {
        let (id, checkpoint) = match item {
            Ok(entry) => entry,
            // What cannot be read cannot be judged missing: skip it, loudly.
            Err(StoreError::Corrupt(e)) => {
                tracing::warn!(error = %e, "unreadable checkpoint skipped for disappearance");
                continue;
            }
            Err(e) => return Err(e),
        };
        if !kept.contains(&id) {
            gone.push((id, checkpoint));
        }
    }
    Ok(gone)
}

/// A user as read from nevisIDM, for checkpointing what a disable leaves behind.
fn observed_user(ext_id: &str, seen: &Observed) -> DesiredUser {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    DesiredUser {
        ext_id: ext_id.to_string(),
        login_id: text(&seen.login_id),
        first_name: text(&seen.first_name),
        family_name: text(&seen.family_name),
        email: text(&seen.email),
        language_code: text(&seen.language_code),
        state: UserState::Active,
        properties: seen.properties.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nexudus::{PageIds, SourceError, SourcePage};
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// The crate's test config with a tight deletion safety and `extra` keys of `[sync]`.
    fn config(extra: &str) -> Config {
        crate::config::testing::config(&[&format!(
            "[sync]\nmax_disables = 3\nmax_disable_percent = 50\n{extra}"
        )])
    }

    /// Answers look-ups from a table (absent: gone) and remembers who was asked.
    #[derive(Default)]
    struct Lookups {
        present: HashMap<u64, Result<Presence, SourceError>>,
        asked: Mutex<Vec<u64>>,
    }

    impl Source for Lookups {
        async fn fetch_page(&self, _: u32, _: Option<&str>) -> Result<SourcePage, SourceError> {
            unreachable!("the settlement never lists")
        }
        async fn fetch_user(&self, id: u64) -> Result<Presence, SourceError> {
            self.asked.lock().unwrap().push(id);
            self.present.get(&id).cloned().unwrap_or(Ok(Presence::Gone))
        }
        async fn ids_at(&self, _: u32, _: u32) -> Result<PageIds, SourceError> {
            unreachable!("the settlement never searches")
        }
    }

    fn checkpoint(id: u64, state: UserState) -> DesiredUser {
        DesiredUser {
            ext_id: format!("nexudus-{id}"),
            login_id: format!("user{id}@example.com"),
            first_name: "User".into(),
            family_name: format!("Number{id}"),
            email: format!("user{id}@example.com"),
            language_code: "en".into(),
            state,
            properties: Default::default(),
        }
    }

    /// A full listing with nothing owed from earlier runs.
    const FULL: Earlier<'static> = Earlier::Full(&Owed::EMPTY);

    /// An incremental listing owing `owed`, after which a full listing may follow.
    fn incremental(owed: &Owed) -> Earlier<'_> {
        Earlier::Incremental {
            owed,
            may_list_everyone: true,
        }
    }

    /// A store with active checkpoints for Ids 1..=n.
    fn store(n: u64) -> Store {
        let store = Store::temporary().unwrap();
        for id in 1..=n {
            store.put(id, &checkpoint(id, UserState::Active)).unwrap();
        }
        store
    }

    fn settlement<'a>(cfg: &'a Config, store: &'a Store, kept: &[u64]) -> Settlement<'a> {
        let mut s = Settlement::new(cfg, store, &RunOptions::default(), store.len() as u64);
        for &id in kept {
            s.keep(Some(Kept { id, active: true }));
        }
        s
    }

    /// The removals a complete listing leads to.
    async fn removed(s: &Settlement<'_>, source: &Lookups) -> Vec<u64> {
        let listed = HashSet::new();
        let d = s.settle(source, None, Verdict::Complete, &listed, FULL);
        ids(&d.await.unwrap().removals)
    }

    fn ids(ops: &[Op]) -> Vec<u64> {
        ops.iter().map(|op| op.nexudus_id).collect()
    }

    #[tokio::test]
    async fn a_complete_listing_disables_who_vanished_after_asking_nexudus() {
        let (cfg, store) = (config(""), store(10));
        let source = Lookups::default();
        let s = settlement(&cfg, &store, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let d = s
            .settle(&source, None, Verdict::Complete, &HashSet::new(), FULL)
            .await
            .unwrap();
        assert_eq!((d.incomplete, d.held), (None, None));
        assert_eq!(ids(&d.removals), vec![10]);
        assert_eq!(d.removals[0].kind, OpKind::Disable);
        assert_eq!(*source.asked.lock().unwrap(), vec![10]);
    }

    #[tokio::test]
    async fn an_incomplete_or_incremental_listing_removes_nobody() {
        let (cfg, store) = (config(""), store(4));
        let source = Lookups::default();
        let s = settlement(&cfg, &store, &[1]);
        let d = s
            .settle(
                &source,
                None,
                Verdict::Incomplete("why".into()),
                &HashSet::new(),
                FULL,
            )
            .await
            .unwrap();
        assert_eq!(d.incomplete.as_deref(), Some("why"));
        assert!(d.removals.is_empty() && d.held.is_none(), "nothing to hold");
        let d = s
            .settle(
                &source,
                None,
                Verdict::Complete,
                &HashSet::new(),
                incremental(&Owed::default()),
            )
            .await
            .unwrap();
        assert!(d.removals.is_empty() && d.incomplete.is_none());
        assert!(source.asked.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn too_many_removals_are_held_whole_without_look_ups_unless_allowed() {
        let (cfg, store) = (config(""), store(10));
        let source = Lookups::default();
        let s = settlement(&cfg, &store, &[1, 2, 3, 4, 5, 6]);
        let d = s
            .settle(&source, None, Verdict::Complete, &HashSet::new(), FULL)
            .await
            .unwrap();
        assert_eq!(
            d.held.as_deref(),
            Some("4 disables exceed sync.max_disables = 3")
        );
        assert!(source.asked.lock().unwrap().is_empty());
        let mut report = RunReport::default();
        assert!(d.record(&mut report, &Recorder::off()).unwrap().is_empty());
        assert_eq!(report.counts().held_disables, 4);
        assert!(report.listing_complete);
        assert_eq!(report.held().len(), 4);

        let opts = RunOptions {
            allow_mass_disable: true,
            ..RunOptions::default()
        };
        let mut s = Settlement::new(&cfg, &store, &opts, 10);
        (1..=6).for_each(|id| s.keep(Some(Kept { id, active: true })));
        let d = s
            .settle(&source, None, Verdict::Complete, &HashSet::new(), FULL)
            .await
            .unwrap();
        assert_eq!((d.held, d.removals.len()), (None, 4));
    }

    #[test]
    fn deletion_safety_limits() {
        let cfg = config("");
        assert_eq!(mass_disable_reason(&cfg, 3, 6), None);
        assert_eq!(
            mass_disable_reason(&cfg, 4, 100).as_deref(),
            Some("4 disables exceed sync.max_disables = 3")
        );
        assert_eq!(
            mass_disable_reason(&cfg, 3, 5).as_deref(),
            Some("3 disables of 5 known users exceed sync.max_disable_percent = 50")
        );
        assert_eq!(
            mass_disable_reason(&cfg, 2, 0),
            None,
            "no base, no percentage"
        );
    }

    #[tokio::test]
    async fn a_vanished_user_still_in_nexudus_or_not_confirmed_makes_the_listing_incomplete() {
        let (cfg, store) = (config(""), store(4));
        let still = Lookups {
            present: HashMap::from([(4, Ok(Presence::Inactive))]),
            ..Lookups::default()
        };
        let s = settlement(&cfg, &store, &[1, 2, 3]);
        let d = s
            .settle(&still, None, Verdict::Complete, &HashSet::new(), FULL)
            .await
            .unwrap();
        assert_eq!(
            d.incomplete.as_deref(),
            Some("Nexudus user 4 is still there but the listing did not contain it")
        );
        assert_eq!(
            d.held.as_deref(),
            Some(
                "listing incomplete (Nexudus user 4 is still there but the listing did not contain it)"
            )
        );
        let failing = Lookups {
            present: HashMap::from([(4, Err(SourceError::Auth { status: 401 }))]),
            ..Lookups::default()
        };
        let d = s
            .settle(&failing, None, Verdict::Complete, &HashSet::new(), FULL)
            .await
            .unwrap();
        assert!(
            d.incomplete
                .unwrap()
                .starts_with("could not confirm that Nexudus user 4 is gone")
        );
        // Listed outside the scope: the listing shows it is there; nobody is asked.
        let asked = Lookups {
            present: HashMap::from([(4, Ok(Presence::Active))]),
            ..Lookups::default()
        };
        let d = s
            .settle(&asked, None, Verdict::Complete, &HashSet::from([4]), FULL)
            .await
            .unwrap();
        assert_eq!((d.incomplete, ids(&d.removals)), (None, vec![4]));
        assert!(asked.asked.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn missing_runs_are_named_by_the_settlement_and_counted_by_the_commit() {
        let (cfg, store) = (config("missing_runs_before_disable = 2"), store(3));
        let source = Lookups::default();
        let s = settlement(&cfg, &store, &[1, 2]);
        let d = s
            .settle(&source, None, Verdict::Complete, &HashSet::new(), FULL)
            .await
            .unwrap();
        assert_eq!(ids(&d.removals), Vec::<u64>::new(), "first miss");
        assert_eq!(d.missing, vec![3]);
        // Deciding counts nobody: a run stopped before its end must not bring disables forward.
        assert_eq!(store.missing_count(3).unwrap(), 0);
        // What the commit of a run that got to its end records.
        store.count_missing(3).unwrap();
        assert_eq!(removed(&s, &source).await, vec![3]);
    }

    fn owed(entries: &[(u64, Known)]) -> Owed {
        let mut owed = Owed::default();
        for &(id, known) in entries {
            owed.insert(id, known);
        }
        owed
    }

    #[tokio::test]
    async fn owed_disables_are_decided_again_by_an_incremental_run() {
        let (cfg, store) = (config(""), store(10));
        store.put(2, &checkpoint(2, UserState::Disabled)).unwrap();
        let source = Lookups::default();
        // 1 is listed in scope again, 2 was disabled after all (a crash before the save).
        let s = settlement(&cfg, &store, &[1]);
        let earlier = owed(&[
            (1, Known::Gone),
            (2, Known::Gone),
            (9, Known::OutOfScope),
            (10, Known::Unconfirmed),
        ]);
        let d = s
            .settle(
                &source,
                None,
                Verdict::Complete,
                &HashSet::new(),
                incremental(&earlier),
            )
            .await
            .unwrap();
        assert_eq!((ids(&d.removals), ids(&d.unconfirmed)), (vec![9], vec![10]));
        assert_eq!(d.removals[0].why.cause, cause::LEFT_SCOPE);
        assert!(
            d.held.is_none() && d.full_listing_due,
            "10 goes out through a full listing"
        );
        assert_eq!(
            d.owed,
            owed(&[(9, Known::OutOfScope), (10, Known::Unconfirmed)])
        );
        assert!(source.asked.lock().unwrap().is_empty(), "nobody looked up");
        // When no full listing may follow, 10 stays held (and reported), 9 goes out.
        let no_listing = Earlier::Incremental {
            owed: &earlier,
            may_list_everyone: false,
        };
        let d = s
            .settle(
                &source,
                None,
                Verdict::Complete,
                &HashSet::new(),
                no_listing,
            )
            .await
            .unwrap();
        assert!(!d.full_listing_due);
        let mut report = RunReport::default();
        assert_eq!(
            ids(&d.record(&mut report, &Recorder::off()).unwrap()),
            vec![9]
        );
        assert_eq!(report.held(), vec!["nexudus-10"]);
    }

    #[tokio::test]
    async fn owed_disables_beyond_the_safety_are_held_again_whole() {
        let (cfg, store) = (config(""), store(10));
        let source = Lookups::default();
        let s = settlement(&cfg, &store, &[]);
        let earlier = owed(&[
            (1, Known::Gone),
            (2, Known::Gone),
            (3, Known::Unconfirmed),
            (4, Known::OutOfScope),
        ]);
        let d = s
            .settle(
                &source,
                None,
                Verdict::Complete,
                &HashSet::new(),
                incremental(&earlier),
            )
            .await
            .unwrap();
        assert_eq!(
            d.held.as_deref(),
            Some("4 disables exceed sync.max_disables = 3")
        );
        assert!(!d.full_listing_due);
        assert_eq!(d.owed, earlier);
        let mut report = RunReport::default();
        assert!(d.record(&mut report, &Recorder::off()).unwrap().is_empty());
        assert_eq!(report.counts().held_disables, 4);
        // An incomplete full listing holds them too, whatever their number.
        let one = owed(&[(1, Known::Gone)]);
        let d = s
            .settle(
                &source,
                None,
                Verdict::Incomplete("why".into()),
                &HashSet::new(),
                Earlier::Full(&one),
            )
            .await
            .unwrap();
        assert_eq!(d.held.as_deref(), Some("listing incomplete (why)"));
        assert_eq!(d.owed, one);
    }

    #[tokio::test]
    async fn a_held_full_listing_owes_each_disable_with_what_is_known_of_it() {
        let (cfg, store) = (config(""), store(10));
        let source = Lookups::default();
        let s = settlement(&cfg, &store, &[1, 2, 3, 4, 5, 6]);
        // 7 is listed outside the scope; an earlier search found 8 gone.
        let earlier = owed(&[(8, Known::Gone)]);
        let listed = HashSet::from([7]);
        let d = s
            .settle(
                &source,
                None,
                Verdict::Complete,
                &listed,
                Earlier::Full(&earlier),
            )
            .await
            .unwrap();
        assert!(d.held.is_some());
        let expected = owed(&[
            (7, Known::OutOfScope),
            (8, Known::Gone),
            (9, Known::Unconfirmed),
            (10, Known::Unconfirmed),
        ]);
        assert_eq!(d.owed, expected);
        let causes: Vec<&str> = d.removals.iter().map(|op| op.why.cause.as_str()).collect();
        assert_eq!(
            causes,
            [
                cause::LEFT_SCOPE,
                cause::GONE_CONFIRMED,
                cause::NOT_LISTED,
                cause::NOT_LISTED
            ]
        );
        // Approved, each one not listed is looked up and owed as gone until confirmed disabled.
        let opts = RunOptions {
            allow_mass_disable: true,
            ..RunOptions::default()
        };
        let mut s = Settlement::new(&cfg, &store, &opts, 10);
        (1..=6).for_each(|id| s.keep(Some(Kept { id, active: true })));
        let d = s
            .settle(
                &source,
                None,
                Verdict::Complete,
                &listed,
                Earlier::Full(&expected),
            )
            .await
            .unwrap();
        assert_eq!((d.held, d.removals.len()), (None, 4));
        assert_eq!(*source.asked.lock().unwrap(), vec![8, 9, 10]);
        assert!(d.owed.iter().all(|(id, k)| k == Known::Gone || id == 7));
    }

    #[tokio::test]
    async fn disabled_users_are_archived_unless_nexudus_wants_them_active() {
        // Whole seconds: under one, every disabled user is old enough.
        let cfg = config("archive_after = \"1ms\"");
        let store = store(4);
        store.put(3, &checkpoint(3, UserState::Disabled)).unwrap();
        store.put(4, &checkpoint(4, UserState::Disabled)).unwrap();
        let source = Lookups::default();
        let mut s = settlement(&cfg, &store, &[1, 2]);
        s.keep(Some(Kept {
            id: 3,
            active: false,
        }));
        s.keep(Some(Kept {
            id: 4,
            active: true,
        }));
        let d = s
            .settle(&source, None, Verdict::Complete, &HashSet::new(), FULL)
            .await
            .unwrap();
        assert_eq!(ids(&d.removals), vec![3]);
        assert_eq!(d.removals[0].kind, OpKind::Archive);
        assert!(
            source.asked.lock().unwrap().is_empty(),
            "archives need no look-up"
        );
    }
}
