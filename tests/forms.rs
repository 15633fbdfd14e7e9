//! What nevisIDM keeps is not always what was sent, over HTTP against the fake's switches: two
//! reconciles against each form, the second writing nothing (and the first writing nothing where
//! the equivalence rules cover the form); a real change after a learned form still written;
//! users beyond each of nevisIDM's limits invalid with no request; a re-registered user meeting
//! an archived account; every error item of an answer reported.

mod common;

use common::{Env, Run, quote, run_cmd};
use nexudus_nevis_sync::sandbox::{NexudusUserSpec, StoredForms};
use serde_json::{Value, json};

/// Users with capitals in their emails, names with extra spaces and one decomposed (NFD) name.
fn seed(env: &Env) -> Vec<u64> {
    let mut ids = env.seed(6);
    ids.push(env.nexudus.insert_user(NexudusUserSpec::new(
        "Zoe\u{301}  Garci\u{301}a",
        "Zoe.Garcia@Example.com",
    )));
    ids
}

fn ext(id: u64) -> String {
    format!("nexudus-{id}")
}

/// Two reconciles after an import; the writes (creates and PATCHes) each made.
async fn two_reconciles(env: &Env) -> (Run, u64, Run, u64) {
    env.sync(&[]).await.assert_code(0);
    let before = env.writes();
    let first = env.sync(&["--reconcile"]).await;
    first.assert_code(0);
    let after_first = env.writes();
    let second = env.sync(&["--reconcile"]).await;
    second.assert_code(0);
    let second_writes = env.writes() - after_first;
    (first, after_first - before, second, second_writes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_the_rules_cover_are_never_written_nor_drift() {
    for forms in [
        StoredForms {
            lower_case_emails: true,
            ..StoredForms::default()
        },
        StoredForms {
            nfc_names: true,
            ..StoredForms::default()
        },
        StoredForms {
            trimmed: true,
            ..StoredForms::default()
        },
    ] {
        let env = Env::start().await;
        env.nevis.set_stored_forms(forms);
        let ids = seed(&env);
        let (first, first_writes, second, second_writes) = two_reconciles(&env).await;
        assert_eq!((first_writes, second_writes), (0, 0), "{forms:?}");
        assert_eq!((first.count("drift"), second.count("drift")), (0, 0));
        assert_eq!(first.count("unchanged"), ids.len() as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_sent_in_one_canonical_form() {
    let env = Env::start().await;
    let ids = seed(&env);
    env.sync(&[]).await.assert_code(0);
    let zoe = env.nevis.user(&ext(ids[6])).expect("created");
    assert_eq!(zoe["name"]["firstName"], "Zo\u{e9}", "NFC, one word");
    assert_eq!(zoe["name"]["familyName"], "Garc\u{ed}a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_no_rule_knows_is_learned_from_the_patch_answer_and_never_fought() {
    let env = Env::start().await;
    env.nevis.set_stored_forms(StoredForms {
        upper_case_family_names: true,
        ..StoredForms::default()
    });
    let ids = seed(&env);
    let n = ids.len() as u64;
    let (first, first_writes, second, second_writes) = two_reconciles(&env).await;
    // The first reconcile sees each family name in a form it does not know and writes it once;
    // the answer shows the directory keeps its own form: learned, not drift.
    assert_eq!(first_writes, n, "{}", first.stdout);
    assert_eq!((first.count("drift"), first.count("forms")), (0, n));
    let lines = first
        .stdout
        .lines()
        .filter(|l| l.starts_with("form: "))
        .count();
    assert_eq!(lines as u64, n, "{}", first.stdout);
    assert!(
        first.stdout.contains("nevisIDM keeps name.familyName as"),
        "{}",
        first.stdout
    );
    assert_eq!(second_writes, 0, "{}", second.stdout);
    assert_eq!((second.count("drift"), second.count("forms")), (0, 0));
    // --status shows what was learned.
    let status = run_cmd(env.command(&["--status", "--json"])).await;
    let doc: Value = serde_json::from_str(&status.stdout).expect("json");
    assert_eq!(doc["directory_forms"]["users"], n, "{doc}");
    let shown = run_cmd(env.command(&["--status"])).await.stdout;
    assert!(shown.contains("in its own form"), "{shown}");
    // A real change in Nexudus is still written, and then its form learned again.
    assert!(env.nexudus.update_user(ids[0], |u| {
        u.insert("FullName".into(), json!("First0 Renamed"));
    }));
    let before = env.writes();
    env.sync(&[]).await.assert_code(0);
    assert_eq!(env.writes(), before + 1);
    assert_eq!(
        env.nevis.user(&ext(ids[0])).unwrap()["name"]["familyName"],
        "RENAMED"
    );
    let (_, _, third, third_writes) = two_reconciles(&env).await;
    assert_eq!(third_writes, 0, "{}", third.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_user_in_the_answer_a_form_is_learned_by_the_next_read() {
    let env = Env::start().await;
    env.nevis.set_patch_no_content(true);
    env.nevis.set_stored_forms(StoredForms {
        upper_case_family_names: true,
        ..StoredForms::default()
    });
    let ids = seed(&env);
    let n = ids.len() as u64;
    let (first, first_writes, second, second_writes) = two_reconciles(&env).await;
    // Indistinguishable from a hand edit at first: written, counted as drift.
    assert_eq!((first_writes, first.count("drift")), (n, n));
    // The same held value after a confirmed write: the directory's form. Nothing written again.
    assert_eq!(second_writes, 0, "{}", second.stdout);
    assert_eq!((second.count("drift"), second.count("forms")), (0, n));
    let third = env.sync(&["--reconcile"]).await;
    third.assert_code(0);
    assert_eq!((third.count("drift"), third.count("forms")), (0, 0));
    // A hand edit afterwards is drift again, and set back.
    assert!(env.nevis.modify_user(&ext(ids[1]), |u| {
        u["name"]["familyName"] = json!("Edited");
    }));
    let before = env.writes();
    let run = env.sync(&["--reconcile"]).await;
    assert_eq!((run.count("drift"), env.writes() - before), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_beyond_nevis_limits_are_invalid_and_never_sent() {
    let env = Env::start().await;
    env.nevis.set_limits_enforced(true);
    env.seed(2);
    // loginId (the email) with a character outside printable ASCII.
    let accented = env
        .nexudus
        .insert_user(NexudusUserSpec::new("Zoe Zed", "zo\u{eb}@example.com"));
    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert_eq!((run.count("created"), run.count("invalid")), (2, 1));
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("invalid:"))
        .expect("the invalid user is named");
    assert!(line.contains(&format!("nexudus_id={accented}")), "{line}");
    assert!(
        line.contains("loginId") && line.contains("300 printable ASCII"),
        "{line}"
    );
    assert_eq!(
        env.nevis.stats().creates,
        2,
        "no request for the invalid user"
    );

    // An extId beyond 129 characters: the longest prefix allowed and a Nexudus Id of 11 digits.
    let env = Env::start().await;
    env.set("mapping.ext_id_prefix", &quote(&"p".repeat(119)));
    env.seed(1);
    let mut big = NexudusUserSpec::new("Big Id", "big@example.com");
    big.id = Some(12_345_678_901);
    env.nexudus.insert_user(big);
    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert_eq!((run.count("created"), run.count("invalid")), (1, 1));
    assert!(
        run.stdout.contains("extId breaks nevisIDM's limit"),
        "{}",
        run.stdout
    );

    // A string beyond 4,000 characters (a static property): every user invalid, none sent.
    let env4000 = Env::start().await;
    env4000.set(
        "mapping.properties",
        &format!("{{ note = {} }}", quote(&"n".repeat(4001))),
    );
    env4000.seed(2);
    let run = env4000.sync(&[]).await;
    run.assert_code(1);
    assert_eq!((run.count("created"), run.count("invalid")), (0, 2));
    assert!(
        run.stdout
            .contains("properties.note breaks nevisIDM's limit (at most 4,000 characters)"),
        "{}",
        run.stdout
    );
    assert_eq!(env4000.nevis.stats().requests, 0);

    // A prefix that cannot fit a 10-digit Id is refused by the config check.
    env.set("mapping.ext_id_prefix", &quote(&"p".repeat(120)));
    let refused = env.sync(&[]).await;
    refused.assert_code(2);
    assert!(
        refused.stderr.contains("mapping.ext_id_prefix"),
        "{}",
        refused.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_registered_user_meeting_an_archived_account_is_named_and_left_failing() {
    for adopt in [false, true] {
        let env = Env::start().await;
        if adopt {
            env.set("sync.adopt", &quote("email"));
        }
        let ids = env.seed(3);
        env.sync(&[]).await.assert_code(0);
        // The person leaves; their account is archived (it keeps loginId and extId).
        assert!(env.nexudus.remove_user(ids[0]));
        assert!(env.nevis.modify_user(&ext(ids[0]), |u| {
            u.insert("userState".into(), json!("archived"));
        }));
        // ... and registers again with the same email.
        let back = env
            .nexudus
            .insert_user(NexudusUserSpec::new("First0 Last0", "User.0@Example.com"));
        let run = env.sync(&[]).await;
        run.assert_code(1);
        assert_eq!(
            (run.count("failed"), run.count("adopted")),
            (1, 0),
            "{}",
            run.stdout
        );
        let line = run
            .stdout
            .lines()
            .find(|l| l.starts_with("failed:"))
            .expect("named");
        assert!(line.contains(&format!("nexudus_id={back}")), "{line}");
        assert!(
            line.contains(&format!("archived nevisIDM account {}", ext(ids[0]))),
            "{line}"
        );
        let status = run_cmd(env.command(&["--status"])).await.stdout;
        assert!(status.contains("archived nevisIDM account"), "{status}");
        // Unchanged, it is not asked again; still failing.
        env.nevis.reset_stats();
        let again = env.sync(&[]).await;
        again.assert_code(1);
        assert_eq!(again.count("failed"), 1);
        assert_eq!(env.nevis.stats().requests, 0, "adopt={adopt}");
        // Something changes (a new email): retried, and created.
        assert!(env.nexudus.update_user(back, |u| {
            u.insert("Email".into(), json!("first0.new@example.com"));
        }));
        let retried = env.sync(&[]).await;
        // (Still 1: the deletion safety holds the disable of the archived account's user.)
        retried.assert_code(1);
        assert_eq!(
            (retried.count("created"), retried.count("failed")),
            (1, 0),
            "{}",
            retried.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_item_of_an_answer_is_reported() {
    let env = Env::start().await;
    let ids = env.seed(2);
    env.nevis.reject_user_with_items(
        &ext(ids[1]),
        422,
        &[
            ("errors.invalidData", "firstName is not accepted"),
            ("errors.policyViolation", "the email domain is blocked"),
        ],
    );
    let run = env.sync(&[]).await;
    run.assert_code(1);
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("failed:"))
        .expect("named");
    assert!(line.contains("firstName is not accepted"), "{line}");
    assert!(
        line.contains("errors.policyViolation: the email domain is blocked"),
        "{line}"
    );
}

/// nevisIDM answers a PATCH with the user but keeps the old email (a policy, a read-only
/// attribute): the value was not taken. The user is reported on that run, on every run after
/// (its values wait for their next try) and by a reconcile, which sends it again — never learned
/// as a form, never "in sync".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_nevis_answers_for_but_keeps_is_reported_every_run_and_never_learned() {
    let env = Env::start().await;
    env.nevis.set_patch_keeps(&["contacts.email"]);
    let ids = env.seed(2);
    env.sync(&[]).await.assert_code(0);
    let kept = env.nevis.user(&ext(ids[0])).unwrap()["contacts"]["email"].clone();
    assert!(env.nexudus.update_user(ids[0], |u| {
        u.insert("Email".into(), json!("moved.0@example.com"));
    }));
    let patches = || env.nevis.stats().patches;

    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert_eq!((run.count("failed"), run.count("not_taken")), (1, 1));
    assert_eq!((run.count("updated"), run.count("forms")), (0, 0));
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("failed:"))
        .expect("named");
    assert!(line.contains(&format!("nexudus_id={}", ids[0])), "{line}");
    assert!(
        line.contains(&format!(
            "did not take contacts.email: it still holds {kept} (sent \"moved.0@example.com\")"
        )),
        "{line}"
    );
    assert_eq!(patches(), 1);

    // The next run: still reported (the values wait for their next try), nothing sent.
    let next = env.sync(&[]).await;
    next.assert_code(1);
    assert_eq!((next.count("failed"), next.count("not_taken")), (1, 1));
    assert!(next.stdout.contains("next try at"), "{}", next.stdout);
    assert!(next.stdout.contains("did not take contacts.email"));
    assert_eq!(patches(), 1);

    // A reconcile sends it again and does not call it in sync.
    let reconcile = env.sync(&["--reconcile"]).await;
    reconcile.assert_code(1);
    assert_eq!(reconcile.count("not_taken"), 1, "{}", reconcile.stdout);
    assert_eq!(patches(), 2);

    // Never learned; logged as refused with nevisIDM's 200; --status names it.
    let status = run_cmd(env.command(&["--status", "--json"])).await;
    status.assert_code(1);
    let doc: Value = serde_json::from_str(&status.stdout).expect("json");
    assert_eq!(doc["directory_forms"]["users"], 0, "{doc}");
    assert_eq!(doc["failing_users"][0]["not_taken"], true, "{doc}");
    let history = run_cmd(env.command(&["--history", &ids[0].to_string(), "--json"])).await;
    let newest: Value = serde_json::from_str(history.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(
        (newest["outcome"].as_str(), newest["status"].as_u64()),
        (Some("refused"), Some(200)),
        "{newest}"
    );

    // nevisIDM takes it again: the reconcile writes it, and all is in sync.
    env.nevis.set_patch_keeps(&[]);
    env.sync(&["--reconcile"]).await.assert_code(0);
    assert_eq!(
        env.nevis.user(&ext(ids[0])).unwrap()["contacts"]["email"],
        "moved.0@example.com"
    );
    env.sync(&[]).await.assert_code(0);
}

/// `audit.values = "none"`: the problem line and --status name the field, not the values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_not_taken_is_named_without_its_values_when_audit_values_is_none() {
    let env = Env::start().await;
    env.set("audit.values", &quote("none"));
    env.nevis.set_patch_keeps(&["contacts.email"]);
    let ids = env.seed(1);
    env.sync(&[]).await.assert_code(0);
    assert!(env.nexudus.update_user(ids[0], |u| {
        u.insert("Email".into(), json!("moved.0@example.com"));
    }));
    let run = env.sync(&[]).await;
    run.assert_code(1);
    let status = run_cmd(env.command(&["--status", "--json"])).await.stdout;
    for text in [&run.stdout, &status] {
        assert!(text.contains("contacts.email"), "{text}");
        let lower = text.to_lowercase();
        assert!(
            !lower.contains("moved.0@") && !lower.contains("user.0@"),
            "{text}"
        );
    }
}

/// With nevisIDM answering a PATCH `204` (no user to compare), a value not taken shows at the
/// second reconcile: the value the first one wrote is still held as before. From then on the
/// user is reported every run, and each retry is read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_user_in_the_answer_a_value_not_taken_is_found_by_the_next_reconcile() {
    let env = Env::start().await;
    env.nevis.set_patch_no_content(true);
    let ids = env.seed(2);
    env.sync(&[]).await.assert_code(0);
    env.nevis.set_patch_keeps(&["contacts.email"]);
    assert!(env.nexudus.update_user(ids[0], |u| {
        u.insert("Email".into(), json!("moved.0@example.com"));
    }));
    // Indistinguishable from a write taken, until a read shows otherwise.
    env.sync(&[]).await.assert_code(0);
    let first = env.sync(&["--reconcile"]).await;
    first.assert_code(0);
    assert_eq!(first.count("drift"), 1);
    let second = env.sync(&["--reconcile"]).await;
    second.assert_code(1);
    assert_eq!((second.count("not_taken"), second.count("forms")), (1, 0));
    assert!(
        second
            .stdout
            .contains("nevisIDM answered 204 but did not take contacts.email"),
        "{}",
        second.stdout
    );
    let after = env.sync(&[]).await;
    after.assert_code(1);
    assert_eq!(after.count("not_taken"), 1, "{}", after.stdout);
}

/// A form of the same value is still learned when no equivalence rule covers it: family names
/// upper-cased (case) and names in Unicode NFKC (a full-width letter in its plain form). Two
/// reconciles, the second writing nothing, both exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_of_the_same_value_are_still_learned() {
    let env = Env::start().await;
    env.nevis.set_stored_forms(StoredForms {
        upper_case_family_names: true,
        nfkc_names: true,
        ..StoredForms::default()
    });
    env.seed(2);
    let wide = env.nexudus.insert_user(NexudusUserSpec::new(
        "\u{ff21}nna Lopez", // a full-width A
        "anna.lopez@example.com",
    ));
    let (first, _, second, second_writes) = two_reconciles(&env).await;
    assert_eq!(first.count("forms"), 4, "{}", first.stdout);
    assert!(
        first.stdout.contains(&format!(
            "nexudus_id={wide} extId={} nevisIDM keeps name.firstName",
            ext(wide)
        )),
        "{}",
        first.stdout
    );
    assert_eq!((second_writes, second.count("not_taken")), (0, 0));
}

/// A form an older version learned for a value nevisIDM did not take (any difference that
/// survived a write was learned) is dropped when read: the reconcile sees the difference and
/// writes the value, instead of calling the user in sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_learned_for_another_value_by_an_older_version_is_dropped_when_read() {
    use nexudus_nevis_sync::config::Config;
    use nexudus_nevis_sync::diff::Field;
    use nexudus_nevis_sync::forms::{Form, Forms};

    let env = Env::start().await;
    let ids = env.seed(2);
    env.sync(&[]).await.assert_code(0);
    let sent = env.nevis.user(&ext(ids[0])).unwrap()["contacts"]["email"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(env.nevis.modify_user(&ext(ids[0]), |u| {
        u["contacts"]["email"] = json!("someone.else@example.com");
    }));
    {
        let config = Config::load(&env.config).unwrap();
        let store = common::open_when_free(&config.store.path, 1 << 20).await;
        let mut old = Forms::default();
        old.learned.insert(
            Field::Email,
            Form {
                sent: sent.clone(),
                held: "someone.else@example.com".into(),
            },
        );
        store.set_forms(ids[0], &old).unwrap();
        store.flush().await.unwrap();
    }
    common::store_released(&env.store_path()).await;
    let shown = run_cmd(env.command(&["--status", "--json"])).await.stdout;
    let doc: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(doc["directory_forms"]["users"], 0, "not shown: {doc}");
    let before = env.writes();
    let run = env.sync(&["--reconcile"]).await;
    run.assert_code(0);
    assert_eq!((run.count("drift"), env.writes() - before), (1, 1));
    assert_eq!(
        env.nevis.user(&ext(ids[0])).unwrap()["contacts"]["email"],
        sent.as_str()
    );
}
