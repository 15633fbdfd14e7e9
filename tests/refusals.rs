//! Users nevisIDM refuses are not hammered, over HTTP against the fakes with the store's clock
//! moved by hand ([`Clock::manual`]): a refused create or update is sent once, not on the next
//! ticks, again when its wait is over (an hour, doubling to a day), at once when the Nexudus
//! record changes and on a reconcile; a refused disable is sent every run; and the steady state
//! of 100 refused users and 40 held disables at a one-minute tick grows the provisioning log by
//! one entry a refused user a day, not one a tick.

mod common;

use std::time::Duration;

use common::{Env, open_when_free, store_released};
use nexudus_nevis_sync::clock::Clock;
use nexudus_nevis_sync::config::Config;
use nexudus_nevis_sync::refusal;
use nexudus_nevis_sync::report::RunReport;
use nexudus_nevis_sync::sandbox::NexudusUserSpec;
use nexudus_nevis_sync::sync::RunOptions;
use serde_json::json;

/// 2026-12-01T00:00:00Z: where the store's clock starts.
const START: u64 = 1_796_083_200;
const MINUTE: Duration = Duration::from_secs(60);

fn ext(id: u64) -> String {
    format!("nexudus-{id}")
}

/// Requests nevisIDM received that write user `ext_id` (a create carrying it, a PATCH of it).
fn writes_of(env: &Env, ext_id: &str) -> usize {
    env.nevis
        .request_log()
        .into_iter()
        .filter(|r| r.method == "POST" || r.method == "PATCH")
        .filter(|r| {
            r.path.ends_with(&format!("/users/{ext_id}"))
                || r.body.as_ref().and_then(|b| b.get("extId")) == Some(&json!(ext_id))
        })
        .count()
}

/// The reason a run reports for user `id`, which must be failing.
fn failure_of(report: &RunReport, id: u64) -> String {
    report
        .failures()
        .into_iter()
        .find(|f| f.nexudus_id == id)
        .unwrap_or_else(|| panic!("user {id} is not failing: {}", report.summary_line()))
        .reason
}

/// Entries in the provisioning log.
async fn log_len(env: &Env) -> u64 {
    let config = Config::load(&env.config).expect("config");
    let store = open_when_free(&config.store.path, config.store.cache_capacity_bytes).await;
    let entries = store.audit_len().expect("count the log");
    drop(store);
    store_released(&config.store.path).await;
    entries
}

async fn reconcile(env: &Env, clock: &Clock) -> RunReport {
    let opts = RunOptions {
        reconcile: true,
        ..RunOptions::default()
    };
    env.run_in_process_with(clock, opts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_user_waits_for_its_next_try_unless_nexudus_changes_or_a_reconcile_asks() {
    let env = Env::start().await;
    let ids = env.seed(3);
    let bad = ext(ids[1]);
    env.nevis.reject_user(
        &bad,
        422,
        "errors.policyViolation",
        "the email domain is not allowed",
    );
    let clock = Clock::manual(START);
    let first = env.run_in_process(&clock).await;
    assert_eq!((first.counts().created, first.counts().failed), (2, 1));
    assert_eq!(first.exit_code(), 1);
    assert_eq!(writes_of(&env, &bad), 1);
    let entries = log_len(&env).await;
    assert_eq!(entries, 3, "two creates confirmed, one refused");

    // The next ticks, up to a second before the hour: still failing, saying when the next try
    // is, and nothing sent or logged.
    for wait in [MINUTE, MINUTE, Duration::from_secs(3600 - 121)] {
        clock.advance(wait);
        let tick = env.run_in_process(&clock).await;
        assert_eq!((tick.counts().failed, tick.exit_code()), (1, 1));
        let reason = failure_of(&tick, ids[1]);
        assert!(
            reason.contains("the email domain is not allowed")
                && reason.contains("next try at 2026-12-01T01:00:00Z"),
            "{reason}"
        );
        assert_eq!(writes_of(&env, &bad), 1, "not sent again before its time");
        assert_eq!(log_len(&env).await, entries, "a skipped tick logs nothing");
    }
    // --status says when (the store is free between in-process runs).
    let status = common::run_cmd(env.command(&["--status", "--json"])).await;
    let doc: serde_json::Value = serde_json::from_str(&status.stdout).expect("json");
    let failing = &doc["failing_users"][0];
    assert_eq!(failing["ext_id"], bad.as_str(), "{doc}");
    assert_eq!(failing["next_try"], START + 3600, "{doc}");
    assert_eq!(failing["tries"], 1, "{doc}");
    let table = common::run_cmd(env.command(&["--status"])).await.stdout;
    assert!(
        table.contains("NEXT TRY") && table.contains("2026-12-01 01:00:00 UTC"),
        "{table}"
    );

    // Its time has come: tried once more (one entry), then the wait doubles.
    clock.advance(Duration::from_secs(1));
    let retry = env.run_in_process(&clock).await;
    assert_eq!(retry.counts().failed, 1);
    assert_eq!(writes_of(&env, &bad), 2);
    assert_eq!(log_len(&env).await, entries + 1);
    assert!(
        failure_of(&retry, ids[1]).contains("next try at 2026-12-01T03:00:00Z"),
        "{}",
        failure_of(&retry, ids[1])
    );
    clock.advance(MINUTE);
    env.run_in_process(&clock).await;
    assert_eq!(writes_of(&env, &bad), 2);

    // The person's Nexudus record changes: other values, sent at once.
    assert!(env.nexudus.update_user(ids[1], |u| {
        u.insert("FullName".into(), json!("First1 Renamed"));
    }));
    clock.advance(MINUTE);
    let changed = env.run_in_process(&clock).await;
    assert_eq!(writes_of(&env, &bad), 3, "{}", changed.summary_line());
    assert!(failure_of(&changed, ids[1]).contains("refused 1 time(s)"));

    // A reconcile tries at once too; once nevisIDM accepts, the user is created.
    clock.advance(MINUTE);
    env.run_in_process(&clock).await;
    assert_eq!(writes_of(&env, &bad), 3);
    env.nevis.clear_rejections();
    clock.advance(MINUTE);
    let healed = reconcile(&env, &clock).await;
    assert_eq!(writes_of(&env, &bad), 4);
    assert_eq!((healed.counts().created, healed.exit_code()), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_update_waits_too_and_a_refused_disable_is_sent_every_run() {
    let env = Env::start().await;
    let ids = env.seed(3);
    let clock = Clock::manual(START);
    assert_eq!(env.run_in_process(&clock).await.exit_code(), 0);
    for id in [ids[0], ids[1]] {
        env.nevis.reject_user(
            &ext(id),
            422,
            "errors.modifyReadonlyData",
            "the user is read-only",
        );
    }
    // User 0 is renamed (an update), user 1 deactivated (a disable): both refused.
    assert!(env.nexudus.update_user(ids[0], |u| {
        u.insert("FullName".into(), json!("First0 Renamed"));
    }));
    assert!(env.nexudus.update_user(ids[1], |u| {
        u.insert("Active".into(), json!(false));
    }));
    env.nevis.clear_request_log();
    for run in 1..=3 {
        clock.advance(MINUTE);
        let report = env.run_in_process(&clock).await;
        assert_eq!((report.counts().failed, report.exit_code()), (2, 1));
        assert_eq!(writes_of(&env, &ext(ids[0])), 1, "the update waits");
        assert_eq!(
            writes_of(&env, &ext(ids[1])),
            run,
            "a refused disable is access kept: sent every run"
        );
        assert!(!failure_of(&report, ids[1]).contains("next try"));
    }
}

/// The refused users' tries of the first `days` days at a one-minute tick, as minutes from the
/// first run: each refused user is tried at these ticks and at no other.
fn tries_within(days: u64) -> Vec<u64> {
    let mut at = vec![0];
    while let Some(&last) = at.last() {
        let next = last + refusal::wait(at.len() as u32).as_secs() / 60;
        if next >= days * 24 * 60 {
            break;
        }
        at.push(next);
    }
    at
}

/// The steady state the docs state (docs/operating.md, "Provisioning log"): 100 users nevisIDM
/// refuses and 40 disables held by the deletion safety, with a run every minute. 2 × 1,440 runs
/// are too slow for a test; since a tick's decision depends only on the clock and the values,
/// the runs that matter are the tries and the ticks either side of each (which must log
/// nothing): the rest of the day's ticks are the same as those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_of_refused_users_and_held_disables_grows_the_log_by_a_refusal_a_user_a_day() {
    const REFUSED: u64 = 100;
    const HELD: u64 = 40;
    let env = Env::start().await;
    env.set("sync.max_disables", "10");
    let leavers = env.seed(HELD as usize);
    let clock = Clock::manual(START - 3600);
    assert_eq!(env.run_in_process(&clock).await.exit_code(), 0);
    for id in &leavers {
        assert!(env.nexudus.remove_user(*id));
    }
    for i in 0..REFUSED {
        let id = env.nexudus.insert_user(NexudusUserSpec::new(
            format!("Refused{i} Person"),
            format!("refused.{i}@example.com"),
        ));
        env.nevis
            .reject_user(&ext(id), 422, "errors.policyViolation", "not allowed");
    }
    let base = log_len(&env).await;
    let tries = tries_within(2);
    assert_eq!(tries, [0, 60, 180, 420, 900, 1860], "1 h doubling to 24 h");
    let mut ticks: Vec<u64> = tries
        .iter()
        .flat_map(|&t| [t.saturating_sub(1), t, t + 1])
        .chain([1439, 2879])
        .collect();
    ticks.sort_unstable();
    ticks.dedup();
    let (mut now, mut day_end) = (0, Vec::new());
    for tick in ticks {
        clock.advance(Duration::from_secs(START + tick * 60 - clock.now()));
        now = tick;
        let report = env.run_in_process(&clock).await;
        let c = report.counts();
        assert_eq!((c.failed, c.held_disables), (REFUSED, HELD), "tick {tick}");
        let tried = tries.iter().filter(|&&t| t <= tick).count() as u64;
        let expected = base + HELD + REFUSED * tried;
        assert_eq!(log_len(&env).await, expected, "tick {tick}");
        if tick % 1440 == 1439 {
            day_end.push(expected - base);
        }
    }
    assert_eq!(now, 2879);
    // The first day: every refused user tried 5 times, each held disable logged once; every
    // day after: one try a refused user. Hammering would have been 100 × 1,440 a day.
    let (first_day, second_day) = (day_end[0], day_end[1] - day_end[0]);
    assert_eq!(first_day, 5 * REFUSED + HELD);
    assert_eq!(second_day, REFUSED);
    assert!(
        second_day * 1000 < REFUSED * 1440,
        "a thousandth of a tick's worth"
    );
}
