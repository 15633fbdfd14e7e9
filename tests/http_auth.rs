//! The daemon's bearer token (`http.auth_token_file`) over real HTTP, against the real binary:
//! `/status` answers only the configured token, a refusal is a 401 with a `Bearer` challenge and
//! counts in `nexudus_nevis_sync_http_unauthorized_total{path}`, the probes and the scrape stay
//! open, `--status` sends the token to a daemon holding the store (and says which side is wrong
//! when it is refused or missing), an empty token file stops the start naming the key, and
//! without the key `/status` is open as before.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Daemon, Env, quote, run_cmd};
use serde_json::Value;

const WAIT: Duration = common::DAEMON_WAIT;
/// The daemon's token in these tests (visible ASCII, as `openssl rand -base64` writes).
const TOKEN: &str = "dGhlLWRhZW1vbnMtdG9rZW4=-0123456789";
const UNAUTHORIZED: &str = "nexudus_nevis_sync_http_unauthorized_total";

/// Writes `text` to `name` in the test's directory (0600, as an operator would) and answers its path.
fn secret_file(env: &Env, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = env.dir.path().join(name);
    std::fs::write(&path, text).expect("write token file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// An [`Env`] whose config points `http.auth_token_file` at a file holding [`TOKEN`].
async fn env_with_token() -> (Env, PathBuf) {
    let env = Env::start().await;
    env.seed(2);
    let token = secret_file(&env, "http-auth-token", &format!("{TOKEN}\n"));
    env.set("http.auth_token_file", &quote(&token.display().to_string()));
    (env, token)
}

/// The samples of `name` with `path`, summed (0 when the series does not exist yet).
fn unauthorized_count(exposition: &str, path: &str) -> f64 {
    let lines = exposition.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics parse");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == UNAUTHORIZED)
        .filter(|s| s.labels.get("path") == Some(path))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_answers_only_the_bearer_token_and_probes_and_scrape_stay_open() {
    let (env, _) = env_with_token().await;
    let daemon = Daemon::start(&env).await;
    assert!(
        daemon.log().contains("status_auth=\"bearer\""),
        "{}",
        daemon.log()
    );

    let missing = daemon.get_authorized("/status", None).await;
    assert_eq!(missing.status, 401, "{missing:?}");
    let challenge = missing.challenge.as_deref().unwrap_or_default();
    assert!(challenge.starts_with("Bearer "), "{missing:?}");
    assert!(
        !challenge.contains("invalid_token"),
        "no token came: {missing:?}"
    );
    let body: Value = serde_json::from_str(&missing.body).expect("a JSON body");
    assert!(
        body["error"].is_string() && body.get("failing_users").is_none(),
        "{body}"
    );

    let wrong_token = format!("Bearer {}", TOKEN.replace('0', "1"));
    for (authorization, invalid_token) in [
        (wrong_token.as_str(), true),
        ("Bearer", true),
        ("Basic dXNlcjpwYXNz", false),
    ] {
        let refused = daemon.get_authorized("/status", Some(authorization)).await;
        assert_eq!(refused.status, 401, "{authorization}: {refused:?}");
        let challenge = refused.challenge.as_deref().unwrap_or_default();
        assert!(challenge.starts_with("Bearer "), "{refused:?}");
        assert_eq!(
            challenge.contains("invalid_token"),
            invalid_token,
            "{refused:?}"
        );
        assert!(!refused.body.contains("failing_users"), "{refused:?}");
    }

    let right = format!("Bearer {TOKEN}");
    let answered = daemon.get_authorized("/status", Some(&right)).await;
    assert_eq!(answered.status, 200, "{answered:?}");
    assert_eq!(answered.challenge, None);
    let doc: Value = serde_json::from_str(&answered.body).expect("/status is JSON");
    assert!(doc["failing_users"].is_array(), "{doc}");

    // Probes and scrapers carry no token: open without one and with a wrong one alike.
    for path in ["/healthz", "/readyz", "/metrics"] {
        for authorization in [None, Some(wrong_token.as_str())] {
            let open = daemon.get_authorized(path, authorization).await;
            assert!(
                matches!(open.status, 200 | 503) && open.challenge.is_none(),
                "{path} with {authorization:?}: {open:?}"
            );
        }
    }
    // A path no route serves stays a 404, and is not counted as a refusal.
    assert_eq!(daemon.get_authorized("/nothing", None).await.status, 404);

    let (_, exposition) = daemon.get("/metrics").await;
    assert_eq!(
        unauthorized_count(&exposition, "/status"),
        4.0,
        "missing, wrong, empty and Basic each counted once:\n{exposition}"
    );
    assert!(
        !exposition.contains(TOKEN),
        "the scrape never shows the token"
    );
    assert!(
        !daemon.log().contains(TOKEN),
        "the log never shows the token"
    );
    daemon.sigterm();
    assert_eq!(daemon.exit_code(WAIT).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_flag_sends_the_token_and_says_when_it_is_refused_or_missing() {
    let (env, token) = env_with_token().await;
    let daemon = Daemon::start(&env).await;
    daemon
        .wait_for("the start-up import", |_| async {
            env.nevis.user_count() == 2
        })
        .await;
    // --status reaches the daemon (which holds the store) at the address it logged.
    env.set("http.listen", &quote(&daemon.addr.to_string()));

    let run = run_cmd(env.command(&["--status", "--json"])).await;
    run.assert_code(0);
    let doc: Value = serde_json::from_str(run.stdout.trim()).expect("--status --json is JSON");
    assert!(
        doc.get("running").is_some(),
        "the daemon's live document, so it was asked: {doc}"
    );

    // A token file with another token: the daemon refuses it, and --status says so.
    let wrong = secret_file(&env, "wrong-token", "not-the-daemons-token\n");
    env.set("http.auth_token_file", &quote(&wrong.display().to_string()));
    let run = run_cmd(env.command(&["--status"])).await;
    run.assert_code(2);
    assert!(
        run.stderr.contains("refused the bearer token")
            && run.stderr.contains("http.auth_token_file"),
        "{}",
        run.stderr
    );
    for secret in [TOKEN, "not-the-daemons-token"] {
        assert!(
            !run.stderr.contains(secret) && !run.stdout.contains(secret),
            "{}",
            run.stderr
        );
    }

    // No token on this side at all: --status says one is needed, and where to put it.
    env.unset("http.auth_token_file");
    let run = run_cmd(env.command(&["--status"])).await;
    run.assert_code(2);
    assert!(
        run.stderr.contains("needs a bearer token") && run.stderr.contains("http.auth_token_file"),
        "{}",
        run.stderr
    );

    // The token by environment override, as the systemd drop-in hands it to the daemon.
    let mut cmd = env.command(&["--status"]);
    cmd.env("NEXUDUS_NEVIS_SYNC__HTTP__AUTH_TOKEN_FILE", &token);
    let run = run_cmd(cmd).await;
    run.assert_code(0);
    assert!(!run.stdout.is_empty(), "the table for a person");

    let (_, exposition) = daemon.get("/metrics").await;
    assert_eq!(
        unauthorized_count(&exposition, "/status"),
        2.0,
        "{exposition}"
    );
    daemon.sigterm();
    assert_eq!(daemon.exit_code(WAIT).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_key_status_is_open_as_before() {
    let env = Env::start().await;
    env.seed(1);
    let daemon = Daemon::start(&env).await;
    assert!(
        daemon.log().contains("status_auth=\"open\""),
        "{}",
        daemon.log()
    );
    for authorization in [None, Some("Bearer anything")] {
        let open = daemon.get_authorized("/status", authorization).await;
        assert_eq!(open.status, 200, "{authorization:?}: {open:?}");
        assert_eq!(open.challenge, None);
        let doc: Value = serde_json::from_str(&open.body).expect("/status is JSON");
        assert!(doc["failing_users"].is_array(), "{doc}");
    }
    let (_, exposition) = daemon.get("/metrics").await;
    assert_eq!(
        unauthorized_count(&exposition, "/status"),
        0.0,
        "{exposition}"
    );
    daemon.sigterm();
    assert_eq!(daemon.exit_code(WAIT).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_token_file_stops_the_start_naming_the_key() {
    let env = Env::start().await;
    let empty = secret_file(&env, "http-auth-token", "\n");
    env.set("http.auth_token_file", &quote(&empty.display().to_string()));
    env.set("http.listen", &quote("127.0.0.1:0"));
    let run = run_cmd(env.command(&[])).await;
    run.assert_code(2);
    assert!(
        run.stderr.contains("`http.auth_token_file`") && run.stderr.contains("is empty"),
        "{}",
        run.stderr
    );
    assert!(
        !env.store_path().exists(),
        "refused before the store was opened"
    );
}
