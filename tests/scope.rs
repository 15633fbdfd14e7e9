//! Scope and mapping options over real HTTP: admins excluded, a user leaving the scope disabled by
//! the next full listing under the deletion safety, and a mapping change updating only the users
//! whose mapped value changed.

mod common;

use std::time::Duration;

use common::{Env, quote, without_version};
use nexudus_nevis_sync::clock::Clock;
use nexudus_nevis_sync::sandbox::NexudusUserSpec;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_admins_are_not_synced_and_leaving_the_scope_disables() {
    let env = Env::start().await;
    env.set("scope.admins", &quote("exclude"));
    env.set("sync.max_disable_percent", "50");
    let ids = env.seed(4);
    let admin = env.nexudus.insert_user(NexudusUserSpec {
        is_admin: true,
        ..NexudusUserSpec::new("Ada Admin", "ada@example.com")
    });
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("created"), 4);
    assert!(env.nevis.user(&format!("nexudus-{admin}")).is_none());

    // Promoting a synced user to admin takes them out of scope: disabled, never deleted.
    env.nexudus.update_user(ids[0], |u| {
        u.insert("IsAdmin".into(), json!(true));
    });
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("disabled"), 1);
    assert_eq!(
        env.nevis.user(&format!("nexudus-{}", ids[0])).unwrap()["userState"],
        "disabled"
    );
    assert_eq!(env.nevis.stats().deletes, 0);
}

/// The age is the store's clock's, moved by hand: these runs go through the library (the binary
/// always reads the system clock), with the real clients against the fakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_after_archives_users_disabled_that_long_through_the_api() {
    let env = Env::start().await;
    env.set("sync.archive_after", &quote("1h"));
    env.set("sync.max_disable_percent", "50");
    let ids = env.seed(4);
    let clock = Clock::manual(1_700_000_000);
    let run = env.run_in_process(&clock).await;
    assert_eq!((run.counts().created, run.exit_code()), (4, 0));
    env.nexudus.remove_user(ids[0]);
    let run = env.run_in_process(&clock).await;
    assert_eq!((run.counts().disabled, run.counts().archived), (1, 0));
    clock.advance(Duration::from_secs(3599));
    let run = env.run_in_process(&clock).await;
    assert_eq!(run.counts().archived, 0, "not yet an hour");
    clock.advance(Duration::from_secs(1));
    let run = env.run_in_process(&clock).await;
    assert_eq!((run.counts().archived, run.exit_code()), (1, 0));
    assert_eq!(
        env.nevis.user(&format!("nexudus-{}", ids[0])).unwrap()["userState"],
        "archived"
    );
    assert_eq!(env.nevis.stats().archives, 1);
    assert_eq!(env.nevis.stats().deletes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_carry_the_configured_marks_and_none_by_default() {
    let env = Env::start().await;
    let ids = env.seed(2);
    env.sync(&[]).await.assert_code(0);
    let plain = env.nevis.user(&format!("nexudus-{}", ids[0])).unwrap();
    assert!(plain.get("remarks").is_none() && plain.get("modificationComment").is_none());

    env.set("mapping.remarks", &quote("managed by nexudus-nevis-sync"));
    env.set(
        "mapping.modification_comment",
        &quote("nexudus-nevis-sync run"),
    );
    let new = env
        .nexudus
        .insert_user(NexudusUserSpec::new("New Person", "new@example.com"));
    env.nexudus.update_user(ids[1], |u| {
        u.insert("FullName".into(), json!("Changed Name"));
    });
    env.sync(&[]).await.assert_code(0);
    let created = env.nevis.user(&format!("nexudus-{new}")).unwrap();
    assert_eq!(created["remarks"], "managed by nexudus-nevis-sync");
    assert_eq!(created["modificationComment"], "nexudus-nevis-sync run");
    let patch = env
        .nevis
        .request_log()
        .into_iter()
        .rfind(|r| r.method == "PATCH")
        .and_then(|r| r.body)
        .map(without_version)
        .expect("a PATCH");
    assert_eq!(
        patch,
        json!({"name": {"firstName": "Changed", "familyName": "Name"}, "modificationComment": "nexudus-nevis-sync run"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_exit_beyond_the_deletion_safety_is_held_until_approved() {
    let env = Env::start().await;
    // Only the absolute limit is in play here.
    env.set("sync.max_disables", "2");
    env.set("sync.max_disable_percent", "100");
    let ids = env.seed(10);
    env.sync(&[]).await.assert_code(0);

    // Three users leave the scope at once: one more than sync.max_disables.
    env.set(
        "scope.exclude_ids",
        &format!("[{}, {}, {}]", ids[0], ids[1], ids[2]),
    );
    env.nevis.reset_stats();
    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert_eq!((run.count("disabled"), run.count("held_disables")), (0, 3));
    for id in &ids[..3] {
        let ext_id = format!("nexudus-{id}");
        assert!(
            run.stdout.contains("held: 3 disable(s)") && run.stdout.contains(&ext_id),
            "{}",
            run.stdout
        );
        assert_eq!(env.nevis.user(&ext_id).unwrap()["userState"], "active");
    }
    assert!(run.stderr.contains("DELETION SAFETY"), "{}", run.stderr);
    assert_eq!(env.writes(), 0, "nothing disabled");

    let run = env.sync(&["--allow-mass-disable"]).await;
    run.assert_code(0);
    assert_eq!((run.count("disabled"), run.count("held_disables")), (3, 0));
    for id in &ids[..3] {
        assert_eq!(
            env.nevis.user(&format!("nexudus-{id}")).unwrap()["userState"],
            "disabled"
        );
    }
    assert_eq!(
        env.nevis.user(&format!("nexudus-{}", ids[3])).unwrap()["userState"],
        "active"
    );
    assert_eq!(env.nevis.stats().deletes, 0);
    // Approval was for that run; the next one has nothing left to do.
    env.nevis.reset_stats();
    env.sync(&[]).await.assert_code(0);
    assert_eq!(env.writes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_exit_within_the_deletion_safety_is_disabled_at_once() {
    let env = Env::start().await;
    let ids = env.seed(10);
    let outsider = env
        .nexudus
        .insert_user(NexudusUserSpec::new("Out Sider", "out@elsewhere.org"));
    env.sync(&[]).await.assert_code(0);

    // The allow-list is matched case-insensitively ("User.i@Example.com" stays in); one user of
    // eleven leaves, within the default limits (50 users, 10 %).
    env.set("scope.email_domains", r#"["example.com"]"#);
    env.nevis.reset_stats();
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(
        (
            run.count("disabled"),
            run.count("held_disables"),
            run.count("unchanged")
        ),
        (1, 0, 10)
    );
    assert_eq!(
        env.nevis.user(&format!("nexudus-{outsider}")).unwrap()["userState"],
        "disabled"
    );
    assert_eq!(env.nevis.stats().patches, 1);
    assert_eq!(
        env.nevis.user(&format!("nexudus-{}", ids[0])).unwrap()["userState"],
        "active"
    );
}

/// The bodies of the PATCHes nevisIDM received since the request log was last cleared.
fn patch_bodies(env: &Env) -> Vec<Value> {
    env.nevis
        .request_log()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| without_version(r.body.expect("a PATCH carries a body")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_change_updates_only_the_users_whose_mapped_value_changes() {
    let env = Env::start().await;
    let spanish = |name: &str, email: &str| NexudusUserSpec {
        language: 2,
        ..NexudusUserSpec::new(name, email)
    };
    let mut other_language = NexudusUserSpec::new("Ola", "ola@example.com");
    other_language.language = 9;
    // Names whose split is the same either way: one word, or one word twice.
    let cher = env
        .nexudus
        .insert_user(NexudusUserSpec::new("Cher", "cher@example.com"));
    env.nexudus
        .insert_user(spanish("Lee  Lee", "lee@example.com"));
    let ola = env.nexudus.insert_user(other_language);
    // Names whose split differs.
    let ann = env
        .nexudus
        .insert_user(NexudusUserSpec::new("Ann Marie Smith", "ann@example.com"));
    let jo = env
        .nexudus
        .insert_user(spanish("Jo Diaz", "jo@example.com"));
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("created"), 5);
    assert_eq!(
        env.nevis.user(&format!("nexudus-{cher}")).unwrap()["name"],
        json!({"firstName": "Cher", "familyName": "Cher"})
    );

    env.nevis.set_request_log(true);
    env.nevis.reset_stats();
    env.set("mapping.name_split", &quote("first_word"));
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!((run.count("updated"), run.count("unchanged")), (2, 3));
    let mut bodies = patch_bodies(&env);
    bodies.sort_by_key(|b| b.to_string());
    assert_eq!(
        bodies,
        vec![
            json!({"name": {"firstName": "Marie Smith", "familyName": "Ann"}}),
            json!({"name": {"firstName": "Diaz", "familyName": "Jo"}}),
        ]
    );
    assert_eq!(
        env.nevis.user(&format!("nexudus-{ann}")).unwrap()["name"],
        json!({"firstName": "Marie Smith", "familyName": "Ann"})
    );
    assert_eq!(env.nevis.stats().creates, 0);

    // Spanish (2) now maps to "fr": only the two Spanish users change, only their language.
    env.nevis.clear_request_log();
    env.set(
        "mapping.languages",
        r#"{ "1" = "en", "2" = "fr", "3" = "en" }"#,
    );
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!((run.count("updated"), run.count("unchanged")), (2, 3));
    assert_eq!(patch_bodies(&env), vec![json!({"languageCode": "fr"}); 2]);
    assert_eq!(
        env.nevis.user(&format!("nexudus-{jo}")).unwrap()["languageCode"],
        "fr"
    );

    // The default applies only to the language outside the table.
    env.nevis.clear_request_log();
    env.set("mapping.default_language", &quote("de"));
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!((run.count("updated"), run.count("unchanged")), (1, 4));
    let log = env.nevis.request_log();
    let patches: Vec<_> = log.iter().filter(|r| r.method == "PATCH").collect();
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert!(
        patches[0].path.ends_with(&format!("/nexudus-{ola}")),
        "{}",
        patches[0].path
    );
    assert_eq!(
        patches[0].body.clone().map(without_version),
        Some(json!({"languageCode": "de"}))
    );

    // Settled: nothing more to write.
    env.nevis.reset_stats();
    env.sync(&[]).await.assert_code(0);
    assert_eq!(env.writes(), 0);
}
