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
