//! Role writes that hold under a stop, a crash and a changed nevisIDM (issue 27): the real binary
//! against the fakes over HTTP. A grant sent when a stop comes is confirmed within
//! `sync.shutdown_grace`; one whose answer comes later (or never: SIGKILL) leaves a pending mark
//! the next run settles by reading the profile; a revocation is checkpointed only once the role
//! is gone from the profile; a duplicate grant is logged as "already held; now owned"; a profile
//! gone or refusing is chosen again.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Env, Run, open_when_free, quote, run_cmd};
use nexudus_nevis_sync::sandbox::{Fault, RequestLine};
use serde_json::Value;
use tokio::process::Child;

/// Upper bound on waiting for a run to reach its grant, and for it to exit after a signal.
const WAIT: Duration = Duration::from_secs(30);
/// A late answer no test waits for: the run must act before it comes.
const NEVER: Duration = Duration::from_secs(300);

fn ext(id: u64) -> String {
    format!("nexudus-{id}")
}

fn is_grant(r: &RequestLine<'_>) -> bool {
    r.method == "POST" && r.path.ends_with("/authorizations")
}

/// Users `n`, the first in the UserRole "Receptionist" (mapped to `frontdesk`), nobody in
/// "Finance Admin" (mapped to `finance`); one user at a time, `grace` to finish on a stop.
/// Nothing synced yet. Answers the env, the users and the two UserRoles' Ids.
async fn env(n: usize, grace: &str) -> (Env, Vec<u64>, u64, u64) {
    let env = Env::start().await;
    env.nevis.add_roles(&["frontdesk", "finance"]);
    env.nevis.set_request_log(true);
    let ids = env.seed(n);
    let nexudus = &env.nexudus;
    let receptionist = nexudus.add_user_role(1, "Main Street", "Receptionist", &ids[..1]);
    let finance = nexudus.add_user_role(1, "Main Street", "Finance Admin", &[]);
    env.set(
        "roles.map",
        r#"[{nexudus = "Receptionist", nevis = ["frontdesk"]}, {nexudus = "Finance Admin", nevis = ["finance"]}]"#,
    );
    // A handful of users: one losing a role is a large share; the safety is not under test.
    env.set("roles.max_revoke_percent", "100");
    env.set("sync.concurrency", "1");
    env.set("sync.shutdown_grace", &quote(grace));
    (env, ids, receptionist, finance)
}

/// `--history <who> --json`, newest first.
async fn history(env: &Env, who: &str) -> Vec<Value> {
    let run = run_cmd(env.command(&["--history", who, "--json"])).await;
    run.assert_code(0);
    let lines = run.stdout.lines();
    lines
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// The entries of `operation` with `outcome`.
fn entries<'a>(all: &'a [Value], operation: &str, outcome: &str) -> Vec<&'a Value> {
    let matching = |e: &&Value| e["operation"] == operation && e["outcome"] == outcome;
    all.iter().filter(matching).collect()
}

fn reason(entry: &Value) -> &str {
    entry["reason"].as_str().unwrap_or_default()
}

/// Requests to nevisIDM's authorizations since the log was last cleared, as `METHOD path`.
fn authorization_requests(env: &Env) -> Vec<String> {
    let log = env.nevis.request_log().into_iter();
    log.filter(|r| r.path.contains("/authorizations"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

/// `--sync-now` left running, its log in a file next to the config.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn start(env: &Env) -> Running {
        let log = env.dir.path().join("role-writes-run.log");
        let child = env
            .command(&["--sync-now"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start the binary");
        Running { child, log }
    }

    /// Waits until nevisIDM made a grant whose answer it holds back (bounded by [`WAIT`]).
    async fn reach_the_late_answer(&mut self, env: &Env) {
        let deadline = Instant::now() + WAIT;
        while env.nevis.answered_late() == 0 {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("the run ended ({status}) before its grant:\n{log}");
            }
            assert!(Instant::now() < deadline, "no grant within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM (`kill` false) or SIGKILL, then the run's output once it exited.
    async fn signal(mut self, kill: bool) -> Run {
        if kill {
            self.child.start_kill().expect("SIGKILL");
        } else {
            let pid = self.child.id().expect("still running").to_string();
            let sent = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("run kill");
            assert!(sent.success(), "kill -TERM {pid}");
        }
        let out = tokio::time::timeout(WAIT, self.child.wait_with_output())
            .await
            .expect("the run exits after the signal")
            .expect("wait for the run");
        let mut run = Run::from(out);
        run.stderr = std::fs::read_to_string(&self.log).unwrap_or_default();
        run
    }
}

/// nevisIDM makes the grant at once and answers 3 s later; the stop comes while the run waits.
/// Within a grace of 8 s the grant is confirmed, logged and checkpointed: the stopped run counts
/// it, and the next run has nothing to grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_answered_after_a_stop_is_confirmed_logged_and_checkpointed_within_the_grace() {
    let (env, ids, _, _) = env(2, "8s").await;
    env.nevis.set_slow_answer(Duration::from_secs(3), is_grant);
    let mut run = Running::start(&env);
    run.reach_the_late_answer(&env).await;
    let run = run.signal(false).await;
    run.assert_code(1);
    assert_eq!(run.count("granted"), 1, "{}\n{}", run.stdout, run.stderr);
    let status = run_cmd(env.command(&["--status", "--json"])).await;
    let doc: Value = serde_json::from_str(&status.stdout).expect("--status --json is JSON");
    assert_eq!(doc["last_run"]["interrupted"], true, "{doc}");
    let log = history(&env, &ext(ids[0])).await;
    assert_eq!(entries(&log, "grant", "confirmed").len(), 1, "{log:#?}");

    env.nevis.clear_slow_answer();
    env.nevis.clear_request_log();
    let next = env.sync(&[]).await;
    next.assert_code(0);
    assert_eq!(next.count("granted"), 0, "checkpointed: {}", next.stdout);
    assert!(
        authorization_requests(&env).is_empty(),
        "{:?}",
        authorization_requests(&env)
    );
    assert_eq!(env.nevis.user_roles(&ext(ids[0])), ["frontdesk"]);
}

/// Two grants at once: nevisIDM makes A's and answers it 4 s later, and refuses B's credentials
/// (401, fatal) 1 s after B's arrived. The run ends fatally, but only after A's grant in flight was confirmed, logged
/// and checkpointed within the grace: the next run grants B only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_error_lets_the_grant_in_flight_be_confirmed_within_the_grace() {
    let (env, ids, receptionist, _) = env(2, "8s").await;
    env.set("sync.concurrency", "2");
    env.unset("roles.map");
    env.sync(&[]).await.assert_code(0);
    env.set(
        "roles.map",
        r#"[{nexudus = "Receptionist", nevis = ["frontdesk"]}]"#,
    );
    env.nexudus.set_role_members(receptionist, &ids);
    let (a, b) = (ext(ids[0]), ext(ids[1]));
    let on = |user: &str| format!("/profiles/{}/", env.nevis.profiles_of(user)[0].0);
    let (on_a, on_b) = (on(&a), on(&b));
    env.nevis.set_slow_answer(Duration::from_secs(4), move |r| {
        is_grant(r) && r.path.contains(&on_a)
    });
    // B's grant waits before it is admitted, so that the 401 queued meanwhile is its answer.
    env.nevis.set_slow(Duration::from_secs(1), move |r| {
        is_grant(r) && r.path.contains(&on_b)
    });
    let refuse_b = async {
        let deadline = Instant::now() + WAIT;
        while env.nevis.answered_late() == 0 || env.nevis.slowed() == 0 {
            assert!(
                Instant::now() < deadline,
                "both grants sent within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        env.nevis.push_fault(Fault::Status {
            status: 401,
            retry_after: None,
        });
    };
    let (run, ()) = tokio::join!(env.sync(&[]), refuse_b);
    run.assert_code(2);
    let log = history(&env, &a).await;
    assert_eq!(entries(&log, "grant", "confirmed").len(), 1, "{log:#?}");

    env.nevis.clear_slow_answer();
    env.nevis.clear_slow();
    let next = env.sync(&[]).await;
    next.assert_code(0);
    assert_eq!(next.count("granted"), 1, "only B: {}", next.stdout);
    assert_eq!(env.nevis.user_roles(&a), ["frontdesk"]);
    assert_eq!(env.nevis.user_roles(&b), ["frontdesk"]);
}

/// nevisIDM makes the grant and never answers in time: a stop whose grace runs out, or SIGKILL,
/// ends the run with the grant unconfirmed. Its pending mark is what the next run needs: the
/// person left the UserRole meanwhile, and that run reads the profile's authorizations, owns the
/// role ("already held; now owned") and revokes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_left_pending_by_a_stop_or_a_kill_is_owned_and_revoked_by_the_next_run() {
    for kill in [false, true] {
        let (env, ids, receptionist, _) = env(2, "1s").await;
        env.nevis.set_slow_answer(NEVER, is_grant);
        let mut run = Running::start(&env);
        run.reach_the_late_answer(&env).await;
        let run = run.signal(kill).await;
        let member = ext(ids[0]);
        assert_eq!(env.nevis.user_roles(&member), ["frontdesk"], "kill={kill}");
        if !kill {
            run.assert_code(1);
            assert_eq!(run.count("granted"), 0, "{}", run.stdout);
            let log = history(&env, &member).await;
            let failed = entries(&log, "grant", "failed");
            assert_eq!(failed.len(), 1, "{log:#?}");
            assert!(
                reason(failed[0]).contains("abandoned at shutdown"),
                "{log:#?}"
            );
        }

        env.nevis.clear_slow_answer();
        env.nexudus.set_role_members(receptionist, &[]);
        let next = env.sync(&[]).await;
        next.assert_code(0);
        assert_eq!(next.count("revoked"), 1, "kill={kill}: {}", next.stdout);
        assert!(env.nevis.user_roles(&member).is_empty(), "kill={kill}");
        let log = history(&env, &member).await;
        let owned = entries(&log, "grant", "confirmed");
        assert_eq!(owned.len(), 1, "kill={kill}: {log:#?}");
        assert!(
            reason(owned[0]).contains("already held; now owned"),
            "{log:#?}"
        );
        assert_eq!(entries(&log, "revoke", "confirmed").len(), 1, "{log:#?}");
    }
}

/// A dry run sends no grant and marks none pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_marks_no_grant_pending() {
    let (env, ids, _, _) = env(2, "1s").await;
    env.unset("roles.map");
    env.sync(&[]).await.assert_code(0);
    env.set(
        "roles.map",
        r#"[{nexudus = "Receptionist", nevis = ["frontdesk"]}]"#,
    );
    let run = env.sync(&["--dry-run"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains(r#""op":"grant""#), "{}", run.stdout);
    assert!(env.nevis.user_roles(&ext(ids[0])).is_empty());
    let store = open_when_free(&env.store_path(), 16 << 20).await;
    let holdings: Vec<u64> = store
        .role_holding_ids()
        .collect::<Result<_, _>>()
        .expect("read the role checkpoints");
    assert!(holdings.is_empty(), "{holdings:?}");
}

/// The sync granted `frontdesk`; by hand it was revoked and granted again (a new authorization
/// extId). When the person leaves, the stored extId answers 404: the role is looked up on the
/// profile and that authorization revoked, before the revocation is checkpointed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_meeting_a_hand_re_grant_revokes_the_role_found_on_the_profile() {
    let (env, ids, receptionist, _) = env(2, "1s").await;
    env.sync(&[]).await.assert_code(0);
    let member = ext(ids[0]);
    env.nevis.revoke_by_hand(&member, "frontdesk");
    env.nevis
        .grant_by_hand(&member, "frontdesk")
        .expect("a profile");

    env.nexudus.set_role_members(receptionist, &[]);
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("revoked"), 1, "{}", run.stdout);
    assert!(
        env.nevis.user_roles(&member).is_empty(),
        "the re-granted role is gone"
    );
    let again = env.sync(&[]).await;
    again.assert_code(0);
    assert_eq!(again.count("revoked"), 0, "{}", again.stdout);
}

/// A role granted by hand before the map named it: the sync's grant is answered "duplicate". The
/// log says "already held; now owned" (the role before and after), not a grant made, and the
/// checkpoint holds the authorization's extId: the revocation deletes it without a search.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_grant_is_logged_as_already_held_and_owned_with_its_authorization() {
    let (env, ids, receptionist, _) = env(2, "1s").await;
    env.unset("roles.map");
    env.sync(&[]).await.assert_code(0);
    let member = ext(ids[0]);
    let by_hand = env
        .nevis
        .grant_by_hand(&member, "frontdesk")
        .expect("a profile");
    env.set(
        "roles.map",
        r#"[{nexudus = "Receptionist", nevis = ["frontdesk"]}]"#,
    );
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("granted"), 1, "{}", run.stdout);
    let log = history(&env, &member).await;
    let grants = entries(&log, "grant", "confirmed");
    assert_eq!(grants.len(), 1, "{log:#?}");
    assert!(
        reason(grants[0]).contains("already held; now owned"),
        "{log:#?}"
    );
    let change = &grants[0]["changes"][0];
    assert_eq!(change["before"], "frontdesk", "{log:#?}");
    assert_eq!(change["after"], "frontdesk", "{log:#?}");

    env.nexudus.set_role_members(receptionist, &[]);
    env.nevis.clear_request_log();
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("revoked"), 1, "{}", run.stdout);
    let asked = authorization_requests(&env);
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(
        asked[0].starts_with("DELETE ") && asked[0].ends_with(&format!("/{by_hand}")),
        "{asked:?}"
    );
}

/// The profile the checkpoint names is removed by hand, or archived (refusing writes), and the
/// person has a new default profile. A grant on the old one answers 404 or 422: the profile is
/// chosen again in that run and the grant made there; the next run grants on it the role the
/// old profile held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpointed_profile_gone_or_refusing_is_chosen_again() {
    for archive in [false, true] {
        let (env, ids, _, finance) = env(2, "1s").await;
        env.sync(&[]).await.assert_code(0);
        let member = ext(ids[0]);
        let old = env.nevis.profiles_of(&member)[0].0.clone();
        if archive {
            env.nevis.archive_profile_by_hand(&member, &old);
        } else {
            env.nevis.remove_profile_by_hand(&member, &old);
        }
        let new = env.nevis.add_profile_by_hand(&member, "root", true);

        env.nexudus.set_role_members(finance, &[ids[0]]);
        let run = env.sync(&[]).await;
        run.assert_code(0);
        assert_eq!(run.count("granted"), 1, "archive={archive}: {}", run.stdout);
        let again = env.sync(&[]).await;
        again.assert_code(0);
        assert_eq!(
            again.count("granted"),
            1,
            "archive={archive}: {}",
            again.stdout
        );
        let on_new: Vec<_> = env
            .nevis
            .request_log()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.contains(&format!("/profiles/{new}/")))
            .collect();
        assert_eq!(on_new.len(), 2, "archive={archive}: {on_new:?}");
        // The new profile holds both; an archived one keeps what it held.
        let expect: &[&str] = match archive {
            true => &["finance", "frontdesk", "frontdesk"],
            false => &["finance", "frontdesk"],
        };
        assert_eq!(env.nevis.user_roles(&member), expect, "archive={archive}");
        let steady = env.sync(&[]).await;
        steady.assert_code(0);
        assert_eq!((steady.count("granted"), steady.count("revoked")), (0, 0));
    }
}
