//! No secret in any output: runs that fail in the ways that tend to leak credentials (refused
//! passwords, refused tokens, server errors, token grants, OAuth2 grants and renewals, failed TLS
//! handshakes with a client key loaded) are run with the most verbose logging an operator would switch on, in both log
//! formats, and every byte of stdout and stderr is searched for every secret the process held.

mod common;

use common::tls::{Ca, file, tls_proxy};
use common::{Env, Run, quote};
use nexudus_nevis_sync::sandbox::{
    FakeOAuth, Fault, NevisFakeConfig, NexudusFakeConfig, NexudusUserSpec,
};
use rcgen::ExtendedKeyUsagePurpose;

/// The most an operator would turn logging up to: everything at debug, this crate at trace.
const VERBOSE: &str = "\"debug,nexudus_nevis_sync=trace\"";

fn assert_clean(run: &Run, secrets: &[&str], what: &str) {
    for secret in secrets {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "{what}: a secret appeared in the output\nstdout:\n{}\nstderr:\n{}",
            run.stdout,
            run.stderr
        );
    }
}

async fn verbose_env(format: &str) -> Env {
    let env = Env::start().await;
    env.set("log.level", VERBOSE);
    env.set("log.format", &quote(format));
    env.set("retry.max_attempts", "2");
    env.seed(3);
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_runs_never_print_a_secret() {
    let nexudus_password = NexudusFakeConfig::default().password;
    let nevis_token = NevisFakeConfig::default().token;
    for format in ["pretty", "json"] {
        // Bad Nexudus password, Basic auth: 401, fatal.
        let env = verbose_env(format).await;
        let wrong = "wrong-basic-password-5551";
        env.set("nexudus.password", &quote(wrong));
        let run = env.sync(&[]).await;
        run.assert_code(2);
        assert!(!run.stderr.is_empty(), "the verbose run logged something");
        assert_clean(
            &run,
            &[wrong, &nexudus_password, &nevis_token],
            "bad basic password",
        );

        // Bad password with token auth (the password travels in a form body).
        env.set("nexudus.auth", &quote("token"));
        env.set("nexudus.totp", &quote("913377"));
        let run = env.sync(&[]).await;
        run.assert_code(2);
        assert_clean(
            &run,
            &[wrong, "913377", &nevis_token],
            "bad token-grant password",
        );

        // Good token sign-in, then nevisIDM answering 500 to everything: the access and refresh
        // tokens, the password and the nevis token are all in play.
        let env2 = verbose_env(format).await;
        env2.set("nexudus.auth", &quote("token"));
        env2.nevis.set_down(Some(500));
        let run = env2.sync(&[]).await;
        run.assert_code(2);
        let tokens = env2.nexudus.issued_refresh_tokens();
        assert!(!tokens.is_empty(), "the run signed in");
        let mut secrets: Vec<&str> = vec![&nexudus_password, &nevis_token];
        secrets.extend(tokens.iter().map(String::as_str));
        secrets.push("at-1-");
        assert_clean(&run, &secrets, "nevisIDM 500s");

        // Wrong nevis token: 401 from nevisIDM, fatal.
        let env3 = verbose_env(format).await;
        let wrong_token = "wrong-nevis-token-8812";
        env3.set("nevis.token", &quote(wrong_token));
        let run = env3.sync(&[]).await;
        run.assert_code(2);
        assert_clean(
            &run,
            &[wrong_token, &nexudus_password],
            "refused nevis token",
        );

        // Nexudus 500 storm on the listing.
        let env4 = verbose_env(format).await;
        env4.nexudus.push_faults(
            10,
            Fault::Status {
                status: 503,
                retry_after: None,
            },
        );
        let run = env4.sync(&[]).await;
        run.assert_code(2);
        assert_clean(&run, &[&nexudus_password, &nevis_token], "Nexudus 503s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tls_handshakes_never_print_a_secret() {
    let nexudus_password = NexudusFakeConfig::default().password;
    let nevis_token = NevisFakeConfig::default().token;
    for format in ["pretty", "json"] {
        // nevisIDM's certificate from a CA we do not trust, and our client certificate from a CA
        // nevisIDM does not trust: the handshake fails on our side, then on the server's.
        for server_untrusted in [true, false] {
            let what = if server_untrusted {
                "untrusted server certificate"
            } else {
                "refused client certificate"
            };
            let env = verbose_env(format).await;
            env.set("nexudus.auth", &quote("token"));
            env.set("nexudus.totp", &quote("604418"));
            let ca = Ca::new("nevisIDM CA");
            let stranger = Ca::new("Some other CA");
            let (server_ca, client_ca) = if server_untrusted {
                (&stranger, &ca)
            } else {
                (&ca, &stranger)
            };
            let server = server_ca.leaf(
                &["127.0.0.1", "localhost"],
                ExtendedKeyUsagePurpose::ServerAuth,
            );
            let client =
                client_ca.leaf(&["nexudus-nevis-sync"], ExtendedKeyUsagePurpose::ClientAuth);
            let proxy = tls_proxy(&server, Some(&ca), env.nevis.addr()).await;
            env.set(
                "nevis.base_url",
                &quote(&format!("https://127.0.0.1:{}", proxy.port())),
            );
            env.set("nevis.ca_cert", &file(&env, "ca.pem", &ca.pem));
            env.set(
                "nevis.client_cert",
                &file(&env, "client.pem", &client.cert_pem),
            );
            env.set(
                "nevis.client_key",
                &file(&env, "client-key.pem", &client.key_pem),
            );
            let run = env.sync(&[]).await;
            run.assert_code(2);
            assert!(run.stderr.contains("TLS"), "{what}: {}", run.stderr);
            let tokens = env.nexudus.issued_refresh_tokens();
            assert!(!tokens.is_empty(), "{what}: the run signed in to Nexudus");
            let mut secrets: Vec<&str> = vec![&nexudus_password, &nevis_token, "604418", "at-1-"];
            secrets.extend(tokens.iter().map(String::as_str));
            // The client key: whole, and each line of its base64 body.
            secrets.push(client.key_pem.trim());
            let body: Vec<&str> = client
                .key_pem
                .lines()
                .filter(|l| !l.starts_with("-----") && !l.trim().is_empty())
                .collect();
            assert!(!body.is_empty());
            secrets.extend(body);
            assert_clean(&run, &secrets, what);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_runs_never_print_the_client_secret_or_a_token() {
    let nexudus_password = NexudusFakeConfig::default().password;
    for format in ["pretty", "json"] {
        // Tokens that expire within the run and carry no expires_in: grants, 401s and renewals.
        let env = verbose_env(format).await;
        let oauth = FakeOAuth {
            lifetime: std::time::Duration::from_secs(1),
            report_expires_in: false,
            ..FakeOAuth::default()
        };
        let secret = oauth.client_secret.clone();
        env.use_oauth(oauth);
        // Three creates one at a time, each answered after 400 ms: the third outlives the token.
        env.set("sync.concurrency", "1");
        env.nevis.set_latency(std::time::Duration::from_millis(400));
        let run = env.sync(&[]).await;
        run.assert_code(0);
        assert!(env.nevis.stats().unauthorized >= 1, "a token expired");
        let tokens = env.nevis.issued_tokens();
        assert!(tokens.len() >= 2, "renewed");
        let mut secrets: Vec<&str> = vec![&secret, &nexudus_password, "oauth-at-"];
        secrets.extend(tokens.iter().map(String::as_str));
        assert_clean(&run, &secrets, "OAuth2 renewals");

        // Refused client credentials: fatal, and the wrong secret is not quoted either.
        let wrong = "wrong-oauth-secret-2718";
        env.set("nevis.oauth_client_secret", &quote(wrong));
        env.nexudus
            .insert_user(NexudusUserSpec::new("New Person", "new.person@example.com"));
        let run = env.sync(&[]).await;
        run.assert_code(2);
        assert_clean(&run, &[wrong, &secret], "refused client credentials");
    }
}
