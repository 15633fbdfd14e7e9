//! Time to revoke, as behaviours over HTTP against the fakes (the benchmark measures the delays):
//! the deletion probe of incremental runs (one request, a page of size 1), a deletion noticed by
//! the next incremental run (found by a search over the listing's positions when that is cheaper
//! than a full listing, else through one), an idle tick's cost, and nevisIDM versions taken in
//! bulk from its listing when many updates lack one.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, Env};
use nexudus_nevis_sync::sandbox::{NexudusUserSpec, RequestRecord};
use nexudus_nevis_sync::versions::BULK_AFTER;

/// Upper bound for anything a test waits on.
const WAIT: Duration = Duration::from_secs(30);

fn listings(log: &[RequestRecord]) -> Vec<&RequestRecord> {
    log.iter().filter(|r| r.path == "/api/sys/users").collect()
}

fn is_probe(r: &RequestRecord) -> bool {
    r.query.contains("size=1&") && !r.query.contains("from_User_UpdatedOn")
}

fn is_incremental(r: &RequestRecord) -> bool {
    r.query.contains("from_User_UpdatedOn")
}

/// A page of the unfiltered listing larger than one record: part of a full listing, or a page the
/// search for deleted users reads.
fn is_full_page(r: &RequestRecord) -> bool {
    !is_incremental(r) && !r.query.contains("size=1&")
}

/// An env with `n` users imported by a full `--sync-now`, the request logs then emptied.
async fn imported(n: usize) -> (Env, Vec<u64>) {
    let env = Env::start().await;
    let ids = env.seed(n);
    env.sync(&[]).await.assert_code(0);
    env.nexudus.reset_stats();
    env.nevis.reset_stats();
    env.nevis.set_request_log(true);
    (env, ids)
}

#[tokio::test]
async fn an_idle_incremental_run_costs_the_probe_and_one_page_and_nothing_in_nevis() {
    let (env, _) = imported(20).await;
    let before = env.nexudus.request_log().len();
    // Every user was updated within the overlap window: the incremental listing shows all 20,
    // and none of them is a change.
    let run = env.sync(&["--incremental"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("mode=incremental"), "{}", run.stdout);
    assert_eq!(run.count("unchanged"), 20);
    let log = env.nexudus.request_log();
    let asked: Vec<_> = log[before..].iter().collect();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert!(is_probe(asked[0]), "the probe comes first: {asked:?}");
    assert!(is_incremental(asked[1]), "{asked:?}");
    assert_eq!(env.nevis.stats().requests, 0);
}

#[tokio::test]
async fn a_deletion_is_noticed_by_the_next_incremental_run_through_a_full_listing() {
    let (env, ids) = imported(20).await;
    assert!(env.nexudus.remove_user(ids[7]));
    let before = env.nexudus.request_log().len();
    let run = env.sync(&["--incremental"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("mode=full"), "{}", run.stdout);
    assert_eq!(run.count("disabled"), 1);
    let ext_id = format!("nexudus-{}", ids[7]);
    let user = env.nevis.user(&ext_id).expect("still in nevisIDM");
    assert_eq!(user["userState"], "disabled");
    let log = env.nexudus.request_log();
    let asked = listings(&log[before..]);
    assert!(is_probe(asked[0]), "{asked:?}");
    assert_eq!(asked.iter().filter(|r| is_probe(r)).count(), 1);
    // After the incremental page, a full listing (20 users in pages of 100: one page).
    assert!(is_incremental(asked[1]), "{asked:?}");
    assert!(
        !is_incremental(asked[2]) && !is_probe(asked[2]),
        "{asked:?}"
    );
    // The look-up before disabling, as for any vanished user.
    assert_eq!(env.nexudus.stats().user_requests, 1);
    // Steady again: the next incremental run stays incremental and writes nothing.
    env.nevis.reset_stats();
    let run = env.sync(&["--incremental"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("mode=incremental"), "{}", run.stdout);
    assert_eq!(env.writes(), 0);
}

/// 300 users in pages of 10: a full listing is 30 pages, a search about 7 requests a deleted user
/// (5 steps over the pages, a page read, a look-up).
async fn imported_in_small_pages() -> (Env, Vec<u64>) {
    let env = Env::start().await;
    env.set("nexudus.page_size", "10");
    let ids = env.seed(300);
    env.sync(&[]).await.assert_code(0);
    env.nexudus.reset_stats();
    env.nevis.reset_stats();
    (env, ids)
}

#[tokio::test]
async fn deletions_are_found_by_a_search_over_positions_without_a_full_listing() {
    let (env, ids) = imported_in_small_pages().await;
    // One deleted early, one late, and a user created meanwhile (listed incrementally).
    assert!(env.nexudus.remove_user(ids[3]));
    assert!(env.nexudus.remove_user(ids[250]));
    env.nexudus
        .insert_user(NexudusUserSpec::new("New Comer", "new.comer@example.com"));
    let before = env.nexudus.request_log().len();
    let run = env.sync(&["--incremental"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("mode=incremental"), "{}", run.stdout);
    assert_eq!((run.count("created"), run.count("disabled")), (1, 2));
    for id in [ids[3], ids[250]] {
        let user = env.nevis.user(&format!("nexudus-{id}")).expect("kept");
        assert_eq!(user["userState"], "disabled");
    }
    let log = env.nexudus.request_log();
    let asked = listings(&log[before..]);
    assert!(is_probe(asked[0]), "the probe comes first: {asked:?}");
    let pages = asked.iter().filter(|r| is_full_page(r)).count();
    assert!(
        pages <= 2,
        "a page read a deletion, no full listing: {asked:?}"
    );
    let steps = asked.iter().filter(|r| is_probe(r)).count() - 1;
    assert!(steps <= 2 * 5, "{steps} position steps for 2 of 301 users");
    // Exactly the two users the search pointed at were looked up.
    assert_eq!(env.nexudus.stats().user_requests, 2);
    // The roster forgot them: the next incremental run is steady and writes nothing.
    env.nevis.reset_stats();
    let before = env.nexudus.request_log().len();
    let run = env.sync(&["--incremental"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("mode=incremental"), "{}", run.stdout);
    assert_eq!(env.writes(), 0);
    let log = env.nexudus.request_log();
    let asked = listings(&log[before..]);
    // (Its incremental listing shows all 301, updated within the overlap window.)
    assert_eq!(asked.iter().filter(|r| is_probe(r)).count(), 1, "{asked:?}");
    assert_eq!(
        asked.iter().filter(|r| is_full_page(r)).count(),
        0,
        "{asked:?}"
    );
}

#[tokio::test]
async fn a_listing_not_ordered_by_id_makes_the_search_give_way_to_a_full_listing() {
    let (env, ids) = imported_in_small_pages().await;
    env.nexudus.set_order_descending(true);
    assert!(env.nexudus.remove_user(ids[100]));
    let run = env.sync(&["--incremental"]).await;
    run.assert_code(0);
    // The search points at a user who is still there; the full listing that follows settles it,
    // and nobody but the deleted user is disabled.
    assert!(run.stdout.contains("mode=full"), "{}", run.stdout);
    assert_eq!(run.count("disabled"), 1);
    let user = env
        .nevis
        .user(&format!("nexudus-{}", ids[100]))
        .expect("kept");
    assert_eq!(user["userState"], "disabled");
    assert_eq!(env.writes(), 1, "the one disable");
}

#[tokio::test]
async fn more_deletions_than_a_search_can_afford_are_listed_in_full() {
    let (env, ids) = imported_in_small_pages().await;
    // Five deletions cost about 35 requests to search: no cheaper than the 30 pages.
    for i in [10, 20, 30, 140, 250] {
        assert!(env.nexudus.remove_user(ids[i]));
    }
    let before = env.nexudus.request_log().len();
    let run = env.sync(&["--incremental"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("mode=full"), "{}", run.stdout);
    assert_eq!(run.count("disabled"), 5);
    let log = env.nexudus.request_log();
    let probes = listings(&log[before..])
        .iter()
        .filter(|r| is_probe(r))
        .count();
    assert_eq!(probes, 1, "no search was started");
}

#[tokio::test]
async fn deletions_held_by_a_listing_pages_shifted_under_are_taken_up_at_the_next_run() {
    let env = Env::start().await;
    env.set("nexudus.page_size", "3");
    env.set("sync.max_disable_percent", "100");
    // Users last changed two hours ago: incremental listings do not show them again.
    let two_hours_ago = chrono::Utc::now() - chrono::Duration::hours(2);
    env.nexudus.set_clock(Some(two_hours_ago));
    let ids = env.seed(6);
    env.nexudus.set_clock(None);
    env.sync(&[]).await.assert_code(0);
    // User 5 is deleted before the full listing, user 0 while it runs (after its first page),
    // when a newcomer is added: page 2 then serves users 4 and the newcomer, and user 3 is
    // skipped. The look-up finds user 3 still there: the listing cannot tell who is gone, and
    // both deletions are held.
    assert!(env.nexudus.remove_user(ids[5]));
    env.nexudus.churn_after_first_page(
        ids[0],
        NexudusUserSpec::new("New Comer", "new.comer@example.com"),
    );
    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert!(run.stdout.contains("incomplete listing"), "{}", run.stdout);
    assert_eq!(run.count("disabled"), 0);
    // The roster did not forget users 0 and 5: the next incremental run's probe still misses
    // them and brings a full listing, which now settles it.
    let run = env.sync(&["--incremental"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("mode=full"), "{}", run.stdout);
    assert_eq!(run.count("disabled"), 2);
    for i in [0, 5] {
        let user = env
            .nevis
            .user(&format!("nexudus-{}", ids[i]))
            .expect("kept");
        assert_eq!(user["userState"], "disabled");
    }
    let user = env
        .nevis
        .user(&format!("nexudus-{}", ids[3]))
        .expect("kept");
    assert_eq!(user["userState"], "active");
    // Steady again.
    let run = env.sync(&["--incremental"]).await;
    assert!(run.stdout.contains("mode=incremental"), "{}", run.stdout);
}

#[tokio::test]
async fn a_deletion_and_a_creation_between_two_runs_still_bring_a_full_listing() {
    let (env, ids) = imported(20).await;
    // TotalItems stays 20: only the new Id shown by the incremental listing gives it away.
    assert!(env.nexudus.remove_user(ids[3]));
    env.nexudus
        .insert_user(NexudusUserSpec::new("New Comer", "new.comer@example.com"));
    let run = env.sync(&["--incremental"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("mode=full"), "{}", run.stdout);
    assert_eq!((run.count("created"), run.count("disabled")), (1, 1));
    let user = env
        .nevis
        .user(&format!("nexudus-{}", ids[3]))
        .expect("kept");
    assert_eq!(user["userState"], "disabled");
}

#[tokio::test]
async fn a_creation_alone_is_no_reason_for_a_full_listing() {
    let (env, _) = imported(20).await;
    env.nexudus
        .insert_user(NexudusUserSpec::new("New Comer", "new.comer@example.com"));
    let run = env.sync(&["--incremental"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("mode=incremental"), "{}", run.stdout);
    assert_eq!(run.count("created"), 1);
    // The new user is remembered: the next run expects 21.
    let run = env.sync(&["--incremental"]).await;
    assert!(run.stdout.contains("mode=incremental"), "{}", run.stdout);
}

#[tokio::test]
async fn many_updates_without_known_versions_take_them_from_the_listing() {
    let env = Env::start().await;
    env.nevis.set_version_required(true);
    let n = 300;
    env.seed(n);
    // An import: creates answer no version, so none is known.
    env.sync(&[]).await.assert_code(0);
    env.nevis.reset_stats();
    env.nevis.set_request_log(true);
    // A mapping change touching every user.
    env.set("mapping.properties", "{ source = \"nexudus\" }");
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("updated"), n as u64);
    let log = env.nevis.request_log();
    let single_gets = log
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/users/"))
        .count();
    let list_pages = log
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/clients/"))
        .count();
    let patches = log.iter().filter(|r| r.method == "PATCH").count();
    assert_eq!(patches, n, "one PATCH a user, no 409s");
    assert!(
        single_gets <= BULK_AFTER as usize,
        "{single_gets} single reads"
    );
    assert!((1..=2).contains(&list_pages), "{list_pages} listing pages");
    // The next mass update knows every version from the PATCH answers: no reads at all.
    env.nevis.clear_request_log();
    env.set("mapping.properties", "{ source = \"nexudus-2\" }");
    env.sync(&[]).await.assert_code(0);
    let reads = env
        .nevis
        .request_log()
        .iter()
        .filter(|r| r.method == "GET")
        .count();
    assert_eq!(reads, 0);
}

/// The daemon on a one-second schedule: an idle tick pays neither the languages listing nor
/// nevisIDM, and a deletion is disabled by the next tick.
#[tokio::test]
async fn the_daemon_revokes_a_deleted_user_at_the_next_tick_and_idles_cheaply() {
    let env = Env::start().await;
    env.nexudus
        .insert_language(5001, "German (Switzerland)", "de-CH");
    let mut ids = Vec::new();
    for i in 0..10 {
        let mut spec =
            NexudusUserSpec::new(format!("First{i} Last{i}"), format!("u{i}@example.com"));
        spec.preferred_language_id = Some(5001);
        ids.push(env.nexudus.insert_user(spec));
    }
    let daemon = Daemon::start(&env).await;
    let imported = wait_until(|| env.nevis.user_count() == 10).await;
    assert!(imported, "the first run imports everyone");
    // Let a few idle ticks pass, then count what three more cost.
    let ticks = |from: usize| {
        env.nexudus.request_log()[from..]
            .iter()
            .filter(|r| is_probe(r))
            .count()
    };
    let start = env.nexudus.request_log().len();
    assert!(wait_until(|| ticks(start) >= 1).await, "ticks come");
    env.nevis.reset_stats();
    let from = env.nexudus.request_log().len();
    let languages_before = env.nexudus.stats().language_requests;
    assert!(wait_until(|| ticks(from) >= 3).await, "three ticks");
    let during = &env.nexudus.request_log()[from..];
    let probes = during.iter().filter(|r| is_probe(r)).count();
    assert!(
        during.len() <= 2 * probes + 1,
        "at most two requests a tick: {during:?}"
    );
    assert_eq!(env.nexudus.stats().language_requests, languages_before);
    assert_eq!(
        env.nevis.stats().requests,
        0,
        "idle ticks leave nevisIDM alone"
    );

    assert!(env.nexudus.remove_user(ids[4]));
    let ext_id = format!("nexudus-{}", ids[4]);
    let disabled = wait_until(|| {
        env.nevis
            .user(&ext_id)
            .is_some_and(|u| u["userState"] == "disabled")
    })
    .await;
    let text = daemon.stop().await;
    assert!(
        disabled,
        "the deleted user is disabled by a later tick\n{text}"
    );
    assert!(text.contains("listing everyone now"), "{text}");
}

/// Polls `check` every 50 ms for at most [`WAIT`].
async fn wait_until(check: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
