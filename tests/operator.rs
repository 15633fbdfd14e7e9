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

    // Once the user is accepted, nobody is failing: exit 0 and the table says so.
    env.nevis.clear_rejections();
    env.sync(&[]).await.assert_code(0);
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
