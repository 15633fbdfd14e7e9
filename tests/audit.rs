//! The provisioning log over HTTP with the real binary: a lifecycle leaves exactly the expected
//! entries with their values before and after; `--history` reads them from the store and from a
//! running daemon; a kill between nevisIDM's write and the checkpoint leaves no entry; retention
//! prunes; `audit.values = "hashed"` keeps no plain value.

mod common;

use std::time::Duration;

use common::{Daemon, Env, Run, legacy, quote, run_cmd};
use nexudus_nevis_sync::sandbox::NexudusUserSpec;
use serde_json::{Value, json};

/// `--history [args] --json`: the entries, newest first.
async fn history(env: &Env, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--history"];
    all.extend_from_slice(args);
    all.push("--json");
    let run = run_cmd(env.command(&all)).await;
    run.assert_code(0);
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn ext(id: u64) -> String {
    format!("nexudus-{id}")
}

/// The entries of one person, newest first, as (operation, outcome).
fn ops(entries: &[Value]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|e| {
            (
                e["operation"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn change<'a>(entry: &'a Value, field: &str) -> &'a Value {
    entry["changes"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["field"] == field))
        .unwrap_or_else(|| panic!("no change of {field} in {entry}"))
}

async fn sync(env: &Env, args: &[&str], code: i32) -> Run {
    let run = env.sync(args).await;
    run.assert_code(code);
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifecycle_leaves_exactly_the_expected_entries() {
    let env = Env::start().await;
    // One deletion of six users is not a mass disable here.
    env.set("sync.max_disable_percent", "100");
    let ids = env.seed(6);
    let invalid = env.nexudus.insert_user(NexudusUserSpec {
        email: None,
        ..NexudusUserSpec::new("No Email", "")
    });
    // Import: six creates confirmed, one invalid record.
    sync(&env, &[], 1).await;
    let all = history(&env, &[]).await;
    assert_eq!(all.len(), 7, "{all:#?}");
    let first = history(&env, &[&ids[0].to_string()]).await;
    assert_eq!(ops(&first), [("create".into(), "confirmed".into())]);
    assert_eq!(first[0]["status"], 201);
    assert_eq!(first[0]["cause"], "new in Nexudus");
    assert_eq!(first[0]["mode"], "full");
    assert_eq!(change(&first[0], "name.familyName")["after"], "Last0");
    assert!(change(&first[0], "name.familyName").get("before").is_none());
    let bad = history(&env, &[&invalid.to_string()]).await;
    assert_eq!(ops(&bad), [("skip".into(), "invalid".into())]);
    assert!(
        bad[0]["reason"].as_str().unwrap().contains("email"),
        "{bad:?}"
    );

    // An unchanged rerun writes nothing (the invalid record is not logged again).
    sync(&env, &[], 1).await;
    assert_eq!(history(&env, &[]).await.len(), 7);

    // A rename and a deactivation in Nexudus.
    env.nexudus.update_user(ids[0], |r| {
        r.insert("FullName".into(), json!("First0 Renamed"));
    });
    env.nexudus.update_user(ids[1], |r| {
        r.insert("Active".into(), json!(false));
    });
    sync(&env, &[], 1).await;
    let renamed = &history(&env, &[&ext(ids[0])]).await[0];
    assert_eq!(
        (renamed["operation"].as_str(), renamed["cause"].as_str()),
        (Some("update"), Some("FullName changed in Nexudus"))
    );
    assert_eq!(
        change(renamed, "name.familyName"),
        &json!({"field": "name.familyName", "before": "Last0", "after": "Renamed"})
    );
    let off = &history(&env, &[&ext(ids[1])]).await[0];
    assert_eq!(off["operation"], "disable");
    assert_eq!(off["cause"], "Active set to false in Nexudus");
    assert_eq!(
        change(off, "userState"),
        &json!({"field": "userState", "before": "active", "after": "disabled"})
    );

    // A deletion, confirmed by look-up.
    assert!(env.nexudus.remove_user(ids[2]));
    sync(&env, &[], 1).await;
    let gone = &history(&env, &[&ids[2].to_string()]).await[0];
    assert_eq!(gone["operation"], "disable");
    assert_eq!(gone["cause"], "gone from Nexudus, confirmed by look-up");

    // A hand edit in nevisIDM, set back by a reconcile.
    env.nevis.modify_user(&ext(ids[3]), |u| {
        u["name"]["familyName"] = json!("Edited");
    });
    sync(&env, &["--reconcile"], 1).await;
    let set_back = &history(&env, &[&ext(ids[3])]).await[0];
    assert_eq!(set_back["cause"], "hand edit set back by reconcile");
    assert_eq!(set_back["mode"], "reconcile");
    assert_eq!(
        change(set_back, "name.familyName"),
        &json!({"field": "name.familyName", "before": "Edited", "after": "Last3"})
    );

    // A write nevisIDM refuses.
    env.nevis.reject_user(
        &ext(ids[4]),
        422,
        "errors.invalidData",
        "email is not allowed",
    );
    env.nexudus.update_user(ids[4], |r| {
        r.insert("Email".into(), json!("new.4@example.com"));
    });
    sync(&env, &[], 1).await;
    let refused = &history(&env, &[&ext(ids[4]), "--outcome", "refused"]).await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["status"], 422);
    assert!(
        refused[0]["reason"]
            .as_str()
            .unwrap()
            .contains("email is not allowed")
    );
    env.nevis.clear_rejections();

    // A mass disable held by the deletion safety: logged once while it stays held.
    env.set("sync.max_disables", "1");
    assert!(env.nexudus.remove_user(ids[4]));
    assert!(env.nexudus.remove_user(ids[5]));
    sync(&env, &[], 1).await;
    sync(&env, &[], 1).await;
    let held = history(&env, &["--op", "disable", "--outcome", "held"]).await;
    let held_ids: Vec<_> = held
        .iter()
        .map(|e| e["nexudus_id"].as_u64().unwrap())
        .collect();
    assert_eq!(held.len(), 2, "{held:#?}");
    assert!(held_ids.contains(&ids[4]) && held_ids.contains(&ids[5]));
    assert!(
        held[0]["reason"]
            .as_str()
            .unwrap()
            .contains("sync.max_disables")
    );

    // The whole log, and the table a person reads.
    let everything = history(&env, &[]).await;
    let count = |op: &str, outcome: &str| {
        everything
            .iter()
            .filter(|e| e["operation"] == op && e["outcome"] == outcome)
            .count()
    };
    assert_eq!(count("create", "confirmed"), 6);
    assert_eq!(count("update", "confirmed"), 2, "rename, hand edit");
    assert_eq!(count("disable", "confirmed"), 2, "deactivation, deletion");
    assert_eq!(count("update", "refused"), 1);
    assert_eq!(count("disable", "held"), 2);
    assert_eq!(count("skip", "invalid"), 1);
    assert_eq!(everything.len(), 14, "{everything:#?}");
    let table = run_cmd(env.command(&["--history", &ext(ids[0])])).await;
    table.assert_code(0);
    assert!(
        table.stdout.contains("name.familyName: Last0 -> Renamed"),
        "{}",
        table.stdout
    );
    assert!(table.stdout.contains("FullName changed in Nexudus"));

    // Each entry is found by its person: none lacks the index that leads to it.
    let mut found = std::collections::BTreeSet::new();
    for id in per_person(&everything).keys() {
        for e in history(&env, &[&id.to_string()]).await {
            found.insert(e["cursor"].as_str().unwrap().to_string());
        }
    }
    let all: std::collections::BTreeSet<_> = everything
        .iter()
        .map(|e| e["cursor"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(found, all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_read_from_the_running_daemon_behind_its_token() {
    let env = Env::start().await;
    let ids = env.seed(3);
    let token = env.dir.path().join("http-token");
    std::fs::write(&token, "history-token-0123456789\n").expect("token file");
    env.set("http.auth_token_file", &quote(&token.display().to_string()));
    let daemon = Daemon::start(&env).await;
    let bearer = Some("Bearer history-token-0123456789");
    let deadline = std::time::Instant::now() + common::DAEMON_WAIT;
    while daemon
        .get_authorized("/history", bearer)
        .await
        .body
        .lines()
        .count()
        < 3
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no entries in /history"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Personal data: no token, no history; the scrape (open) says only how many entries.
    assert_eq!(daemon.get("/history").await.0, 401);
    daemon
        .wait_for_body("/metrics", |m| {
            m.contains("nexudus_nevis_sync_audit_entries 3")
        })
        .await;
    env.set("http.listen", &quote(&daemon.addr.to_string()));
    // The store is the daemon's: --history asks it, with the token.
    let mine = history(&env, &[&ids[1].to_string()]).await;
    assert_eq!(ops(&mine), [("create".into(), "confirmed".into())]);
    let recent = history(&env, &["--since", "1h", "--op", "create"]).await;
    assert_eq!(recent.len(), 3);
    let table = run_cmd(env.command(&["--history", &ext(ids[2])])).await;
    table.assert_code(0);
    assert!(table.stdout.contains("new in Nexudus"), "{}", table.stdout);
    let answer = daemon
        .get_authorized(
            "/history?since=2020-01-01T00:00:00Z&outcome=refused",
            bearer,
        )
        .await;
    assert_eq!((answer.status, answer.body.as_str()), (200, ""));
    let answer = daemon.get_authorized("/history?op=delete", bearer).await;
    assert_eq!(answer.status, 400);
    // A wrong token is refused, and --history says so.
    std::fs::write(&token, "not-the-token\n").expect("token file");
    let refused = run_cmd(env.command(&["--history", &ext(ids[2])])).await;
    refused.assert_code(2);
    assert!(
        refused.stderr.contains("http.auth_token_file"),
        "{}",
        refused.stderr
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_the_write_and_the_checkpoint_leaves_no_entry() {
    let env = Env::start().await;
    env.set("sync.concurrency", "1");
    let ids = env.seed(3);
    // nevisIDM makes every create at once but holds its answer back: the client waits.
    env.nevis.set_slow_answer(Duration::from_secs(60), |r| {
        r.method == "POST" && r.path.ends_with("/users")
    });
    let mut child = env.command(&["--sync-now"]).spawn().expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while env.nevis.answered_late() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(env.nevis.user_count(), 1, "the first create was made");
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;
    assert!(
        history(&env, &[]).await.is_empty(),
        "no entry for a write the sync never saw confirmed"
    );
    // The next run finds the user already there and logs what it confirmed.
    env.nevis.clear_slow_answer();
    sync(&env, &[], 0).await;
    let all = history(&env, &[]).await;
    assert_eq!(all.len(), 3, "{all:#?}");
    let found = all
        .iter()
        .filter(|e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("already held"))
        })
        .count();
    assert_eq!(found, 1, "the user created before the kill: {all:#?}");
    assert!(all.iter().all(|e| e["outcome"] == "confirmed"));
    assert_eq!(ids.len(), env.nevis.user_count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_values_keep_no_plain_value_and_none_keeps_only_fields() {
    for values in ["hashed", "none"] {
        let env = Env::start().await;
        env.set("audit.values", &quote(values));
        let ids = env.seed(2);
        env.nevis.reject_user(
            &ext(ids[1]),
            422,
            "errors.invalidData",
            "user.1@example.com is taken",
        );
        sync(&env, &[], 1).await;
        env.nexudus.update_user(ids[0], |r| {
            r.insert("Email".into(), json!("changed.0@example.com"));
        });
        sync(&env, &[], 1).await;
        let all = history(&env, &[]).await;
        // The create, the refused one and the update: the refused values wait for their next
        // try instead of being sent (and logged) again by the second run.
        assert_eq!(all.len(), 3, "{all:#?}");
        let text = serde_json::to_string(&all).unwrap().to_lowercase();
        for plain in [
            "user.0@example.com",
            "changed.0",
            "first0",
            "last1",
            "user.1@",
        ] {
            assert!(!text.contains(plain), "{values}: {plain} in {text}");
        }
        let update = all
            .iter()
            .find(|e| e["operation"] == "update")
            .expect("the email change");
        let email = change(update, "contacts.email");
        if values == "hashed" {
            let (before, after) = (email["before"].as_str(), email["after"].as_str());
            assert!(before.unwrap().starts_with("hmac:") && after.unwrap().starts_with("hmac:"));
            assert_ne!(before, after);
        } else {
            assert_eq!(email, &json!({"field": "contacts.email"}));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_the_size_bound_prune_the_oldest_entries() {
    let env = Env::start().await;
    env.set("audit.retention", &quote("1s"));
    env.seed(3);
    sync(&env, &[], 0).await;
    assert_eq!(history(&env, &[]).await.len(), 3);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    // The next run prunes what aged out (it writes nothing itself).
    sync(&env, &[], 0).await;
    assert!(history(&env, &[]).await.is_empty());

    env.set("audit.retention", &quote("90d"));
    env.set("audit.max_entries", "4");
    for i in 0..6 {
        env.nexudus.insert_user(NexudusUserSpec::new(
            format!("More {i}"),
            format!("more.{i}@example.com"),
        ));
    }
    sync(&env, &[], 0).await;
    let kept = history(&env, &[]).await;
    assert!(!kept.is_empty() && kept.len() <= 4, "{kept:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turned_off_the_log_writes_nothing_and_a_rebuild_keeps_it() {
    let env = Env::start().await;
    let ids = env.seed(2);
    sync(&env, &[], 0).await;
    sync(&env, &["--rebuild-store"], 0).await;
    let kept = history(&env, &[&ids[0].to_string()]).await;
    assert_eq!(
        ops(&kept)[kept.len() - 1],
        ("create".into(), "confirmed".into())
    );
    env.set("audit.enabled", "false");
    env.nexudus.update_user(ids[0], |r| {
        r.insert("Active".into(), json!(false));
    });
    sync(&env, &[], 0).await;
    assert_eq!(
        history(&env, &[&ids[0].to_string()]).await.len(),
        kept.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_revocations_and_held_revocations_are_logged() {
    let env = Env::start().await;
    env.nevis.add_roles(&["frontdesk"]);
    let ids = env.seed(3);
    let role = env
        .nexudus
        .add_user_role(1, "Main Street", "Receptionist", &ids[..2]);
    env.set(
        "roles.map",
        r#"[{nexudus = "Receptionist", nevis = ["frontdesk"]}]"#,
    );
    env.set("roles.max_revokes", "1");
    sync(&env, &[], 0).await;
    let granted = history(&env, &[&ext(ids[0]), "--op", "grant"]).await;
    assert_eq!(ops(&granted), [("grant".into(), "confirmed".into())]);
    assert_eq!(
        change(&granted[0], "roles"),
        &json!({"field": "roles", "after": "frontdesk"})
    );

    // Both members leave: two revocations, beyond roles.max_revokes = 1, held (logged once).
    env.nexudus.set_role_members(role, &[]);
    sync(&env, &[], 1).await;
    sync(&env, &[], 1).await;
    let held = history(&env, &["--op", "revoke", "--outcome", "held"]).await;
    assert_eq!(held.len(), 2, "{held:#?}");
    assert!(
        held[0]["reason"]
            .as_str()
            .unwrap()
            .contains("roles.max_revokes")
    );
    sync(&env, &["--allow-mass-disable"], 0).await;
    let revoked = history(&env, &[&ids[1].to_string()]).await;
    assert_eq!(
        ops(&revoked),
        [
            ("revoke".into(), "confirmed".into()),
            ("revoke".into(), "held".into()),
            ("grant".into(), "confirmed".into()),
            ("create".into(), "confirmed".into()),
        ]
    );
    assert_eq!(
        change(&revoked[0], "roles"),
        &json!({"field": "roles", "before": "frontdesk"})
    );
    assert_eq!(
        revoked[0]["cause"],
        "no longer in a Nexudus UserRole mapped to this role ([[roles.map]])"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adoption_is_logged_under_the_adopted_ext_id_with_what_it_held() {
    let env = Env::start().await;
    env.set("sync.adopt", &quote("email"));
    env.nevis
        .insert_user(legacy("hr-1", "anna", "user.0@example.com"));
    let ids = env.seed(2);
    sync(&env, &[], 0).await;
    for who in ["hr-1".to_string(), ids[0].to_string()] {
        let adopted = history(&env, &[&who]).await;
        assert_eq!(
            ops(&adopted),
            [("adopt".into(), "confirmed".into())],
            "{who}"
        );
        assert_eq!(adopted[0]["ext_id"], "hr-1");
        assert_eq!(
            change(&adopted[0], "name.familyName"),
            &json!({"field": "name.familyName", "before": "Account", "after": "Last0"})
        );
        assert!(adopted[0]["cause"].as_str().unwrap().contains("sync.adopt"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_names_a_change_in_nexudus_apart_from_a_hand_edit() {
    let env = Env::start().await;
    let ids = env.seed(2);
    sync(&env, &[], 0).await;
    env.nexudus.update_user(ids[0], |r| {
        r.insert("FullName".into(), json!("First0 Changed"));
    });
    env.nevis.modify_user(&ext(ids[1]), |u| {
        u["name"]["firstName"] = json!("Hand");
    });
    sync(&env, &["--reconcile"], 0).await;
    let changed = &history(&env, &[&ext(ids[0])]).await[0];
    assert_eq!(changed["cause"], "FullName changed in Nexudus");
    assert_eq!(changed["mode"], "reconcile");
    let edited = &history(&env, &[&ext(ids[1])]).await[0];
    assert_eq!(edited["cause"], "hand edit set back by reconcile");
    assert_eq!(
        change(edited, "name.firstName"),
        &json!({"field": "name.firstName", "before": "Hand", "after": "First1"})
    );
}

/// How many entries of `entries` each Nexudus Id has.
fn per_person(entries: &[Value]) -> std::collections::BTreeMap<u64, usize> {
    let mut count = std::collections::BTreeMap::new();
    for e in entries {
        *count.entry(e["nexudus_id"].as_u64().unwrap()).or_default() += 1;
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_disables_are_logged_once_each_while_only_the_count_in_the_reason_moves() {
    let env = Env::start().await;
    env.set("sync.max_disables", "10");
    env.set("sync.max_disable_percent", "100");
    let ids = env.seed(60);
    sync(&env, &[], 0).await;
    for id in &ids[..36] {
        assert!(env.nexudus.remove_user(*id));
    }
    for _ in 0..2 {
        sync(&env, &[], 1).await;
    }
    // One more leaves: "37 disables exceed …" now, for the same 36 and one new.
    assert!(env.nexudus.remove_user(ids[36]));
    for _ in 0..4 {
        sync(&env, &[], 1).await;
    }
    let held = history(&env, &["--op", "disable", "--outcome", "held"]).await;
    let count = per_person(&held);
    assert_eq!(count.len(), 37, "{count:?}");
    assert!(count.values().all(|n| *n == 1), "one entry each: {count:?}");
    let newest = held[0]["reason"].as_str().unwrap();
    assert!(newest.starts_with("37 disables"), "{newest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_held_revocations_of_one_person_are_each_logged_once() {
    let env = Env::start().await;
    env.nevis.add_roles(&["frontdesk", "keys"]);
    let ids = env.seed(3);
    let role = env
        .nexudus
        .add_user_role(1, "Main Street", "Receptionist", &ids[..2]);
    env.set(
        "roles.map",
        r#"[{nexudus = "Receptionist", nevis = ["frontdesk", "keys"]}]"#,
    );
    env.set("roles.max_revokes", "1");
    sync(&env, &[], 0).await;
    env.nexudus.set_role_members(role, &[]);
    for _ in 0..3 {
        sync(&env, &[], 1).await;
    }
    let held = history(&env, &["--op", "revoke", "--outcome", "held"]).await;
    assert_eq!(held.len(), 4, "two people, two roles each: {held:#?}");
    for id in &ids[..2] {
        let mut roles: Vec<_> = held
            .iter()
            .filter(|e| e["nexudus_id"] == *id)
            .map(|e| change(e, "roles")["before"].as_str().unwrap().to_string())
            .collect();
        roles.sort();
        assert_eq!(roles, ["frontdesk", "keys"], "{id}");
    }
    // Approved: each revocation confirmed once, then nothing more is held.
    sync(&env, &["--allow-mass-disable"], 0).await;
    sync(&env, &[], 0).await;
    let revokes = history(&env, &["--op", "revoke"]).await;
    assert_eq!(revokes.len(), 8, "{revokes:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_that_changes_is_logged_again_and_a_repeated_one_is_not() {
    let env = Env::start().await;
    let id = env
        .nexudus
        .insert_user(NexudusUserSpec::new("Ada Lovelace", "ada.example.com"));
    sync(&env, &[], 1).await;
    sync(&env, &[], 1).await;
    let set_email = |email: Option<&str>| {
        env.nexudus.update_user(id, |r| {
            r.insert("Email".into(), email.map_or(Value::Null, |e| json!(e)));
        });
    };
    // Another rule broken: another decision; then the first again: news again.
    set_email(None);
    sync(&env, &[], 1).await;
    sync(&env, &[], 1).await;
    set_email(Some("ada.example.com"));
    sync(&env, &[], 1).await;
    // The same rule with another value: another decision too.
    set_email(Some("ada.lovelace.example.com"));
    sync(&env, &[], 1).await;
    sync(&env, &[], 1).await;
    let mine = history(&env, &[&id.to_string()]).await;
    let reasons: Vec<_> = mine
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:#?}");
    assert!(
        reasons[0].contains("ada.lovelace.example.com"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("ada.example.com"), "{reasons:?}");
    assert!(reasons[2].contains("missing"), "{reasons:?}");
    assert!(reasons[3].contains("ada.example.com"), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_bound_prunes_entries_past_the_retention_before_any_younger_one() {
    let env = Env::start().await;
    env.set("audit.retention", &quote("90d"));
    env.set("audit.max_entries", "100");
    let clock = nexudus_nevis_sync::clock::Clock::manual(1_900_000_000);
    let first = env.seed(1)[0];
    env.run_in_process(&clock).await;
    clock.advance(Duration::from_secs(91 * 86_400));
    // 100 creates: the 101st entry of the log brings it over its bound.
    for i in 0..100 {
        env.nexudus.insert_user(NexudusUserSpec::new(
            format!("Young {i}"),
            format!("young.{i}@example.com"),
        ));
    }
    env.run_in_process(&clock).await;
    let kept = history(&env, &[]).await;
    assert_eq!(kept.len(), 100, "every entry inside the retention is kept");
    assert!(kept.iter().all(|e| e["nexudus_id"] != first));
    let store = common::open_when_free(&env.store_path(), 1 << 20).await;
    assert_eq!(store.audit_pruned_within_retention().unwrap(), 0);
    drop(store);
    // Every entry is young now: the bound prunes young ones, and counts them.
    env.nexudus
        .insert_user(NexudusUserSpec::new("One More", "one.more@example.com"));
    env.run_in_process(&clock).await;
    let store = common::open_when_free(&env.store_path(), 1 << 20).await;
    assert_eq!(store.audit_len().unwrap(), 99);
    assert_eq!(store.audit_pruned_within_retention().unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_counts_entries_pruned_inside_the_retention() {
    let env = Env::start().await;
    env.set("audit.max_entries", "3");
    env.seed(5);
    let daemon = Daemon::start(&env).await;
    // Five creates into a log bounded at three: two young entries pruned.
    daemon
        .wait_for_body("/metrics", |m| {
            m.contains("nexudus_nevis_sync_audit_pruned_within_retention_total 2")
        })
        .await;
    daemon.stop().await;
}

/// Every page of `--history [args] --limit N --json`, following each page's cursor: the
/// entries' cursors in the order read.
async fn paged(env: &Env, args: &[&str], limit: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    for _ in 0..100 {
        let limit = limit.to_string();
        let mut all = vec!["--history"];
        all.extend_from_slice(args);
        all.extend(["--limit", &limit, "--json"]);
        if let Some(cursor) = &before {
            all.extend(["--before", cursor]);
        }
        let run = run_cmd(env.command(&all)).await;
        run.assert_code(0);
        let lines: Vec<Value> = run
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        before = None;
        for line in &lines {
            match line["next_before"].as_str() {
                Some(next) => before = Some(next.to_string()),
                None => seen.push(line["cursor"].as_str().unwrap().to_string()),
            }
        }
        let entries = lines.len() - usize::from(before.is_some());
        assert!(entries <= limit.parse().unwrap(), "the limit is honoured");
        if before.is_none() {
            return seen;
        }
    }
    panic!("more than 100 pages");
}

/// `/history` page by page, following the cursor the last line names.
async fn paged_from_daemon(daemon: &Daemon, limit: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut path = format!("/history?limit={limit}");
    for _ in 0..100 {
        let (status, body) = daemon.get(&path).await;
        assert_eq!(status, 200, "{body}");
        let mut next = None;
        let mut entries = 0;
        for line in body.lines() {
            let line: Value = serde_json::from_str(line).expect("a JSON line");
            match line["next_before"].as_str() {
                Some(cursor) => next = Some(cursor.to_string()),
                None => {
                    entries += 1;
                    seen.push(line["cursor"].as_str().unwrap().to_string());
                }
            }
        }
        assert!(entries <= limit, "the limit is honoured");
        match next {
            Some(cursor) => path = format!("/history?limit={limit}&before={cursor}"),
            None => return seen,
        }
    }
    panic!("more than 100 pages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_with_a_cursor_each_entry_once_newest_first() {
    let env = Env::start().await;
    let ids = env.seed(23);
    sync(&env, &[], 0).await;
    for id in &ids[..4] {
        env.nexudus.update_user(*id, |r| {
            r.insert("Active".into(), json!(false));
        });
    }
    sync(&env, &[], 0).await;
    let whole: Vec<String> = history(&env, &[])
        .await
        .iter()
        .map(|e| e["cursor"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(whole.len(), 27);
    assert_eq!(paged(&env, &[], 10).await, whole);
    let first = history(&env, &[&ids[0].to_string()]).await;
    let mine: Vec<_> = first
        .iter()
        .map(|e| e["cursor"].as_str().unwrap())
        .collect();
    assert_eq!(paged(&env, &[&ids[0].to_string()], 1).await, mine);
    // The table says where the next page starts.
    let table = run_cmd(env.command(&["--history", "--limit", "5"])).await;
    table.assert_code(0);
    let last = table.stdout.lines().last().unwrap();
    assert_eq!(last, format!("next page: --before {}", whole[4]));
    let too_many = run_cmd(env.command(&["--history", "--limit", "20000"])).await;
    too_many.assert_code(2);

    // The daemon's /history pages the same, and --history asks it while it holds the store.
    let daemon = Daemon::start(&env).await;
    daemon
        .wait_for_body("/metrics", |m| {
            m.contains("runs_total{outcome=\"in_sync\"} 1")
        })
        .await;
    assert_eq!(paged_from_daemon(&daemon, 7).await, whole);
    env.set("http.listen", &quote(&daemon.addr.to_string()));
    assert_eq!(paged(&env, &[], 10).await, whole);
    assert_eq!(daemon.get("/history?limit=0").await.0, 400);
    assert_eq!(daemon.get("/history?before=yesterday").await.0, 400);
    daemon.stop().await;
}
