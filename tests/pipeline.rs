//! The performance contract's behaviours (the figures live in the benchmark): streaming from the
//! listing into writes, request counts, zero writes when nothing changed, the incremental
//! watermark with its overlap, and disappearance decided only by full listings.

mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::Env;
use nexudus_nevis_sync::sandbox::NexudusUserSpec;
use serde_json::json;

fn at(s: &str) -> Option<DateTime<Utc>> {
    Some(s.parse().expect("test timestamp"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_start_while_the_listing_is_still_running() {
    let env = Env::start().await;
    env.set("nexudus.page_size", "10");
    env.seed(60); // 6 pages
    env.nexudus.set_latency(Duration::from_millis(300));
    let mut child = env.command(&["--sync-now"]).spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.nevis.user_count() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pages_when_first_write = env.nexudus.stats().list_requests;
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("run ends")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    assert_eq!(env.nevis.user_count(), 60);
    assert!(
        pages_when_first_write < 6,
        "the first write waited for the whole listing ({pages_when_first_write} pages served)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_full_rerun_costs_one_request_per_page_and_no_write() {
    let env = Env::start().await;
    env.set("nexudus.page_size", "50");
    env.seed(120);
    env.sync(&[]).await.assert_code(0);
    env.nexudus.reset_stats();
    env.nevis.reset_stats();
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("unchanged"), 120);
    assert_eq!(env.nexudus.stats().requests, 3);
    assert_eq!(env.nevis.stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_runs_follow_the_watermark_with_its_overlap() {
    let env = Env::start().await;
    env.set("sync.max_disable_percent", "50");
    env.nexudus.set_clock(at("2025-03-01T12:00:00Z"));
    let ids = env.seed(5);
    let full = env.sync(&[]).await;
    full.assert_code(0);
    assert!(full.stdout.contains("mode=full"), "{}", full.stdout);

    // Idle tick: two Nexudus requests (the deletion probe and the page of changes), no nevisIDM
    // request.
    env.nexudus.reset_stats();
    env.nevis.reset_stats();
    let idle = env.sync(&["--incremental"]).await;
    idle.assert_code(0);
    assert!(idle.stdout.contains("mode=incremental"), "{}", idle.stdout);
    assert_eq!(env.nexudus.stats().requests, 2);
    assert_eq!(env.nevis.stats().requests, 0);

    // A change stamped 5 minutes before the newest record is inside the 10-minute overlap.
    env.nexudus.set_clock(at("2025-03-01T11:55:00Z"));
    env.nexudus.update_user(ids[0], |u| {
        u.insert("FullName".into(), json!("Late Arrival"));
    });
    // One stamped 30 minutes before is outside it: only the next full listing sees it.
    env.nexudus.set_clock(at("2025-03-01T11:30:00Z"));
    env.nexudus.update_user(ids[1], |u| {
        u.insert("FullName".into(), json!("Much Later"));
    });
    let inc = env.sync(&["--incremental"]).await;
    inc.assert_code(0);
    assert!(inc.stdout.contains("mode=incremental"), "{}", inc.stdout);
    assert_eq!((inc.count("updated"), inc.count("disabled")), (1, 0));
    assert_eq!(
        env.nevis.user(&format!("nexudus-{}", ids[0])).unwrap()["name"]["familyName"],
        "Arrival"
    );
    assert_eq!(
        env.nevis.user(&format!("nexudus-{}", ids[1])).unwrap()["name"]["familyName"],
        "Last1"
    );
    // A vanished user is decided by a full listing only: the one the deletion probe of the next
    // incremental run asks for (tests/revoke.rs), or a scheduled one.
    env.nexudus.remove_user(ids[2]);
    let full = env.sync(&[]).await;
    full.assert_code(0);
    assert_eq!((full.count("updated"), full.count("disabled")), (1, 1));
    assert_eq!(
        env.nevis.user(&format!("nexudus-{}", ids[1])).unwrap()["name"]["familyName"],
        "Later"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_user_keeps_being_retried_by_incremental_runs() {
    let env = Env::start().await;
    env.nexudus.set_clock(at("2025-03-01T08:00:00Z"));
    let bad = env
        .nexudus
        .insert_user(NexudusUserSpec::new("Bad Email", "not-an-email"));
    env.nexudus.set_clock(at("2025-03-01T12:00:00Z"));
    env.seed(3);
    env.sync(&[]).await.assert_code(1);
    // Hours later in Nexudus time, the invalid record (stamped 08:00) is still listed and reported.
    for _ in 0..2 {
        let run = env.sync(&["--incremental"]).await;
        run.assert_code(1);
        assert!(
            run.stdout.contains(&format!("nexudus_id={bad}")),
            "{}",
            run.stdout
        );
    }
    env.nexudus.set_clock(at("2025-03-01T12:30:00Z"));
    env.nexudus.update_user(bad, |u| {
        u.insert("Email".into(), json!("fixed@example.com"));
    });
    let run = env.sync(&["--incremental"]).await;
    run.assert_code(0);
    assert_eq!(run.count("created"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nevis_user_listing_pages_with_continuation_and_filters() {
    use nexudus_nevis_sync::config::Config;
    use nexudus_nevis_sync::metrics::Metrics;
    use nexudus_nevis_sync::nevis::{NevisClient, PageCursor, Target, list_all};
    use std::sync::Arc;

    let env = Env::start().await;
    env.seed(250);
    env.sync(&[]).await.assert_code(0);
    let config = Config::load(&env.config).expect("config");
    let client = NevisClient::new(
        &config.nevis,
        config.retry.clone(),
        Arc::new(Metrics::new()),
    )
    .expect("client");
    let (mut seen, mut cursor, mut pages) = (0, PageCursor::Start, 0);
    loop {
        let page = client.list_page(&[], 100, &cursor).await.expect("page");
        assert_eq!(page.total, Some(250));
        seen += page.items.len();
        pages += 1;
        match page.continuation {
            Some(t) if pages < 10 => cursor = PageCursor::Token(t),
            _ => break,
        }
    }
    assert_eq!((seen, pages), (250, 3));
    let one = client
        .list_page(
            &[("loginId", "USER.7@example.com")],
            100,
            &PageCursor::Start,
        )
        .await
        .expect("filtered");
    assert_eq!(one.items.len(), 1);
    assert_eq!(one.items[0]["loginId"], "user.7@example.com");

    // A server that pages only by offset/limit: the client falls back to `offset` while
    // totalResult says more users follow, and reads every user exactly once.
    let every = list_all(&client, &[], 100, 10).await.expect("token paging");
    env.nevis.set_offset_paging_only(true);
    let by_offset = list_all(&client, &[], 100, 10)
        .await
        .expect("offset paging");
    let ids = |items: &[serde_json::Value]| {
        let mut ids: Vec<String> = items.iter().map(|u| u["extId"].to_string()).collect();
        ids.sort();
        ids
    };
    assert_eq!(by_offset.len(), 250);
    assert_eq!(ids(&by_offset), ids(&every));
    let mut unique = ids(&by_offset);
    unique.dedup();
    assert_eq!(unique.len(), 250, "no user read twice");
}
