//! Operating a real directory, over real HTTP against the sandbox fakes: drift repaired by a
//! reconcile, hand-disabled users reported and kept, a lost or damaged store rebuilt without
//! rewriting correct users, safe adoption with conflicts, shared source emails, static properties,
//! and the dry run showing each decision.

mod common;

use common::{Env, Run, legacy, quote};
use nexudus_nevis_sync::sandbox::NexudusUserSpec;
use serde_json::{Value, json};

fn ext(id: u64) -> String {
    format!("nexudus-{id}")
}

/// The JSON plan lines of a dry run.
fn plan(run: &Run) -> Vec<Value> {
    run.stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("plan lines are JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_sets_back_hand_edits_and_refreshes_checkpoints() {
    let env = Env::start().await;
    let ids = env.seed(5);
    env.sync(&[]).await.assert_code(0);
    env.nevis.modify_user(&ext(ids[1]), |u| {
        u.insert(
            "name".into(),
            json!({"firstName": "Hand", "familyName": "Edited"}),
        );
        u.insert("languageCode".into(), json!("fr"));
    });
    // An ordinary run goes by its checkpoints and cannot see the edit.
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("updated"), 0);

    env.nevis.reset_stats();
    let run = env.sync(&["--reconcile"]).await;
    run.assert_code(0);
    assert_eq!(
        (
            run.count("drift"),
            run.count("updated"),
            run.count("unchanged")
        ),
        (1, 1, 4)
    );
    assert!(run.stdout.contains("mode=reconcile"), "{}", run.stdout);
    let user = env.nevis.user(&ext(ids[1])).unwrap();
    assert_eq!(user["name"]["familyName"], "Last1");
    assert_eq!(user["languageCode"], "en");
    assert_eq!(env.writes(), 1);

    // Reconciling again, and an ordinary run after it, write nothing.
    let run = env.sync(&["--reconcile"]).await;
    run.assert_code(0);
    assert_eq!(run.count("updated"), 0);
    env.sync(&[]).await.assert_code(0);
    assert_eq!(env.writes(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_disabled_user_is_reported_and_not_re_enabled_unless_configured() {
    let env = Env::start().await;
    let ids = env.seed(4);
    env.sync(&[]).await.assert_code(0);
    let victim = ext(ids[2]);
    env.nevis.modify_user(&victim, |u| {
        u.insert("userState".into(), json!("disabled"));
    });
    env.nevis.reset_stats();

    let run = env.sync(&["--reconcile"]).await;
    run.assert_code(0);
    assert_eq!(run.count("hand_disabled"), 1);
    assert!(
        run.stdout
            .contains(&format!("hand-disabled: extId={victim}")),
        "{}",
        run.stdout
    );
    assert_eq!(env.nevis.user(&victim).unwrap()["userState"], "disabled");
    // Later ordinary runs do not re-enable it through the checkpoint either.
    env.sync(&[]).await.assert_code(0);
    env.sync(&[]).await.assert_code(0);
    assert_eq!(env.nevis.user(&victim).unwrap()["userState"], "disabled");
    assert_eq!(env.writes(), 0);

    env.set("sync.reenable_on_reconcile", "true");
    let run = env.sync(&["--reconcile"]).await;
    run.assert_code(0);
    assert_eq!(run.count("updated"), 1);
    assert_eq!(env.nevis.user(&victim).unwrap()["userState"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_store_is_rebuilt_with_zero_writes_for_correct_users() {
    let env = Env::start().await;
    let ids = env.seed(30);
    env.sync(&[]).await.assert_code(0);
    // One user drifted meanwhile, one is new in Nexudus.
    env.nevis.modify_user(&ext(ids[0]), |u| {
        u.insert("contacts".into(), json!({"email": "changed@elsewhere.org"}));
    });
    env.nexudus
        .insert_user(NexudusUserSpec::new("New Person", "new.person@example.com"));
    std::fs::remove_dir_all(env.store_path()).unwrap();
    env.nevis.reset_stats();

    let run = env.sync(&["--rebuild-store"]).await;
    run.assert_code(0);
    assert_eq!(
        (
            run.count("unchanged"),
            run.count("updated"),
            run.count("created")
        ),
        (29, 1, 1)
    );
    let stats = env.nevis.stats();
    assert_eq!((stats.creates, stats.patches), (1, 1));

    // The rebuilt store knows everyone: the next ordinary run writes nothing.
    env.nevis.reset_stats();
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("unchanged"), 31);
    assert_eq!(env.writes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_says_how_to_rebuild_and_the_rebuild_keeps_the_damaged_copy() {
    let env = Env::start().await;
    env.seed(10);
    env.sync(&[]).await.assert_code(0);
    for entry in std::fs::read_dir(env.store_path()).unwrap() {
        let file = entry.unwrap().path();
        if file.is_file() {
            std::fs::write(&file, vec![0x5Au8; 4096]).unwrap();
        }
    }
    let run = env.sync(&[]).await;
    run.assert_code(2);
    assert!(run.stderr.contains("--rebuild-store"), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);

    env.nevis.reset_stats();
    let run = env.sync(&["--rebuild-store"]).await;
    run.assert_code(0);
    assert_eq!(run.count("unchanged"), 10);
    assert_eq!(env.writes(), 0);
    let kept = std::fs::read_dir(env.dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("store.damaged-")
        })
        .count();
    assert_eq!(kept, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_pre_existing_account_is_adopted_linked_and_updated_from_then_on() {
    let env = Env::start().await;
    env.set("sync.adopt", &quote("email"));
    let ids = env.seed(3);
    // Matched by email only (its loginId is something else).
    env.nevis
        .insert_user(legacy("hr-0001", "jdoe", "USER.0@example.com"));
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!((run.count("adopted"), run.count("created")), (1, 2));
    assert!(
        run.stdout
            .contains(&format!("adopted: nexudus_id={} extId=hr-0001", ids[0])),
        "{}",
        run.stdout
    );
    assert!(env.nevis.user(&ext(ids[0])).is_none(), "no second account");
    let adopted = env.nevis.user("hr-0001").unwrap();
    assert_eq!(adopted["name"]["familyName"], "Last0");
    assert_eq!(adopted["loginId"], "user.0@example.com");
    assert_eq!(env.nevis.user_count(), 3);

    // From then on it is an ordinary synced user under its own extId.
    env.nevis.reset_stats();
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!((run.count("unchanged"), run.count("adopted")), (3, 0));
    assert_eq!(env.writes(), 0);
    env.nexudus.update_user(ids[0], |u| {
        u.insert("FullName".into(), json!("First0 Married"));
    });
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("updated"), 1);
    assert_eq!(
        env.nevis.user("hr-0001").unwrap()["name"]["familyName"],
        "Married"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_linked_by_adoption_or_created_under_an_earlier_prefix_are_never_adopted_again() {
    let env = Env::start().await;
    env.set("sync.adopt", &quote("email"));
    let ids = env.seed(2);
    env.nevis
        .insert_user(legacy("hr-0001", "jdoe", "user.0@example.com"));
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!((run.count("adopted"), run.count("created")), (1, 1));
    // The prefix changes; user 1 keeps the account created as nexudus-<id>.
    env.set("mapping.ext_id_prefix", &quote("nx-"));
    // By hand, both accounts get emails that two newcomers will use. An ordinary run goes by
    // its checkpoints, so only the newcomers' adoption lookups see the edits.
    env.nevis.modify_user("hr-0001", |u| {
        u.insert("contacts".into(), json!({"email": "new.one@example.com"}));
    });
    env.nevis.modify_user(&ext(ids[1]), |u| {
        u.insert("contacts".into(), json!({"email": "New.Two@Example.com"}));
    });
    let one = env
        .nexudus
        .insert_user(NexudusUserSpec::new("New One", "new.one@example.com"));
    let two = env
        .nexudus
        .insert_user(NexudusUserSpec::new("New Two", "new.two@example.com"));
    env.nevis.reset_stats();

    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert_eq!(
        (
            run.count("conflicts"),
            run.count("adopted"),
            run.count("created")
        ),
        (2, 0, 0),
        "{}",
        run.stdout
    );
    for (id, holder, owner) in [
        (one, "hr-0001".to_string(), ids[0]),
        (two, ext(ids[1]), ids[1]),
    ] {
        assert!(
            run.stdout.contains(&format!(
                "conflict: nexudus_id={id} extId=nx-{id} candidates=[{holder}]"
            )),
            "{}",
            run.stdout
        );
        assert!(
            run.stdout
                .contains(&format!("already linked to Nexudus user {owner}")),
            "{}",
            run.stdout
        );
    }
    assert_eq!(env.writes(), 0);
    assert_eq!(env.nevis.user_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_and_already_linked_matches_are_conflicts_and_nothing_is_written() {
    let env = Env::start().await;
    env.set("sync.adopt", &quote("email"));
    let ids = env.seed(3);
    // User 0: two candidates (one by loginId, one by email).
    env.nevis
        .insert_user(legacy("hr-a", "user.0@example.com", "a@corp.example"));
    env.nevis
        .insert_user(legacy("hr-b", "bee", "user.0@example.com"));
    // User 1: the only match is a user this tool created for another Nexudus user.
    env.nevis
        .insert_user(legacy("nexudus-999999", "someone", "user.1@example.com"));
    env.nevis.reset_stats();

    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert_eq!(
        (
            run.count("conflicts"),
            run.count("created"),
            run.count("adopted")
        ),
        (2, 1, 0)
    );
    assert!(
        run.stdout.contains(&format!(
            "conflict: nexudus_id={} extId={} candidates=[hr-a,hr-b]",
            ids[0],
            ext(ids[0])
        )),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("candidates=[nexudus-999999]"),
        "{}",
        run.stdout
    );
    let stats = env.nevis.stats();
    assert_eq!(
        (stats.creates, stats.patches),
        (1, 0),
        "only user 2 created"
    );
    assert_eq!(
        env.nevis.user("hr-a").unwrap()["name"]["familyName"],
        "Account"
    );
    // Still a conflict next run, still nothing written.
    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert_eq!(run.count("conflicts"), 2);
    assert_eq!(env.nevis.stats().patches, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexudus_users_sharing_an_email_are_reported_before_any_write() {
    {
        let adopt = "email";
        let env = Env::start().await;
        env.set("sync.adopt", &quote(adopt));
        env.set("scope.exclude_ids", "[900001]");
        let a = env
            .nexudus
            .insert_user(NexudusUserSpec::new("Ann One", "shared@example.com"));
        let b = env
            .nexudus
            .insert_user(NexudusUserSpec::new("Ann Two", "Shared@Example.com"));
        // Someone outside the scope sharing an email is never written, so it is no conflict.
        let mut outside = NexudusUserSpec::new("Out Side", "user.0@example.com");
        outside.id = Some(900001);
        env.nexudus.insert_user(outside);
        env.seed(2);
        let run = env.sync(&[]).await;
        run.assert_code(1);
        assert_eq!(
            (run.count("conflicts"), run.count("created")),
            (2, 2),
            "adopt={adopt}: {}",
            run.stdout
        );
        assert!(run.stdout.contains(&format!("candidates=[nexudus:{b}]")));
        assert!(run.stdout.contains(&format!("candidates=[nexudus:{a}]")));
        assert!(env.nevis.user(&ext(a)).is_none() && env.nevis.user(&ext(b)).is_none());
        assert_eq!(env.nevis.user_count(), 2, "adopt={adopt}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_shows_reconcile_and_adoption_decisions_and_writes_nothing() {
    let env = Env::start().await;
    let ids = env.seed(4);
    env.sync(&[]).await.assert_code(0);
    env.nevis.modify_user(&ext(ids[0]), |u| {
        u.insert("languageCode".into(), json!("it"));
    });
    env.nevis.modify_user(&ext(ids[1]), |u| {
        u.insert("userState".into(), json!("disabled"));
    });
    env.set("sync.adopt", &quote("email"));
    let newcomer = env
        .nexudus
        .insert_user(NexudusUserSpec::new("Leg Acy", "legacy@example.com"));
    env.nevis
        .insert_user(legacy("hr-7", "legacy@example.com", "legacy@example.com"));
    env.nevis.reset_stats();

    let run = env.sync(&["--reconcile", "--dry-run"]).await;
    let lines = plan(&run);
    let find = |op: &str| {
        lines
            .iter()
            .find(|l| l["op"] == op)
            .unwrap_or_else(|| panic!("no {op} line in {}", run.stdout))
            .clone()
    };
    let update = find("update");
    assert_eq!(update["extId"], ext(ids[0]));
    assert_eq!(update["changes"], json!({"languageCode": "en"}));
    assert_eq!(find("keep-disabled")["extId"], ext(ids[1]));
    let adopt = find("adopt");
    assert_eq!(
        (adopt["extId"].clone(), adopt["nexudusId"].clone()),
        (json!("hr-7"), json!(newcomer))
    );
    assert!(run.stdout.contains("dry-run summary:"));
    assert_eq!(env.writes(), 0);
    assert_eq!(env.nevis.user(&ext(ids[0])).unwrap()["languageCode"], "it");
    // The dry run left no mark: the real reconcile still finds the same.
    let run = env.sync(&["--reconcile"]).await;
    run.assert_code(0);
    assert_eq!((run.count("updated"), run.count("adopted")), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_properties_are_set_once_and_a_change_updates_only_them() {
    let env = Env::start().await;
    env.seed(5);
    env.sync(&[]).await.assert_code(0);
    env.set("mapping.properties", r#"{ source = "nexudus" }"#);
    env.nevis.set_request_log(true);
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("updated"), 5);
    for request in env.nevis.request_log() {
        if request.method == "PATCH" {
            // With the version nevisIDM reported (optimistic locking).
            assert_eq!(
                request.body,
                Some(json!({"properties": {"source": "nexudus"}, "version": 0})),
                "only the property is sent"
            );
        }
    }
    env.nevis.reset_stats();
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!((run.count("unchanged"), env.writes()), (5, 0));
    assert_eq!(
        env.nevis.users()[0]["properties"]["source"],
        json!("nexudus")
    );

    // A property someone else set is never ours to remove; one we set and the config dropped
    // is removed, also when a reconcile is the first run after the change.
    let first = env.nevis.users()[0]["extId"].as_str().unwrap().to_string();
    env.nevis.modify_user(&first, |u| {
        u["properties"]["costCenter"] = json!("42");
    });
    env.set("mapping.properties", r#"{ site = "zurich" }"#);
    env.nevis.reset_stats();
    let run = env.sync(&["--reconcile"]).await;
    run.assert_code(0);
    assert_eq!(
        (run.count("updated"), env.writes()),
        (5, 5),
        "{}",
        run.stdout
    );
    for user in env.nevis.users() {
        let props = &user["properties"];
        assert_eq!(props["site"], "zurich");
        assert!(props.get("source").is_none(), "{props}");
    }
    assert_eq!(
        env.nevis.user(&first).unwrap()["properties"]["costCenter"],
        "42"
    );
    env.nevis.reset_stats();
    env.sync(&[]).await.assert_code(0);
    env.sync(&["--reconcile"]).await.assert_code(0);
    assert_eq!(env.writes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_adoption_a_collision_with_a_foreign_account_is_a_conflict_naming_it() {
    let env = Env::start().await;
    let ids = env.seed(2);
    env.nevis
        .insert_user(legacy("hr-9", "USER.0@example.com", "other@corp.example"));
    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert_eq!(
        (
            run.count("conflicts"),
            run.count("created"),
            run.count("adopted")
        ),
        (1, 1, 0)
    );
    assert!(
        run.stdout.contains(&format!(
            "conflict: nexudus_id={} extId={} candidates=[hr-9]",
            ids[0],
            ext(ids[0])
        )),
        "{}",
        run.stdout
    );
    let foreign = env.nevis.user("hr-9").unwrap();
    assert_eq!(foreign["name"]["familyName"], "Account", "never touched");
    assert!(env.nevis.user(&ext(ids[0])).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_shows_an_ambiguous_adoption_as_a_conflict_with_its_candidates() {
    let env = Env::start().await;
    env.set("sync.adopt", &quote("email"));
    let ids = env.seed(2);
    // User 0 collides with two accounts: one by loginId, one by email.
    env.nevis
        .insert_user(legacy("hr-a", "user.0@example.com", "a@corp.example"));
    env.nevis
        .insert_user(legacy("hr-b", "bee", "USER.0@example.com"));
    env.nevis.reset_stats();

    let run = env.sync(&["--dry-run"]).await;
    run.assert_code(1);
    let lines = plan(&run);
    let conflict = lines
        .iter()
        .find(|l| l["op"] == "conflict")
        .unwrap_or_else(|| panic!("no conflict line in {}", run.stdout));
    assert_eq!(conflict["extId"], ext(ids[0]));
    assert_eq!(conflict["nexudusId"], json!(ids[0]));
    assert_eq!(conflict["candidates"], json!(["hr-a", "hr-b"]));
    let create = lines
        .iter()
        .find(|l| l["op"] == "create")
        .unwrap_or_else(|| panic!("no create line in {}", run.stdout));
    assert_eq!(create["extId"], ext(ids[1]));
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(run.stdout.contains("dry-run summary:"), "{}", run.stdout);

    assert_eq!(env.writes(), 0);
    assert_eq!(env.nevis.user_count(), 2);
    for held in ["hr-a", "hr-b"] {
        assert_eq!(
            env.nevis.user(held).unwrap()["name"]["familyName"],
            "Account"
        );
    }
    assert!(
        !env.store_path().exists(),
        "a dry run does not create the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_counts_the_stored_missing_runs_plus_its_own_and_records_none() {
    let env = Env::start().await;
    env.set("sync.missing_runs_before_disable", "2");
    env.set("sync.max_disable_percent", "50");
    let ids = env.seed(10);
    env.sync(&[]).await.assert_code(0);
    let gone = ext(ids[3]);
    env.nexudus.remove_user(ids[3]);
    let disable_line =
        json!({"op": "disable", "extId": gone, "changes": {"userState": "disabled"}});
    env.nevis.reset_stats();

    // Nothing stored yet: this listing alone is one missing run, below the threshold. Had the
    // dry run counted it, the real run below would reach the threshold and disable.
    let run = env.sync(&["--dry-run"]).await;
    run.assert_code(0);
    assert!(!plan(&run).contains(&disable_line), "{}", run.stdout);

    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("disabled"), 0);
    assert_eq!(env.nevis.user(&gone).unwrap()["userState"], "active");

    // One stored missing run plus this listing reach the threshold: the plan shows the disable.
    let run = env.sync(&["--dry-run"]).await;
    run.assert_code(0);
    let lines = plan(&run);
    assert_eq!(lines, vec![disable_line.clone()], "{}", run.stdout);
    assert_eq!(env.writes(), 0);
    assert_eq!(env.nevis.user(&gone).unwrap()["userState"], "active");

    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("disabled"), 1);
    assert_eq!(env.nevis.user(&gone).unwrap()["userState"], "disabled");
    assert_eq!(env.writes(), 1);
}
