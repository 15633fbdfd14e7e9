//! A run starting while another process holds the store for a moment (a `--status` or
//! `--history` reading it when no daemon holds it) waits for it, up to `store.open_wait`, instead
//! of exiting 2 at once; held longer, it exits 2 with the "in use" message as before.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{DAEMON_WAIT, Env, RUN_LIMIT, Run, quote};
use nexudus_nevis_sync::store::Store;
use tokio::process::Child;

/// What the run logs when it finds the store held and starts waiting.
const WAITING: &str = "waiting up to";

/// Starts `--sync-now`, its stderr in a file; answers the child and the file.
fn start_sync(env: &Env) -> (Child, std::path::PathBuf) {
    let log = env.dir.path().join("sync.log");
    let child = env
        .command(&["--sync-now"])
        .stderr(std::fs::File::create(&log).expect("log file"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start --sync-now");
    (child, log)
}

/// Polls `log` until it holds `text`; fails if the run exits first, and after [`DAEMON_WAIT`].
async fn logged(child: &mut Child, log: &std::path::Path, text: &str) {
    let deadline = Instant::now() + DAEMON_WAIT;
    loop {
        let written = std::fs::read_to_string(log).unwrap_or_default();
        if written.contains(text) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the run exited ({status}) before logging {text:?}:\n{written}");
        }
        assert!(
            Instant::now() < deadline,
            "no {text:?} within {DAEMON_WAIT:?}:\n{written}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn finish(child: Child, log: &std::path::Path) -> Run {
    let out = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .expect("run finished within the limit")
        .expect("wait for the run");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: std::fs::read_to_string(log).unwrap_or_default(),
    }
}

/// Regression: a `--sync-now` (or a daemon) starting while a `--status` read the store exited 2,
/// "store is in use".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_starting_while_a_reader_holds_the_store_waits_for_it() {
    let env = Env::start().await;
    env.seed(2);
    // Far longer than the test needs: it lets go as soon as the run says it waits, so no clock
    // decides the outcome.
    env.set("store.open_wait", &quote("60s"));
    let reader = Store::open(&env.store_path(), 1 << 20).expect("open the store as a reader");
    let (mut child, log) = start_sync(&env);
    logged(&mut child, &log, WAITING).await;
    drop(reader);
    let run = finish(child, &log).await;
    run.assert_code(0);
    assert_eq!(run.count("created"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_held_beyond_the_wait_is_in_use_exit_2() {
    let env = Env::start().await;
    env.seed(1);
    env.set("store.open_wait", &quote("300ms"));
    let held = Store::open(&env.store_path(), 1 << 20).expect("open the store");
    let started = Instant::now();
    let run = env.sync(&[]).await;
    run.assert_code(2);
    assert!(
        run.stderr.contains(WAITING) && run.stderr.contains("in use"),
        "{}",
        run.stderr
    );
    assert!(started.elapsed() >= Duration::from_millis(300), "it waited");
    assert_eq!(env.nevis.user_count(), 0);
    drop(held);
}
