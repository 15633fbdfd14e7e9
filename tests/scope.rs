//! Scope options over real HTTP: admins excluded, and a user leaving the scope is disabled by the
//! next full listing under the deletion safety.

mod common;

use common::{Env, quote};
use nexudus_nevis_sync::sandbox::NexudusUserSpec;
use serde_json::json;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_after_archives_users_disabled_that_long_through_the_api() {
    let env = Env::start().await;
    env.set("sync.archive_after", &quote("1s"));
    env.set("sync.max_disable_percent", "50");
    let ids = env.seed(4);
    env.sync(&[]).await.assert_code(0);
    env.nexudus.remove_user(ids[0]);
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!((run.count("disabled"), run.count("archived")), (1, 0));
    // The age is real time; this bounded wait is not an assertion on speed.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("archived"), 1);
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
        .expect("a PATCH");
    assert_eq!(
        patch,
        json!({"name": {"firstName": "Changed", "familyName": "Name"}, "modificationComment": "nexudus-nevis-sync run"})
    );
}
