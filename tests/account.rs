//! The run's account over HTTP, one test per path a run can take (the deletion probe's full
//! listing, the deletion search, a reconcile, adoption, a create converged on a duplicate):
//! each user listed has one outcome, the counts add up to the users listed plus those removed for
//! vanishing, and each problem line is printed once.

mod common;

use common::{Env, Run, legacy, quote};
use nexudus_nevis_sync::sandbox::{Fault, NexudusUserSpec};
use serde_json::json;

/// The outcome counts of the summary line: one per user.
const OUTCOMES: [&str; 11] = [
    "created",
    "updated",
    "disabled",
    "archived",
    "unchanged",
    "out_of_scope",
    "failed",
    "invalid",
    "held_disables",
    "adopted",
    "conflicts",
];

/// The problem lines printed before the summary.
const PROBLEMS: [&str; 6] = [
    "invalid:",
    "failed:",
    "conflict:",
    "adopted:",
    "hand-disabled:",
    "held:",
];

/// Asserts that the outcomes add up to `listed + vanished` users and that no problem line is
/// printed twice; returns the problem lines.
fn assert_account(run: &Run, listed: u64, vanished: u64) -> Vec<String> {
    let total: u64 = OUTCOMES.iter().map(|k| run.count(k)).sum();
    assert_eq!(total, listed + vanished, "{}", run.stdout);
    let problems: Vec<String> = run
        .stdout
        .lines()
        .filter(|l| PROBLEMS.iter().any(|p| l.starts_with(p)))
        .map(str::to_string)
        .collect();
    let unique: std::collections::HashSet<&String> = problems.iter().collect();
    assert_eq!(unique.len(), problems.len(), "{}", run.stdout);
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_the_probe_notices_is_listed_in_full_and_counted_once() {
    // The operator's case: 51 users, one without an email; an import; one user deleted; an
    // incremental run, which the deletion probe turns into a full listing in the same run.
    let env = Env::start().await;
    let ids = env.seed(50);
    env.nexudus.insert_user(NexudusUserSpec {
        email: None,
        ..NexudusUserSpec::new("No Email", "")
    });
    let import = env.sync(&[]).await;
    import.assert_code(1);
    assert_account(&import, 51, 0);
    assert!(env.nexudus.remove_user(ids[7]));
    let run = env.sync(&["--incremental"]).await;
    run.assert_code(1);
    assert!(run.stdout.contains("mode=full"), "{}", run.stdout);
    assert_eq!(
        (
            run.count("unchanged"),
            run.count("invalid"),
            run.count("disabled")
        ),
        (49, 1, 1),
        "{}",
        run.stdout
    );
    let problems = assert_account(&run, 50, 1);
    assert_eq!(problems.len(), 1, "{problems:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_found_by_the_search_are_counted_once() {
    let env = Env::start().await;
    env.set("nexudus.page_size", "10");
    let ids = env.seed(300);
    env.sync(&[]).await.assert_code(0);
    assert!(env.nexudus.remove_user(ids[3]));
    assert!(env.nexudus.remove_user(ids[250]));
    env.nexudus
        .insert_user(NexudusUserSpec::new("New Comer", "new.comer@example.com"));
    let run = env.sync(&["--incremental"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("mode=incremental"), "{}", run.stdout);
    assert_eq!(
        (
            run.count("created"),
            run.count("disabled"),
            run.count("unchanged")
        ),
        (1, 2, 298)
    );
    assert_account(&run, 299, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_counts_drift_hand_disables_and_vanished_owned_users_once() {
    let env = Env::start().await;
    let ids = env.seed(10);
    env.sync(&[]).await.assert_code(0);
    let ext = |id: u64| format!("nexudus-{id}");
    assert!(env.nevis.modify_user(&ext(ids[1]), |u| {
        u.insert(
            "name".into(),
            json!({"firstName": "First1", "familyName": "Edited"}),
        );
    }));
    assert!(env.nevis.modify_user(&ext(ids[2]), |u| {
        u.insert("userState".into(), json!("disabled"));
    }));
    // Owned by the prefix, unknown to Nexudus and to the store: disabled for vanishing.
    let mut orphan = env.nevis.user(&ext(ids[0])).expect("imported");
    orphan["extId"] = json!("nexudus-99999");
    orphan["loginId"] = json!("orphan@example.com");
    orphan["contacts"] = json!({"email": "orphan@example.com"});
    env.nevis.insert_user(orphan);
    let run = env.sync(&["--reconcile"]).await;
    run.assert_code(0);
    assert_eq!(
        (
            run.count("updated"),
            run.count("drift"),
            run.count("disabled"),
            run.count("hand_disabled"),
            run.count("unchanged")
        ),
        // The hand-disabled user is unchanged (and flagged): one outcome each.
        (1, 1, 1, 1, 9),
        "{}",
        run.stdout
    );
    let problems = assert_account(&run, 10, 1);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("hand-disabled:"), "{problems:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_counts_each_user_once() {
    let env = Env::start().await;
    env.set("sync.adopt", &quote("email"));
    env.nevis
        .insert_user(legacy("hr-1", "anna", "user.0@example.com"));
    let ids = env.seed(5);
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!((run.count("adopted"), run.count("created")), (1, 4));
    let problems = assert_account(&run, 5, 0);
    assert_eq!(
        problems,
        vec![format!("adopted: nexudus_id={} extId=hr-1", ids[0])]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_converged_on_a_duplicate_is_counted_once() {
    let env = Env::start().await;
    env.set("sync.concurrency", "1");
    env.seed(3);
    // The first create is applied but its answer is lost; the retry meets the duplicate and
    // converges on it.
    env.nevis.push_fault(Fault::DropAfterApply);
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_account(&run, 3, 0);
    assert_eq!(env.nevis.user_count(), 3);
}
