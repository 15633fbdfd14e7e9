//! Reading a large provisioning log: `entries` entries (a million by default) written straight
//! into a store, then the real daemon on that store, asked for `/history` pages: the first page,
//! one person's, a filter that matches one entry in a thousand, and every page of the whole log
//! one after the other (following the cursor); the daemon's RSS before and its peak after.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nexudus_nevis_sync::audit::{Change, Draft, Operation, Recorder, Verdict};
use nexudus_nevis_sync::clock::Clock;
use nexudus_nevis_sync::config::{AuditConfig, AuditValues};
use nexudus_nevis_sync::store::Store;

/// People the entries are spread over (ten entries each for a million).
const PEOPLE: u64 = 100_000;

/// A create's entry, as the log keeps one: six fields with their values.
fn draft(n: u64) -> Draft {
    let id = 1_000_000 + n % PEOPLE;
    let field = |field: &str, after: String| Change {
        field: field.into(),
        before: None,
        after: Some(after),
    };
    Draft {
        nexudus_id: Some(id),
        ext_id: format!("nexudus-{id}"),
        operation: Operation::Create,
        changes: vec![
            field("loginId", format!("user.{id}@example.com")),
            field("name.firstName", format!("First{id}")),
            field("name.familyName", format!("Family{id}")),
            field("contacts.email", format!("user.{id}@example.com")),
            field("languageCode", "en".into()),
            field("userState", "active".into()),
        ],
        // One in a thousand refused: what a filter on the outcome has to look for.
        outcome: if n % 1_000 == 999 {
            Verdict::Refused
        } else {
            Verdict::Confirmed
        },
        status: Some(201),
        reason: None,
        cause: "new in Nexudus".into(),
    }
}

/// Writes `entries` entries into the store at `path`, spread over the last 70 days (inside the
/// default retention, so that the daemon's first run prunes none).
pub async fn fill(path: &Path, entries: u64) -> Duration {
    let started = Instant::now();
    let span = 70 * 86_400;
    let clock = Clock::manual(Clock::system().now() - span);
    let store = Store::open(path, 64 << 20)
        .expect("open the store")
        .with_clock(clock.clone());
    let cfg = AuditConfig {
        enabled: true,
        retention: Duration::from_secs(90 * 86_400),
        max_entries: entries * 2,
        values: AuditValues::Full,
    };
    let log = Recorder::start(&cfg, &store, "bench", "full").expect("a recorder");
    let step = Duration::from_secs((span / entries.max(1)).max(1));
    for n in 0..entries {
        log.write(draft(n)).expect("write an entry");
        clock.advance(step);
    }
    store.flush().await.expect("flush");
    started.elapsed()
}

/// The daemon's resident set now and at its peak (KiB), from `/proc`.
fn rss_kib(pid: u32) -> (i64, i64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// GETs `path`, answering the time it took, the entries and the next page's cursor.
async fn page(
    client: &reqwest::Client,
    base: &str,
    path: &str,
) -> (Duration, usize, Option<String>) {
    let started = Instant::now();
    let body = client
        .get(format!("{base}{path}"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("a /history answer")
        .text()
        .await
        .expect("its body");
    let took = started.elapsed();
    let mut next = None;
    let mut entries = 0;
    for line in body.lines() {
        match line.strip_prefix("{\"next_before\":\"") {
            Some(rest) => next = Some(rest.trim_end_matches("\"}").to_string()),
            None => entries += 1,
        }
    }
    (took, entries, next)
}

/// Starts the daemon with `config` and measures `/history` on its store of `entries` entries.
pub async fn measure(config: &Path, listen: &str, entries: u64, filled_in: Duration) {
    let log = config.with_file_name("history-daemon.log");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_nexudus-nevis-sync"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start the daemon");
    let base = format!("http://{listen}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    // Ready once its first run (nothing to do: an empty Nexudus) is over.
    while client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        assert!(Instant::now() < deadline, "the daemon did not get ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (rss_before, _) = rss_kib(daemon.id());
    let (first, n, _) = page(&client, &base, "/history").await;
    let (again, _, _) = page(&client, &base, "/history").await;
    let who = format!("/history?who={}", 1_000_000 + PEOPLE / 2);
    let (person, person_n, _) = page(&client, &base, &who).await;
    let (rare, rare_n, _) = page(&client, &base, "/history?outcome=refused&limit=100").await;
    let started = Instant::now();
    let (mut pages, mut read) = (0, 0);
    let mut path = "/history?limit=10000".to_string();
    loop {
        let (_, n, next) = page(&client, &base, &path).await;
        pages += 1;
        read += n;
        match next {
            Some(cursor) => path = format!("/history?limit=10000&before={cursor}"),
            None => break,
        }
    }
    let whole = started.elapsed();
    let (rss_after, peak) = rss_kib(daemon.id());
    let _ = daemon.kill();
    let _ = daemon.wait();
    let mib = |kib: i64| kib as f64 / 1024.0;
    println!(
        "history: {entries} entries written into the store in {:.1}s",
        filled_in.as_secs_f64()
    );
    println!(
        "history: first page ({n} entries) {:.1} ms (again: {:.1} ms); one person's ({person_n}) \
         {:.1} ms; outcome=refused, 100 of 1 in 1,000 ({rare_n}) {:.1} ms; the whole log, \
         {pages} pages of 10,000, {read} entries in {:.1}s",
        first.as_secs_f64() * 1e3,
        again.as_secs_f64() * 1e3,
        person.as_secs_f64() * 1e3,
        rare.as_secs_f64() * 1e3,
        whole.as_secs_f64()
    );
    println!(
        "history: daemon RSS {:.1} MiB before the queries, {:.1} MiB after, peak {:.1} MiB",
        mib(rss_before),
        mib(rss_after),
        mib(peak)
    );
}
