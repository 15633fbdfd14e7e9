//! Daemon mode end to end: the real binary with a 1-second schedule against the sandbox fakes,
//! its HTTP endpoints, graceful shutdown on SIGTERM and the single-writer store lock.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, Env, Run, quote, run_cmd};
use nexudus_nevis_sync::sandbox::NexudusUserSpec;
use serde_json::{Value, json};

/// Upper bound for anything the tests wait on.
const WAIT: Duration = common::DAEMON_WAIT;

fn metric(text: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics parse as Prometheus text");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_imports_at_start_then_follows_changes_on_schedule() {
    let env = Env::start().await;
    let ids = env.seed(5);
    let daemon = Daemon::start(&env).await;
    daemon
        .wait_for("the start-up import", |_| async {
            env.nevis.user_count() == 5
        })
        .await;

    env.nexudus.update_user(ids[0], |u| {
        u.insert("FullName".into(), json!("Renamed Person"));
    });
    let added = env
        .nexudus
        .insert_user(NexudusUserSpec::new("New Comer", "new@example.com"));
    let ext = format!("nexudus-{}", ids[0]);
    daemon
        .wait_for("the change to reach nevisIDM", |_| async {
            env.nevis
                .user(&ext)
                .is_some_and(|u| u["name"]["familyName"] == "Person")
                && env.nevis.user(&format!("nexudus-{added}")).is_some()
        })
        .await;

    daemon.sigterm();
    assert_eq!(daemon.exit_code(WAIT).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_reconciles_on_its_reconcile_schedule() {
    let env = Env::start().await;
    let ids = env.seed(3);
    // Ordinary runs every second would never see a hand edit; the reconcile job does.
    env.set("sync.reconcile_schedule", &quote("*/2 * * * * *"));
    let daemon = Daemon::start(&env).await;
    daemon
        .wait_for("the start-up import", |_| async {
            env.nevis.user_count() == 3
        })
        .await;
    let ext = format!("nexudus-{}", ids[1]);
    env.nevis.modify_user(&ext, |u| {
        u.insert("languageCode".into(), json!("it"));
    });
    daemon
        .wait_for("a reconcile to set the edit back", |_| async {
            env.nevis
                .user(&ext)
                .is_some_and(|u| u["languageCode"] == "en")
        })
        .await;
    daemon.sigterm();
    assert_eq!(daemon.exit_code(WAIT).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_and_status_follow_the_runs() {
    let env = Env::start().await;
    env.set("retry.max_attempts", "2");
    let ids = env.seed(4);
    env.nevis.set_down(Some(503));
    let daemon = Daemon::start(&env).await;

    assert_eq!(daemon.get("/healthz").await.0, 200);
    let (status, body) = daemon.get("/readyz").await;
    assert_eq!(status, 503, "not ready before the first success: {body}");
    let reason: Value = serde_json::from_str(&body).expect("readyz answers JSON");
    assert_eq!(reason["ready"], false);
    // The first run must have ended (fatal) before nevisIDM comes back, or it could recover.
    daemon
        .wait_for("the first run to end fatal", |d| async move {
            let (_, text) = d.get("/metrics").await;
            metric(
                &text,
                "nexudus_nevis_sync_runs_total",
                Some(("outcome", "fatal")),
            ) >= 1.0
        })
        .await;

    env.nevis.set_down(None);
    daemon
        .wait_for("readiness after a successful run", |d| async move {
            d.get("/readyz").await.0 == 200
        })
        .await;
    let (_, text) = daemon.get("/metrics").await;
    assert!(
        metric(
            &text,
            "nexudus_nevis_sync_users_total",
            Some(("outcome", "created"))
        ) >= 4.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "nexudus_nevis_sync_runs_total",
            Some(("outcome", "fatal"))
        ) >= 1.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "nexudus_nevis_sync_retries_total",
            Some(("api", "nevis"))
        ) >= 1.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "nexudus_nevis_sync_last_success_timestamp_seconds",
            None
        ) > 0.0,
        "{text}"
    );
    assert!(
        text.contains("nexudus_nevis_sync_request_duration_seconds_bucket"),
        "{text}"
    );
    let runs_before = metric(&text, "nexudus_nevis_sync_runs_total", None);

    // nevisIDM starts failing while there is something to write: not ready any more.
    env.nevis.set_down(Some(500));
    // (Not a Language change: Spanish maps to the default under mapping.allowed_languages.)
    env.nexudus.update_user(ids[1], |u| {
        u.insert("FullName".into(), json!("Changed Person"));
    });
    daemon
        .wait_for("unreadiness once nevisIDM fails", |d| async move {
            d.get("/readyz").await.0 == 503
        })
        .await;
    let (_, text) = daemon.get("/metrics").await;
    assert!(
        metric(&text, "nexudus_nevis_sync_runs_total", None) > runs_before,
        "counters move"
    );

    // The failing user is visible in /status and through --status (which asks the daemon,
    // since the daemon holds the store).
    let (_, body) = daemon.get("/status").await;
    let doc: Value = serde_json::from_str(&body).unwrap();
    let failing = doc["failing_users"].as_array().unwrap();
    assert!(
        failing
            .iter()
            .any(|f| f["ext_id"] == json!(format!("nexudus-{}", ids[1]))),
        "{doc}"
    );
    // The daemon chose its port: --status cannot guess it, and says where to look ...
    let run: Run = run_cmd(env.command(&["--status"])).await;
    run.assert_code(2);
    assert!(
        run.stderr.contains("port of its choosing"),
        "{}",
        run.stderr
    );
    // ... and finds the daemon at the address its log names.
    env.set("http.listen", &quote(&daemon.addr.to_string()));
    let run: Run = run_cmd(env.command(&["--status"])).await;
    run.assert_code(1);
    assert!(
        run.stdout.contains(&format!("nexudus-{}", ids[1])),
        "{}",
        run.stdout
    );

    env.nevis.set_down(None);
    daemon
        .wait_for("readiness after nevisIDM recovers", |d| async move {
            d.get("/readyz").await.0 == 200
        })
        .await;
    daemon.sigterm();
    assert_eq!(daemon.exit_code(WAIT).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_run_exits_0_and_keeps_every_confirmed_write() {
    let env = Env::start().await;
    env.set("sync.concurrency", "2");
    env.set("sync.shutdown_grace", &quote("10s"));
    env.nevis.set_latency(Duration::from_millis(250));
    env.seed(40);
    let daemon = Daemon::start(&env).await;
    daemon
        .wait_for("a few users written", |_| async {
            env.nevis.user_count() >= 4
        })
        .await;
    let asked = Instant::now();
    daemon.sigterm();
    assert_eq!(daemon.exit_code(Duration::from_secs(15)).await, 0);
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "stopped within the grace period"
    );
    let written: Vec<String> = env
        .nevis
        .users()
        .iter()
        .map(|u| u["extId"].as_str().unwrap().to_string())
        .collect();
    assert!(written.len() < 40, "the run was interrupted");

    env.nevis.set_latency(Duration::ZERO);
    env.nevis.clear_request_log();
    env.sync(&[]).await.assert_code(0);
    let recreated: Vec<String> = env
        .nevis
        .request_log()
        .into_iter()
        .filter(|r| r.method == "POST")
        .filter_map(|r| r.body.and_then(|b| b["extId"].as_str().map(String::from)))
        .filter(|ext| written.contains(ext))
        .collect();
    assert!(
        recreated.is_empty(),
        "confirmed writes were checkpointed: {recreated:?}"
    );
    assert_eq!(env.nevis.user_count(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_process_on_a_daemon_store_exits_2_in_use() {
    let env = Env::start().await;
    env.seed(2);
    let daemon = Daemon::start(&env).await;
    let run = env.sync(&[]).await;
    run.assert_code(2);
    assert!(run.stderr.contains("in use"), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    daemon.sigterm();
    assert_eq!(daemon.exit_code(WAIT).await, 0);
}

/// The metric names a text mentions (`nexudus_nevis_sync_…`).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("nexudus_nevis_sync_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// Every series name the exposition can carry: samples, and what each `# TYPE` family is exposed
/// as even before it has a sample (OpenMetrics: a counter `x` as `x_total`, a histogram as
/// `x_bucket`, `x_sum`, `x_count`).
fn exported_names(exposition: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for line in exposition.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut parts = decl.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    out.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        out.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    out.insert(name.to_string());
                }
            }
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            out.insert(line[..end].to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_use_is_exported() {
    let env = Env::start().await;
    env.set("retry.max_attempts", "2");
    env.seed(2);
    // A family is exposed once it has a sample: a failing first run gives the retry counter one.
    env.nevis.set_down(Some(503));
    let daemon = Daemon::start(&env).await;
    daemon
        .wait_for("a first run that retried", |d| async move {
            let (_, text) = d.get("/metrics").await;
            metric(&text, "nexudus_nevis_sync_runs_total", None) >= 1.0
                && metric(&text, "nexudus_nevis_sync_retries_total", None) >= 1.0
        })
        .await;
    env.nevis.set_down(None);
    daemon
        .wait_for("a successful run", |d| async move {
            let (_, text) = d.get("/metrics").await;
            metric(
                &text,
                "nexudus_nevis_sync_runs_total",
                Some(("outcome", "in_sync")),
            ) >= 1.0
        })
        .await;
    let (_, exposition) = daemon.get("/metrics").await;
    let exported = exported_names(&exposition);
    assert!(
        exported.contains("nexudus_nevis_sync_runs_total"),
        "{exposition}"
    );
    let monitoring = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring");
    for file in [
        "nexudus-nevis-sync.rules.yaml",
        "nexudus-nevis-sync.rules.test.yaml",
        "grafana-dashboard.json",
    ] {
        let text = std::fs::read_to_string(monitoring.join(file)).expect("read monitoring file");
        let used = metric_names(&text);
        assert!(!used.is_empty(), "{file} uses no metric");
        let unknown: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(
            unknown.is_empty(),
            "deploy/monitoring/{file} uses metrics /metrics does not export: {unknown:?}\n{exposition}"
        );
    }
    daemon.sigterm();
    assert_eq!(daemon.exit_code(WAIT).await, 0);
}

/// While a run is in flight, `/status` shows its counters; once it is over, nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_run_in_flight_with_its_counts() {
    let env = Env::start().await;
    env.set("sync.concurrency", "2");
    env.seed(12);
    env.nevis.set_latency(Duration::from_millis(200));
    let daemon = Daemon::start(&env).await;
    daemon
        .wait_for("a run in flight in /status", |d| async move {
            let (_, body) = d.get("/status").await;
            serde_json::from_str::<Value>(&body).is_ok_and(|doc| {
                doc["running"] == true
                    && doc["run_in_flight"]["total_items"] == 12
                    && doc["run_in_flight"]["writes_in_flight"].as_u64() >= Some(1)
            })
        })
        .await;
    env.nevis.set_latency(Duration::ZERO);
    daemon
        .wait_for("the import to end", |_| async {
            env.nevis.user_count() == 12
        })
        .await;
    daemon
        .wait_for("no run in flight", |d| async move {
            let (_, body) = d.get("/status").await;
            serde_json::from_str::<Value>(&body)
                .is_ok_and(|doc| doc["running"] == false && doc["run_in_flight"].is_null())
        })
        .await;
    daemon.sigterm();
    assert_eq!(daemon.exit_code(WAIT).await, 0);
}

#[test]
fn the_daemons_logged_address_is_read_in_both_log_formats() {
    let pretty = "2026-01-01T00:00:00Z  INFO nexudus_nevis_sync: serving /healthz /readyz /metrics /status listen=127.0.0.1:40123";
    let json = r#"{"timestamp":"2026-01-01T00:00:00Z","level":"INFO","fields":{"message":"serving /healthz /readyz /metrics /status","listen":"127.0.0.1:40124"}}"#;
    let addr = |port: u16| Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    assert_eq!(
        common::logged_address(&format!("other\n{pretty}\n")),
        addr(40123)
    );
    assert_eq!(common::logged_address(json), addr(40124));
    assert_eq!(common::logged_address("listen=127.0.0.1:1 elsewhere"), None);
}
