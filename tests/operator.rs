//! What an operator sees (issue 15): `--status` as a readable table, `--status --json` as the
//! document `/status` serves, and `--demo` walking the whole job.

mod common;

use common::{Env, run_cmd};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_a_table_for_people_and_the_document_as_json() {
    let env = Env::start().await;
    let ids = env.seed(3);
    let refused = format!("nexudus-{}", ids[1]);
    env.nevis.reject_user(
        &refused,
        422,
        "errors.invalidData",
        "email \"x@example.com\" is invalid",
    );
    env.sync(&[]).await.assert_code(1);

    let table = run_cmd(env.command(&["--status"])).await;
    table.assert_code(1);
    let out = &table.stdout;
    assert!(out.starts_with("Last run     "), "{out}");
    assert!(out.contains("(full), finished 20"), "{out}");
    assert!(
        out.contains("Outcome      finished with problems; listing complete"),
        "{out}"
    );
    let lines: Vec<&str> = out.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.contains("created") && l.contains("failed"))
        .expect("a header row of counts");
    let at = lines[header].find("created").expect("created column");
    assert_eq!(&lines[header + 1][at..at + 1], "2", "{out}");
    assert!(out.contains("Failing      1 user(s)"), "{out}");
    let row = lines
        .iter()
        .find(|l| l.contains(&refused))
        .unwrap_or_else(|| panic!("no row for {refused}:\n{out}"));
    assert!(row.trim_start().starts_with(&ids[1].to_string()), "{row}");
    assert!(row.contains("UTC"), "failing since: {row}");
    assert!(row.contains("errors.invalidData"), "{row}");
    assert!(!out.trim_start().starts_with('{'), "a table, not JSON");

    let json = run_cmd(env.command(&["--status", "--json"])).await;
    json.assert_code(1);
    let doc: Value = serde_json::from_str(json.stdout.trim()).expect("--status --json is JSON");
    assert_eq!(doc["failing_users"][0]["ext_id"], refused.as_str(), "{doc}");
    assert!(doc["failing_users"][0]["since"].is_u64(), "{doc}");
    assert_eq!(doc["last_run"]["created"], 2, "{doc}");
    assert!(doc["last_run"]["finished_at"].is_u64(), "{doc}");

    // Once the user is accepted (a reconcile tries refused users at once), nobody is failing:
    // exit 0 and the table says so.
    env.nevis.clear_rejections();
    env.sync(&["--reconcile"]).await.assert_code(0);
    let table = run_cmd(env.command(&["--status"])).await;
    table.assert_code(0);
    assert!(
        table.stdout.contains("no user is failing"),
        "{}",
        table.stdout
    );
    assert!(
        table
            .stdout
            .contains("Outcome      in sync; listing complete"),
        "{}",
        table.stdout
    );
}

/// Not on a terminal, a run logs its progress every `log.progress_interval` on stderr, with the
/// numbers as fields in JSON logs; stdout (the dry run's plan) carries none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_logged_on_stderr_and_never_mixed_into_the_plan() {
    let env = Env::start().await;
    env.seed(6);
    env.set("nexudus.page_size", "2");
    env.set("log.progress_interval", &common::quote("1s"));
    env.set("log.format", &common::quote("json"));
    // Slow pages: the listing takes well over a second.
    env.nexudus
        .set_latency(std::time::Duration::from_millis(700));
    let run = env.sync(&["--dry-run"]).await;
    run.assert_code(0);
    let progress: Vec<Value> = run
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("progress: "))
        })
        .collect();
    assert!(!progress.is_empty(), "no progress line:\n{}", run.stderr);
    let fields = &progress[0]["fields"];
    assert!(fields["listed"].is_u64(), "{fields}");
    assert!(fields["writes_in_flight"].is_u64(), "{fields}");
    assert!(fields["total_items"].is_u64(), "{fields}");
    for line in run.stdout.lines() {
        assert!(
            line.starts_with('{') || line.starts_with("dry-run summary:"),
            "stdout holds only the plan and the summary: {line}"
        );
        assert!(!line.contains("progress"), "{line}");
    }
    assert_eq!(
        run.stdout.lines().filter(|l| l.starts_with('{')).count(),
        6,
        "{}",
        run.stdout
    );
}

/// On a terminal, `--sync-now` draws a live progress line (here a pseudo-terminal from
/// util-linux's `script`), then prints the summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_sync_now_draws_a_live_progress_line() {
    let env = Env::start().await;
    env.seed(6);
    env.set("nexudus.page_size", "2");
    env.nexudus
        .set_latency(std::time::Duration::from_millis(600));
    let line = format!(
        "{} --config {} --sync-now",
        common::BIN,
        env.config.display()
    );
    let mut cmd = tokio::process::Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .env_remove("RUST_LOG");
    let run = run_cmd(cmd).await;
    run.assert_code(0);
    let out = &run.stdout;
    assert!(out.contains("listed "), "no progress line:\n{out}");
    assert!(out.contains("users/s, ETA"), "no progress line:\n{out}");
    assert!(out.contains("sync summary: mode=full created=6"), "{out}");
}
