//! Command line: parse flags, set up logging, load the config, call the library, map the outcome
//! to an exit code (0 in sync, 1 finished with problems, 2 fatal).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use nexudus_nevis_sync::ask::ask_daemon;
use nexudus_nevis_sync::audit::query::{self, Page, Query};
use nexudus_nevis_sync::clock::Clock;
use nexudus_nevis_sync::config::{Config, LogFormat};
use nexudus_nevis_sync::dispatch::PlanSink;
use nexudus_nevis_sync::http::{self, AppState};
use nexudus_nevis_sync::metrics::Metrics;
use nexudus_nevis_sync::nevis::NevisClient;
use nexudus_nevis_sync::nexudus::NexudusClient;
use nexudus_nevis_sync::progress::{self, Progress};
use nexudus_nevis_sync::report::RunReport;
use nexudus_nevis_sync::schedule::run_daemon;
use nexudus_nevis_sync::store::{Store, StoreError};
use nexudus_nevis_sync::sync::{RunOptions, run_once};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

const EXIT_FATAL: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Keeps a nevisIDM user directory in step with the users of a Nexudus account"
)]
#[command(group(clap::ArgGroup::new("readers").args(["status", "history"])))]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, env = "NEXUDUS_NEVIS_SYNC_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Run one sync and exit (cron, CronJob, first import).
    #[arg(long)]
    sync_now: bool,
    /// With --sync-now: print the plan as JSON lines and write nothing.
    #[arg(long, requires = "sync_now")]
    dry_run: bool,
    /// With --sync-now: approve, for this run only, disables beyond the deletion safety
    /// (sync.max_disables, sync.max_disable_percent) and role revocations beyond the revocation
    /// safety (roles.max_revokes, roles.max_revoke_percent).
    #[arg(long, requires = "sync_now")]
    allow_mass_disable: bool,
    /// Print the last run's summary and the failing users (asks the running daemon if it holds
    /// the store, with the bearer token of http.auth_token_file when set).
    #[arg(long, conflicts_with_all = ["sync_now", "demo"])]
    status: bool,
    /// With --status: print the status document as JSON (what the daemon's /status serves).
    /// With --history: JSON lines, one entry each.
    #[arg(long, requires = "readers")]
    json: bool,
    /// Print the provisioning log, newest first: one person's entries (by extId or Nexudus Id),
    /// or everyone's (with --since). Asks the running daemon if it holds the store.
    #[arg(
        long,
        value_name = "EXTID|NEXUDUS_ID",
        num_args = 0..=1,
        default_missing_value = "",
        conflicts_with_all = ["sync_now", "demo", "status"]
    )]
    history: Option<String>,
    /// With --history: only entries since this time: a duration back from now (24h, 7d) or an
    /// RFC 3339 time.
    #[arg(long, requires = "history", value_name = "WHEN")]
    since: Option<String>,
    /// With --history: only this operation (create, update, disable, enable, archive, adopt,
    /// grant, revoke, skip).
    #[arg(long = "op", requires = "history", value_name = "OPERATION")]
    operation: Option<String>,
    /// With --history: only this outcome (confirmed, refused, failed, held, conflict, invalid).
    #[arg(long, requires = "history")]
    outcome: Option<String>,
    /// With --history: at most this many entries (the newest; default 1000, at most 10000).
    /// A page that has a next one ends with where it starts (`next page: --before …`).
    #[arg(long, requires = "history")]
    limit: Option<usize>,
    /// With --history: the next page, entries older than this cursor (what the last page ended
    /// with).
    #[arg(long, requires = "history", value_name = "CURSOR")]
    before: Option<String>,
    /// With --sync-now: list only users changed since the last run's watermark (disappearances
    /// wait for the next full listing). Without it, --sync-now lists everyone.
    #[arg(long, requires = "sync_now", conflicts_with = "reconcile")]
    incremental: bool,
    /// With --sync-now: compare with nevisIDM's real users instead of the checkpoints, set back
    /// what was changed by hand, and refresh every checkpoint.
    #[arg(long, requires = "sync_now")]
    reconcile: bool,
    /// With --sync-now: rebuild a lost or damaged store from nevisIDM's users and one full
    /// Nexudus listing (a reconcile on an emptied store; a damaged store is moved aside).
    #[arg(long, requires = "sync_now", conflicts_with = "incremental")]
    rebuild_store: bool,
    /// Start built-in fakes of both APIs, seed sample users and run a real sync against them.
    #[arg(long, conflicts_with_all = ["sync_now", "config"])]
    demo: bool,
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    if let Some(code) = generate_packaging_files() {
        return code;
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FATAL);
        }
    };
    ExitCode::from(runtime.block_on(run(cli)))
}

/// glibc's malloc gives threads that contend an arena of their own (up to 8 per core) and hands
/// little of them back; with tokio's workers, sled's threads and the blocking pool that cost ~5 MiB
/// of peak RSS per 50,000 users imported (BENCHMARKS.md). Two arenas keep the heap compact at no
/// measurable cost in throughput. `MALLOC_ARENA_MAX` set by the operator wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes a tuning parameter of the allocator; it is called first
        // thing in main, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

/// `--generate-packaging-files DIR` (hidden; scripts/package.sh): the man page and completions.
fn generate_packaging_files() -> Option<ExitCode> {
    use clap::CommandFactory;
    use nexudus_nevis_sync::packaging;
    let args: Vec<_> = std::env::args_os().collect();
    let result = match packaging::requested_dir(&args)? {
        Ok(dir) => packaging::write_files(Cli::command(), &dir).map_err(|e| e.to_string()),
        Err(usage) => Err(usage),
    };
    Some(match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FATAL)
        }
    })
}

async fn run(cli: Cli) -> u8 {
    if cli.demo {
        // The narration is on stdout; the log shows warnings only (the deletion safety's).
        init_logging(LogFormat::Pretty, "warn");
        return match nexudus_nevis_sync::demo::run(300).await {
            Ok(()) => 0,
            Err(e) => fatal(&e),
        };
    }
    let Some(path) = cli.config.clone() else {
        eprintln!("error: no configuration: pass --config FILE or set NEXUDUS_NEVIS_SYNC_CONFIG");
        return EXIT_FATAL;
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => return fatal(&e),
    };
    init_logging(config.log.format, &config.log.level);
    for warning in &config.warnings {
        warn_loudly(warning);
    }
    if cli.status {
        return status(&config, cli.json).await;
    }
    if let Some(who) = &cli.history {
        let query = match history_query(who, &cli) {
            Ok(q) => q,
            Err(e) => return fatal(&e),
        };
        return history(&config, &query, cli.json).await;
    }
    if !cli.sync_now {
        return daemon(config).await;
    }
    // SIGTERM (a CronJob pod being stopped) or SIGINT ends a one-shot run gracefully too: the
    // writes in flight are confirmed and checkpointed, and the run reports itself interrupted.
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let opts = RunOptions {
        dry_run: cli.dry_run.then(stdout_plan_sink),
        allow_mass_disable: cli.allow_mass_disable,
        incremental: cli.incremental,
        shutdown: Some(shutdown),
        reconcile: cli.reconcile || cli.rebuild_store,
        progress: Some(Progress::new()),
    };
    sync_now(&config, opts, cli.rebuild_store).await
}

struct Clients {
    source: Arc<NexudusClient>,
    target: Arc<NevisClient>,
}

fn clients(config: &Config, metrics: &Arc<Metrics>, store: &Store) -> Result<Clients, String> {
    let source = NexudusClient::new(
        &config.nexudus,
        config.retry.clone(),
        Arc::clone(metrics),
        Some(store.clone()),
    )
    .map_err(|e| e.to_string())?;
    let target = NevisClient::with_marks(
        &config.nevis,
        config.retry.clone(),
        Arc::clone(metrics),
        config.mapping.remarks.clone(),
        config.mapping.modification_comment.clone(),
    )
    .map_err(|e| e.to_string())?;
    Ok(Clients {
        source: Arc::new(source),
        target: Arc::new(target),
    })
}

async fn daemon(config: Config) -> u8 {
    let (path, cache) = (&config.store.path, config.store.cache_capacity_bytes);
    let store = match Store::open_waiting(config.store.open_wait, || Store::open(path, cache)).await
    {
        Ok(s) => s,
        Err(e) => return fatal(&e),
    };
    let metrics = Arc::new(Metrics::new());
    let Clients { source, target } = match clients(&config, &metrics, &store) {
        Ok(c) => c,
        Err(e) => return fatal(&e),
    };
    // Port 0 lets the system pick a free port; the address really bound is what is logged.
    let bound = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .and_then(|l| l.local_addr().map(|addr| (l, addr)));
    let (listener, listen) = match bound {
        Ok(bound) => bound,
        Err(e) => {
            return fatal(&format!(
                "cannot listen on http.listen {}: {e}",
                config.http.listen
            ));
        }
    };
    let state = Arc::new(AppState {
        metrics,
        health: Default::default(),
        store,
        ready_max_age: config.http.ready_max_age,
        ext_id_prefix: config.mapping.ext_id_prefix.clone(),
        auth_token: config.http.auth_token.clone(),
    });
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let server = tokio::spawn(http::serve(listener, Arc::clone(&state), shutdown.clone()));
    let status_auth = if state.auth_token.is_some() {
        "bearer"
    } else {
        "open"
    };
    tracing::info!(%listen, status_auth, "serving /healthz /readyz /metrics /status");

    let result = run_daemon(Arc::new(config), source, target, state, shutdown.clone()).await;
    shutdown.cancel();
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "HTTP server task failed"),
    }
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            0
        }
        Err(e) => fatal(&e),
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn stop_on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received: stopping"),
    }
    shutdown.cancel();
}

/// `--status`: from the store when it is free, otherwise from the running daemon; a table for a
/// person, or with `--json` the document `/status` serves.
async fn status(config: &Config, json: bool) -> u8 {
    let prefix = &config.mapping.ext_id_prefix;
    let doc = from_store_or_daemon(
        config,
        serde_json::json!({ "last_run": null, "failing_users": [] }),
        |store| nexudus_nevis_sync::status::document(store, prefix, None),
        daemon_status(config),
    )
    .await;
    let doc = match doc {
        Ok(doc) => doc,
        Err(e) => return fatal(&e),
    };
    if json {
        println!("{doc}");
    } else {
        print!("{}", nexudus_nevis_sync::status::render(&doc));
    }
    if nexudus_nevis_sync::status::failing_count(&doc) == 0 {
        0
    } else {
        1
    }
}

/// What `read` finds in the store when no other process holds it; what `ask` gets from the
/// daemon when it holds the store (sled allows one process); `absent` when there is no store
/// yet (`--status`, `--history`).
async fn from_store_or_daemon<T, E: std::fmt::Display>(
    config: &Config,
    absent: T,
    read: impl FnOnce(&Store) -> Result<T, E>,
    ask: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    if !config.store.path.exists() {
        return Ok(absent);
    }
    match Store::open(&config.store.path, config.store.cache_capacity_bytes) {
        Ok(store) => read(&store).map_err(|e| e.to_string()),
        Err(StoreError::InUse { .. }) => ask.await,
        Err(e) => Err(e.to_string()),
    }
}

/// `/status` of the daemon that holds the store.
async fn daemon_status(config: &Config) -> Result<serde_json::Value, String> {
    let context = "the store is in use, so --status asks the daemon holding it";
    let body = ask_daemon(config, "/status")
        .await
        .map_err(|e| format!("{context}: {e}"))?;
    serde_json::from_str(&body)
        .map_err(|e| format!("{context}: its /status is not a JSON document: {e}"))
}

/// The `--history` flags as a query of the provisioning log.
fn history_query(who: &str, cli: &Cli) -> Result<Query, String> {
    let now = Clock::system().now();
    Ok(Query {
        who: (!who.is_empty()).then(|| who.to_string()),
        since: cli
            .since
            .as_deref()
            .map(|s| query::parse_since(s, now))
            .transpose()?,
        operation: cli
            .operation
            .as_deref()
            .map(query::parse_operation)
            .transpose()?,
        outcome: cli
            .outcome
            .as_deref()
            .map(query::parse_outcome)
            .transpose()?,
        limit: cli.limit,
        before: cli.before.as_deref().map(str::parse).transpose()?,
    })
    .and_then(|q| q.check().map(|()| q))
}

/// `--history`: a page from the store when it is free, otherwise from the running daemon's
/// `/history`; a table, or with `--json` JSON lines. (The store is read on `main`'s own thread,
/// which `block_on` drives: no async worker waits for it.)
async fn history(config: &Config, query: &Query, json: bool) -> u8 {
    let page = from_store_or_daemon(
        config,
        Page::default(),
        |store| query.run(store),
        daemon_history(config, query),
    )
    .await;
    let page = match page {
        Ok(page) => page,
        Err(e) => return fatal(&e),
    };
    if json {
        print!("{}", query::json_lines(&page));
    } else {
        print!("{}", query::table(&page));
    }
    0
}

async fn daemon_history(config: &Config, query: &Query) -> Result<Page, String> {
    let mut path = String::from("/history?");
    let params = query.to_params();
    let encoded = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())))
        .finish();
    path.push_str(&encoded);
    let context = "the store is in use, so --history asks the daemon holding it";
    let body = ask_daemon(config, &path)
        .await
        .map_err(|e| format!("{context}: {e}"))?;
    query::from_json_lines(&body)
}

async fn sync_now(config: &Config, opts: RunOptions, rebuild: bool) -> u8 {
    // A dry run against a store that does not exist yet must not create it; a dry rebuild plans
    // against an empty throw-away store and leaves the real one alone.
    let (path, cache, wait) = (
        &config.store.path,
        config.store.cache_capacity_bytes,
        config.store.open_wait,
    );
    let store = if opts.dry_run.is_some() && (rebuild || !path.exists()) {
        Store::temporary()
    } else if rebuild {
        Store::open_waiting(wait, || Store::open_for_rebuild(path, cache)).await
    } else {
        Store::open_waiting(wait, || Store::open(path, cache)).await
    };
    let store = match store {
        Ok(s) => s,
        Err(e) => return fatal(&e),
    };
    let Clients { source, target } = match clients(config, &Arc::new(Metrics::new()), &store) {
        Ok(c) => c,
        Err(e) => return fatal(&e),
    };
    // Progress goes to stderr: a live line on a terminal, log lines elsewhere (stdout carries the
    // dry run's plan and the summary).
    let display = if std::io::stderr().is_terminal() {
        progress::Display::Terminal
    } else {
        progress::Display::Log {
            interval: config.log.progress_interval,
        }
    };
    let shown = opts
        .progress
        .clone()
        .map(|counters| progress::spawn(counters, display));
    let result = run_once(config, source, target, &store, &opts).await;
    if let Some(shown) = shown {
        shown.finish().await;
    }
    match result {
        Ok(report) => print_report(&report),
        Err(e) if e.is_store() => fatal(&format!(
            "{e} (store.path = {}; check free space and that the directory is writable)",
            config.store.path.display()
        )),
        Err(e) => fatal(&e),
    }
}

fn stdout_plan_sink() -> PlanSink {
    Arc::new(|line| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
    })
}

fn print_report(report: &RunReport) -> u8 {
    let mut out = std::io::stdout().lock();
    for line in report.problem_lines() {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out, "{}", report.summary_line());
    let _ = out.flush();
    report.exit_code()
}

/// Set when logs are JSON: a fatal error is then also a log record, for log pipelines.
static JSON_LOGS: std::sync::OnceLock<()> = std::sync::OnceLock::new();

/// Reports a fatal error once on stderr (plus a JSON log record when logs are JSON).
fn fatal(e: &dyn std::fmt::Display) -> u8 {
    if JSON_LOGS.get().is_some() {
        tracing::error!(error = %e, "fatal");
    }
    eprintln!("error: {e}");
    EXIT_FATAL
}

/// A warning about the configuration itself (certificate verification off, a secret in a file
/// others can read): written straight to stderr, once at start, so no `log.level` or `RUST_LOG`
/// can silence it (plus a JSON log record when logs are JSON, for log pipelines).
fn warn_loudly(warning: &str) {
    if JSON_LOGS.get().is_some() {
        tracing::warn!("{warning}");
    }
    eprintln!("warning: {warning}");
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(progress::StderrAboveProgress::default)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => {
            let _ = JSON_LOGS.set(());
            builder.json().try_init()
        }
    };
}
