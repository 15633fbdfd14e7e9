//! A stop is heard in every phase of a run (issue 19): the real binary, made slow in one phase by
//! a fake's selective delay (or held by the hour budget), is sent SIGTERM there. It must end
//! within `sync.shutdown_grace` (plus a margin for a loaded machine), exit 1 (a daemon: 0), and
//! record the run as interrupted for `--status`. Where the stopped run could have claimed what it
//! did not do, the next run shows it did not.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Env, Run, quote, run_cmd};
use nexudus_nevis_sync::sandbox::RequestLine;
use serde_json::Value;
use tokio::process::Child;

/// `sync.shutdown_grace` in these tests.
const GRACE: Duration = Duration::from_secs(1);
/// A slow phase's delay: far beyond anything a test waits for, so that a phase that does not
/// hear the stop fails the test instead of ending by itself.
const SLOW: Duration = Duration::from_secs(300);
/// What a loaded two-core machine may add to the grace (the store's flush, the process's exit).
const MARGIN: Duration = Duration::from_secs(5);
/// Upper bound on waiting for a run to reach its phase, and for it to exit after the stop.
const WAIT: Duration = Duration::from_secs(30);

/// An env with `n` users imported by a full `--sync-now`, Nexudus pages of `page_size`, a grace
/// of [`GRACE`] and the pacing loosened (the phases are slowed on purpose, not by the pacer).
async fn imported(n: usize, page_size: u32) -> (Env, Vec<u64>) {
    let env = Env::start().await;
    env.set("nexudus.page_size", &page_size.to_string());
    env.set("nexudus.min_request_interval", &quote("1ms"));
    env.set("nexudus.max_requests_per_minute", "10000");
    env.set(
        "sync.shutdown_grace",
        &quote(&format!("{}s", GRACE.as_secs())),
    );
    let ids = env.seed(n);
    env.sync(&[]).await.assert_code(0);
    (env, ids)
}

/// The deletion probe of an incremental run: page 1 of size 1, unfiltered.
fn is_probe(r: &RequestLine<'_>) -> bool {
    r.path == "/api/sys/users" && r.query.starts_with("page=1&size=1&")
}

/// A step of the search for deleted users: the user at one position (a page of size 1), past
/// the first (which is the probe's).
fn is_search_step(r: &RequestLine<'_>) -> bool {
    r.path == "/api/sys/users" && r.query.contains("&size=1&") && !is_probe(r)
}

/// A look-up before disabling: `GET /api/sys/users/{id}`.
fn is_look_up(r: &RequestLine<'_>) -> bool {
    r.method == "GET" && r.path.starts_with("/api/sys/users/")
}

/// nevisIDM's user listing (`GET /core/v1/clients/{client}/users`).
fn is_nevis_listing(r: &RequestLine<'_>) -> bool {
    r.method == "GET" && r.path.contains("/clients/") && r.path.ends_with("/users")
}

fn is_patch(r: &RequestLine<'_>) -> bool {
    r.method == "PATCH"
}

/// A run of the binary left running, its log in a file next to the config.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    /// `--sync-now` with `args`.
    fn sync_now(env: &Env, args: &[&str]) -> Running {
        let mut all = vec!["--sync-now"];
        all.extend_from_slice(args);
        Running::start(env, &all)
    }

    /// The daemon, on a port of its own choosing (nothing here asks its HTTP endpoints).
    fn daemon(env: &Env) -> Running {
        env.set("http.listen", &quote("127.0.0.1:0"));
        Running::start(env, &[])
    }

    fn start(env: &Env, args: &[&str]) -> Running {
        let log = env.dir.path().join("stopped-run.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = env
            .command(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start the binary");
        Running { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `reached` says the run is in the phase to stop (fails after [`WAIT`], or at
    /// once if the run ended before it got there).
    async fn reach(&mut self, phase: &str, reached: impl Fn(&Running) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !reached(self) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the run ended ({status}) before {phase}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "never reached {phase}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM and waits for the exit: the run's output, and how long it took to stop.
    async fn stop(self) -> (Run, Duration) {
        let pid = self.child.id().expect("still running").to_string();
        let asked = Instant::now();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        let log = self.log.clone();
        let out = tokio::time::timeout(WAIT, self.child.wait_with_output())
            .await
            .unwrap_or_else(|_| {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("still running {WAIT:?} after SIGTERM:\n{log}")
            })
            .expect("wait for the run");
        let took = asked.elapsed();
        let mut run = Run::from(out);
        run.stderr = std::fs::read_to_string(&log).unwrap_or_default();
        (run, took)
    }
}

/// The stop was heard: within the grace (and margin), with `code`, and the run recorded as
/// interrupted, which `--status` shows.
async fn assert_heard(env: &Env, run: &Run, took: Duration, grace: Duration, code: i32) {
    run.assert_code(code);
    assert!(
        took < grace + MARGIN,
        "stopped {took:?} after SIGTERM (grace {grace:?}):\n{}",
        run.stderr
    );
    let status = run_cmd(env.command(&["--status", "--json"])).await;
    let doc: Value = serde_json::from_str(&status.stdout).expect("--status --json is JSON");
    assert_eq!(doc["last_run"]["interrupted"], true, "{doc}");
    let shown = run_cmd(env.command(&["--status"])).await.stdout;
    assert!(shown.contains("interrupted by a shutdown"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_the_deletion_probe_is_heard() {
    let (env, _) = imported(5, 100).await;
    env.nexudus.set_slow(SLOW, is_probe);
    let mut run = Running::sync_now(&env, &["--incremental"]);
    run.reach("the probe", |_| env.nexudus.slowed() > 0).await;
    let (run, took) = run.stop().await;
    assert_heard(&env, &run, took, GRACE, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_the_reconciles_read_of_nevis_is_heard() {
    let (env, _) = imported(5, 100).await;
    env.nevis.set_slow(SLOW, is_nevis_listing);
    let mut run = Running::sync_now(&env, &["--reconcile"]);
    run.reach("nevisIDM's listing", |_| env.nevis.slowed() > 0)
        .await;
    let (run, took) = run.stop().await;
    assert_heard(&env, &run, took, GRACE, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_the_deletion_search_is_heard_and_the_next_run_finds_the_user() {
    // 20 users in pages of 2: one deletion costs a search of 6 requests, a listing 10.
    let (env, ids) = imported(20, 2).await;
    assert!(env.nexudus.remove_user(ids[7]));
    env.nexudus.set_slow(SLOW, is_search_step);
    let mut run = Running::sync_now(&env, &["--incremental"]);
    run.reach("the search", |_| env.nexudus.slowed() > 0).await;
    let (run, took) = run.stop().await;
    assert_heard(&env, &run, took, GRACE, 1).await;

    env.nexudus.clear_slow();
    let next = env.sync(&["--incremental"]).await;
    next.assert_code(0);
    assert_eq!(next.count("disabled"), 1, "{}", next.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_the_look_ups_before_disabling_is_heard_and_disables_nobody() {
    let (env, ids) = imported(20, 100).await;
    assert!(env.nexudus.remove_user(ids[0]));
    env.nexudus.set_slow(SLOW, is_look_up);
    let mut run = Running::sync_now(&env, &[]);
    run.reach("the look-up", |_| env.nexudus.slowed() > 0).await;
    let (run, took) = run.stop().await;
    assert_heard(&env, &run, took, GRACE, 1).await;
    assert_eq!(env.nevis.stats().patches, 0, "nobody disabled unconfirmed");

    env.nexudus.clear_slow();
    let next = env.sync(&[]).await;
    next.assert_code(0);
    assert_eq!(next.count("disabled"), 1, "{}", next.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_removal_abandons_it_after_the_grace_and_claims_nothing() {
    let (env, ids) = imported(20, 100).await;
    assert!(env.nexudus.remove_user(ids[0]));
    env.nevis.set_slow(SLOW, is_patch);
    let mut run = Running::sync_now(&env, &[]);
    run.reach("the disable", |_| env.nevis.slowed() > 0).await;
    let (run, took) = run.stop().await;
    assert_heard(&env, &run, took, GRACE, 1).await;
    // The abandoned write has its one outcome: failed, not confirmed.
    let status = run_cmd(env.command(&["--status", "--json"])).await;
    let doc: Value = serde_json::from_str(&status.stdout).expect("--status --json is JSON");
    let failures = &doc["last_run"]["failures"];
    assert_eq!(failures[0]["nexudus_id"], ids[0], "{doc}");
    assert!(
        failures[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("abandoned at shutdown")),
        "{doc}"
    );

    // The stopped run did not record who Nexudus holds: the next incremental run still sees
    // one user fewer than expected, and disables them.
    env.nevis.clear_slow();
    let next = env.sync(&["--incremental"]).await;
    next.assert_code(0);
    assert_eq!(next.count("disabled"), 1, "{}", next.stdout);
    let user = env
        .nevis
        .user(&format!("nexudus-{}", ids[0]))
        .expect("kept");
    assert_eq!(user["userState"], "disabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_removal_confirms_and_checkpoints_it_within_the_grace() {
    let (env, ids) = imported(20, 100).await;
    let grace = Duration::from_secs(8);
    env.set("sync.shutdown_grace", &quote("8s"));
    assert!(env.nexudus.remove_user(ids[0]));
    env.nevis.set_slow(Duration::from_secs(3), is_patch);
    let mut run = Running::sync_now(&env, &[]);
    run.reach("the disable", |_| env.nevis.slowed() > 0).await;
    let (run, took) = run.stop().await;
    assert_heard(&env, &run, took, grace, 1).await;
    assert_eq!(run.count("disabled"), 1, "confirmed: {}", run.stdout);

    env.nevis.clear_slow();
    let patches = env.nevis.stats().patches;
    let next = env.sync(&[]).await;
    next.assert_code(0);
    assert_eq!(next.count("disabled"), 0, "checkpointed: {}", next.stdout);
    assert_eq!(env.nevis.stats().patches, patches, "nothing written again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_the_wait_for_the_hour_budget_is_heard() {
    let (env, _) = imported(5, 100).await;
    // The import spent more than this: the probe waits for the hour to free.
    env.set("nexudus.max_requests_per_hour", "1");
    let mut run = Running::sync_now(&env, &["--incremental"]);
    run.reach("the wait for the hour", |r| {
        r.log().contains("budget of the hour is used up")
    })
    .await;
    let (run, took) = run.stop().await;
    assert_heard(&env, &run, took, GRACE, 1).await;
}

/// The daemon's first run (a full listing) waits in the look-up of the deleted user: stopped
/// there, the daemon exits 0 (a stop is how a daemon ends, not a failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_stops_promptly_in_a_phase_after_the_listing() {
    let (env, ids) = imported(20, 100).await;
    assert!(env.nexudus.remove_user(ids[0]));
    env.nexudus.set_slow(SLOW, is_look_up);
    let mut daemon = Running::daemon(&env);
    daemon
        .reach("the look-up", |_| env.nexudus.slowed() > 0)
        .await;
    let (run, took) = daemon.stop().await;
    assert_heard(&env, &run, took, GRACE, 0).await;
}

/// The role stage (issue 21) waits in a grant: stopped there, the run ends within the grace,
/// exits 1, is recorded interrupted, and claims no grant; the next run makes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_the_role_stage_is_heard_and_the_next_run_grants() {
    let (env, ids) = imported(5, 100).await;
    env.nevis.add_roles(&["frontdesk"]);
    env.nexudus
        .add_user_role(1, "Main Street", "Receptionist", &ids);
    env.set(
        "roles.map",
        r#"[{nexudus = "Receptionist", nevis = ["frontdesk"]}]"#,
    );
    env.nevis.set_slow(SLOW, |r: &RequestLine<'_>| {
        r.method == "POST" && r.path.ends_with("/authorizations")
    });
    let mut run = Running::sync_now(&env, &[]);
    run.reach("a grant", |_| env.nevis.slowed() > 0).await;
    let (run, took) = run.stop().await;
    assert_heard(&env, &run, took, GRACE, 1).await;
    assert_eq!(run.count("granted"), 0, "{}", run.stdout);

    env.nevis.clear_slow();
    let next = env.sync(&[]).await;
    next.assert_code(0);
    assert_eq!(next.count("granted"), 5, "{}", next.stdout);
    for id in ids {
        let ext_id = format!("nexudus-{id}");
        assert_eq!(env.nevis.user_roles(&ext_id), ["frontdesk"]);
    }
}
