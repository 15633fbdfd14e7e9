//! Benchmark: an import, an unchanged rerun, an idle incremental tick and a mass update with
//! unknown nevisIDM versions of the real binary against the in-process sandbox fakes, the floor of
//! the fakes themselves (a trivial client, [`floor`]), and the time to revoke of the daemon
//! ([`revoke`]), reporting ratios measured in one run.
//!
//! ```sh
//! cargo bench --bench sync -- --users 20000 --latency-ms 20 --concurrency 16
//! ```
//!
//! `--no-revoke` stops after the phases; `--revoke-only` runs the import and the time to revoke.
//! `--roles` adds the roles phase ([`roles`]: 20 mapped UserRoles, the idle tick's cost with and
//! without them, and the time a membership change takes to reach nevisIDM) at the end;
//! `--roles-only` runs the import and it. `--audit` adds the provisioning log's cost ([`audit`]: the
//! import with the log off and on, the store's growth per entry); `--audit-only` runs only it.
//! `--history-only` measures `/history` on a store of a million entries ([`history`]).
//! The last column, `plan_us/usr`, is the time the run's driving task spent planning each record
//! (scope, mapping, diff and the checkpoint look-up: the per-record store work between pages),
//! from the report the run recorded.
//!
//! The sync runs as a child process, so its CPU time and peak RSS (`wait4` rusage) are its own and
//! not the fakes'; the fakes' CPU share is this process's CPU time over the wall time.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nexudus_nevis_sync::sandbox::{
    FakeNevis, FakeNexudus, NevisFakeConfig, NexudusFakeConfig, sample_users,
};

#[path = "sync/audit.rs"]
mod audit;
#[path = "sync/floor.rs"]
mod floor;
#[path = "sync/history.rs"]
mod history;
#[path = "sync/revoke.rs"]
mod revoke;
#[path = "sync/roles.rs"]
mod roles;

struct Args {
    users: usize,
    latency_ms: u64,
    concurrency: usize,
    page_size: u32,
    revoke: revoke::RevokeArgs,
    /// Only the import (the daemon needs a store) and the time to revoke.
    revoke_only: bool,
    /// The phases without the time to revoke (`--no-revoke`).
    no_revoke: bool,
    roles: roles::RolesArgs,
    /// The roles phase last (`--roles`), or only the import and it (`--roles-only`).
    with_roles: bool,
    roles_only: bool,
    /// The provisioning log's cost last (`--audit`), or only it (`--audit-only`); imports of
    /// each kind (`--audit-rounds`, default 2).
    with_audit: bool,
    audit_only: bool,
    audit_rounds: usize,
    /// Only reading a large provisioning log (`--history-only`): `/history` on a store of
    /// `--history-entries` entries (default 1,000,000).
    history_only: bool,
    history_entries: u64,
}

fn parse_args() -> Args {
    let mut args = Args {
        users: 20_000,
        latency_ms: 20,
        concurrency: 16,
        page_size: 1000,
        revoke: revoke::RevokeArgs {
            schedule_s: 15,
            events: 15,
            window: Duration::from_secs(40),
            seed: 14,
        },
        revoke_only: false,
        no_revoke: false,
        roles: roles::RolesArgs {
            mapped: 20,
            members: 20,
            events: 10,
            window: Duration::from_secs(60),
            seed: 21,
        },
        with_roles: false,
        roles_only: false,
        with_audit: false,
        audit_only: false,
        audit_rounds: 2,
        history_only: false,
        history_entries: 1_000_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().and_then(|v| v.parse::<u64>().ok());
        match flag.as_str() {
            "--users" => args.users = value().expect("--users N") as usize,
            "--latency-ms" => args.latency_ms = value().expect("--latency-ms N"),
            "--concurrency" => args.concurrency = value().expect("--concurrency N") as usize,
            "--page-size" => args.page_size = value().expect("--page-size N") as u32,
            "--revoke-schedule-s" => {
                args.revoke.schedule_s = value().expect("--revoke-schedule-s N").clamp(1, 59);
            }
            "--revoke-events" => {
                args.revoke.events = value().expect("--revoke-events N") as usize;
            }
            "--revoke-seconds" => {
                args.revoke.window = Duration::from_secs(value().expect("--revoke-seconds N"));
            }
            "--seed" => args.revoke.seed = value().expect("--seed N"),
            "--revoke-only" => args.revoke_only = true,
            "--no-revoke" => args.no_revoke = true,
            "--roles" => args.with_roles = true,
            "--audit" => args.with_audit = true,
            "--audit-only" => args.audit_only = true,
            "--audit-rounds" => args.audit_rounds = value().expect("--audit-rounds N") as usize,
            "--history-only" => args.history_only = true,
            "--history-entries" => args.history_entries = value().expect("--history-entries N"),
            "--roles-only" => args.roles_only = true,
            "--roles-mapped" => args.roles.mapped = value().expect("--roles-mapped N") as usize,
            "--roles-members" => {
                args.roles.members = value().expect("--roles-members N") as usize;
            }
            "--roles-events" => args.roles.events = value().expect("--roles-events N") as usize,
            "--roles-seconds" => {
                args.roles.window = Duration::from_secs(value().expect("--roles-seconds N"));
            }
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
    config: &'a Path,
    /// The floors to compare the wall time with: theoretical, and the fakes' (trivial client).
    floors: Option<(Duration, Duration)>,
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--floor-client") {
        return floor::client_main(&argv[2..]);
    }
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench(args));
}

/// Both fakes, the Nexudus one seeded with `users` users whose `UpdatedOn` are a second apart
/// (as a real directory's would be, so the incremental overlap of 10 minutes re-lists only the
/// users changed in the last ten minutes).
async fn fakes(args: &Args) -> (FakeNexudus, FakeNevis, Duration) {
    let (nexudus, nevis) = nexudus_nevis_sync::sandbox::start_both()
        .await
        .expect("start the fakes");
    nevis.set_request_log(false);
    nevis.set_latency(Duration::from_millis(args.latency_ms));
    let seeding = Instant::now();
    let base = chrono::Utc::now() - chrono::Duration::seconds(args.users as i64 + 3600);
    for (i, user) in sample_users(args.users).into_iter().enumerate() {
        nexudus.set_clock(Some(base + chrono::Duration::seconds(i as i64)));
        nexudus.insert_user(user);
    }
    nexudus.set_clock(None);
    (nexudus, nevis, seeding.elapsed())
}

/// A config file for the fakes; `sync` lines go into `[sync]`, `tail` is appended.
fn write_config(
    path: &Path,
    args: &Args,
    nexudus: &FakeNexudus,
    nevis: &FakeNevis,
    sync: &str,
    tail: &str,
) {
    let nx = NexudusFakeConfig::default();
    let nv = NevisFakeConfig::default();
    let store = path.with_file_name("store");
    std::fs::write(
        path,
        format!(
            "[nexudus]\nbase_url = {:?}\nusername = {:?}\npassword = {:?}\npage_size = {}\n\
             [nevis]\nbase_url = {:?}\nclient_ext_id = {:?}\ntoken = {:?}\n\
             [sync]\nconcurrency = {}\n{sync}\n\
             [store]\npath = {:?}\n{tail}",
            nexudus.base_url(),
            nx.username,
            nx.password,
            args.page_size,
            nevis.base_url(),
            nv.client_ext_id,
            nv.token,
            args.concurrency,
            store.display().to_string(),
        ),
    )
    .expect("write config");
}

async fn bench(args: Args) {
    if args.history_only {
        return history_phase(&args).await;
    }
    let (nexudus, nevis, seeded) = fakes(&args).await;
    if args.audit_only {
        return audit_phase(&args, &nexudus).await;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.toml");
    write_config(&config, &args, &nexudus, &nevis, "", "");
    // A mapping change touching every user: each is PATCHed, with versions nobody knows yet
    // (creates answer none), against a nevisIDM that requires them.
    let mass = dir.path().join("mass-update.toml");
    let properties = "[mapping.properties]\nsource = \"nexudus\"\n";
    write_config(&mass, &args, &nexudus, &nevis, "", properties);

    let latency = Duration::from_millis(args.latency_ms);
    let floor = Duration::from_secs_f64(
        args.users as f64 * latency.as_secs_f64() / args.concurrency as f64,
    );
    println!(
        "users={} nevis_latency={}ms concurrency={} page_size={} (fakes seeded in {:.1}s)",
        args.users,
        args.latency_ms,
        args.concurrency,
        args.page_size,
        seeded.as_secs_f64()
    );
    let import_only = args.revoke_only || args.roles_only;
    let fakes_floor = if import_only {
        floor::Floor::default()
    } else {
        fakes_floor(&args, &nexudus, latency).await
    };
    print_header();
    let phases = [
        Phase {
            name: "import",
            extra: &[],
            config: &config,
            floors: Some((floor, fakes_floor.import)),
        },
        Phase {
            name: "unchanged full rerun",
            extra: &[],
            config: &config,
            floors: None,
        },
        Phase {
            name: "idle incremental tick",
            extra: &["--incremental"],
            config: &config,
            floors: None,
        },
        Phase {
            name: "mass update (versions?)",
            extra: &[],
            config: &mass,
            floors: Some((floor, fakes_floor.mass_update)),
        },
    ];
    let phases = if import_only {
        &phases[..1]
    } else {
        &phases[..]
    };
    for (i, phase) in phases.iter().enumerate() {
        if phase.config == mass.as_path() {
            nevis.set_request_log(true);
            nevis.set_version_required(true);
        }
        run_phase(i, phase, &args, &nexudus, &nevis, dir.path()).await;
    }
    // The daemon keeps the mapping of the last phase, so that its first run changes nobody.
    let mapping = if import_only { "" } else { properties };
    if !args.no_revoke && !args.roles_only {
        time_to_revoke(&args, &nexudus, &nevis, dir.path(), mapping).await;
    }
    if args.with_roles || args.roles_only {
        roles_phase(&args, &nexudus, &nevis, dir.path(), mapping).await;
    }
    if args.with_audit {
        let_the_minute_pass(&args).await;
        audit_phase(&args, &nexudus).await;
    }
}

/// The provisioning log's cost ([`audit`]): the import with the log off and on.
async fn audit_phase(args: &Args, nexudus: &FakeNexudus) {
    let dir = tempfile::tempdir().expect("temp dir");
    let latency = Duration::from_millis(args.latency_ms);
    let config = |nevis: &FakeNevis, sub: &Path, on: bool| {
        let path = sub.join("config.toml");
        write_config(
            &path,
            args,
            nexudus,
            nevis,
            "",
            &format!("[audit]\nenabled = {on}\n"),
        );
        path
    };
    let run = |path: &Path, extra: &[&str]| {
        let child = run_child(path, extra, &path.with_file_name("sync.log"));
        (child.code, child.wall)
    };
    let cost = audit::measure(latency, args.audit_rounds, dir.path(), config, run).await;
    cost.print(args.users);
}

/// Reading a large log ([`history`]): the entries written straight into a store, then the
/// daemon on it (with empty fakes: its runs have nothing to do) asked for `/history` pages.
async fn history_phase(args: &Args) {
    let (nexudus, nevis) = nexudus_nevis_sync::sandbox::start_both()
        .await
        .expect("start the fakes");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.toml");
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    let tail = format!(
        "[http]\nlisten = {listen:?}\n[audit]\nmax_entries = {}\n",
        args.history_entries * 2
    );
    write_config(&config, args, &nexudus, &nevis, "", &tail);
    let filled = history::fill(&dir.path().join("store"), args.history_entries).await;
    history::measure(&config, &listen, args.history_entries, filled).await;
}

/// The daemon's pacer cannot know the minute the earlier processes used; when a full listing
/// would not fit beside theirs, the minute is left to pass.
async fn let_the_minute_pass(args: &Args) {
    if args.users.div_ceil(args.page_size as usize) * 2 > 100 {
        tokio::time::sleep(Duration::from_secs(61)).await;
    }
}

/// Roles ([`roles`]): the first run with `mapped` UserRoles mapped, an idle tick without and
/// with the map, then the daemon and membership changes.
async fn roles_phase(
    args: &Args,
    nexudus: &FakeNexudus,
    nevis: &FakeNevis,
    dir: &Path,
    mapping: &str,
) {
    let ra = &args.roles;
    let mut seeded = roles::seed(nexudus, nevis, ra);
    let map = roles::map_toml(ra);
    let plain = dir.join("roles-plain.toml");
    write_config(&plain, args, nexudus, nevis, "", mapping);
    let with = dir.join("roles.toml");
    write_config(&with, args, nexudus, nevis, "", &format!("{mapping}{map}"));
    nevis.set_request_log(false);
    let_the_minute_pass(args).await;
    println!(
        "roles: {} UserRoles mapped, {} members each (UpdatedOn two hours old)",
        ra.mapped, ra.members
    );
    print_header();
    let phases = [
        ("roles: first run (full)", &[][..], &with),
        ("idle tick, no roles", &["--incremental"][..], &plain),
        ("idle tick, roles mapped", &["--incremental"][..], &with),
    ];
    let mut idle = Vec::new();
    for (i, (name, extra, config)) in phases.into_iter().enumerate() {
        let phase = Phase {
            name,
            extra,
            config,
            floors: None,
        };
        idle.push(run_phase(10 + i, &phase, args, nexudus, nevis, dir).await);
    }
    println!(
        "an idle tick with {} UserRoles mapped adds {} Nexudus request(s)",
        ra.mapped,
        idle[2] as i64 - idle[1] as i64
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let config = dir.join("roles-daemon.toml");
    let tail = format!("{mapping}{map}[http]\nlisten = \"127.0.0.1:{port}\"\n");
    write_config(&config, args, nexudus, nevis, "", &tail);
    let log = dir.join("roles-daemon.log");
    let m = roles::measure(nexudus, nevis, &mut seeded, &config, port, &log, ra).await;
    let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join("roles-daemon.log");
    if std::fs::copy(&log, &kept).is_ok() {
        println!("daemon log: {}", kept.display());
    }
    let per_hour = |n: usize| n as f64 * 3600.0 / m.wall.as_secs_f64();
    println!(
        "roles: daemon on its default schedule, {} membership changes over {} s (seed {}); \
         Nexudus requests in {:.0} s: {} users, {} UserRole listings, {} UserRole reads \
         ({:.0}, {:.0} and {:.0} an hour at that rate), {} throttled",
        m.delays.len(),
        ra.window.as_secs(),
        ra.seed,
        m.wall.as_secs_f64(),
        m.users_requests,
        m.listing_requests,
        m.read_requests,
        per_hour(m.users_requests),
        per_hour(m.listing_requests),
        per_hour(m.read_requests),
        m.throttled
    );
    println!(
        "{:<32} {:>6} {:>8} {:>8} {:>8} {:>7}",
        "membership change", "count", "p50_s", "p99_s", "max_s", "missed"
    );
    for (name, moves) in [("UpdatedOn moved", true), ("UpdatedOn not moved", false)] {
        let (count, (p50, p99, max, missed)) = m.summary(moves);
        println!("{name:<32} {count:>6} {p50:>8.2} {p99:>8.2} {max:>8.2} {missed:>7}");
    }
}

/// The trivial client's import and mass update (printed), before the sync runs. Afterwards, when
/// the next listings would not fit Nexudus's minute beside its pages, waits for the minute to end.
async fn fakes_floor(args: &Args, nexudus: &FakeNexudus, latency: Duration) -> floor::Floor {
    let started = Instant::now();
    let floor = floor::measure(nexudus, latency, args.concurrency, args.page_size).await;
    println!(
        "floor of the fakes (a trivial client, same requests and concurrency): import {:.2}s, \
         mass update {:.2}s",
        floor.import.as_secs_f64(),
        floor.mass_update.as_secs_f64()
    );
    let pages = args.users.div_ceil(args.page_size as usize);
    if pages * 2 > 100 {
        let minute = Duration::from_secs(61);
        tokio::time::sleep(minute.saturating_sub(started.elapsed())).await;
    }
    floor
}

fn print_header() {
    println!(
        "{:<24} {:>4} {:>9} {:>9} {:>7} {:>9} {:>7} {:>8} {:>8} {:>8} {:>9} {:>8} {:>10} {:>9} {:>10} {:>11}",
        "phase",
        "exit",
        "wall_s",
        "floor_s",
        "ratio",
        "fakes_s",
        "ratio_f",
        "nx_req",
        "nx_409",
        "nv_req",
        "nv_write",
        "nv_get1",
        "cpu_us/usr",
        "rss_MiB",
        "fake_cpu%",
        "plan_us/usr"
    );
}

async fn run_phase(
    i: usize,
    phase: &Phase<'_>,
    args: &Args,
    nexudus: &FakeNexudus,
    nevis: &FakeNevis,
    dir: &Path,
) -> u64 {
    nexudus.reset_stats();
    nevis.reset_stats();
    nevis.clear_request_log();
    let fake_cpu_before = self_cpu();
    let log = dir.join(format!("phase{i}.log"));
    let config = phase.config.to_path_buf();
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
    // Reads of single users (versions read one by one), beside the listing pages.
    let single_gets = nevis
        .request_log()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/users/"))
        .count();
    let wall = child.wall.as_secs_f64();
    let (floor, ratio, fakes, ratio_f) = match phase.floors {
        Some((floor, fakes)) => (
            format!("{:.2}", floor.as_secs_f64()),
            format!("{:.3}", wall / floor.as_secs_f64()),
            format!("{:.2}", fakes.as_secs_f64()),
            format!("{:.3}", wall / fakes.as_secs_f64()),
        ),
        None => ("-".into(), "-".into(), "-".into(), "-".into()),
    };
    println!(
        "{:<24} {:>4} {:>9.2} {:>9} {:>7} {:>9} {:>7} {:>8} {:>8} {:>8} {:>9} {:>8} {:>10.2} {:>9.1} {:>10.1} {:>11.2}",
        phase.name,
        child.code,
        wall,
        floor,
        ratio,
        fakes,
        ratio_f,
        nx.requests,
        nx.throttled,
        nv.requests,
        nv.creates + nv.patches,
        single_gets,
        child.cpu.as_secs_f64() * 1e6 / args.users as f64,
        child.max_rss_kib as f64 / 1024.0,
        100.0 * fake_cpu.as_secs_f64() / wall,
        planning_seconds(dir) * 1e6 / args.users as f64,
    );
    nx.requests
}

/// The time the last run's driving task spent planning records (its per-record store work
/// included), from the report it recorded in the store.
fn planning_seconds(dir: &Path) -> f64 {
    let Ok(store) = nexudus_nevis_sync::store::Store::open(&dir.join("store"), 64 << 20) else {
        return f64::NAN;
    };
    store
        .last_run()
        .ok()
        .flatten()
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .and_then(|doc| doc["planning_seconds"].as_f64())
        .unwrap_or(f64::NAN)
}

/// The daemon with the default settings (the schedule from `--revoke-schedule-s`, default the
/// default 15 s), and the delays until each deactivation and deletion is disabled in nevisIDM.
///
/// A one-second schedule compresses time but does not fit Nexudus's minute: two requests a tick
/// are 120 a minute, and the pacer sustains 110 (a burst of 11, then one every 0.61 s), so its
/// delays measure the pacer's queue, not the daemon.
async fn time_to_revoke(
    args: &Args,
    nexudus: &FakeNexudus,
    nevis: &FakeNevis,
    dir: &Path,
    properties: &str,
) {
    nevis.set_request_log(false);
    let_the_minute_pass(args).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let config = dir.join("daemon.toml");
    let tail = format!("{properties}[http]\nlisten = \"127.0.0.1:{port}\"\n");
    let schedule = format!("schedule = \"*/{} * * * * *\"", args.revoke.schedule_s);
    write_config(&config, args, nexudus, nevis, &schedule, &tail);
    let log = dir.join("daemon.log");
    let m = revoke::measure(nexudus, nevis, &config, port, &log, &args.revoke).await;
    // The daemon's log outlives the temporary directory, to tell what each delay was made of.
    let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join("revoke-daemon.log");
    if std::fs::copy(&log, &kept).is_ok() {
        println!("daemon log: {}", kept.display());
    }
    println!(
        "time to revoke: daemon on a {} s schedule, {} events over {} s (seed {}); {} Nexudus \
         requests in {:.0} s ({:.1} a minute), {} throttled",
        args.revoke.schedule_s,
        m.delays.len(),
        args.revoke.window.as_secs(),
        args.revoke.seed,
        m.nexudus_requests,
        m.wall.as_secs_f64(),
        m.nexudus_requests as f64 * 60.0 / m.wall.as_secs_f64(),
        m.nexudus_throttled
    );
    println!(
        "{:<24} {:>6} {:>8} {:>8} {:>8} {:>7}",
        "event", "count", "p50_s", "p99_s", "max_s", "missed"
    );
    for (name, kind) in [
        ("Active set to false", revoke::Kind::Deactivation),
        ("user deleted", revoke::Kind::Deletion),
        ("user changed", revoke::Kind::Change),
        ("user created", revoke::Kind::Creation),
    ] {
        let count = m.delays.iter().filter(|(k, _)| *k == kind).count();
        let (p50, p99, max, missed) = revoke::summary(&m.delays, kind);
        println!("{name:<24} {count:>6} {p50:>8.2} {p99:>8.2} {max:>8.2} {missed:>7}");
    }
}
