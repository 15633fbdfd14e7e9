//! Benchmark: an import and an unchanged rerun (and an idle incremental tick) of the real binary
//! against the in-process sandbox fakes, reporting ratios measured in one run.
//!
//! ```sh
//! cargo bench --bench sync -- --users 20000 --latency-ms 20 --concurrency 16
//! ```
//!
//! The sync runs as a child process, so its CPU time and peak RSS (`wait4` rusage) are its own and
//! not the fakes'; the fakes' CPU share is this process's CPU time over the wall time.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nexudus_nevis_sync::sandbox::{NevisFakeConfig, NexudusFakeConfig, sample_users};

struct Args {
    users: usize,
    latency_ms: u64,
    concurrency: usize,
    page_size: u32,
}

fn parse_args() -> Args {
    let mut args = Args {
        users: 20_000,
        latency_ms: 20,
        concurrency: 16,
        page_size: 1000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().and_then(|v| v.parse::<u64>().ok());
        match flag.as_str() {
            "--users" => args.users = value().expect("--users N") as usize,
            "--latency-ms" => args.latency_ms = value().expect("--latency-ms N"),
            "--concurrency" => args.concurrency = value().expect("--concurrency N") as usize,
            "--page-size" => args.page_size = value().expect("--page-size N") as u32,
            // cargo bench passes --bench; ignore anything else.
            _ => {}
        }
    }
    args
}

/// CPU time (user + system) of this process so far.
fn self_cpu() -> Duration {
    rusage_cpu(&rusage(libc::RUSAGE_SELF))
}

fn rusage(who: libc::c_int) -> libc::rusage {
    // SAFETY: getrusage fills the struct it is given; a zeroed rusage is a valid value.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    }
}

fn rusage_cpu(u: &libc::rusage) -> Duration {
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

struct Child {
    code: i32,
    wall: Duration,
    cpu: Duration,
    max_rss_kib: i64,
}

/// Runs the sync binary to completion and collects its own rusage with `wait4`.
fn run_child(config: &Path, extra: &[&str], log: &Path) -> Child {
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_nexudus-nevis-sync"))
        .arg("--config")
        .arg(config)
        .arg("--sync-now")
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("start the sync binary");
    let pid = child.id() as libc::pid_t;
    // ru_maxrss would include the pages the child shared with this (large) process before exec,
    // so the peak is read from the child's own /proc VmHWM while it runs.
    let sampler = std::thread::spawn(move || {
        let path = format!("/proc/{pid}/status");
        let mut peak = 0i64;
        loop {
            let Ok(text) = std::fs::read_to_string(&path) else {
                return peak;
            };
            match text.lines().find_map(|l| l.strip_prefix("VmHWM:")) {
                Some(v) => {
                    let kib = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                    peak = peak.max(kib);
                }
                None => return peak, // a zombie: exited
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let mut status = 0;
    // SAFETY: wait4 on our own child's pid; the struct is plain data.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::wait4(pid, &mut status, 0, &mut usage);
        usage
    };
    std::mem::forget(child); // already reaped by wait4
    let max_rss_kib = sampler.join().unwrap_or(0);
    Child {
        code: if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        },
        wall: started.elapsed(),
        cpu: rusage_cpu(&usage),
        max_rss_kib,
    }
}

struct Phase<'a> {
    name: &'a str,
    extra: &'a [&'a str],
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench(args));
}

async fn bench(args: Args) {
    let (nexudus, nevis) = nexudus_nevis_sync::sandbox::start_both()
        .await
        .expect("start the fakes");
    nevis.set_request_log(false);
    nevis.set_latency(Duration::from_millis(args.latency_ms));
    let seeding = Instant::now();
    // Spread UpdatedOn one second apart, as a real directory's would be, so that the incremental
    // overlap (10 minutes) re-lists only the users changed in the last ten minutes.
    let base = chrono::Utc::now() - chrono::Duration::seconds(args.users as i64 + 3600);
    for (i, user) in sample_users(args.users).into_iter().enumerate() {
        nexudus.set_clock(Some(base + chrono::Duration::seconds(i as i64)));
        nexudus.insert_user(user);
    }
    nexudus.set_clock(None);
    let seeded = seeding.elapsed();

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.toml");
    let nx = NexudusFakeConfig::default();
    let nv = NevisFakeConfig::default();
    std::fs::write(
        &config,
        format!(
            "[nexudus]\nbase_url = {:?}\nusername = {:?}\npassword = {:?}\npage_size = {}\n\
             [nevis]\nbase_url = {:?}\nclient_ext_id = {:?}\ntoken = {:?}\n\
             [sync]\nconcurrency = {}\n\
             [store]\npath = {:?}\n",
            nexudus.base_url(),
            nx.username,
            nx.password,
            args.page_size,
            nevis.base_url(),
            nv.client_ext_id,
            nv.token,
            args.concurrency,
            dir.path().join("store").display().to_string(),
        ),
    )
    .expect("write config");

    let floor = Duration::from_secs_f64(
        args.users as f64 * args.latency_ms as f64 / 1000.0 / args.concurrency as f64,
    );
    println!(
        "users={} nevis_latency={}ms concurrency={} page_size={} (fakes seeded in {:.1}s)",
        args.users,
        args.latency_ms,
        args.concurrency,
        args.page_size,
        seeded.as_secs_f64()
    );
    println!(
        "{:<22} {:>4} {:>9} {:>9} {:>7} {:>8} {:>8} {:>8} {:>9} {:>10} {:>9} {:>10}",
        "phase",
        "exit",
        "wall_s",
        "floor_s",
        "ratio",
        "nx_req",
        "nx_409",
        "nv_req",
        "nv_write",
        "cpu_us/usr",
        "rss_MiB",
        "fake_cpu%"
    );
    let phases = [
        Phase {
            name: "import",
            extra: &[],
        },
        Phase {
            name: "unchanged full rerun",
            extra: &[],
        },
        Phase {
            name: "idle incremental tick",
            extra: &["--incremental"],
        },
    ];
    for (i, phase) in phases.iter().enumerate() {
        nexudus.reset_stats();
        nevis.reset_stats();
        let fake_cpu_before = self_cpu();
        let log = dir.path().join(format!("phase{i}.log"));
        let config = config.clone();
        let extra: Vec<String> = phase.extra.iter().map(|s| s.to_string()).collect();
        let child = tokio::task::spawn_blocking(move || {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            run_child(&config, &extra, &log)
        })
        .await
        .expect("child runner");
        let fake_cpu = self_cpu().saturating_sub(fake_cpu_before);
        let nx = nexudus.stats();
        let nv = nevis.stats();
        let is_import = i == 0;
        println!(
            "{:<22} {:>4} {:>9.2} {:>9} {:>7} {:>8} {:>8} {:>8} {:>9} {:>10.2} {:>9.1} {:>10.1}",
            phase.name,
            child.code,
            child.wall.as_secs_f64(),
            if is_import {
                format!("{:.2}", floor.as_secs_f64())
            } else {
                "-".into()
            },
            if is_import {
                format!("{:.3}", child.wall.as_secs_f64() / floor.as_secs_f64())
            } else {
                "-".into()
            },
            nx.requests,
            nx.throttled,
            nv.requests,
            nv.creates + nv.patches,
            child.cpu.as_secs_f64() * 1e6 / args.users as f64,
            child.max_rss_kib as f64 / 1024.0,
            100.0 * fake_cpu.as_secs_f64() / child.wall.as_secs_f64(),
        );
    }
}
