//! What an operator asks at 3 a.m.: how did the last run go, and which users are failing, why?
//! One JSON document serves `/status` and `--status` (read from the store, or from the running
//! daemon when it holds the store's lock), and one renderer prints it.

use serde_json::{Value, json};

use crate::mapper::ext_id_with;
use crate::store::{Store, StoreError};

/// The status document from the store, plus live fields when a daemon supplies them. A failing
/// user's extId is the one it has (checkpoint or adoption link), else the one it would get under
/// `ext_id_prefix`.
pub fn document(
    store: &Store,
    ext_id_prefix: &str,
    live: Option<Value>,
) -> Result<Value, StoreError> {
    let last_run = match store.last_run()? {
        Some(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        None => Value::Null,
    };
    let failing: Vec<Value> = store
        .failures()?
        .into_iter()
        .map(|(id, reason)| {
            let ext_id = match store.get(id).ok().flatten() {
                Some(checkpoint) => checkpoint.ext_id,
                None => store
                    .link(id)
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| ext_id_with(ext_id_prefix, id)),
            };
            json!({ "nexudus_id": id, "ext_id": ext_id, "reason": reason })
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
    });
    if let (Some(Value::Object(live)), Value::Object(doc)) = (live, &mut doc) {
        doc.extend(live);
    }
    Ok(doc)
}

/// Human-readable lines for `--status`.
pub fn render(doc: &Value) -> String {
    let mut out = String::new();
    match doc.get("last_run") {
        Some(run) if run.is_object() => {
            let n = |k: &str| run.get(k).and_then(Value::as_u64).unwrap_or(0);
            out.push_str(&format!(
                "last run {}: created={} updated={} disabled={} unchanged={} failed={} invalid={} held_disables={} listing_complete={} duration={:.3}s\n",
                run.get("run_id").and_then(Value::as_str).unwrap_or("?"),
                n("created"),
                n("updated"),
                n("disabled"),
                n("unchanged"),
                n("failed"),
                n("invalid"),
                n("held_disables"),
                run.get("listing_complete").and_then(Value::as_bool).unwrap_or(false),
                run.get("duration").and_then(Value::as_f64).unwrap_or(0.0),
            ));
            if let Some(fatal) = run.get("fatal").and_then(Value::as_str) {
                out.push_str(&format!("last run failed: {fatal}\n"));
            }
            if run.get("interrupted").and_then(Value::as_bool) == Some(true) {
                out.push_str("last run was interrupted by a shutdown\n");
            }
        }
        _ => out.push_str("no run recorded yet\n"),
    }
    if let Some(wait) = doc.get("nexudus_quota_wait").filter(|w| w.is_object()) {
        out.push_str(&format!(
            "nexudus: {} ({} of {} requests used; until unix time {})\n",
            wait.get("reason")
                .and_then(Value::as_str)
                .unwrap_or("waiting for the request budget"),
            wait.get("used").and_then(Value::as_u64).unwrap_or(0),
            wait.get("limit").and_then(Value::as_u64).unwrap_or(0),
            wait.get("until").and_then(Value::as_u64).unwrap_or(0),
        ));
    }
    if let Some(running) = doc.get("running").and_then(Value::as_bool) {
        out.push_str(&format!("daemon: running a sync now: {running}\n"));
    }
    let failing = doc
        .get("failing_users")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    out.push_str(&format!("failing users: {}\n", failing.len()));
    for f in failing {
        out.push_str(&format!(
            "  nexudus_id={} extId={} reason=\"{}\"\n",
            f.get("nexudus_id").and_then(Value::as_u64).unwrap_or(0),
            f.get("ext_id").and_then(Value::as_str).unwrap_or("?"),
            f.get("reason").and_then(Value::as_str).unwrap_or("")
        ));
    }
    out
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
        assert!(text.contains("last run abc: created=2"), "{text}");
        assert!(
            text.contains(
                "nexudus_id=7 extId=acme-7 reason=\"invalid: email is missing or blank\""
            ),
            "{text}"
        );
        assert!(text.contains("nexudus_id=8 extId=hr-8"), "{text}");
        assert!(text.contains("running a sync now: false"), "{text}");
    }
}
