//! Nexudus as real accounts answer (issue 12), over real HTTP against the sandbox fake's switches:
//! records without `Language` and with `PreferredLanguageId`, `mapping.allowed_languages`,
//! throttles in every form (and never coming back sooner than asked), HTML / empty / cut-off
//! answers, the four quota windows kept across runs, the `/api/token` refusal codes, `UpdatedOn`
//! in each form, and Ids of 9 and 10 digits.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Daemon, Env, Run, quote, run_cmd};
use nexudus_nevis_sync::sandbox::{DateForm, NexudusFakeConfig, NexudusUserSpec, Throttle};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

/// Upper bound for anything these tests wait on.
const WAIT: Duration = Duration::from_secs(40);

fn ext(id: u64) -> String {
    format!("nexudus-{id}")
}

fn language(env: &Env, id: u64) -> Value {
    env.nevis.user(&ext(id)).expect("user in nevisIDM")["languageCode"].clone()
}

fn fatal_line(run: &Run) -> &str {
    run.stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no fatal line in stderr:\n{}", run.stderr))
}

/// Fakes enforcing the windows of `cfg`, and a client pacing by its defaults: these tests are
/// about pacing.
async fn paced(cfg: NexudusFakeConfig) -> Env {
    let env = Env::with_nexudus(cfg).await;
    env.pace_as_documented();
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_language_ids_resolve_through_the_languages_listing_once_per_run() {
    let env = Env::start().await;
    // The captured real record: no Language at all, a PreferredLanguageId.
    env.nexudus.set_omit_language(true);
    env.set("nexudus.page_size", "2");
    let with = |name: &str, preferred: Option<u64>| {
        env.nexudus.insert_user(NexudusUserSpec {
            preferred_language_id: preferred,
            ..NexudusUserSpec::new(name, format!("{}@example.com", name.replace(' ', ".")))
        })
    };
    let swiss = with("Anna Muster", Some(3)); // de-CH
    let french = with("Jean Dupont", Some(4)); // fr-FR
    let spanish = with("Ana Garcia", Some(2)); // es-ES: outside the default policy
    let unknown_a = with("Un Known", Some(777_777));
    let unknown_b = with("Also Unknown", Some(777_777));
    let none = with("No Preference", None);

    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(
        run.count("created"),
        6,
        "a record without Language is valid"
    );
    assert_eq!(language(&env, swiss), "de");
    assert_eq!(language(&env, french), "fr");
    assert_eq!(
        language(&env, spanish),
        "en",
        "es is not allowed by default"
    );
    for id in [unknown_a, unknown_b, none] {
        assert_eq!(language(&env, id), "en", "falls back to the default");
    }
    // Read once for the whole run (three pages of users), the unknown id reported once.
    assert_eq!(env.nexudus.stats().language_requests, 1);
    let reports = run
        .stderr
        .matches("PreferredLanguageId 777777 is not in /api/sys/languages")
        .count();
    assert_eq!(reports, 1, "{}", run.stderr);

    // The next run reads it again (a language added meanwhile is seen), and writes nothing.
    env.nevis.reset_stats();
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(env.nexudus.stats().language_requests, 2);
    assert_eq!(env.writes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowing_a_language_updates_exactly_the_users_whose_language_changes_once() {
    let env = Env::start().await;
    let spanish_preferred = env.nexudus.insert_user(NexudusUserSpec {
        preferred_language_id: Some(2),
        ..NexudusUserSpec::new("Ana Garcia", "ana@example.com")
    });
    let spanish_language = env.nexudus.insert_user(NexudusUserSpec {
        language: 2,
        ..NexudusUserSpec::new("Jo Diaz", "jo@example.com")
    });
    let swiss = env.nexudus.insert_user(NexudusUserSpec {
        preferred_language_id: Some(3),
        language: 2,
        ..NexudusUserSpec::new("Anna Muster", "anna@example.com")
    });
    let english = env.seed(2);
    env.sync(&[]).await.assert_code(0);
    assert_eq!(language(&env, spanish_preferred), "en");
    assert_eq!(language(&env, spanish_language), "en");
    assert_eq!(language(&env, swiss), "de", "the preferred language wins");

    env.nevis.set_request_log(true);
    env.set(
        "mapping.allowed_languages",
        r#"["de", "en", "es", "fr", "it"]"#,
    );
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!((run.count("updated"), run.count("unchanged")), (2, 3));
    let patches: Vec<(String, Option<Value>)> = env
        .nevis
        .request_log()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| (r.path, r.body.map(common::without_version)))
        .collect();
    assert_eq!(patches.len(), 2, "{patches:?}");
    for (path, body) in &patches {
        assert!(
            path.ends_with(&ext(spanish_preferred)) || path.ends_with(&ext(spanish_language)),
            "{path}"
        );
        assert_eq!(body, &Some(json!({"languageCode": "es"})));
    }
    for id in english {
        assert_eq!(language(&env, id), "en");
    }
    // Once: the next run has nothing to write.
    env.nevis.reset_stats();
    env.sync(&[]).await.assert_code(0);
    assert_eq!(env.writes(), 0);

    // Narrowing the list again sends them back to the default, once.
    env.set("mapping.allowed_languages", r#"["de", "en"]"#);
    let run = env.sync(&[]).await;
    assert_eq!((run.count("updated"), run.count("unchanged")), (2, 3));
    env.nevis.reset_stats();
    env.sync(&[]).await.assert_code(0);
    assert_eq!(env.writes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttles_in_every_form_are_waited_out_and_never_sooner_than_asked() {
    let env = Env::start().await;
    env.seed(3);
    // Each throttle answers the next request; the client must wait what each one asked for.
    let asked = [
        // 429, no Retry-After, the wait in a JSON Message.
        (Throttle::wait_in_body("1.3"), Duration::from_millis(1300)),
        // 409 with a fractional Retry-After.
        (Throttle::fractional(409, "0.7"), Duration::from_millis(700)),
        // Both stated: the longest is the wait.
        (
            Throttle {
                status: 429,
                retry_after: Some("0.4".into()),
                message: Some("Too many requests. Wait 1.1 seconds.".into()),
            },
            Duration::from_millis(1100),
        ),
        // Nothing says how long: the backoff decides (and the run still gets through).
        (
            Throttle {
                status: 429,
                retry_after: None,
                message: Some("Too many requests".into()),
            },
            Duration::ZERO,
        ),
    ];
    for (throttle, _) in &asked {
        env.nexudus.push_throttle(throttle);
    }
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("created"), 3);

    let log = env.nexudus.request_log();
    let throttled: Vec<usize> = (0..log.len())
        .filter(|&i| matches!(log[i].status, 409 | 429))
        .collect();
    assert_eq!(throttled.len(), 4, "{log:?}");
    for (n, &i) in throttled.iter().enumerate() {
        let next = log.get(i + 1).expect("a request after the throttle");
        let gap = next.at.duration_since(log[i].at);
        let wait = asked[n].1;
        assert!(
            gap >= wait,
            "request {} came back {gap:?} after a throttle asking for {wait:?}",
            i + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_empty_and_cut_off_answers_are_retried_and_never_read_as_an_empty_page() {
    let env = Env::start().await;
    env.set("sync.max_disable_percent", "100");
    env.set("sync.max_disables", "100");
    let ids = env.seed(3);
    env.sync(&[]).await.assert_code(0);

    // Within the retry budget: a WAF's 503 page, a 200 login page, an empty JSON 200, a JSON
    // body cut off: each is retried, and the listing is read whole in the end.
    env.nexudus.push_html(1, 503);
    env.nexudus.push_html(1, 200);
    env.nexudus
        .push_raw(200, Some("application/json; charset=utf-8"), b"");
    env.nexudus
        .push_raw(200, Some("application/json"), br#"{"Records": [{"Id": 1"#);
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!((run.count("unchanged"), run.count("disabled")), (3, 0));

    // Every request said it wants JSON.
    let log = env.nexudus.request_log();
    assert!(!log.is_empty());
    assert!(
        log.iter()
            .all(|r| r.accept.as_deref() == Some("application/json")),
        "{log:?}"
    );

    // A user missing from the listing is looked up before it is disabled: an HTML 404 from
    // something in front of the API is not Nexudus saying "gone", so nobody is disabled.
    env.nexudus.remove_user(ids[0]);
    env.nexudus.push_html_at("/api/sys/users/", 5, 404);
    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert_eq!(run.count("disabled"), 0, "{}", run.stdout);
    assert_eq!(env.nevis.user(&ext(ids[0])).unwrap()["userState"], "active");
    // Nexudus's own 404 does.
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("disabled"), 1);

    // Beyond the budget: fatal, naming the status, the content type and the start of the page;
    // nobody is disabled on the strength of a page that held no users.
    env.nexudus.push_html(20, 200);
    let run = env.sync(&[]).await;
    run.assert_code(2);
    let line = fatal_line(&run);
    assert!(line.contains("HTTP 200"), "{line}");
    assert!(line.contains("text/html"), "{line}");
    assert!(line.contains("<!DOCTYPE HTML PUBLIC"), "{line}");
    assert!(line.contains("\\\"-//W3C"), "escaped: {line}");
    for id in &ids[1..] {
        assert_eq!(env.nevis.user(&ext(*id)).unwrap()["userState"], "active");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_refusals_each_tell_the_operator_what_to_do() {
    let env = Env::start().await;
    env.set("nexudus.auth", &quote("token"));
    env.seed(1);
    let cases = [
        ("two_factor_auth_check", "set nexudus.totp"),
        ("must_reset_password", "reset its password"),
        ("invalid_grant", "wrong username or password"),
        ("account_suspended", "\"account_suspended\""),
    ];
    for (n, (code, says)) in cases.iter().enumerate() {
        env.nexudus.set_token_refusal(Some(code));
        let run = env.sync(&[]).await;
        run.assert_code(2);
        let line = fatal_line(&run);
        assert!(line.contains(code), "{line}");
        assert!(line.contains(says), "{code}: {line}");
        assert_eq!(
            env.nexudus.stats().refused_grants,
            n as u64 + 1,
            "refused once, not retried"
        );
    }
    assert_eq!(env.nevis.user_count(), 0);
    env.nexudus.set_token_refusal(None);
    env.sync(&[]).await.assert_code(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_four_windows_enforced_by_the_fake_draw_no_throttle_from_the_default_pacing() {
    let env = paced(NexudusFakeConfig {
        per_second_limit: None,
        min_gap: Some(Duration::from_millis(100)),
        per_minute_limit: Some(120),
        per_hour_limit: Some(5_000),
        per_day_limit: Some(200_000),
        ..NexudusFakeConfig::default()
    })
    .await;
    env.set("nexudus.page_size", "1");
    env.seed(25);
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("created"), 25);
    assert_eq!(env.nexudus.stats().throttled, 0);

    // The fake does enforce them: a client paced faster than 100 ms draws throttles. (Pages of
    // 5: a few requests back to back show it; each throttle costs the second it asks to wait.)
    env.set("nexudus.page_size", "5");
    env.set("nexudus.min_request_interval", &quote("1ms"));
    env.set("nexudus.max_requests_per_minute", "10000");
    env.sync(&[]).await;
    assert!(env.nexudus.stats().throttled > 0);
}

/// A one-shot run whose stderr is read while it runs; stopped with SIGTERM once `needle` shows.
async fn run_until_logged(env: &Env, needle: &str) -> String {
    let mut child = env
        .command(&["--sync-now"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the run");
    let mut stderr = child.stderr.take().expect("stderr piped");
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !String::from_utf8_lossy(&seen).contains(needle) {
        match tokio::time::timeout(Duration::from_millis(200), stderr.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break,
            Err(_) => {}
        }
    }
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let _ = tokio::time::timeout(WAIT, child.wait()).await;
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_day_budget_is_kept_across_runs_and_waited_for_rather_than_throttled() {
    let env = paced(NexudusFakeConfig {
        per_day_limit: Some(6),
        ..NexudusFakeConfig::default()
    })
    .await;
    env.set("nexudus.page_size", "1");
    env.set("nexudus.max_requests_per_day", "5");
    env.seed(3);
    // Three pages: three requests of the day's five.
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(env.nexudus.stats().requests, 3);

    // A new process: it knows three are spent, sends two, then waits instead of drawing the
    // fake's throttle at the sixth.
    let log = run_until_logged(&env, "budget of the day is used up").await;
    assert!(log.contains("budget of the day is used up"), "{log}");
    let stats = env.nexudus.stats();
    assert_eq!(stats.requests, 5, "{stats:?}");
    assert_eq!(stats.throttled, 0);

    // --status says what the run was waiting for.
    let status = run_cmd(env.command(&["--status"])).await;
    assert!(
        status
            .stdout
            .contains("waiting for the Nexudus request budget of the day"),
        "{}",
        status.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_waits_for_the_hour_budget_says_so_and_warns_at_start() {
    let env = paced(NexudusFakeConfig {
        per_hour_limit: Some(7),
        ..NexudusFakeConfig::default()
    })
    .await;
    env.set("nexudus.page_size", "1");
    env.set("nexudus.max_requests_per_hour", "5");
    env.seed(3);
    env.sync(&[]).await.assert_code(0);

    let daemon = Daemon::start(&env).await;
    let status = daemon
        .wait_for_body("/status", |t| t.contains("\"window\":\"hour\""))
        .await;
    let doc: Value = serde_json::from_str(&status).expect("status is JSON");
    let wait = &doc["nexudus_quota_wait"];
    assert_eq!(
        (wait["used"].as_u64(), wait["limit"].as_u64()),
        (Some(5), Some(5)),
        "{doc}"
    );
    assert!(wait["until"].as_u64() > wait["since"].as_u64(), "{doc}");
    daemon
        .wait_for_body("/metrics", |t| {
            t.contains("nexudus_nevis_sync_quota_waits_total{window=\"hour\"} 1")
        })
        .await;
    let log = daemon.stop().await;
    assert!(log.contains("over the hourly budget"), "{log}");
    assert!(log.contains("budget of the hour is used up"), "{log}");
    assert!(
        log.contains("needs about 4 Nexudus requests and the hour has 2 of 5 left"),
        "{log}"
    );
    let stats = env.nexudus.stats();
    assert_eq!((stats.requests, stats.throttled), (5, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttles_are_counted_in_the_metrics_by_status() {
    let env = Env::start().await;
    env.seed(2);
    env.nexudus.push_throttle(&Throttle::wait_in_body("0.2"));
    env.nexudus.push_throttle(&Throttle::fractional(409, "0.1"));
    env.nexudus.push_throttle(&Throttle::fractional(429, "0.1"));
    let daemon = Daemon::start(&env).await;
    let wanted = [
        "nexudus_nevis_sync_throttles_total{api=\"nexudus\",status=\"429\"} 2",
        "nexudus_nevis_sync_throttles_total{api=\"nexudus\",status=\"409\"} 1",
    ];
    daemon
        .wait_for_body("/metrics", |t| wanted.iter().all(|w| t.contains(w)))
        .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updated_on_in_every_form_drives_watermarks_and_incremental_listings() {
    use chrono::TimeZone;
    let t0 = chrono::Utc
        .with_ymd_and_hms(2026, 3, 2, 8, 0, 0)
        .single()
        .expect("a valid time");
    for form in [
        DateForm::Zulu,
        DateForm::NoZone,
        DateForm::Fraction,
        DateForm::Offset(120),
        DateForm::Offset(-300),
    ] {
        let env = Env::start().await;
        env.nexudus.set_date_form(form);
        // Users last changed two hours, one hour and zero minutes before the first run.
        let at = |minutes: i64| t0 + chrono::Duration::minutes(minutes);
        let mut ids = Vec::new();
        for (i, minutes) in [-120, -60, 0].into_iter().enumerate() {
            env.nexudus.set_clock(Some(at(minutes)));
            ids.push(env.nexudus.insert_user(NexudusUserSpec::new(
                format!("First{i} Last{i}"),
                format!("user.{i}@example.com"),
            )));
        }
        env.sync(&[]).await.assert_code(0);
        // Half an hour later one user changes. The watermark is the newest UpdatedOn (t0, in
        // UTC whatever the form); with 10 minutes of overlap the incremental listing holds the
        // changed user and the one changed at t0, not the older one.
        env.nexudus.set_clock(Some(at(30)));
        env.nexudus.update_user(ids[0], |u| {
            u.insert("FullName".into(), json!("Changed Name"));
        });
        let stamp = env.nexudus.user(ids[0]).unwrap()["UpdatedOn"].clone();
        let run = env.sync(&["--incremental"]).await;
        run.assert_code(0);
        assert_eq!(
            (run.count("updated"), run.count("unchanged")),
            (1, 1),
            "{form:?} ({stamp})\n{}",
            run.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_of_nine_and_ten_digits_sync_and_vanish_like_any_other() {
    let env = Env::start().await;
    env.set("sync.max_disable_percent", "100");
    let ids = env.seed(12);
    assert!(ids.iter().any(|id| id.to_string().len() == 9));
    let ten = *ids
        .iter()
        .find(|id| id.to_string().len() == 10)
        .expect("a 10-digit Id");
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("created"), 12);
    assert!(env.nevis.user(&ext(ten)).is_some());
    env.nexudus.remove_user(ten);
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("disabled"), 1);
    assert_eq!(env.nevis.user(&ext(ten)).unwrap()["userState"], "disabled");
}

/// A redirect from Nexudus (an old address, a proxy sending requests elsewhere) is never followed
/// and ends the run at once (exit 2), naming the status and where it pointed; nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_nexudus_is_fatal_names_the_location_and_writes_nothing() {
    let env = Env::start().await;
    env.seed(3);
    env.nexudus
        .push_redirect("https://login.example.com/sso?return=/api/sys/users");
    let run = env.sync(&[]).await;
    run.assert_code(2);
    let line = fatal_line(&run);
    assert!(line.contains("HTTP 302"), "{line}");
    assert!(
        line.contains("https://login.example.com/sso?return=/api/sys/users"),
        "{line}"
    );
    assert!(line.contains("nexudus.base_url"), "{line}");
    assert_eq!(env.nexudus.stats().pushed_answers, 1, "not retried");
    assert_eq!(env.nevis.user_count(), 0, "nothing written");
    // The next run, without the redirect, imports everyone.
    env.sync(&[]).await.assert_code(0);
    assert_eq!(env.nevis.user_count(), 3);
}
