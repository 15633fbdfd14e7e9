//! What an operator asks at 3 a.m.: how did the last run go, and which users are failing, why?
//! One JSON document serves `/status` and `--status` (read from the store, or from the running
//! daemon when it holds the store's lock), and one renderer prints it.

use serde_json::{Value, json};

use crate::mapper::ext_id_with;
use crate::store::{Store, StoreError};
use crate::terminal::{aligned, printable};

/// The status document from the store, plus live fields when a daemon supplies them. A failing
/// user's extId is the one it has (checkpoint or adoption link), else the one it would get under
/// `ext_id_prefix`; a user whose values nevisIDM refused says when they are tried next
/// (`next_try`, Unix seconds; `null`: the next run tries) and how often they were refused.
pub fn document(
    store: &Store,
    ext_id_prefix: &str,
    live: Option<Value>,
) -> Result<Value, StoreError> {
    let mut last_run = match store.last_run()? {
        Some(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        None => Value::Null,
    };
    if let (Value::Object(run), Some(at)) = (&mut last_run, store.last_run_at()?) {
        run.insert("finished_at".into(), Value::from(at));
    }
    let failing: Vec<Value> = store
        .failures_since()?
        .into_iter()
        .map(|failure| {
            let id = failure.nexudus_id;
            let ext_id = match store.get(id).ok().flatten() {
                Some(checkpoint) => checkpoint.ext_id,
                None => store
                    .link(id)
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| ext_id_with(ext_id_prefix, id)),
            };
            let refusal = failure.refusal;
            json!({
                "nexudus_id": id,
                "ext_id": ext_id,
                "reason": failure.reason,
                "since": failure.since,
                "next_try": refusal.map(|r| r.next_at),
                "tries": refusal.map(|r| r.tries),
                "not_taken": refusal.is_some_and(|r| r.not_taken),
            })
        })
        .collect();
    // A wait for the Nexudus hour or day budget in progress (see `nexudus::pacer`).
    let quota_wait = store
        .meta_bytes(crate::nexudus::pacer::WAIT_KEY)?
        .filter(|bytes| !bytes.is_empty())
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .unwrap_or(Value::Null);
    let mut doc = json!({
        "last_run": last_run,
        "failing_users": failing,
        "nexudus_quota_wait": quota_wait,
        "directory_forms": directory_forms(store)?,
    });
    if let (Some(Value::Object(live)), Value::Object(doc)) = (live, &mut doc) {
        doc.extend(live);
    }
    Ok(doc)
}

/// Users shown at most in the list of forms nevisIDM keeps (the count covers all).
const FORMS_SHOWN: usize = 50;

/// Values nevisIDM keeps in its own form ([`crate::forms`]): how many users have any, and the
/// first of them with each field's value sent and held.
fn directory_forms(store: &Store) -> Result<Value, StoreError> {
    let (users, first) = store.learned_forms(FORMS_SHOWN)?;
    let shown: Vec<Value> = first
        .into_iter()
        .flat_map(|(id, forms)| {
            forms.learned.into_iter().map(move |(field, form)| {
                json!({
                    "nexudus_id": id,
                    "field": field.as_str(),
                    "sent": form.sent,
                    "held": form.held,
                })
            })
        })
        .collect();
    Ok(json!({ "users": users, "shown": shown }))
}

/// `--status` for a person: the last run as a small table of counts, what the daemon is doing,
/// any wait for the Nexudus budget, and the failing users as a table with their reasons.
/// (`--status --json` prints the document itself.)
pub fn render(doc: &Value) -> String {
    let mut out = String::new();
    render_last_run(doc.get("last_run"), &mut out);
    if let Some(running) = doc.get("running").and_then(Value::as_bool) {
        let ready = doc.get("ready").and_then(Value::as_bool);
        out.push_str(&format!(
            "{:<13}{}{}\n",
            "Daemon",
            if running {
                "running a sync now"
            } else {
                "idle"
            },
            match ready {
                Some(true) => ", ready",
                Some(false) => ", NOT ready",
                None => "",
            }
        ));
    }
    if let Some(now) = doc.get("run_in_flight").filter(|r| r.is_object()) {
        let eta = now
            .get("eta_seconds")
            .and_then(Value::as_u64)
            .map_or_else(|| "unknown".into(), |s| format!("{s} s"));
        out.push_str(&format!(
            "{:<13}listed {}/{} users, writes {} done {} in flight, {} failed, {} users/s, ETA {eta}\n",
            "Run now",
            count(now, "listed"),
            now.get("total_items")
                .and_then(Value::as_u64)
                .map_or_else(|| "?".into(), |t| t.to_string()),
            count(now, "writes_done"),
            count(now, "writes_in_flight"),
            count(now, "failures"),
            now.get("users_per_second").and_then(Value::as_f64).unwrap_or(0.0),
        ));
    }
    if let Some(wait) = doc.get("nexudus_quota_wait").filter(|w| w.is_object()) {
        out.push_str(&format!(
            "{:<13}{} ({} of {} requests used; until {})\n",
            "Nexudus",
            text(wait, "reason", "waiting for the request budget"),
            count(wait, "used"),
            count(wait, "limit"),
            when(wait.get("until")),
        ));
    }
    render_forms(doc, &mut out);
    render_failing(doc, &mut out);
    out
}

/// The values nevisIDM keeps in its own form, when there are any.
fn render_forms(doc: &Value, out: &mut String) {
    let Some(forms) = doc.get("directory_forms") else {
        return;
    };
    let users = count(forms, "users");
    if users == 0 {
        return;
    }
    out.push_str(&format!(
        "{:<13}nevisIDM keeps values of {users} user(s) in its own form (not drift, not written again):\n",
        "Forms"
    ));
    let mut rows = vec![vec![
        "nexudus_id".to_string(),
        "field".into(),
        "sent".into(),
        "held".into(),
    ]];
    for f in forms
        .get("shown")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        rows.push(vec![
            count(f, "nexudus_id").to_string(),
            text(f, "field", "?").to_string(),
            printable(text(f, "sent", "")),
            printable(text(f, "held", "")),
        ]);
    }
    table(&rows, out);
}

fn text<'a>(v: &'a Value, key: &str, default: &'a str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or(default)
}

fn count(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// A Unix time as UTC date and time, or "-".
fn when(secs: Option<&Value>) -> String {
    secs.and_then(Value::as_i64)
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map_or_else(
            || "-".into(),
            |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        )
}

/// Columns padded to the widest cell, two spaces apart, indented by two.
fn table(rows: &[Vec<String>], out: &mut String) {
    for line in aligned(rows) {
        let line = format!("  {line}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

fn render_last_run(run: Option<&Value>, out: &mut String) {
    let Some(run) = run.filter(|r| r.is_object()) else {
        out.push_str("Last run     none recorded yet\n");
        return;
    };
    let mode = if run.get("reconcile").and_then(Value::as_bool) == Some(true) {
        "reconcile"
    } else if run.get("incremental").and_then(Value::as_bool) == Some(true) {
        "incremental"
    } else {
        "full"
    };
    out.push_str(&format!(
        "{:<13}{} ({mode}{}), finished {}, took {:.3} s\n",
        "Last run",
        text(run, "run_id", "?"),
        if run.get("dry_run").and_then(Value::as_bool) == Some(true) {
            ", dry run"
        } else {
            ""
        },
        when(run.get("finished_at")),
        run.get("duration").and_then(Value::as_f64).unwrap_or(0.0),
    ));
    let outcome = if let Some(fatal) = run.get("fatal").and_then(Value::as_str) {
        format!("FAILED: {fatal}")
    } else if run.get("interrupted").and_then(Value::as_bool) == Some(true) {
        "interrupted by a shutdown".into()
    } else {
        let complete = run.get("listing_complete").and_then(Value::as_bool) == Some(true);
        let problems = [
            "failed",
            "invalid",
            "held_disables",
            "conflicts",
            "role_failures",
            "held_revokes",
        ]
        .iter()
        .map(|k| count(run, k))
        .sum::<u64>()
            + u64::from(run.get("roles_incomplete").is_some_and(|v| !v.is_null()));
        let listing = if complete {
            "listing complete".to_string()
        } else {
            format!(
                "listing incomplete: {} (nobody disabled for vanishing)",
                text(run, "incomplete_reason", "reason not recorded")
            )
        };
        if complete && problems == 0 {
            format!("in sync; {listing}")
        } else {
            format!("finished with problems; {listing}")
        }
    };
    out.push_str(&format!("{:<13}{outcome}\n", "Outcome"));
    let columns = [
        "created",
        "updated",
        "disabled",
        "archived",
        "unchanged",
        "failed",
        "invalid",
        "held_disables",
        "conflicts",
    ];
    let header = columns.iter().map(|c| c.replace('_', " ")).collect();
    let values = columns.iter().map(|c| count(run, c).to_string()).collect();
    table(&[header, values], out);
    render_held(run, out);
    render_roles(run, out);
}

/// Held people named at most on the `Held` line (the count covers all).
const HELD_SHOWN: usize = 20;

/// The people whose disable the last run held back, by extId, and how to approve: every run
/// holds them again until then, so this line stays until a person decides.
fn render_held(run: &Value, out: &mut String) {
    let held = items(run, "held");
    if held.is_empty() {
        return;
    }
    let mut names: Vec<String> = held
        .iter()
        .take(HELD_SHOWN)
        .map(|v| printable(v.as_str().unwrap_or("?")))
        .collect();
    if held.len() > HELD_SHOWN {
        names.push(format!("and {} more", held.len() - HELD_SHOWN));
    }
    out.push_str(&format!(
        "{:<13}{} disable(s) held back, still active in nevisIDM: {}\n{:<13}held again by every run until approved: --sync-now --allow-mass-disable\n",
        "Held",
        held.len(),
        names.join(", "),
        "",
    ));
}

/// The role sync's part of the last run: its counts, then each failure and held revocation.
fn render_roles(run: &Value, out: &mut String) {
    let problems = items(run, "role_problems");
    let keys = ["granted", "revoked", "held_revokes", "role_failures"];
    let incomplete = run.get("roles_incomplete").and_then(Value::as_str);
    if problems.is_empty() && incomplete.is_none() && keys.iter().all(|k| count(run, k) == 0) {
        return;
    }
    out.push_str(&format!(
        "{:<13}granted {}, revoked {}, revocations held {}, failed {}\n",
        "Roles",
        count(run, "granted"),
        count(run, "revoked"),
        count(run, "held_revokes"),
        count(run, "role_failures"),
    ));
    if let Some(reason) = incomplete {
        out.push_str(&format!("{:<13}{reason}; no role was revoked\n", ""));
    }
    for reason in items(run, "role_holds").iter().filter_map(Value::as_str) {
        out.push_str(&format!("{:<13}held: {}\n", "", printable(reason)));
    }
    if problems.is_empty() {
        return;
    }
    let mut rows = vec![vec![
        "NEXUDUS ID".to_string(),
        "EXTID".into(),
        "OP".into(),
        "ROLE".into(),
        "REASON".into(),
    ]];
    for p in problems {
        rows.push(vec![
            count(p, "nexudus_id").to_string(),
            text(p, "ext_id", "?").to_string(),
            text(p, "op", "?").to_string(),
            text(p, "role", "?").to_string(),
            printable(text(p, "reason", "")),
        ]);
    }
    table(&rows, out);
}

fn render_failing(doc: &Value, out: &mut String) {
    let failing = items(doc, "failing_users");
    if failing.is_empty() {
        out.push_str("Failing      no user is failing\n");
        return;
    }
    out.push_str(&format!("Failing      {} user(s)\n", failing.len()));
    let mut rows = vec![vec![
        "NEXUDUS ID".to_string(),
        "EXTID".into(),
        "FAILING SINCE".into(),
        "NEXT TRY".into(),
        "REASON".into(),
    ]];
    for f in failing {
        let next = match f.get("next_try").filter(|n| !n.is_null()) {
            Some(at) => when(Some(at)),
            None => "next run".into(),
        };
        rows.push(vec![
            count(f, "nexudus_id").to_string(),
            text(f, "ext_id", "?").to_string(),
            when(f.get("since")),
            next,
            printable(text(f, "reason", "")),
        ]);
    }
    table(&rows, out);
}

/// The array at `key` of `doc` (none when it is missing or not an array).
fn items<'a>(doc: &'a Value, key: &str) -> &'a [Value] {
    doc.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// Number of failing users in a status document.
pub fn failing_count(doc: &Value) -> usize {
    doc.get("failing_users")
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_lists_failures_and_last_run() {
        let store = Store::temporary().unwrap();
        store
            .record_failure(7, "invalid: email is missing or blank")
            .unwrap();
        store
            .set_last_run(br#"{"run_id":"abc","created":2,"failed":1,"listing_complete":true,"duration":1.5}"#)
            .unwrap();
        store.set_link(8, "hr-8").unwrap();
        store.record_failure(8, "conflict").unwrap();
        let doc = document(&store, "acme-", Some(json!({"running": false}))).unwrap();
        assert_eq!(failing_count(&doc), 2);
        let text = render(&doc);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("Last run     abc (full), finished 20"),
            "{text}"
        );
        assert_eq!(
            lines[1], "Outcome      finished with problems; listing complete",
            "{text}"
        );
        // The counts as a table: a header and the values under it.
        let header = lines[2].find("created").expect("header");
        assert_eq!(&lines[3][header..header + 1], "2", "{text}");
        assert!(text.contains("Daemon       idle"), "{text}");
        assert!(text.contains("Failing      2 user(s)"), "{text}");
        let row = |ext: &str| {
            lines
                .iter()
                .find(|l| l.contains(ext))
                .unwrap_or_else(|| panic!("no row for {ext}:\n{text}"))
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        };
        let seven = row("acme-7");
        assert_eq!(seven[0], "7");
        assert!(seven[2].ends_with("UTC"), "since: {seven:?}");
        assert_eq!(seven[3], "next run");
        assert_eq!(seven[4], "invalid: email is missing or blank");
        assert_eq!(row("hr-8")[0], "8");
        assert!(doc["failing_users"][0]["since"].as_u64().is_some(), "{doc}");
        assert!(doc["last_run"]["finished_at"].as_u64().is_some(), "{doc}");
    }

    #[test]
    fn held_people_are_named_with_how_to_approve() {
        let store = Store::temporary().unwrap();
        let held: Vec<String> = (1..=22).map(|i| format!("acme-{i}")).collect();
        let run =
            json!({"run_id": "r", "held_disables": 22, "held": held, "listing_complete": true});
        store.set_last_run(run.to_string().as_bytes()).unwrap();
        let text = render(&document(&store, "acme-", None).unwrap());
        assert!(
            text.contains(
                "Held         22 disable(s) held back, still active in nevisIDM: acme-1, acme-2,"
            ),
            "{text}"
        );
        assert!(text.contains("acme-20, and 2 more\n"), "{text}");
        assert!(!text.contains("acme-21"), "{text}");
        assert!(text.contains("--allow-mass-disable"), "{text}");
    }

    #[test]
    fn a_refused_user_shows_when_it_is_tried_next() {
        let store = Store::temporary().unwrap();
        let refusal = crate::refusal::Refusal::after(None, 1, 1_796_083_200, true);
        store.record_refusal(9, "422 no", &refusal).unwrap();
        let doc = document(&store, "acme-", None).unwrap();
        let failing = &doc["failing_users"][0];
        assert_eq!(failing["next_try"], 1_796_086_800u64, "{doc}");
        assert_eq!(
            (failing["tries"].as_u64(), failing["not_taken"].as_bool()),
            (Some(1), Some(true))
        );
        let text = render(&doc);
        assert!(text.contains("NEXT TRY"), "{text}");
        assert!(text.contains("2026-12-01 01:00:00 UTC"), "{text}");
    }

    #[test]
    fn a_run_in_flight_shows_its_progress() {
        let store = Store::temporary().unwrap();
        let progress = crate::progress::Progress::new();
        progress.set_total(10);
        progress.listed(5);
        progress.write_started();
        let live = json!({
            "running": true,
            "ready": true,
            "run_in_flight": progress.snapshot().to_json(),
        });
        let doc = document(&store, "acme-", Some(live)).unwrap();
        let text = render(&doc);
        assert!(
            text.contains("Daemon       running a sync now, ready"),
            "{text}"
        );
        assert!(
            text.contains("Run now      listed 5/10 users, writes 0 done 1 in flight, 0 failed"),
            "{text}"
        );
    }
}
