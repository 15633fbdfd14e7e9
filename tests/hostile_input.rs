//! Hostile Nexudus data, over real HTTP: each case is handled by a rule of the README ("Hostile
//! input"): a record that cannot be used is skipped and named (`invalid: nexudus_id=…`), every
//! other user still flows, the run exits 1; a listing that contradicts itself is incomplete, so
//! nobody is disabled for vanishing.

mod common;

use common::{Env, Run};
use nexudus_nevis_sync::sandbox::NexudusUserSpec;
use serde_json::{Value, json};

fn ext(id: u64) -> String {
    format!("nexudus-{id}")
}

fn invalid_line(run: &Run, id: u64) -> &str {
    let prefix = format!("invalid: nexudus_id={id} ");
    run.stdout
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no invalid line for {id}:\n{}", run.stdout))
}

/// A clean import of `n` users, then `edit` spoils things; returns the seeded Ids.
async fn imported(env: &Env, n: usize) -> Vec<u64> {
    let ids = env.seed(n);
    env.sync(&[]).await.assert_code(0);
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nulls_missing_fields_and_wrong_types_are_named_and_skipped() {
    let env = Env::start().await;
    let good = env.seed(3);
    type Edit = Box<dyn FnOnce(&mut serde_json::Map<String, Value>)>;
    let spoil = |name: &str, edit: Edit| {
        let id = env.nexudus.insert_user(NexudusUserSpec::new(
            name,
            format!("{}@example.com", name.replace(' ', ".")),
        ));
        env.nexudus.update_user(id, edit);
        id
    };
    let email_number = spoil(
        "Num Ber",
        Box::new(|u| {
            u.insert("Email".into(), json!(42));
        }),
    );
    let active_text = spoil(
        "Act Ive",
        Box::new(|u| {
            u.insert("Active".into(), json!("yes"));
        }),
    );
    let null_name = spoil(
        "Nul Name",
        Box::new(|u| {
            u.insert("FullName".into(), Value::Null);
        }),
    );
    let no_email = spoil(
        "No Email",
        Box::new(|u| {
            u.remove("Email");
        }),
    );
    let language_text = spoil(
        "Lang Uage",
        Box::new(|u| {
            u.insert("Language".into(), json!("klingon"));
        }),
    );

    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert_eq!(run.count("created"), 3);
    assert_eq!(run.count("invalid"), 5);
    assert!(invalid_line(&run, email_number).contains("Email"));
    assert!(invalid_line(&run, active_text).contains("Active"));
    assert!(
        invalid_line(&run, null_name).contains("name"),
        "{}",
        run.stdout
    );
    assert!(invalid_line(&run, no_email).contains("email"));
    assert!(invalid_line(&run, language_text).contains("Language"));
    for id in &good {
        assert!(env.nevis.user(&ext(*id)).is_some());
    }
    // Named, never written, never disabled: fixed records flow on the next run.
    env.nexudus.update_user(email_number, |u| {
        u.insert("Email".into(), json!("fixed@example.com"));
    });
    let run = env.sync(&[]).await;
    assert_eq!((run.count("created"), run.count("invalid")), (1, 4));
    assert_eq!(run.count("disabled"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_without_a_usable_id_makes_the_listing_incomplete() {
    let env = Env::start().await;
    env.set("sync.max_disable_percent", "100");
    let ids = imported(&env, 4).await;
    env.nexudus.remove_user(ids[0]);
    env.nexudus.insert_raw(
        999_999,
        json!({"Id": "abc", "FullName": "No Id", "Email": "noid@example.com", "Active": true}),
    );
    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert!(
        run.stdout.contains("invalid: nexudus_id=?"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("incomplete listing"), "{}", run.stdout);
    // The user who vanished is not disabled on the strength of a listing with a hole in it.
    assert_eq!(run.count("disabled"), 0);
    assert_eq!(env.nevis.user(&ext(ids[0])).unwrap()["userState"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_megabyte_page_is_read_and_its_users_synced() {
    let env = Env::start().await;
    let ids = env.seed(5);
    // Nexudus records carry many fields we do not read; one holds 10 MB here.
    env.nexudus.update_user(ids[2], |u| {
        u.insert("Notes".into(), json!("n".repeat(10 * 1024 * 1024)));
    });
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("created"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_names_control_characters_and_rtl_tricks_are_reported_not_sent() {
    let env = Env::start().await;
    let good = env.seed(2);
    let add = |name: String, email: &str| {
        env.nexudus
            .insert_user(NexudusUserSpec::new(name, email.to_string()))
    };
    let long = add(format!("Ann {}", "x".repeat(100_000)), "long@example.com");
    let bell = add("Ann\u{0007} Bell".into(), "bell@example.com");
    let spoof = add("Ann \u{202E}nimda".into(), "spoof@example.com");
    let zero_width = add("Zed Width".into(), "zed\u{200B}@example.com");
    let hebrew = add("\u{200F}שרה כהן".into(), "sara@example.com");

    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert_eq!((run.count("created"), run.count("invalid")), (3, 4));
    assert!(invalid_line(&run, long).contains("100000 characters"));
    assert!(invalid_line(&run, bell).contains("control"));
    assert!(invalid_line(&run, spoof).contains("bidirectional"));
    let zw = invalid_line(&run, zero_width);
    assert!(zw.contains("\\u{200b}"), "escaped in the report: {zw}");
    // Report lines stay short and carry no raw control or override characters.
    for line in run.stdout.lines() {
        assert!(line.chars().count() < 400, "a bounded line: {}", line.len());
        assert!(!line.contains('\u{202E}') && !line.contains('\u{0007}'));
    }
    let sara = env
        .nevis
        .user(&ext(hebrew))
        .expect("a right-to-left name is synced");
    assert_eq!(sara["name"]["familyName"], "כהן");
    for id in good {
        assert!(env.nevis.user(&ext(id)).is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_ids_from_shifting_pages_make_the_listing_incomplete() {
    let env = Env::start().await;
    env.set("nexudus.page_size", "3");
    env.set("sync.max_disable_percent", "100");
    let ids = imported(&env, 7).await;
    env.nexudus.remove_user(ids[1]);
    // Pages now overlap by one record (page 2 repeats page 1's last Id) and the last user is
    // never served: the listing saw fewer distinct users than it announced.
    env.nexudus.set_page_shift(true);
    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert!(
        run.stdout.contains(&format!(
            "incomplete listing: Nexudus user {} was listed twice",
            ids[3]
        )),
        "{}",
        run.stdout
    );
    assert_eq!(run.count("disabled"), 0);
    assert_eq!(env.nevis.user(&ext(ids[1])).unwrap()["userState"], "active");
    assert_eq!(
        env.nevis.user(&ext(ids[6])).unwrap()["userState"],
        "active",
        "the user the shifted listing never served is not disabled"
    );
    // A consistent listing afterwards disables exactly the user who left.
    env.nexudus.set_page_shift(false);
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("disabled"), 1);
    assert_eq!(
        env.nevis.user(&ext(ids[1])).unwrap()["userState"],
        "disabled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_skipped_by_pages_shifting_under_churn_is_looked_up_and_not_disabled() {
    let env = Env::start().await;
    env.set("nexudus.page_size", "3");
    env.set("sync.max_disable_percent", "100");
    let ids = imported(&env, 6).await;
    // Page 1 serves users 0-2; then user 0 is deleted and a newcomer added, so page 2 serves
    // users 4, 5 and the newcomer: user 3 is skipped, yet TotalItems (6) and the distinct Ids
    // (6) agree. Only asking Nexudus about user 3 shows the listing was wrong.
    env.nexudus.churn_after_first_page(
        ids[0],
        NexudusUserSpec::new("New Comer", "new.comer@example.com"),
    );
    env.nexudus.reset_stats();
    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert!(
        run.stdout.contains(&format!(
            "incomplete listing: Nexudus user {} is still there but the listing did not contain it",
            ids[3]
        )),
        "{}",
        run.stdout
    );
    assert_eq!((run.count("disabled"), run.count("created")), (0, 1));
    assert_eq!(env.nexudus.stats().user_requests, 1);
    for id in [ids[0], ids[3]] {
        assert_eq!(env.nevis.user(&ext(id)).unwrap()["userState"], "active");
    }
    // The next listing is consistent: the deleted user is looked up, found gone, and disabled.
    env.nexudus.reset_stats();
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("disabled"), 1);
    assert_eq!(env.nexudus.stats().user_requests, 1);
    assert_eq!(
        env.nevis.user(&ext(ids[0])).unwrap()["userState"],
        "disabled"
    );
    assert_eq!(env.nevis.user(&ext(ids[3])).unwrap()["userState"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_pages_and_a_moving_total_make_the_listing_incomplete() {
    let env = Env::start().await;
    env.set("nexudus.page_size", "2");
    env.set("sync.max_disable_percent", "100");
    let ids = imported(&env, 6).await;
    env.nexudus.remove_user(ids[5]);

    env.nexudus.set_total_items_drift(1);
    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert!(run.stdout.contains("TotalItems changed"), "{}", run.stdout);
    assert_eq!(run.count("disabled"), 0);

    env.nexudus.set_total_items_drift(0);
    env.nexudus.set_short_pages(true);
    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert!(
        run.stdout
            .contains("incomplete listing: page 1 held 1 records but more pages followed"),
        "{}",
        run.stdout
    );
    assert_eq!(run.count("disabled"), 0);
    assert_eq!(env.nevis.user(&ext(ids[5])).unwrap()["userState"], "active");
}
