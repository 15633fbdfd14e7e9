//! nevisIDM over TLS with client certificates: certificates are generated here (`rcgen`), and a
//! TLS-terminating proxy on 127.0.0.1 (rustls, optionally demanding a client certificate from our
//! CA) forwards to the plain sandbox fake. The real binary must: authenticate with a good client
//! certificate alone, fail fast and clearly without one, refuse an untrusted server certificate,
//! and accept it only with the explicit, loudly logged `insecure_skip_verify`.

mod common;

use std::time::{Duration, Instant};

use common::tls::{Ca, Leaf, file, tls_proxy};
use common::{Env, Run, quote};
use rcgen::ExtendedKeyUsagePurpose;

struct Setup {
    env: Env,
    ca: Ca,
    client: Leaf,
}

/// Fakes, a CA, a server certificate for 127.0.0.1 and a client certificate, and nevis.base_url
/// pointing at a TLS proxy that requires (or not) a client certificate from the CA.
async fn setup(require_client_cert: bool, server_ca: Option<&Ca>) -> Setup {
    let env = Env::start().await;
    env.seed(3);
    let ca = Ca::new("Test nevisIDM CA");
    let signer = server_ca.unwrap_or(&ca);
    let server = signer.leaf(
        &["127.0.0.1", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let client = ca.leaf(&["nexudus-nevis-sync"], ExtendedKeyUsagePurpose::ClientAuth);
    let proxy = tls_proxy(
        &server,
        require_client_cert.then_some(&ca),
        env.nevis.addr(),
    )
    .await;
    env.set(
        "nevis.base_url",
        &quote(&format!("https://127.0.0.1:{}", proxy.port())),
    );
    Setup { env, ca, client }
}

fn use_client_cert(s: &Setup) {
    s.env.set(
        "nevis.client_cert",
        &file(&s.env, "client.pem", &s.client.cert_pem),
    );
    s.env.set(
        "nevis.client_key",
        &file(&s.env, "client-key.pem", &s.client.key_pem),
    );
}

fn trust_ca(s: &Setup) {
    s.env
        .set("nevis.ca_cert", &file(&s.env, "ca.pem", &s.ca.pem));
}

fn assert_fatal_tls(run: &Run, started: Instant) {
    run.assert_code(2);
    assert!(run.stderr.contains("TLS"), "{}", run.stderr);
    // Not retried for minutes as if nevisIDM were down.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a TLS refusal is final, not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_client_certificate_alone_authenticates() {
    let s = setup(true, None).await;
    trust_ca(&s);
    use_client_cert(&s);
    // mTLS only: no bearer token at all (the proxy in front of nevisIDM authenticates).
    s.env.nevis.set_token_required(false);
    let text = std::fs::read_to_string(&s.env.config).unwrap();
    std::fs::write(
        &s.env.config,
        text.lines()
            .filter(|l| !l.starts_with("token = "))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let run = s.env.sync(&[]).await;
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert_eq!(run.count("created"), 3);
    assert_eq!(s.env.nevis.user_count(), 3);
    assert!(!run.stderr.contains("BEGIN"), "no PEM in the output");
}

/// The fatal line (`error: …`) of a failed run.
fn fatal_line(run: &Run) -> &str {
    run.stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no fatal line in stderr:\n{}", run.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_client_certificate_is_a_fast_clear_fatal_error() {
    let s = setup(true, None).await;
    trust_ca(&s);
    let started = Instant::now();
    let run = s.env.sync(&[]).await;
    assert_fatal_tls(&run, started);
    // Told apart from an untrusted server certificate: the server's alert after we sent none.
    let line = fatal_line(&run);
    assert!(
        line.contains("requires a client certificate and none is configured")
            && line.contains("CertificateRequired")
            && line.contains("set nevis.client_cert and nevis.client_key"),
        "{line}"
    );
    assert!(!line.contains("server certificate"), "{line}");
    assert!(!line.contains("ca_cert"), "{line}");
    assert_eq!(s.env.nevis.user_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_reported_as_refused() {
    let s = setup(true, None).await;
    trust_ca(&s);
    let stranger = Ca::new("Not nevisIDM's client CA")
        .leaf(&["nexudus-nevis-sync"], ExtendedKeyUsagePurpose::ClientAuth);
    s.env.set(
        "nevis.client_cert",
        &file(&s.env, "client.pem", &stranger.cert_pem),
    );
    s.env.set(
        "nevis.client_key",
        &file(&s.env, "client-key.pem", &stranger.key_pem),
    );
    let started = Instant::now();
    let run = s.env.sync(&[]).await;
    assert_fatal_tls(&run, started);
    let line = fatal_line(&run);
    assert!(
        line.contains("nevisIDM refused our client certificate") && line.contains("fatal alert"),
        "{line}"
    );
    assert!(!line.contains("none is configured"), "{line}");
    assert!(!line.contains("server certificate"), "{line}");
    assert_eq!(s.env.nevis.user_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_certificate_is_refused() {
    let other = Ca::new("Some other CA");
    let s = setup(false, Some(&other)).await;
    // Without nevis.ca_cert (platform roots only), and with our CA that did not sign it.
    let started = Instant::now();
    let run = s.env.sync(&[]).await;
    assert_fatal_tls(&run, started);
    let untrusted = |run: &Run| {
        let line = fatal_line(run).to_string();
        assert!(
            line.contains("server certificate is not trusted")
                && line.contains("UnknownIssuer")
                && line.contains("set nevis.ca_cert"),
            "{line}"
        );
        // Not mistaken for a client-certificate problem.
        assert!(!line.contains("client_cert"), "{line}");
        assert!(!line.contains("client certificate"), "{line}");
    };
    untrusted(&run);
    trust_ca(&s);
    let run = s.env.sync(&[]).await;
    run.assert_code(2);
    untrusted(&run);
    assert_eq!(s.env.nevis.user_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skip_verify_works_only_with_a_loud_warning() {
    let other = Ca::new("Some other CA");
    let s = setup(false, Some(&other)).await;
    s.env.set("nevis.insecure_skip_verify", "true");
    let run = s.env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("created"), 3);
    assert_eq!(
        run.stderr.matches("NOT verified").count(),
        1,
        "warned once:\n{}",
        run.stderr
    );
    // No logging setting silences it: not log.level, not RUST_LOG.
    s.env.set("log.level", &quote("error"));
    let mut cmd = s.env.command(&["--sync-now"]);
    cmd.env("RUST_LOG", "off");
    let run = common::run_cmd(cmd).await;
    run.assert_code(0);
    assert_eq!(
        run.stderr.matches("NOT verified").count(),
        1,
        "warned once with logging off:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("warning: nevis.insecure_skip_verify"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_client_key_file_is_a_start_up_error_naming_the_keys() {
    let s = setup(true, None).await;
    trust_ca(&s);
    s.env.set(
        "nevis.client_cert",
        &file(&s.env, "client.pem", &s.client.cert_pem),
    );
    let broken = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n";
    s.env
        .set("nevis.client_key", &file(&s.env, "client-key.pem", broken));
    let run = s.env.sync(&[]).await;
    run.assert_code(2);
    assert!(run.stderr.contains("nevis.client_cert"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("bm90IGEga2V5"),
        "the key is not echoed"
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}
