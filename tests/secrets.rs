//! No secret in any output: runs that fail in the ways that tend to leak credentials (refused
//! passwords, refused tokens, server errors, token grants) are run with the most verbose logging
//! an operator would switch on, in both log formats, and every byte of stdout and stderr is
//! searched for every secret the process held.

mod common;

use common::{Env, Run, quote};
use nexudus_nevis_sync::sandbox::{Fault, NevisFakeConfig, NexudusFakeConfig};

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
