//! The fault suite: everything we can provoke on one machine, against the real binary and the
//! sandbox fakes over real HTTP. Each test states the promise it checks. (More faults live in
//! `tests/sync_now.rs`: lost create answers, nevisIDM down for a whole run, Nexudus unreachable,
//! refused credentials, SIGKILL during an import.)

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Env, Run, quote, run_cmd};
use nexudus_nevis_sync::sandbox::Fault;

fn status(status: u16, retry_after: Option<u64>) -> Fault {
    Fault::Status {
        status,
        retry_after,
    }
}

/// Every seeded user is in nevisIDM exactly once (by extId and by loginId).
fn assert_each_once(env: &Env, ids: &[u64]) {
    let users = env.nevis.users();
    assert_eq!(users.len(), ids.len(), "no user missing, none twice");
    let logins: HashSet<String> = users
        .iter()
        .map(|u| u["loginId"].as_str().unwrap().to_lowercase())
        .collect();
    assert_eq!(logins.len(), ids.len());
    for id in ids {
        assert!(env.nevis.user(&format!("nexudus-{id}")).is_some());
    }
}

/// The next ordinary run finds nothing to do: what the store claims is what nevisIDM holds.
async fn assert_settled(env: &Env) {
    env.nevis.reset_stats();
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(env.writes(), 0, "settled: {}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_bursts_on_both_sides_are_waited_out() {
    let env = Env::start().await;
    env.set("nexudus.page_size", "5");
    let ids = env.seed(20);
    // Nexudus throttles with 409 + Retry-After, nevisIDM with 429 + Retry-After.
    env.nexudus.push_faults(3, status(409, Some(1)));
    env.nevis.push_faults(12, status(429, Some(0)));
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("created"), 20);
    assert_eq!(env.nexudus.stats().faults_injected, 3);
    assert_eq!(env.nevis.stats().faults_injected, 12);
    assert_each_once(&env, &ids);
    assert_settled(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_storm_within_the_retry_budget_converges() {
    let env = Env::start().await;
    let ids = env.seed(12);
    env.nexudus.push_faults(2, status(503, None));
    // 4 writers, 5 attempts each: a storm of 10 mixed 5xx answers is survivable.
    for code in [500, 502, 503, 504, 500, 502, 503, 504, 500, 502] {
        env.nevis.push_fault(status(code, None));
    }
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!((run.count("created"), run.count("failed")), (12, 0));
    assert_each_once(&env, &ids);
    assert_settled(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_storm_beyond_the_budget_is_fatal_claims_nothing_and_heals() {
    let env = Env::start().await;
    env.set("retry.max_attempts", "2");
    let ids = env.seed(12);
    env.nevis.push_faults(200, status(503, None));
    let run = env.sync(&[]).await;
    run.assert_code(2);
    assert!(run.stderr.contains("unavailable"), "{}", run.stderr);
    assert_eq!(env.nevis.user_count(), 0);
    env.nevis.clear_faults();
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(
        run.count("created"),
        12,
        "nothing was claimed by the failed run"
    );
    assert_each_once(&env, &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_dropped_mid_body_converge_without_duplicates() {
    let env = Env::start().await;
    env.set("nexudus.page_size", "4");
    let ids = env.seed(10);
    // A listing page cut off mid-body, and creates whose answers are lost after they applied.
    env.nexudus.push_fault(Fault::Drop);
    env.nevis.push_faults(3, Fault::DropAfterApply);
    env.nevis.push_fault(Fault::Drop);
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("failed"), 0);
    assert_each_once(&env, &ids);
    assert_settled(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_answers_hit_the_timeout_and_are_retried() {
    let env = Env::start().await;
    env.set("nexudus.request_timeout", &quote("400ms"));
    env.set("nevis.request_timeout", &quote("400ms"));
    let ids = env.seed(6);
    // Headers and one byte, then silence far beyond the timeout.
    env.nexudus
        .push_fault(Fault::Stall(Duration::from_secs(30)));
    env.nevis
        .push_faults(2, Fault::Stall(Duration::from_secs(30)));
    let started = std::time::Instant::now();
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the stalls were cut by the timeout, not waited out"
    );
    assert_eq!(run.count("created"), 6);
    assert_each_once(&env, &ids);
}

/// A small deterministic generator for kill delays (no wall-clock seed: reruns kill alike).
struct Lcg(u64);

impl Lcg {
    fn next_in(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        lo + (self.0 >> 33) % (hi - lo)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_across_runs_converges_without_duplicates() {
    let env = Env::start().await;
    env.nevis.set_latency(Duration::from_millis(15));
    let ids = env.seed(60);
    let mut rng = Lcg(0x5eed_1234);
    let mut killed = 0;
    for round in 0..6 {
        // Changes keep arriving between the crashes, so every round has writes to interrupt.
        if round > 0 {
            for id in &ids {
                env.nexudus.update_user(*id, |u| {
                    u.insert(
                        "FullName".into(),
                        serde_json::json!(format!("R{round} Family{round}")),
                    );
                });
            }
        }
        let mut child = env
            .command(&["--sync-now"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the binary");
        let delay = rng.next_in(40, 350);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if child.try_wait().unwrap().is_none() {
            child.start_kill().unwrap();
            killed += 1;
        }
        tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("the child ends")
            .unwrap();
    }
    assert!(killed >= 2, "rounds were killed mid-run ({killed})");
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_each_once(&env, &ids);
    for id in &ids {
        let user = env.nevis.user(&format!("nexudus-{id}")).unwrap();
        assert_eq!(user["name"]["familyName"], "Family5", "the last change won");
    }
    assert_settled(&env).await;
}

/// Runs `--sync-now` with the size of any file it writes limited to `bytes` (a full disk:
/// writes beyond it fail with EFBIG; SIGXFSZ is ignored so the write returns the error).
async fn sync_with_file_size_limit(env: &Env, bytes: u64) -> Run {
    let mut cmd = env.command(&["--sync-now"]);
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    run_cmd(cmd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_clear_fatal_error_and_claims_nothing() {
    let env = Env::start().await;
    let ids = env.seed(400);
    let run = sync_with_file_size_limit(&env, 64 * 1024).await;
    run.assert_code(2);
    let path = env.store_path().display().to_string();
    let error = error_line(&run);
    assert!(
        error.contains(&path) && error.contains("free space"),
        "the error names the store: {}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    // Whatever nevisIDM confirmed but the store could not record is re-confirmed, not duplicated.
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_each_once(&env, &ids);
    assert_settled(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_store_location_is_a_clear_fatal_error_before_any_write() {
    let env = Env::start().await;
    env.seed(5);
    // As root, permissions do not stop writes: a store path below a regular file does.
    let blocker = env.dir.path().join("not-a-directory");
    std::fs::write(&blocker, b"x").unwrap();
    let store = blocker.join("store");
    env.set("store.path", &quote(&store.display().to_string()));
    let run = env.sync(&[]).await;
    run.assert_code(2);
    assert!(
        run.stderr.contains(&store.display().to_string()),
        "{}",
        run.stderr
    );
    assert_eq!(
        env.nevis.stats().requests,
        0,
        "nothing sent before the store opened"
    );
}

/// Runs `--sync-now` with the store directory read-only: as root (where permissions do not stop
/// writes) through a read-only bind mount in a private mount namespace of the child, otherwise by
/// taking the write bits away. `None` when this machine allows neither (root without mount
/// namespaces), said on stderr.
async fn sync_with_read_only_store(env: &Env, args: &[&str]) -> Option<Run> {
    use std::os::unix::fs::PermissionsExt;
    let store = env.store_path();
    let mut all = vec!["--sync-now"];
    all.extend_from_slice(args);
    let mut cmd = env.command(&all);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut made_read_only = Vec::new();
    if root {
        let path = std::ffi::CString::new(store.as_os_str().as_encoded_bytes()).unwrap();
        let slash = std::ffi::CString::new("/").unwrap();
        // SAFETY: only async-signal-safe system calls between fork and exec, on CStrings made
        // before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let check = |rc: libc::c_int| {
                    if rc == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                };
                let none = std::ptr::null();
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    none,
                    slash.as_ptr(),
                    none,
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    path.as_ptr(),
                    path.as_ptr(),
                    none,
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    none,
                    path.as_ptr(),
                    none,
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                    std::ptr::null(),
                ))
            });
        }
    } else {
        for entry in walk(&store) {
            let mode = std::fs::metadata(&entry).unwrap().permissions().mode();
            std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode & !0o222))
                .unwrap();
            made_read_only.push((entry, mode));
        }
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("run finished within the limit");
    for (entry, mode) in made_read_only {
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    match out {
        Ok(out) => Some(Run::from(out)),
        Err(e) if root => {
            eprintln!("read-only store case not run: no private mount namespace here ({e})");
            None
        }
        Err(e) => panic!("binary did not start: {e}"),
    }
}

/// The fatal error line the binary printed on stderr (empty if none).
fn error_line(run: &Run) -> &str {
    run.stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default()
}

/// `dir` and every file and directory below it.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir() {
            let children: Vec<_> = std::fs::read_dir(&out[i])
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            out.extend(children);
        }
        i += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_store_directory_is_a_clear_fatal_error_and_claims_nothing() {
    let env = Env::start().await;
    let mut ids = env.seed(5);
    env.sync(&[]).await.assert_code(0);
    ids.push(
        env.nexudus
            .insert_user(nexudus_nevis_sync::sandbox::NexudusUserSpec::new(
                "New Person",
                "new@example.com",
            )),
    );
    env.nevis.reset_stats();
    let path = env.store_path().display().to_string();
    for args in [&[][..], &["--rebuild-store"][..]] {
        let Some(run) = sync_with_read_only_store(&env, args).await else {
            return;
        };
        run.assert_code(2);
        let error = error_line(&run);
        assert!(
            error.contains(&path) && error.contains("writable") && !error.contains("damaged copy"),
            "the error names the store and what to check, and does not call it damaged: {}",
            run.stderr
        );
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        assert_eq!(
            env.writes(),
            0,
            "nothing written that could not be recorded"
        );
        // A store that is only unwritable is not damaged: a rebuild leaves it where it is.
        let siblings: Vec<String> = std::fs::read_dir(env.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !siblings.iter().any(|name| name.contains(".damaged-")),
            "{siblings:?}"
        );
    }
    // Writable again: the next run does the work, once.
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("created"), 1);
    assert_each_once(&env, &ids);
    assert_settled(&env).await;
}
