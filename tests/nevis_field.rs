//! nevisIDM as real deployments answer, over real HTTP against the sandbox fake with each
//! behaviour switched on: a login proxy redirecting writes, short-lived OAuth2 tokens, `version`
//! required on PATCH, `languageCode` answered upper case, a continuation token on every page, and
//! query filters that compare exactly.

mod common;

use common::Env;
use serde_json::json;

fn ext(id: u64) -> String {
    format!("nexudus-{id}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_a_login_page_is_fatal_and_nothing_is_checkpointed() {
    let env = Env::start().await;
    let ids = env.seed(3);
    env.nevis.set_login_redirect(true);
    let run = env.sync(&[]).await;
    run.assert_code(2);
    assert!(
        run.stderr.contains("302") && run.stderr.contains("/login"),
        "the message names the status and the Location:\n{}",
        run.stderr
    );
    assert!(run.stderr.contains("login proxy"), "{}", run.stderr);
    assert_eq!(env.nevis.user_count(), 0);
    assert!(
        env.nevis
            .request_log()
            .iter()
            .all(|r| !r.path.starts_with("/login")),
        "the redirect was not followed"
    );

    // Once the API is published properly, every user is created: nothing was checkpointed.
    env.nevis.set_login_redirect(false);
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("created"), 3);
    for id in ids {
        assert!(env.nevis.user(&ext(id)).is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn language_codes_answered_upper_case_are_no_change_and_no_drift() {
    let env = Env::start().await;
    env.nevis.set_upper_case_languages(true);
    let ids = env.seed(3);
    env.sync(&[]).await.assert_code(0);
    let shown = env.nevis.request_log();
    assert!(shown.iter().all(|r| r.status < 300), "created");
    env.nevis.reset_stats();
    let run = env.sync(&["--reconcile"]).await;
    run.assert_code(0);
    assert_eq!(
        (
            run.count("drift"),
            run.count("updated"),
            run.count("unchanged")
        ),
        (0, 0, 3)
    );
    env.sync(&[]).await.assert_code(0);
    assert_eq!(env.writes(), 0, "EN answered for en is no change");

    // A real difference is still one.
    env.nevis.modify_user(&ext(ids[0]), |u| {
        u.insert("languageCode".into(), json!("de"));
    });
    let run = env.sync(&["--reconcile"]).await;
    run.assert_code(0);
    assert_eq!((run.count("drift"), run.count("updated")), (1, 1));
}
