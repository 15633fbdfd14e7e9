//! nevisIDM as real deployments answer, over real HTTP against the sandbox fake with each
//! behaviour switched on: a login proxy redirecting writes, short-lived OAuth2 tokens, `version`
//! required on PATCH, `languageCode` answered upper case, a continuation token on every page, and
//! query filters that compare exactly.

mod common;

use common::{Env, legacy, quote};
use std::time::Duration;

use nexudus_nevis_sync::sandbox::{FakeOAuth, Fault};
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
    // More users than one page of the run's nevisIDM listing (1,000).
    let n = 1100;
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

/// The PATCH requests of the log, with their status.
fn patches(env: &Env) -> Vec<(u16, serde_json::Value)> {
    env.nevis
        .request_log()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| (r.status, r.body.unwrap_or_default()))
        .collect()
}

fn rename(env: &Env, id: u64, full_name: &str) {
    assert!(env.nexudus.update_user(id, |u| {
        u.insert("FullName".into(), json!(full_name));
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_patch_carries_the_version_nevis_last_reported() {
    let env = Env::start().await;
    env.nevis.set_version_required(true);
    let ids = env.seed(3);
    env.sync(&[]).await.assert_code(0);

    // After a create the version is unknown: the user is read first.
    rename(&env, ids[0], "Ada Lovelace");
    env.nevis.clear_request_log();
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("updated"), 1);
    let log = env.nevis.request_log();
    let methods: Vec<_> = log
        .iter()
        .filter(|r| r.path.contains(&ext(ids[0])))
        .map(|r| (r.method.as_str(), r.status))
        .collect();
    assert_eq!(methods, [("GET", 200), ("PATCH", 200)]);
    assert_eq!(patches(&env)[0].1["version"], 0);

    // The PATCH answer's version is kept with the checkpoint: no read the next time.
    rename(&env, ids[0], "Ada King");
    env.nevis.clear_request_log();
    env.nevis.reset_stats();
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("updated"), 1);
    assert_eq!(env.nevis.stats().gets, 0);
    assert_eq!(
        patches(&env),
        [(
            200,
            json!({"name": {"firstName": "Ada", "familyName": "King"}, "version": 1})
        )]
    );
    assert_eq!(env.nevis.user(&ext(ids[0])).unwrap()["version"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_edit_between_two_runs_is_a_409_then_one_fresh_patch() {
    let env = Env::start().await;
    env.nevis.set_version_required(true);
    let ids = env.seed(2);
    let victim = ext(ids[0]);
    env.sync(&[]).await.assert_code(0);
    rename(&env, ids[0], "Ada Lovelace");
    env.sync(&[]).await.assert_code(0);

    // An administrator edits the user in nevisIDM: a field we own and one we do not.
    assert!(env.nevis.modify_user(&victim, |u| {
        u.insert(
            "name".into(),
            json!({"firstName": "Ada", "familyName": "Byron"}),
        );
        u.insert(
            "contacts".into(),
            json!({"email": "user.0@example.com", "mobile": "+41 79 000 00 00"}),
        );
    }));
    // Meanwhile Nexudus changes the email.
    assert!(env.nexudus.update_user(ids[0], |u| {
        u.insert("Email".into(), json!("ada@example.com"));
    }));
    env.nevis.clear_request_log();
    env.nevis.reset_stats();
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("updated"), 1);
    let sent = patches(&env);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[0].0, 409, "the stale version is refused");
    assert_eq!(sent[1].0, 200);
    // The second PATCH is a fresh diff against what nevisIDM holds, with its version.
    assert_eq!(
        sent[1].1,
        json!({
            "name": {"firstName": "Ada", "familyName": "Lovelace"},
            "contacts": {"email": "ada@example.com"},
            "loginId": "ada@example.com",
            "version": 2,
        })
    );
    let user = env.nevis.user(&victim).unwrap();
    assert_eq!(
        user["name"]["familyName"], "Lovelace",
        "owned field set back"
    );
    assert_eq!(user["contacts"]["email"], "ada@example.com");
    assert_eq!(
        user["contacts"]["mobile"], "+41 79 000 00 00",
        "hand edit kept"
    );

    // And the next run has the fresh version: no conflict, nothing to do.
    env.nevis.clear_request_log();
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert!(patches(&env).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_409_fails_the_user_for_this_run_without_blind_retries() {
    let env = Env::start().await;
    env.nevis.set_version_required(true);
    let ids = env.seed(2);
    let victim = ext(ids[0]);
    env.sync(&[]).await.assert_code(0);
    rename(&env, ids[0], "Ada Lovelace");
    env.nevis.reject_user(
        &victim,
        409,
        "errors.pessimisticLockingFailure",
        "The user was modified by someone else; reload it and retry.",
    );
    env.nevis.clear_request_log();
    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert_eq!(run.count("failed"), 1);
    assert!(
        run.stdout.contains("409") && run.stdout.contains("twice"),
        "the reason is clear:\n{}",
        run.stdout
    );
    let sent = patches(&env);
    assert_eq!(
        sent.iter().map(|(status, _)| *status).collect::<Vec<_>>(),
        [409, 409],
        "one fresh attempt, no blind retries"
    );

    // The next run tries again.
    env.nevis.clear_rejections();
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("updated"), 1);
    assert_eq!(
        env.nevis.user(&victim).unwrap()["name"]["familyName"],
        "Lovelace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_sees_accounts_differing_only_in_case_whatever_the_filters_do() {
    let env = Env::start().await;
    env.nevis.set_exact_filters(true);
    env.set("sync.adopt", &quote("email"));
    let ids = env.seed(2);
    // Two accounts whose emails differ only in case, as people typed them. The Nexudus user's
    // email is "User.0@Example.com": exact filters for it, as spelled or lower-cased, find only
    // the second, which would be adopted for what may be the wrong person.
    env.nevis
        .insert_user(legacy("hr-1", "anna", "USER.0@EXAMPLE.COM"));
    env.nevis
        .insert_user(legacy("hr-2", "anna.b", "user.0@example.com"));
    // A unique match in another case is still adopted.
    env.nevis
        .insert_user(legacy("hr-3", "bob", "USER.1@EXAMPLE.COM"));
    env.nevis.clear_request_log();

    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert_eq!(
        (
            run.count("conflicts"),
            run.count("adopted"),
            run.count("created")
        ),
        (1, 1, 0),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(&format!(
            "conflict: nexudus_id={} extId={} candidates=[hr-1,hr-2]",
            ids[0],
            ext(ids[0])
        )),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains(&format!("adopted: nexudus_id={} extId=hr-3", ids[1])),
        "{}",
        run.stdout
    );
    for untouched in ["hr-1", "hr-2"] {
        assert_eq!(
            env.nevis.user(untouched).unwrap()["version"],
            0,
            "nothing written"
        );
    }
    // The candidates came from one read of the client's users, not from filters.
    let filtered = env
        .nevis
        .request_log()
        .into_iter()
        .filter(|r| r.path.contains("contacts.email=") || r.path.contains("loginId="))
        .count();
    assert_eq!(filtered, 0);
}

fn short_lived(lifetime_secs: u64, report_expires_in: bool) -> FakeOAuth {
    FakeOAuth {
        lifetime: Duration::from_secs(lifetime_secs),
        report_expires_in,
        ..FakeOAuth::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_tokens_are_renewed_before_they_expire_in_a_run_longer_than_their_lifetime() {
    let env = Env::start().await;
    env.use_oauth(short_lived(5, true));
    env.set("sync.concurrency", "1");
    // 60 writes one at a time, each answered after at least 100 ms: the run outlasts a token.
    env.nevis.set_latency(Duration::from_millis(100));
    env.seed(60);
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("created"), 60);
    let stats = env.nevis.stats();
    assert!(stats.token_requests >= 2, "renewed: {stats:?}");
    // Renewed at 90 % of the lifetime (4.5 s), half a second before it ran out: never refused.
    assert_eq!(stats.unauthorized, 0, "{stats:?}");
    assert!(
        env.nevis.token_scopes().iter().all(Option::is_none),
        "no scope unless configured"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_expires_in_is_renewed_on_a_401_and_the_request_repeated() {
    let env = Env::start().await;
    env.use_oauth(short_lived(1, false));
    env.set("nevis.oauth_scope", &quote("nevis"));
    env.set("sync.concurrency", "1");
    env.nevis.set_latency(Duration::from_millis(100));
    env.seed(25);
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!((run.count("created"), run.count("failed")), (25, 0));
    let stats = env.nevis.stats();
    assert!(stats.unauthorized >= 1, "{stats:?}");
    assert!(stats.token_requests >= 2, "{stats:?}");
    // Each 401 cost one renewal and one repeat of the request, no more.
    assert_eq!(stats.token_requests, stats.unauthorized + 1, "{stats:?}");
    assert_eq!(stats.creates, 25 + stats.unauthorized);
    assert!(
        env.nevis
            .token_scopes()
            .iter()
            .all(|s| s.as_deref() == Some("nevis"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_requests_are_retried_and_refused_client_credentials_are_fatal() {
    let env = Env::start().await;
    env.use_oauth(FakeOAuth::default());
    env.seed(2);
    // The first request of the run is the token grant: a 503 is retried like any request.
    env.nevis.push_fault(Fault::Status {
        status: 503,
        retry_after: None,
    });
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("created"), 2);
    assert_eq!(env.nevis.stats().token_requests, 2);

    let wrong = "wrong-oauth-secret-3141";
    env.set("nevis.oauth_client_secret", &quote(wrong));
    env.seed(1);
    env.nevis.reset_stats();
    let run = env.sync(&[]).await;
    run.assert_code(2);
    assert!(
        run.stderr.contains("invalid_client")
            && run.stderr.contains("nevis.oauth_client_id")
            && run.stderr.contains("nevis.oauth_client_secret"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(wrong) && !run.stdout.contains(wrong));
    let stats = env.nevis.stats();
    assert_eq!((stats.token_requests, stats.creates), (1, 0), "not retried");
}
