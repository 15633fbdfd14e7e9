//! Nexudus bearer tokens (`nexudus.auth = "token"`) against the fake's `POST /api/token`:
//! sign-in with the password grant, renewal before expiry and on 401, the rotating refresh token
//! kept in the store across restarts, the fallback to the password when the refresh token is
//! refused (which forgets it), one retry budget for token requests, and `totp` needed only for a
//! sign-in.

mod common;

use std::time::Duration;

use common::{Daemon, Env, Run, quote};
use nexudus_nevis_sync::sandbox::{Fault, NexudusFakeConfig};

/// The fatal line (`error: …`) of a failed run.
fn fatal_line(run: &Run) -> &str {
    run.stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no fatal line in stderr:\n{}", run.stderr))
}

/// Fakes where Nexudus issues access tokens living `ttl` (and wants `totp`, when given).
async fn env_with(ttl: Duration, totp: Option<&str>) -> Env {
    let env = Env::with_nexudus(NexudusFakeConfig {
        token_ttl: ttl,
        totp: totp.map(String::from),
        ..common::loose_nexudus()
    })
    .await;
    env.set("nexudus.auth", &quote("token"));
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_signs_in_once_then_refreshes_with_the_stored_rotating_token() {
    let env = Env::start().await;
    env.set("nexudus.auth", &quote("token"));
    env.seed(3);
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("created"), 3);
    let stats = env.nexudus.stats();
    assert_eq!((stats.password_grants, stats.refresh_grants), (1, 0));

    // A restart: the access token is gone with the process; the refresh token is in the store.
    env.nexudus.reset_stats();
    env.sync(&[]).await.assert_code(0);
    let stats = env.nexudus.stats();
    assert_eq!(
        (
            stats.password_grants,
            stats.refresh_grants,
            stats.unauthorized
        ),
        (0, 1, 0),
        "a restart refreshes instead of sending the password"
    );
    // The refresh token rotated: the next run presents the newest one (the old one is retired
    // by the fake, so an old one presented would be refused and fall back to the password).
    env.nexudus.reset_stats();
    env.sync(&[]).await.assert_code(0);
    assert_eq!(env.nexudus.stats().refresh_grants, 1);
    assert_eq!(env.nexudus.stats().password_grants, 0);
    assert_eq!(env.nexudus.issued_refresh_tokens().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_token_falls_back_to_the_password_grant() {
    let env = Env::start().await;
    env.set("nexudus.auth", &quote("token"));
    env.seed(2);
    env.sync(&[]).await.assert_code(0);
    env.nexudus.revoke_refresh_tokens();
    env.nexudus.reset_stats();
    let run = env.sync(&[]).await;
    run.assert_code(0);
    let stats = env.nexudus.stats();
    assert_eq!(
        (stats.refused_grants, stats.password_grants),
        (1, 1),
        "refresh refused once, then the password"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_token_revoked_mid_run_is_renewed_on_401() {
    let env = Env::start().await;
    env.set("nexudus.auth", &quote("token"));
    env.set("nexudus.page_size", "2");
    env.seed(6);
    // Every access token is revoked right after the first page: page 2 meets a 401.
    env.nexudus.revoke_access_tokens_after_pages(Some(1));
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("created"), 6);
    let stats = env.nexudus.stats();
    assert_eq!(stats.unauthorized, 1, "the revoked token was refused once");
    assert_eq!(stats.list_requests, 3, "every page served once");
    assert_eq!(
        stats.password_grants + stats.refresh_grants,
        2,
        "one sign-in and one renewal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_with_token_auth_is_fatal_and_names_the_sign_in() {
    let env = Env::start().await;
    env.set("nexudus.auth", &quote("token"));
    env.set("nexudus.password", &quote("wrong-password-xyz"));
    env.seed(2);
    let run = env.sync(&[]).await;
    run.assert_code(2);
    assert!(run.stderr.contains("/api/token"), "{}", run.stderr);
    assert!(!run.stderr.contains("wrong-password-xyz"));
    assert!(!run.stdout.contains("wrong-password-xyz"));
    assert_eq!(env.nevis.user_count(), 0);
    // Refused at once, not retried.
    assert_eq!(env.nexudus.stats().refused_grants, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_is_sent_with_the_password_grant_and_client_id_binds_the_refresh() {
    let env = env_with(NexudusFakeConfig::default().token_ttl, Some("424242")).await;
    env.seed(1);
    // Without the code the sign-in is refused.
    env.sync(&[]).await.assert_code(2);
    env.set("nexudus.totp", &quote("424242"));
    env.set("nexudus.client_id", &quote("sync-daemon-1"));
    env.sync(&[]).await.assert_code(0);
    env.nexudus.reset_stats();
    env.sync(&[]).await.assert_code(0);
    assert_eq!(env.nexudus.stats().refresh_grants, 1);
    // A different client_id may not use that refresh token: refused, then the password.
    env.set("nexudus.client_id", &quote("someone-else"));
    env.nexudus.reset_stats();
    env.sync(&[]).await.assert_code(0);
    let stats = env.nexudus.stats();
    assert_eq!((stats.refused_grants, stats.password_grants), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_token_is_renewed_before_it_expires_between_daemon_ticks() {
    // Access tokens live 3 s and are renewed at 2.7 s; the daemon lists every second, so the
    // token it holds reaches its renewal time within a few ticks. A client that renewed only on
    // a 401 would present the expired token once and be refused: the fake counts that.
    let env = env_with(Duration::from_secs(3), None).await;
    env.seed(2);
    let daemon = Daemon::start(&env).await;
    daemon
        .wait_for("two renewals", |_| async {
            env.nexudus.stats().refresh_grants >= 2
        })
        .await;
    let log = daemon.stop().await;
    let stats = env.nexudus.stats();
    assert_eq!(stats.password_grants, 1, "signed in once: {stats:?}");
    assert_eq!(
        stats.unauthorized, 0,
        "renewed before expiry, never by a 401: {stats:?}\n{log}"
    );
    assert!(!log.contains("answered 401"), "{log}");
    assert!(
        stats.list_requests >= 3,
        "listed on several ticks: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_token_endpoint_is_asked_at_most_max_attempts_times() {
    let env = Env::start().await;
    env.set("nexudus.auth", &quote("token"));
    env.set("retry.max_attempts", "3");
    env.seed(2);
    // Every request fails, the first of them being the sign-in: no listing is ever reached.
    env.nexudus.push_faults(
        50,
        Fault::Status {
            status: 503,
            retry_after: None,
        },
    );
    let run = env.sync(&[]).await;
    run.assert_code(2);
    let stats = env.nexudus.stats();
    assert_eq!(
        (stats.requests, stats.faults_injected),
        (3, 3),
        "one retry budget for the page and its token: 3 requests, not 3 x 3"
    );
    assert_eq!(stats.password_grants + stats.list_requests, 0);
    assert!(fatal_line(&run).contains("503"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_token_is_forgotten_in_the_store_too() {
    let env = Env::start().await;
    env.set("nexudus.auth", &quote("token"));
    env.seed(2);
    env.sync(&[]).await.assert_code(0);
    // The refresh token is refused and, this time, the password too: the run is fatal.
    env.nexudus.revoke_refresh_tokens();
    let good_password = NexudusFakeConfig::default().password;
    env.set("nexudus.password", &quote("wrong-password-7731"));
    env.nexudus.reset_stats();
    env.sync(&[]).await.assert_code(2);
    let stats = env.nexudus.stats();
    assert_eq!(
        (stats.refused_grants, stats.refresh_grants),
        (2, 0),
        "refresh, then password"
    );
    // The next start goes straight to the password: the dead token is not presented again.
    env.set("nexudus.password", &quote(&good_password));
    env.nexudus.reset_stats();
    env.sync(&[]).await.assert_code(0);
    let stats = env.nexudus.stats();
    assert_eq!(
        (
            stats.refused_grants,
            stats.password_grants,
            stats.refresh_grants
        ),
        (0, 1, 0),
        "no refused refresh before the sign-in"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_serves_the_sign_in_only_and_a_stale_one_asks_for_a_fresh_code() {
    let env = env_with(NexudusFakeConfig::default().token_ttl, Some("111111")).await;
    env.set("nexudus.totp", &quote("111111"));
    env.seed(1);
    env.sync(&[]).await.assert_code(0);
    // The authenticator moves on; the config keeps the stale code, which nothing needs: the
    // refresh token kept in the store carries on.
    env.nexudus.set_totp(Some("222222"));
    env.nexudus.reset_stats();
    env.sync(&[]).await.assert_code(0);
    let stats = env.nexudus.stats();
    assert_eq!((stats.password_grants, stats.refresh_grants), (0, 1));
    // The refresh token is refused: the password grant needs a code, and the config's is stale.
    env.nexudus.revoke_refresh_tokens();
    let run = env.sync(&[]).await;
    run.assert_code(2);
    let line = fatal_line(&run);
    assert!(
        line.contains("/api/token")
            && line.contains("stored refresh token was refused")
            && line.contains("put a fresh code in nexudus.totp"),
        "{line}"
    );
    assert!(!run.stderr.contains("111111") && !run.stdout.contains("111111"));
    // A fresh code signs in again.
    env.set("nexudus.totp", &quote("222222"));
    env.nexudus.reset_stats();
    env.sync(&[]).await.assert_code(0);
    assert_eq!(env.nexudus.stats().password_grants, 1);
}
