//! `--sync-now` end to end: the real binary against both sandbox fakes over HTTP on 127.0.0.1.
//! Each test names the behaviour of the sync-engine contract it proves.

mod common;

use std::time::Duration;

use common::{Env, quote, run_cmd};
use nexudus_nevis_sync::nexudus::SourceError;
use nexudus_nevis_sync::sandbox::{Fault, NexudusUserSpec};
use nexudus_nevis_sync::store::Store;
use nexudus_nevis_sync::sync::SyncError;
use serde_json::{Value, json};

fn patches_to(env: &Env, ext_id: &str) -> Vec<Value> {
    env.nevis
        .request_log()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with(&format!("/users/{ext_id}")))
        .filter_map(|r| r.body)
        .map(|mut body| {
            // Every PATCH carries nevisIDM's version (tests/nevis_field.rs checks which).
            let version = body.as_object_mut().and_then(|b| b.remove("version"));
            assert!(version.is_some_and(|v| v.is_i64()), "{body}");
            body
        })
        .collect()
}

fn requests_for(env: &Env, ext_id: &str) -> usize {
    env.nevis
        .request_log()
        .into_iter()
        .filter(|r| {
            r.path.ends_with(&format!("/users/{ext_id}"))
                || r.body.as_ref().and_then(|b| b.get("extId")) == Some(&json!(ext_id))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_maps_fields_updates_only_changes_and_rerun_writes_nothing() {
    let env = Env::start().await;
    let ann = env.nexudus.insert_user(NexudusUserSpec {
        language: 2,
        ..NexudusUserSpec::new("  Ann   Maria Smith ", " Ann.Smith@Example.COM ")
    });
    let cher = env
        .nexudus
        .insert_user(NexudusUserSpec::new("Cher", "cher@example.com"));
    let off = env.nexudus.insert_user(NexudusUserSpec {
        active: false,
        language: 3,
        ..NexudusUserSpec::new("Zoë Ångström", "zoe@example.com")
    });

    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("created"), 3);

    let u = env
        .nevis
        .user(&format!("nexudus-{ann}"))
        .expect("Ann created");
    assert_eq!(u["loginId"], "ann.smith@example.com");
    assert_eq!(u["contacts"]["email"], "Ann.Smith@Example.COM");
    assert_eq!(u["name"]["firstName"], "Ann Maria");
    assert_eq!(u["name"]["familyName"], "Smith");
    // Spanish (2) maps to "es", outside nevisIDM's default policy (mapping.allowed_languages):
    // the default language instead.
    assert_eq!(u["languageCode"], "en");
    assert_eq!(u["userState"], "active");
    let c = env.nevis.user(&format!("nexudus-{cher}")).unwrap();
    assert_eq!(
        (
            c["name"]["firstName"].clone(),
            c["name"]["familyName"].clone()
        ),
        (json!("Cher"), json!("Cher"))
    );
    let z = env.nevis.user(&format!("nexudus-{off}")).unwrap();
    assert_eq!(
        (z["userState"].clone(), z["languageCode"].clone()),
        (json!("disabled"), json!("en"))
    );

    env.nexudus.update_user(ann, |u| {
        u.insert("FullName".into(), json!("Ann Maria Jones"));
    });
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!((run.count("updated"), run.count("unchanged")), (1, 2));
    let patches = patches_to(&env, &format!("nexudus-{ann}"));
    assert_eq!(
        patches,
        vec![json!({"name": {"firstName": "Ann Maria", "familyName": "Jones"}})]
    );

    let before = env.writes();
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("unchanged"), 3);
    assert_eq!(
        env.writes(),
        before,
        "a rerun with nothing changed writes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivated_or_vanished_users_are_disabled_never_deleted_and_return_active() {
    let env = Env::start().await;
    let ids = env.seed(20);
    env.sync(&[]).await.assert_code(0);

    env.nexudus.update_user(ids[0], |u| {
        u.insert("Active".into(), json!(false));
    });
    let gone = env.nexudus.user(ids[1]).unwrap();
    assert!(env.nexudus.remove_user(ids[1]));
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("disabled"), 2);
    for id in &ids[..2] {
        let u = env
            .nevis
            .user(&format!("nexudus-{id}"))
            .expect("never deleted");
        assert_eq!(u["userState"], "disabled");
    }
    assert_eq!(
        patches_to(&env, &format!("nexudus-{}", ids[1])),
        vec![json!({"userState": "disabled"})]
    );
    assert_eq!(env.nevis.stats().deletes, 0);

    env.nexudus.insert_raw(ids[1], gone);
    env.nexudus.update_user(ids[0], |u| {
        u.insert("Active".into(), json!(true));
    });
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("updated"), 2);
    for id in &ids[..2] {
        assert_eq!(
            env.nevis.user(&format!("nexudus-{id}")).unwrap()["userState"],
            "active"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_disable_is_held_until_approved() {
    let env = Env::start().await;
    let ids = env.seed(30);
    env.sync(&[]).await.assert_code(0);
    for id in &ids[..5] {
        env.nexudus.remove_user(*id); // 5 of 30 = 17% > 10%
    }
    let before = env.writes();
    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert_eq!((run.count("disabled"), run.count("held_disables")), (0, 5));
    assert!(run.stdout.contains("held"), "{}", run.stdout);
    assert!(run.stderr.contains("DELETION SAFETY"), "{}", run.stderr);
    assert_eq!(env.writes(), before, "nobody disabled");

    // The absolute limit applies too.
    env.set("sync.max_disables", "4");
    env.set("sync.max_disable_percent", "50");
    env.sync(&[]).await.assert_code(1);
    assert_eq!(env.writes(), before);

    let run = env.sync(&["--allow-mass-disable"]).await;
    run.assert_code(0);
    assert_eq!(run.count("disabled"), 5);
    // Approval is for one run only: nothing is left to disable now, and the next run is clean.
    env.sync(&[]).await.assert_code(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomplete_listing_disables_nobody() {
    let env = Env::start().await;
    env.set("nexudus.page_size", "10");
    let ids = env.seed(25);
    env.sync(&[]).await.assert_code(0);
    env.nexudus.remove_user(ids[3]);

    // TotalItems says one more than is listed.
    env.nexudus.set_total_items_skew(1);
    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert_eq!(run.count("disabled"), 0);
    assert!(run.stdout.contains("incomplete listing"), "{}", run.stdout);

    // A page shorter than its size while more pages follow.
    env.nexudus.set_total_items_skew(0);
    env.nexudus.set_short_pages(true);
    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert_eq!(run.count("disabled"), 0);
    assert_eq!(
        env.nevis.user(&format!("nexudus-{}", ids[3])).unwrap()["userState"],
        "active"
    );

    env.nexudus.set_short_pages(false);
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("disabled"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_user_is_read_and_brought_to_the_mapped_state() {
    let env = Env::start().await;
    let id = env
        .nexudus
        .insert_user(NexudusUserSpec::new("Grace Hopper", "grace@example.com"));
    env.nevis.insert_user(json!({
        "extId": format!("nexudus-{id}"), "loginId": "grace@example.com", "userState": "active",
        "languageCode": "de", "name": {"firstName": "G.", "familyName": "Hopper"},
        "contacts": {"email": "grace@example.com", "mobile": "+41 79 000 00 00"}
    }));
    let run = env.sync(&[]).await;
    run.assert_code(0);
    let u = env.nevis.user(&format!("nexudus-{id}")).unwrap();
    assert_eq!(u["name"]["firstName"], "Grace");
    assert_eq!(u["languageCode"], "en");
    assert_eq!(
        u["contacts"]["mobile"], "+41 79 000 00 00",
        "fields we do not own stay"
    );
    assert_eq!(env.nevis.user_count(), 1);
    // Checkpointed: the next run writes nothing.
    let before = env.writes();
    env.sync(&[]).await.assert_code(0);
    assert_eq!(env.writes(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_create_answer_converges_without_duplicates() {
    let env = Env::start().await;
    env.set("sync.concurrency", "1");
    env.seed(3);
    // The first create is applied but its answer is lost; the retry meets a duplicate.
    env.nevis.push_fault(Fault::DropAfterApply);
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(env.nevis.user_count(), 3);
    let before = env.writes();
    env.sync(&[]).await.assert_code(0);
    assert_eq!(env.writes(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_transient_failures_are_retried() {
    let env = Env::start().await;
    env.seed(5);
    env.nexudus.push_faults(
        2,
        Fault::Status {
            status: 409,
            retry_after: Some(1),
        },
    );
    env.nexudus.push_fault(Fault::Status {
        status: 503,
        retry_after: None,
    });
    env.nexudus.push_fault(Fault::Drop);
    env.nevis.push_fault(Fault::Status {
        status: 429,
        retry_after: Some(1),
    });
    env.nevis.push_fault(Fault::Status {
        status: 500,
        retry_after: None,
    });
    env.nevis.push_fault(Fault::Drop);
    let started = std::time::Instant::now();
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("created"), 5);
    assert_eq!(env.nevis.user_count(), 5);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After honoured"
    );
    assert!(run.stderr.contains("retrying"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_refusal_is_reported_not_retried_and_waits_for_its_next_try() {
    let env = Env::start().await;
    let ids = env.seed(3);
    let bad = format!("nexudus-{}", ids[1]);
    env.nevis.reject_user(
        &bad,
        422,
        "errors.invalidData",
        "name not allowed by policy",
    );
    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert_eq!((run.count("created"), run.count("failed")), (2, 1));
    assert!(
        run.stdout.contains(&bad) && run.stdout.contains("errors.invalidData"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("name not allowed by policy"),
        "{}",
        run.stdout
    );
    assert_eq!(requests_for(&env, &bad), 1, "a 422 is not retried");

    // The same values wait for their next try (tests/refusals.rs moves the clock to it): the
    // user is still reported, with when that is.
    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert_eq!(run.count("failed"), 1);
    assert!(run.stdout.contains("next try at"), "{}", run.stdout);
    assert_eq!(
        requests_for(&env, &bad),
        1,
        "not sent again before its time"
    );

    // A reconcile tries at once.
    env.nevis.clear_rejections();
    let run = env.sync(&["--reconcile"]).await;
    run.assert_code(0);
    assert_eq!(run.count("created"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_fatal_and_fast() {
    let env = Env::start().await;
    env.seed(50);
    env.set("nevis.token", &quote("wrong-token-value"));
    let started = std::time::Instant::now();
    let run = env.sync(&[]).await;
    run.assert_code(2);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        env.nevis.stats().requests <= 8,
        "no retry storm: {:?}",
        env.nevis.stats()
    );
    assert!(
        run.stderr.contains("refused the credentials"),
        "{}",
        run.stderr
    );

    env.set("nevis.token", &quote("nevis-secret-token"));
    env.set("nexudus.password", &quote("wrong-password-value"));
    env.nexudus.reset_stats();
    let run = env.sync(&[]).await;
    run.assert_code(2);
    assert_eq!(env.nexudus.stats().requests, 1, "401 is not retried");
    for secret in [
        "wrong-password-value",
        "wrong-token-value",
        "nevis-secret-token",
    ] {
        assert!(
            !run.stderr.contains(secret) && !run.stdout.contains(secret),
            "secret leaked"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_records_are_named_skipped_and_retried_each_run() {
    let env = Env::start().await;
    env.seed(2);
    let no_email = env.nexudus.insert_user(NexudusUserSpec {
        email: None,
        ..NexudusUserSpec::new("No Mail", "")
    });
    let no_at = env
        .nexudus
        .insert_user(NexudusUserSpec::new("No At", "no-at.example.com"));
    let no_name = env
        .nexudus
        .insert_user(NexudusUserSpec::new("   ", "noname@example.com"));
    let wrong_type = 999_001;
    env.nexudus.insert_raw(
        wrong_type,
        json!({"Id": wrong_type, "FullName": ["not", "a", "string"], "Email": "t@example.com", "Active": true}),
    );
    for _ in 0..2 {
        let run = env.sync(&[]).await;
        run.assert_code(1);
        assert_eq!(run.count("invalid"), 4);
        for id in [no_email, no_at, no_name, wrong_type] {
            assert!(
                run.stdout.contains(&format!("nexudus_id={id}")),
                "{id} named:\n{}",
                run.stdout
            );
        }
        assert!(run.stdout.contains("no single '@'"), "{}", run.stdout);
    }
    assert_eq!(env.nevis.user_count(), 2);

    env.nexudus.update_user(no_at, |u| {
        u.insert("Email".into(), json!("fixed@example.com"));
    });
    let run = env.sync(&[]).await;
    assert_eq!((run.count("created"), run.count("invalid")), (1, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_listing_draws_no_throttling() {
    let env = Env::start_paced().await;
    env.set("nexudus.page_size", "5");
    env.seed(75); // 15 pages against 10 requests/s and 120/minute
    let run = env.sync(&[]).await;
    run.assert_code(0);
    let stats = env.nexudus.stats();
    assert_eq!(stats.throttled, 0, "{stats:?}");
    assert_eq!(stats.list_requests, 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_run_concurrently_but_bounded() {
    let env = Env::start().await;
    env.set("sync.concurrency", "3");
    env.nevis.set_latency(Duration::from_millis(50));
    env.seed(24);
    env.sync(&[]).await.assert_code(0);
    assert_eq!(env.nevis.max_in_flight(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nevis_down_for_the_whole_run_is_fatal_and_claims_nothing() {
    let env = Env::start().await;
    env.set("retry.max_attempts", "2");
    env.seed(10);
    env.nevis.set_down(Some(503));
    let run = env.sync(&[]).await;
    run.assert_code(2);
    env.nevis.set_down(None);
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(
        run.count("created"),
        10,
        "nothing was checkpointed while nevisIDM was down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_process_on_the_same_store_exits_2_in_use() {
    let env = Env::start().await;
    env.seed(1);
    let held = Store::open(&env.store_path(), 1 << 20).expect("open store");
    let run = env.sync(&[]).await;
    run.assert_code(2);
    assert!(run.stderr.contains("in use"), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    drop(held);
    env.sync(&[]).await.assert_code(0);
}

// Moved from the unit tests of `nexudus`, which must not import `sync` (tests/module_graph.rs).
#[test]
fn a_refresh_token_the_store_cannot_keep_is_a_store_failure() {
    // main adds the store.path hint to the fatal message of store failures.
    let e = SyncError::Source(SourceError::TokenStore("read-only".into()));
    assert!(e.is_store());
    assert!(!SyncError::Source(SourceError::Auth { status: 401 }).is_store());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_the_plan_and_writes_nothing() {
    let env = Env::start().await;
    let ids = env.seed(3);
    let run = env.sync(&["--dry-run"]).await;
    run.assert_code(0);
    let plan: Vec<Value> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("plan line is JSON"))
        .collect();
    assert_eq!(plan.len(), 3);
    assert!(plan.iter().all(|p| p["op"] == "create"));
    assert_eq!(plan[0]["changes"]["loginId"], "user.0@example.com");
    assert_eq!(env.nevis.stats().requests, 0);
    assert!(
        !env.store_path().exists(),
        "a dry run does not create the store"
    );

    env.sync(&[]).await.assert_code(0);
    env.nexudus.remove_user(ids[1]);
    env.set("sync.max_disable_percent", "50");
    env.nexudus.update_user(ids[2], |u| {
        u.insert("Active".into(), json!(false));
    });
    env.nexudus.update_user(ids[0], |u| {
        u.insert("Language".into(), json!(2));
    });
    env.set(
        "mapping.allowed_languages",
        r#"["de", "en", "es", "fr", "it"]"#,
    );
    let before = env.nevis.stats().requests;
    let run = env.sync(&["--dry-run"]).await;
    run.assert_code(0);
    let plan: Vec<Value> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(plan.contains(&json!({"op": "update", "extId": format!("nexudus-{}", ids[0]), "changes": {"languageCode": "es"}})), "{plan:?}");
    assert!(plan.contains(&json!({"op": "disable", "extId": format!("nexudus-{}", ids[2]), "changes": {"userState": "disabled"}})), "{plan:?}");
    assert!(plan.contains(&json!({"op": "disable", "extId": format!("nexudus-{}", ids[1]), "changes": {"userState": "disabled"}})), "{plan:?}");
    assert_eq!(plan.len(), 3, "{plan:?}");
    assert_eq!(env.nevis.stats().requests, before);
    // The store was not advanced: the real run still has all three changes to make.
    let run = env.sync(&[]).await;
    assert_eq!((run.count("updated"), run.count("disabled")), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_name_the_key_and_env_overrides_apply() {
    let env = Env::start().await;
    env.seed(1);
    env.set("store.paht", &quote("/tmp/typo"));
    let run = env.sync(&[]).await;
    run.assert_code(2);
    assert!(run.stderr.contains("paht"), "{}", run.stderr);

    let env = Env::start().await;
    env.seed(1);
    env.set("nevis.token", &quote("file-token-is-wrong"));
    let mut cmd = env.command(&["--sync-now"]);
    cmd.env("NEXUDUS_NEVIS_SYNC__NEVIS__TOKEN", "nevis-secret-token");
    cmd.env("NEXUDUS_NEVIS_SYNC__SYNC__CONCURRENCY", "2");
    run_cmd(cmd).await.assert_code(0);

    // --config falls back to $NEXUDUS_NEVIS_SYNC_CONFIG.
    let mut cmd = tokio::process::Command::new(common::BIN);
    cmd.arg("--sync-now")
        .env("NEXUDUS_NEVIS_SYNC_CONFIG", &env.config)
        .env("NEXUDUS_NEVIS_SYNC__NEVIS__TOKEN", "nevis-secret-token");
    run_cmd(cmd).await.assert_code(0);

    let mut cmd = tokio::process::Command::new(common::BIN);
    cmd.arg("--sync-now")
        .env_remove("NEXUDUS_NEVIS_SYNC_CONFIG");
    run_cmd(cmd).await.assert_code(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_any_moment_converges_without_duplicates() {
    let env = Env::start().await;
    env.set("sync.concurrency", "4");
    env.nevis.set_latency(Duration::from_millis(15));
    let ids = env.seed(240);
    // Kill twice mid-import, at different points, then let a run finish.
    for stop_at in [40usize, 130] {
        let mut child = env.command(&["--sync-now"]).spawn().expect("spawn");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while env.nevis.user_count() < stop_at && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.start_kill().expect("SIGKILL");
        let _ = child.wait().await;
    }
    assert!(
        env.nevis.user_count() < ids.len(),
        "the kills interrupted the import"
    );
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(env.nevis.user_count(), ids.len());
    let stats = env.nevis.stats();
    // Each kill can cut off at most `concurrency` (4) creates in flight and leave at most as
    // many confirmed creates without their checkpoint (asked again, answered "duplicate"):
    // 2 kills x 2 x 4 repeated creates at most, never a second user.
    assert!(
        stats.creates <= ids.len() as u64 + 16,
        "at most a handful of repeated writes: {stats:?}"
    );
    let again = env.sync(&[]).await;
    again.assert_code(0);
    assert_eq!(again.count("unchanged"), ids.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_the_whole_job() {
    let run = run_cmd({
        let mut cmd = tokio::process::Command::new(common::BIN);
        cmd.arg("--demo");
        cmd
    })
    .await;
    run.assert_code(0);
    assert!(run.stdout.contains("created=300"), "{}", run.stdout);
    assert!(run.stdout.contains("(0 writes)"), "{}", run.stdout);
    // The lifecycle, each step checked by the demo itself.
    for step in [
        "1. First import",
        "2. Changes in Nexudus",
        "--dry-run plans 4 writes and makes none",
        "\"op\":\"disable\"",
        "3. 35 users vanish",
        "held_disables=35",
        "approves with --sync-now --allow-mass-disable",
        "disabled=35",
        "4. An administrator renames",
        "drift=1",
        "5. Roles",
        "granted=2",
        "revoked=1",
        "6. nevisIDM now: 300 users",
        "7. The provisioning log of",
        "FullName changed in Nexudus",
        "demo: every step did what it should",
    ] {
        assert!(
            run.stdout.contains(step),
            "missing {step:?}:\n{}",
            run.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexudus_unreachable_after_retries_is_fatal_and_disables_nobody() {
    let env = Env::start().await;
    env.set("retry.max_attempts", "3");
    env.set("nexudus.page_size", "10");
    let ids = env.seed(30);
    env.sync(&[]).await.assert_code(0);
    env.nexudus.remove_user(ids[0]);
    // Nexudus fails for good: nothing may be disabled.
    let before = env.writes();
    env.nexudus.set_down(Some(500));
    let run = env.sync(&[]).await;
    run.assert_code(2);
    assert!(run.stderr.contains("Nexudus"), "{}", run.stderr);
    assert_eq!(env.writes(), before);
    assert_eq!(
        env.nevis.user(&format!("nexudus-{}", ids[0])).unwrap()["userState"],
        "active"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_one_shot_run_gracefully_with_exit_1() {
    let env = Env::start().await;
    env.set("sync.concurrency", "2");
    env.set("sync.shutdown_grace", &quote("10s"));
    env.nevis.set_latency(Duration::from_millis(200));
    env.seed(40);
    let child = env
        .command(&["--sync-now"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while env.nevis.user_count() < 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pid = child.id().expect("running").to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("stopped in time")
        .expect("output");
    assert_eq!(out.status.code(), Some(1), "interrupted is not in sync");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("interrupted"), "{stdout}");
    let written = env.nevis.user_count();
    assert!(written < 40);

    env.nevis.set_latency(Duration::ZERO);
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(
        run.count("created"),
        (40 - written) as u64,
        "confirmed writes were checkpointed"
    );
}
