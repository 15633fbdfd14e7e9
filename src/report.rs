//! What a run did: counts per outcome, the users that failed or were invalid (with reasons), held
//! disables, and whether the listing was complete. The exit code is derived from it, never guessed.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// A user whose write was refused or could not be made; retried on the next run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub nexudus_id: u64,
    pub ext_id: String,
    pub reason: String,
}

/// A Nexudus record that could not be mapped; never sent, retried on every run until fixed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invalid {
    pub nexudus_id: Option<u64>,
    pub reason: String,
}

/// A user adoption could not settle (`sync.adopt`), or Nexudus users sharing one email: nothing
/// was written for it; an operator has to decide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub nexudus_id: u64,
    pub ext_id: String,
    pub reason: String,
    /// extIds of the nevisIDM users (or Nexudus Ids, for shared emails) in question.
    pub candidates: Vec<String>,
}

/// A pre-existing nevisIDM user taken over for a Nexudus user (`sync.adopt = "email"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Adoption {
    pub nexudus_id: u64,
    pub ext_id: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    pub run_id: String,
    pub dry_run: bool,
    pub created: u64,
    pub updated: u64,
    pub disabled: u64,
    pub archived: u64,
    pub unchanged: u64,
    pub failed: u64,
    pub invalid: u64,
    pub held_disables: u64,
    /// Users adopted, and users left unwritten because of a conflict (see [`Conflict`]).
    pub adopted: u64,
    pub conflicts: u64,
    /// Users whose nevisIDM state differed from Nexudus (reconcile); the updates setting them back
    /// are counted in `updated`.
    pub drift: u64,
    /// Users disabled by hand in nevisIDM while active in Nexudus, left disabled
    /// (`sync.reenable_on_reconcile = false`).
    pub hand_disabled: u64,
    /// The run compared with nevisIDM's real state (`--reconcile`, `--rebuild-store`).
    pub reconcile: bool,
    /// Users that failed because an API stayed unavailable (retries exhausted), as opposed to
    /// users nevisIDM refused: these make the run unhealthy for `/readyz`.
    pub unavailable: u64,
    /// The run was stopped by a shutdown before it finished.
    pub interrupted: bool,
    /// The fatal error that ended the run, if one did (the run then exits 2).
    pub fatal: Option<String>,
    /// Every page fetched and the distinct Ids equal `TotalItems`: only then may disappearance
    /// disable anyone.
    pub listing_complete: bool,
    /// Why the listing was not complete, when it was not.
    pub incomplete_reason: Option<String>,
    pub failures: Vec<Failure>,
    pub invalid_records: Vec<Invalid>,
    pub conflict_records: Vec<Conflict>,
    pub adoptions: Vec<Adoption>,
    /// extIds of the hand-disabled users found by this reconcile.
    pub hand_disabled_users: Vec<String>,
    /// extIds whose disable was held back by the deletion safety.
    pub held: Vec<String>,
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    /// The listing asked only for users changed since the watermark.
    pub incremental: bool,
    /// What the run saw of `UpdatedOn`, for the next watermark.
    #[serde(skip)]
    pub watermark: crate::watermark::Tracker,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl RunReport {
    /// 0 when everything is in sync; 1 when the run finished but something was left undone.
    pub fn exit_code(&self) -> u8 {
        let clean = !self.interrupted
            && self.failed == 0
            && self.invalid == 0
            && self.held_disables == 0
            && self.conflicts == 0
            && self.listing_complete;
        if clean { 0 } else { 1 }
    }

    /// The run completed and both APIs answered: what `/readyz` counts as a success.
    pub fn healthy(&self) -> bool {
        !self.interrupted && self.unavailable == 0
    }

    /// The one-line summary printed at the end of every run.
    pub fn summary_line(&self) -> String {
        let mut s = String::from(if self.dry_run {
            "dry-run summary:"
        } else {
            "sync summary:"
        });
        let _ = write!(
            s,
            " mode={} created={} updated={} disabled={} archived={} unchanged={} failed={} invalid={} held_disables={} adopted={} conflicts={} drift={} hand_disabled={} listing_complete={} duration={:.3}s",
            if self.reconcile {
                "reconcile"
            } else if self.incremental {
                "incremental"
            } else {
                "full"
            },
            self.created,
            self.updated,
            self.disabled,
            self.archived,
            self.unchanged,
            self.failed,
            self.invalid,
            self.held_disables,
            self.adopted,
            self.conflicts,
            self.drift,
            self.hand_disabled,
            self.listing_complete,
            self.duration.as_secs_f64()
        );
        s
    }

    /// Lines naming every user that needs attention, for stdout before the summary.
    pub fn problem_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for i in &self.invalid_records {
            let id = i
                .nexudus_id
                .map_or_else(|| "?".to_string(), |id| id.to_string());
            lines.push(format!("invalid: nexudus_id={id} reason=\"{}\"", i.reason));
        }
        for f in &self.failures {
            lines.push(format!(
                "failed: nexudus_id={} extId={} reason=\"{}\"",
                f.nexudus_id, f.ext_id, f.reason
            ));
        }
        for c in &self.conflict_records {
            lines.push(format!(
                "conflict: nexudus_id={} extId={} candidates=[{}] reason=\"{}\"",
                c.nexudus_id,
                c.ext_id,
                c.candidates.join(","),
                c.reason
            ));
        }
        for a in &self.adoptions {
            lines.push(format!(
                "adopted: nexudus_id={} extId={}",
                a.nexudus_id, a.ext_id
            ));
        }
        for ext_id in &self.hand_disabled_users {
            lines.push(format!(
                "hand-disabled: extId={ext_id} is disabled in nevisIDM but active in Nexudus; left disabled (set sync.reenable_on_reconcile = true to re-enable)"
            ));
        }
        if !self.held.is_empty() {
            lines.push(format!(
                "held: {} disable(s) held back by the deletion safety: {}",
                self.held.len(),
                self.held.join(", ")
            ));
        }
        if let Some(reason) = &self.incomplete_reason {
            lines.push(format!(
                "incomplete listing: {reason}; no user was disabled for disappearing"
            ));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_remembers_every_kind_of_trouble() {
        let clean = RunReport {
            listing_complete: true,
            ..RunReport::default()
        };
        assert_eq!(clean.exit_code(), 0);
        for r in [
            RunReport {
                failed: 1,
                ..clean.clone()
            },
            RunReport {
                invalid: 1,
                ..clean.clone()
            },
            RunReport {
                held_disables: 1,
                ..clean.clone()
            },
            RunReport {
                conflicts: 1,
                ..clean.clone()
            },
            RunReport {
                listing_complete: false,
                ..clean.clone()
            },
        ] {
            assert_eq!(r.exit_code(), 1, "{r:?}");
        }
    }

    #[test]
    fn summary_names_all_counts() {
        let r = RunReport {
            created: 3,
            listing_complete: true,
            ..RunReport::default()
        };
        let line = r.summary_line();
        for key in [
            "created=3",
            "updated=0",
            "disabled=0",
            "unchanged=0",
            "failed=0",
            "duration=",
        ] {
            assert!(line.contains(key), "{line}");
        }
    }
}
