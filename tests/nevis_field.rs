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

/// Reconciles `n` users against a fake paging the way `configure` sets it, and checks that the
/// reconcile saw every one of them (none created again, none changed).
async fn reconcile_sees_every_user(configure: impl Fn(&Env), list_requests: usize) {
    // More users than one page of the reconcile's listing (500).
    let n = 620;
    let env = Env::start().await;
    env.set("sync.concurrency", "8");
    env.seed(n);
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("created"), n as u64);
    configure(&env);
    env.nevis.reset_stats();
    env.nevis.clear_request_log();
    let run = env.sync(&["--reconcile"]).await;
    run.assert_code(0);
    assert_eq!(
        (
            run.count("created"),
            run.count("drift"),
            run.count("unchanged")
        ),
        (0, 0, n as u64),
        "{}",
        run.stdout
    );
    assert_eq!(env.writes(), 0);
    let lists: Vec<_> = env
        .nevis
        .request_log()
        .into_iter()
        .filter(|r| r.path.contains("/clients/"))
        .collect();
    assert!(
        lists
            .iter()
            .all(|r| r.path.contains("returnTotalResultCount=true")),
        "{lists:?}"
    );
    assert_eq!(lists.len(), list_requests, "{lists:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_on_every_page_is_followed_to_the_empty_last_page() {
    // Two full pages, then the empty page that ends the listing.
    reconcile_sees_every_user(|env| env.nevis.set_token_on_every_page(true), 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_paging_asks_for_the_total_it_relies_on() {
    reconcile_sees_every_user(
        |env| {
            env.nevis.set_token_on_every_page(true);
            env.nevis.set_offset_paging_only(true);
        },
        2,
    )
    .await;
}
