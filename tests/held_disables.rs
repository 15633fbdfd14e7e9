//! A held disappearance stays held: people whose disable the deletion safety held back are
//! decided again, held again and reported again by every later run — incremental or full, in a
//! new process each time, in the daemon — until an operator approves (`--allow-mass-disable`,
//! which works in an incremental run too) or they are listed again. The real binary against the
//! fakes over HTTP on 127.0.0.1.

mod common;

use common::{Daemon, Env, Run, run_cmd};
use serde_json::Value;

/// `n` users imported by a full `--sync-now`, then the first `gone` of them deleted from Nexudus.
async fn imported_then_deleted(n: usize, gone: usize) -> (Env, Vec<u64>) {
    let env = Env::start().await;
    let ids = env.seed(n);
    env.sync(&[]).await.assert_code(0);
    for &id in &ids[..gone] {
        assert!(env.nexudus.remove_user(id));
    }
    env.nevis.reset_stats();
    (env, ids)
}

fn ext_id(id: u64) -> String {
    format!("nexudus-{id}")
}

fn state(env: &Env, id: u64) -> String {
    let user = env.nevis.user(&ext_id(id)).expect("kept in nevisIDM");
    user["userState"].as_str().unwrap_or_default().to_string()
}

/// The run held `held` disables (exit 1, the summary, the `held:` line naming `named`), disabled
/// nobody, and ran in `mode`.
fn assert_held(run: &Run, held: u64, named: u64, mode: &str) {
    run.assert_code(1);
    assert!(
        run.stdout.contains(&format!("mode={mode} ")),
        "{}",
        run.stdout
    );
    assert_eq!(
        (run.count("held_disables"), run.count("disabled")),
        (held, 0),
        "{}",
        run.stdout
    );
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("held: {held} disable(s)")))
        .unwrap_or_else(|| panic!("no held line:\n{}", run.stdout));
    assert!(line.contains(&ext_id(named)), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_disappearances_stay_held_on_every_run_until_approved() {
    // The case: 40 of 300 vanish, more than 10 % of the users known.
    let (env, ids) = imported_then_deleted(300, 40).await;
    // Too many to search for: the incremental run lists everyone, which holds the 40.
    assert_held(&env.sync(&["--incremental"]).await, 40, ids[0], "full");
    // Nexudus's count agrees with the roster now: the next ticks stay incremental, and hold them
    // again, each in a new process reading the store afresh.
    for _ in 0..2 {
        assert_held(
            &env.sync(&["--incremental"]).await,
            40,
            ids[39],
            "incremental",
        );
    }
    // A dry run reports them as well, and changes nothing.
    assert_held(
        &env.sync(&["--incremental", "--dry-run"]).await,
        40,
        ids[0],
        "incremental",
    );
    // One more deletion: the probe brings a full listing, which holds the 41.
    assert!(env.nexudus.remove_user(ids[40]));
    assert_held(&env.sync(&["--incremental"]).await, 41, ids[40], "full");
    assert_held(
        &env.sync(&["--incremental"]).await,
        41,
        ids[40],
        "incremental",
    );
    // A scheduled full listing holds them too.
    assert_held(&env.sync(&[]).await, 41, ids[0], "full");
    // --status (reading the store) names them and says how to approve.
    let status = run_cmd(env.command(&["--status"])).await;
    assert!(
        status
            .stdout
            .contains("Held         41 disable(s) held back"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains(&ext_id(ids[0])), "{}", status.stdout);
    assert!(
        status.stdout.contains("--allow-mass-disable"),
        "{}",
        status.stdout
    );
    // Nobody was disabled meanwhile: held means held.
    assert_eq!(env.writes(), 0);
    assert_eq!(state(&env, ids[0]), "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_in_an_incremental_run_disables_the_people_a_full_listing_held() {
    // 5 of 30 vanish: 17 % > 10 %.
    let (env, ids) = imported_then_deleted(30, 5).await;
    assert_held(&env.sync(&["--incremental"]).await, 5, ids[0], "full");
    assert_held(
        &env.sync(&["--incremental"]).await,
        5,
        ids[4],
        "incremental",
    );
    // Held by a full listing before anyone was looked up: the approved incremental run lists
    // everyone, which looks each one up and disables them.
    let run = env.sync(&["--incremental", "--allow-mass-disable"]).await;
    run.assert_code(0);
    assert_eq!(
        (run.count("disabled"), run.count("held_disables")),
        (5, 0),
        "{}",
        run.stdout
    );
    for &id in &ids[..5] {
        assert_eq!(state(&env, id), "disabled");
    }
    assert_eq!(env.nexudus.stats().user_requests, 5, "each looked up once");
    // They are forgotten: the next run is clean and writes nothing.
    env.nevis.reset_stats();
    let run = env.sync(&["--incremental"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("mode=incremental "), "{}", run.stdout);
    assert_eq!(run.count("held_disables"), 0);
    assert_eq!(env.writes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_in_an_incremental_run_disables_the_people_the_search_found_and_held() {
    let env = Env::start().await;
    // 300 users in pages of 10: two deletions are searched for, not listed.
    env.set("nexudus.page_size", "10");
    env.set("sync.max_disables", "1");
    let ids = env.seed(300);
    env.sync(&[]).await.assert_code(0);
    assert!(env.nexudus.remove_user(ids[3]));
    assert!(env.nexudus.remove_user(ids[250]));
    env.nevis.reset_stats();
    assert_held(
        &env.sync(&["--incremental"]).await,
        2,
        ids[3],
        "incremental",
    );
    assert_held(
        &env.sync(&["--incremental"]).await,
        2,
        ids[250],
        "incremental",
    );
    assert_held(&env.sync(&[]).await, 2, ids[250], "full");
    assert_held(
        &env.sync(&["--incremental"]).await,
        2,
        ids[3],
        "incremental",
    );
    // Found gone by Nexudus's 404 already: approved, the incremental run disables them itself.
    let run = env.sync(&["--incremental", "--allow-mass-disable"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("mode=incremental "), "{}", run.stdout);
    assert_eq!(run.count("disabled"), 2);
    assert_eq!(
        (state(&env, ids[3]), state(&env, ids[250])),
        ("disabled".into(), "disabled".into())
    );
    env.nevis.reset_stats();
    let run = env.sync(&["--incremental"]).await;
    run.assert_code(0);
    assert_eq!(env.writes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_person_listed_again_is_no_longer_held() {
    let env = Env::start().await;
    let ids = env.seed(30);
    env.sync(&[]).await.assert_code(0);
    let record = env.nexudus.user(ids[0]).expect("a record");
    for &id in &ids[..5] {
        assert!(env.nexudus.remove_user(id));
    }
    assert_held(&env.sync(&["--incremental"]).await, 5, ids[0], "full");
    // Back in Nexudus (an undone deletion, say) and changed since.
    env.nexudus.insert_raw(ids[0], record);
    assert!(env.nexudus.update_user(ids[0], |_| {}));
    let run = env.sync(&["--incremental"]).await;
    assert_held(&run, 4, ids[1], "incremental");
    let held = run
        .stdout
        .lines()
        .find(|l| l.starts_with("held: "))
        .unwrap();
    assert!(!held.contains(&format!("{},", ext_id(ids[0]))), "{held}");
    assert!(!held.ends_with(&ext_id(ids[0])), "{held}");
    assert_held(&env.sync(&[]).await, 4, ids[1], "full");
    let run = env.sync(&["--allow-mass-disable"]).await;
    run.assert_code(0);
    assert_eq!(run.count("disabled"), 4);
    assert_eq!(state(&env, ids[0]), "active");
    assert_eq!(state(&env, ids[1]), "disabled");
    env.sync(&["--incremental"]).await.assert_code(0);
}

fn held_metric(text: &str) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics parse");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == "nexudus_nevis_sync_held_disables_total")
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// The last run in the daemon's `/status`: its id and its held disables.
async fn last_run(daemon: &Daemon) -> (String, u64) {
    let (_, body) = daemon.get("/status").await;
    let doc: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let run = &doc["last_run"];
    let id = run["run_id"].as_str().unwrap_or_default().to_string();
    (id, run["held_disables"].as_u64().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_holds_them_again_at_every_tick_and_keeps_the_alert_up() {
    let env = Env::start().await;
    let ids = env.seed(30);
    let daemon = Daemon::start(&env).await;
    daemon
        .wait_for("the start-up import", |_| async {
            env.nevis.user_count() == 30
        })
        .await;
    for &id in &ids[..5] {
        assert!(env.nexudus.remove_user(id));
    }
    daemon
        .wait_for("a run to hold the five", |d| async move {
            last_run(d).await.1 == 5
        })
        .await;
    let (first, _) = last_run(&daemon).await;
    let (_, text) = daemon.get("/metrics").await;
    let metric_then = held_metric(&text);
    // Two more ticks (incremental: a full listing only every 240th), each holding them again.
    let mut seen = vec![first];
    while seen.len() < 3 {
        let before = seen.last().cloned().unwrap_or_default();
        daemon
            .wait_for("the next tick", |d| {
                let before = before.clone();
                async move { last_run(d).await.0 != before }
            })
            .await;
        let (id, held) = last_run(&daemon).await;
        assert_eq!(held, 5, "run {id} forgot the held:\n{}", daemon.log());
        seen.push(id);
    }
    let (_, status) = daemon.get("/status").await;
    assert!(status.contains(&ext_id(ids[0])), "{status}");
    let (_, text) = daemon.get("/metrics").await;
    assert!(
        held_metric(&text) >= metric_then + 10.0,
        "the held count goes on rising: {} then {}",
        metric_then,
        held_metric(&text)
    );
    assert_eq!(state(&env, ids[0]), "active");
    let _ = daemon.stop().await;
}
