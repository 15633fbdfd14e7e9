//! Reading the log: `--history` and the daemon's `/history`. One person's entries (by extId or
//! Nexudus Id), or everyone's since a time, optionally only one operation or outcome; newest
//! first, a page at a time, as a table for a person or as JSON lines (one entry each) for a
//! SIEM or a ticket.
//!
//! A page holds at most `limit` entries (1,000 unless asked otherwise) and says where the next
//! one starts (its [`Cursor`]: `--before`, `before=`). Entries are read from the store one by
//! one as the page fills, never the whole log or a whole index at once, so the memory a query
//! takes does not grow with the log.

use std::collections::BTreeMap;
use std::iter::Peekable;

use super::entry::{Entry, Operation, Verdict};
use crate::store::{AuditEntry, Store, StoreError};
use crate::terminal::{aligned, printable};

/// Entries a page holds unless the query says otherwise.
pub const DEFAULT_LIMIT: usize = 1_000;
/// The most a page holds: the rest is read page by page.
pub const MAX_LIMIT: usize = 10_000;

/// Where a page starts: the entries older than the entry at this position (time, sequence),
/// written `<unix seconds>-<sequence>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    at: u64,
    seq: u64,
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.at, self.seq)
    }
}

impl std::str::FromStr for Cursor {
    type Err = String;

    fn from_str(text: &str) -> Result<Cursor, String> {
        let parsed = text
            .split_once('-')
            .and_then(|(at, seq)| Some((at.parse().ok()?, seq.parse().ok()?)));
        match parsed {
            Some((at, seq)) => Ok(Cursor { at, seq }),
            None => Err(format!(
                "--before {text:?} is not a cursor (what a page ends with: \"next page: \
                 --before 1780000000-42\")"
            )),
        }
    }
}

/// What to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// An extId or a Nexudus Id; `None`: everyone.
    pub who: Option<String>,
    /// Unix seconds: only entries at or after this time.
    pub since: Option<u64>,
    pub operation: Option<Operation>,
    pub outcome: Option<Verdict>,
    /// At most this many entries (the newest); [`DEFAULT_LIMIT`] when not set.
    pub limit: Option<usize>,
    /// Only entries older than this one: the next page.
    pub before: Option<Cursor>,
}

/// One page of entries, newest first, and where the next one starts, if there is one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub entries: Vec<Entry>,
    pub next: Option<Cursor>,
}

impl Query {
    /// The query from `/history`'s parameters (`who`, `since`, `op`, `outcome`, `limit`,
    /// `before`), with `now` to read a `since` given as a duration.
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
        if let Some(before) = params.get("before") {
            query.before = Some(before.parse()?);
        }
        query.check()?;
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
        if let Some(before) = self.before {
            params.push(("before", before.to_string()));
        }
        params
    }

    /// A limit the query cannot serve.
    pub fn check(&self) -> Result<(), String> {
        match self.limit {
            Some(n) if n == 0 || n > MAX_LIMIT => Err(format!(
                "limit {n} is not between 1 and {MAX_LIMIT}: read more page by page \
                 (--before, before=)"
            )),
            _ => Ok(()),
        }
    }

    /// The page of matching entries, newest first. An entry that cannot be read is skipped
    /// with a warning (the rest of the log stays readable).
    pub fn run(&self, store: &Store) -> Result<Page, StoreError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        let since = self.since.unwrap_or(0);
        let before = self.before.map(|c| (c.at, c.seq));
        let raw: Box<dyn Iterator<Item = Result<AuditEntry, StoreError>>> = match &self.who {
            Some(who) => Box::new(of_person(store, who, since, before)),
            None => Box::new(store.audit_newest(since, before)),
        };
        let mut page = Page::default();
        let mut last = None;
        for item in raw {
            let item = item?;
            let (at, seq) = item.position();
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
            if page.entries.len() == limit {
                // One more matches: the next page starts after the last one kept.
                page.next = last;
                break;
            }
            page.entries.push(entry);
            last = Some(Cursor { at, seq });
        }
        Ok(page)
    }
}

/// An entry read from the store.
pub fn entry_of(item: AuditEntry) -> Result<Entry, String> {
    let time = super::rfc3339(item.at);
    let cursor = Cursor {
        at: item.at,
        seq: item.seq,
    };
    let mut entry = Entry::from_stored(time, item.nexudus_id, item.ext_id, &item.body)?;
    entry.cursor = cursor.to_string();
    Ok(entry)
}

type Entries<'a> = Box<dyn Iterator<Item = Result<AuditEntry, StoreError>> + 'a>;

/// One person's entries: those of the Nexudus Id `who` names, and those of the extId `who`,
/// newest first, each once, read from the two indexes side by side.
fn of_person<'a>(
    store: &'a Store,
    who: &str,
    since: u64,
    before: Option<(u64, u64)>,
) -> Merged<'a> {
    let by_ext_id: Entries<'a> = Box::new(store.audit_of_ext_id(who, since, before));
    let by_id: Entries<'a> = match who.parse::<u64>() {
        Ok(id) => Box::new(store.audit_of_user(id, since, before)),
        Err(_) => Box::new(std::iter::empty()),
    };
    Merged {
        a: by_ext_id.peekable(),
        b: by_id.peekable(),
    }
}

/// Two newest-first streams of entries as one, an entry in both once.
struct Merged<'a> {
    a: Peekable<Entries<'a>>,
    b: Peekable<Entries<'a>>,
}

impl Iterator for Merged<'_> {
    type Item = Result<AuditEntry, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let a = match self.a.peek() {
            Some(Err(_)) => return self.a.next(),
            head => head.map(|e| e.as_ref().map(AuditEntry::position).ok()),
        };
        let b = match self.b.peek() {
            Some(Err(_)) => return self.b.next(),
            head => head.map(|e| e.as_ref().map(AuditEntry::position).ok()),
        };
        match (a.flatten(), b.flatten()) {
            (None, None) => None,
            (Some(_), None) => self.a.next(),
            (None, Some(_)) => self.b.next(),
            (Some(x), Some(y)) if x > y => self.a.next(),
            (Some(x), Some(y)) if x < y => self.b.next(),
            // The same entry, found both ways.
            _ => {
                self.b.next();
                self.a.next()
            }
        }
    }
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

/// The last line of a JSON-lines page that has a next one: `{"next_before":"<cursor>"}`.
const NEXT_KEY: &str = "next_before";

/// JSON lines: one entry per line, then, when there is a next page, a line saying where it
/// starts (`{"next_before":"…"}`, a line without `time`).
pub fn json_lines(page: &Page) -> String {
    let mut out = String::new();
    for entry in &page.entries {
        if let Ok(line) = serde_json::to_string(entry) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    if let Some(next) = page.next {
        out.push_str(&serde_json::json!({ NEXT_KEY: next.to_string() }).to_string());
        out.push('\n');
    }
    out
}

/// Reads JSON lines back (what the daemon's `/history` answers).
pub fn from_json_lines(text: &str) -> Result<Page, String> {
    let mut page = Page::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("unreadable history line: {e}"))?;
        if let Some(next) = value.get(NEXT_KEY).and_then(|n| n.as_str()) {
            page.next = Some(next.parse()?);
            continue;
        }
        let entry =
            serde_json::from_value(value).map_err(|e| format!("unreadable history line: {e}"))?;
        page.entries.push(entry);
    }
    Ok(page)
}

/// A table for a person: a row per entry (time, who, operation, outcome, cause), and under it
/// a line per field changed, with its value before and after; last, where the next page
/// starts, when there is one.
pub fn table(page: &Page) -> String {
    let entries = &page.entries;
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
    if let Some(next) = page.next {
        out.push_str(&format!("next page: --before {next}\n"));
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
            let ops: Vec<_> = q
                .run(&store)
                .unwrap()
                .entries
                .iter()
                .map(|e| e.operation)
                .collect();
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
        assert_eq!(q.run(&store).unwrap().entries.len(), 2);
        let q = Query {
            operation: Some(Operation::Disable),
            outcome: Some(Verdict::Refused),
            ..Query::default()
        };
        let found = q.run(&store).unwrap().entries;
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
            before: Some("1800000000-7".parse().unwrap()),
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
        let first = Query {
            limit: Some(1),
            ..Query::default()
        }
        .run(&store)
        .unwrap();
        assert!(first.next.is_some());
        assert_eq!(from_json_lines(&json_lines(&first)).unwrap(), first);
        assert!(table(&first).ends_with(&format!("next page: --before {}\n", first.next.unwrap())));
        let text = table(&all);
        assert!(text.contains("userState: active -> disabled"), "{text}");
        assert!(text.contains("refused (HTTP 200)"), "{text}");
    }

    #[test]
    fn pages_follow_each_other_newest_first_each_entry_once() {
        let (store, _) = filled();
        for who in [None, Some("1"), Some("nexudus-1")] {
            let mut query = Query {
                who: who.map(String::from),
                limit: Some(1),
                ..Query::default()
            };
            let mut seen = Vec::new();
            for _ in 0..10 {
                let page = query.run(&store).unwrap();
                assert!(page.entries.len() <= 1);
                seen.extend(page.entries.iter().map(|e| e.cursor.clone()));
                match page.next {
                    Some(next) => query.before = Some(next),
                    None => break,
                }
            }
            let all = Query {
                who: who.map(String::from),
                ..Query::default()
            };
            let whole: Vec<_> = all
                .run(&store)
                .unwrap()
                .entries
                .into_iter()
                .map(|e| e.cursor)
                .collect();
            assert_eq!(seen, whole, "{who:?}");
            assert_eq!(whole.len(), if who.is_none() { 3 } else { 2 });
        }
        assert!(Query::from_params(&[("limit".to_string(), "0".to_string())].into(), 0).is_err());
        assert!("17".parse::<Cursor>().is_err());
    }
}
