//! Reading the log: `--history` and the daemon's `/history`. One person's entries (by extId or
//! Nexudus Id), or everyone's since a time, optionally only one operation or outcome; newest
//! first, as a table for a person or as JSON lines (one entry each) for a SIEM or a ticket.

use std::collections::BTreeMap;

use super::entry::{Entry, Operation, Verdict};
use crate::store::{AuditEntry, Store, StoreError};
use crate::terminal::{aligned, printable};

/// What to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// An extId or a Nexudus Id; `None`: everyone.
    pub who: Option<String>,
    /// Unix seconds: only entries at or after this time.
    pub since: Option<u64>,
    pub operation: Option<Operation>,
    pub outcome: Option<Verdict>,
    /// At most this many entries (the newest).
    pub limit: Option<usize>,
}

impl Query {
    /// The query from `/history`'s parameters (`who`, `since`, `op`, `outcome`, `limit`), with
    /// `now` to read a `since` given as a duration.
    pub fn from_params(params: &BTreeMap<String, String>, now: u64) -> Result<Query, String> {
        let mut query = Query {
            who: params.get("who").filter(|w| !w.is_empty()).cloned(),
            ..Query::default()
        };
        if let Some(since) = params.get("since") {
            query.since = Some(parse_since(since, now)?);
        }
        if let Some(op) = params.get("op") {
            query.operation = Some(parse_operation(op)?);
        }
        if let Some(outcome) = params.get("outcome") {
            query.outcome = Some(parse_outcome(outcome)?);
        }
        if let Some(limit) = params.get("limit") {
            let n = limit
                .parse::<usize>()
                .map_err(|_| format!("limit {limit:?} is not a number"))?;
            query.limit = Some(n);
        }
        Ok(query)
    }

    /// The parameters of `/history` that ask the daemon the same (the since as Unix seconds).
    pub fn to_params(&self) -> Vec<(&'static str, String)> {
        let mut params = Vec::new();
        if let Some(who) = &self.who {
            params.push(("who", who.clone()));
        }
        if let Some(since) = self.since {
            params.push(("since", since.to_string()));
        }
        if let Some(op) = self.operation {
            params.push(("op", op.as_str().to_string()));
        }
        if let Some(outcome) = self.outcome {
            params.push(("outcome", outcome.as_str().to_string()));
        }
        if let Some(limit) = self.limit {
            params.push(("limit", limit.to_string()));
        }
        params
    }

    /// The matching entries, newest first. An entry that cannot be read is skipped with a
    /// warning (the rest of the log stays readable).
    pub fn run(&self, store: &Store) -> Result<Vec<Entry>, StoreError> {
        let since = self.since.unwrap_or(0);
        let raw: Box<dyn Iterator<Item = Result<AuditEntry, StoreError>>> = match &self.who {
            Some(who) => Box::new(of_person(store, who)?.into_iter().map(Ok)),
            None => Box::new(store.audit_since(since)),
        };
        let mut found = Vec::new();
        for item in raw {
            let item = item?;
            if item.at < since {
                continue;
            }
            let entry = match entry_of(item) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable provisioning-log entry skipped");
                    continue;
                }
            };
            if self.operation.is_some_and(|op| op != entry.operation)
                || self.outcome.is_some_and(|o| o != entry.outcome)
            {
                continue;
            }
            found.push(entry);
            if self.limit.is_some_and(|n| found.len() >= n) {
                break;
            }
        }
        Ok(found)
    }
}

/// An entry read from the store.
pub fn entry_of(item: AuditEntry) -> Result<Entry, String> {
    let time = super::rfc3339(item.at);
    Entry::from_stored(time, item.nexudus_id, item.ext_id, &item.body)
}

/// One person's entries: those of the Nexudus Id `who` names, and those of the extId `who`,
/// newest first, each once.
fn of_person(store: &Store, who: &str) -> Result<Vec<AuditEntry>, StoreError> {
    let mut entries = store.audit_of_ext_id(who)?;
    if let Ok(id) = who.parse::<u64>() {
        entries.extend(store.audit_of_user(id)?);
    }
    // Newest first; an entry found both ways once.
    entries.sort_by_key(|e| std::cmp::Reverse((e.at, e.seq)));
    entries.dedup_by_key(|e| e.seq);
    Ok(entries)
}

/// `--since`: a duration back from `now` (`24h`, `7d`, `90m`) or an RFC 3339 time.
pub fn parse_since(text: &str, now: u64) -> Result<u64, String> {
    if let Ok(d) = humantime::parse_duration(text) {
        return Ok(now.saturating_sub(d.as_secs()));
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(u64::try_from(t.timestamp()).unwrap_or(0));
    }
    // What `to_params` sends the daemon.
    text.parse::<u64>().map_err(|_| {
        format!("--since {text:?} is neither a duration (24h, 7d) nor an RFC 3339 time")
    })
}

pub fn parse_operation(text: &str) -> Result<Operation, String> {
    Operation::parse(text).ok_or_else(|| {
        let all: Vec<_> = super::entry::ALL_OPERATIONS
            .iter()
            .map(|o| o.as_str())
            .collect();
        format!("--op {text:?} is not one of {}", all.join(", "))
    })
}

pub fn parse_outcome(text: &str) -> Result<Verdict, String> {
    Verdict::parse(text).ok_or_else(|| {
        let all: Vec<_> = super::entry::ALL_VERDICTS
            .iter()
            .map(|v| v.as_str())
            .collect();
        format!("--outcome {text:?} is not one of {}", all.join(", "))
    })
}

/// JSON lines: one entry per line.
pub fn json_lines(entries: &[Entry]) -> String {
    let mut out = String::new();
    for entry in entries {
        if let Ok(line) = serde_json::to_string(entry) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// Reads JSON lines back (what the daemon's `/history` answers).
pub fn from_json_lines(text: &str) -> Result<Vec<Entry>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("unreadable history line: {e}")))
        .collect()
}

/// A table for a person: a row per entry (time, who, operation, outcome, cause), and under it
/// a line per field changed, with its value before and after.
pub fn table(entries: &[Entry]) -> String {
    if entries.is_empty() {
        return "no entries\n".into();
    }
    let header = ["TIME", "WHO", "OPERATION", "OUTCOME", "CAUSE"];
    let mut rows = vec![header.map(String::from).to_vec()];
    for e in entries {
        let who = match e.nexudus_id {
            Some(id) => format!("{} ({id})", e.ext_id),
            None => e.ext_id.clone(),
        };
        rows.push(vec![
            e.time.clone(),
            printable(&who),
            e.operation.as_str().into(),
            outcome(e),
            printable(&e.cause),
        ]);
    }
    let mut out = String::new();
    for (i, line) in aligned(&rows).into_iter().enumerate() {
        out.push_str(&line);
        out.push('\n');
        if let Some(entry) = i.checked_sub(1).map(|i| &entries[i]) {
            for change in changes(entry) {
                out.push_str(&format!("    {}\n", printable(&change)));
            }
        }
    }
    out
}

fn outcome(e: &Entry) -> String {
    let mut s = e.outcome.as_str().to_string();
    match (&e.status, &e.reason) {
        (Some(status), Some(reason)) => s.push_str(&format!(" (HTTP {status}: {reason})")),
        (Some(status), None) => s.push_str(&format!(" (HTTP {status})")),
        (None, Some(reason)) => s.push_str(&format!(" ({reason})")),
        (None, None) => {}
    }
    printable(&s)
}

/// One line per field changed: `field: before -> after` (`-` for no value), or the field alone
/// when `audit.values = "none"` kept no value.
fn changes(e: &Entry) -> Vec<String> {
    e.changes
        .iter()
        .map(|c| match (&c.before, &c.after) {
            (None, None) => c.field.clone(),
            (before, after) => format!(
                "{}: {} -> {}",
                c.field,
                before.as_deref().unwrap_or("-"),
                after.as_deref().unwrap_or("-")
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Change, Draft, Recorder, cause};
    use crate::config::{AuditConfig, AuditValues};

    fn draft(id: u64, operation: Operation, outcome: Verdict) -> Draft {
        Draft {
            nexudus_id: Some(id),
            ext_id: format!("nexudus-{id}"),
            operation,
            changes: vec![Change {
                field: "userState".into(),
                before: Some("active".into()),
                after: Some("disabled".into()),
            }],
            outcome,
            status: Some(200),
            reason: None,
            cause: cause::GONE_CONFIRMED.into(),
        }
    }

    fn filled() -> (Store, crate::clock::Clock) {
        let clock = crate::clock::Clock::manual(1_800_000_000);
        let store = Store::temporary().unwrap().with_clock(clock.clone());
        let cfg = AuditConfig {
            enabled: true,
            retention: std::time::Duration::from_secs(86_400 * 90),
            max_entries: 100,
            values: AuditValues::Full,
        };
        let log = Recorder::start(&cfg, &store, "r1", "full").unwrap();
        log.write(draft(1, Operation::Create, Verdict::Confirmed))
            .unwrap();
        clock.advance(std::time::Duration::from_secs(3_600));
        log.write(draft(2, Operation::Disable, Verdict::Refused))
            .unwrap();
        clock.advance(std::time::Duration::from_secs(3_600));
        log.write(draft(1, Operation::Disable, Verdict::Confirmed))
            .unwrap();
        (store, clock)
    }

    #[test]
    fn a_person_is_found_by_ext_id_or_nexudus_id_newest_first() {
        let (store, _) = filled();
        for who in ["1", "nexudus-1"] {
            let q = Query {
                who: Some(who.into()),
                ..Query::default()
            };
            let ops: Vec<_> = q.run(&store).unwrap().iter().map(|e| e.operation).collect();
            assert_eq!(ops, [Operation::Disable, Operation::Create], "{who}");
        }
    }

    #[test]
    fn since_op_and_outcome_filter() {
        let (store, clock) = filled();
        let now = clock.now();
        let q = Query {
            since: Some(parse_since("90m", now).unwrap()),
            ..Query::default()
        };
        assert_eq!(q.run(&store).unwrap().len(), 2);
        let q = Query {
            operation: Some(Operation::Disable),
            outcome: Some(Verdict::Refused),
            ..Query::default()
        };
        let found = q.run(&store).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].nexudus_id, Some(2));
        let at = parse_since("2027-01-15T08:00:00Z", now).unwrap();
        assert_eq!(at, 1_800_000_000);
        assert!(parse_since("yesterday", now).is_err());
    }

    #[test]
    fn params_round_trip_and_lines_read_back() {
        let q = Query {
            who: Some("nexudus-1".into()),
            since: Some(5),
            operation: Some(Operation::Revoke),
            outcome: Some(Verdict::Held),
            limit: Some(3),
        };
        let params: BTreeMap<String, String> = q
            .to_params()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(Query::from_params(&params, 0).unwrap(), q);
        let (store, _) = filled();
        let all = Query::default().run(&store).unwrap();
        assert_eq!(from_json_lines(&json_lines(&all)).unwrap(), all);
        let text = table(&all);
        assert!(text.contains("userState: active -> disabled"), "{text}");
        assert!(text.contains("refused (HTTP 200)"), "{text}");
    }
}
