//! Command line: parse flags, set up logging, load the config, call the library, map the outcome
//! to an exit code (0 in sync, 1 finished with problems, 2 fatal).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use nexudus_nevis_sync::config::{Config, LogFormat};
use nexudus_nevis_sync::dispatch::PlanSink;
use nexudus_nevis_sync::nevis::NevisClient;
use nexudus_nevis_sync::nexudus::NexudusClient;
use nexudus_nevis_sync::report::RunReport;
use nexudus_nevis_sync::store::Store;
use nexudus_nevis_sync::sync::{RunOptions, run_once};
use tracing_subscriber::EnvFilter;

const EXIT_FATAL: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Keeps a nevisIDM user directory in step with the users of a Nexudus account"
)]
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
    /// With --sync-now: approve disables beyond the deletion-safety limits for this run only.
    #[arg(long, requires = "sync_now")]
    allow_mass_disable: bool,
    /// Start built-in fakes of both APIs, seed sample users and run a real sync against them.
    #[arg(long, conflicts_with_all = ["sync_now", "config"])]
    demo: bool,
}

fn main() -> ExitCode {
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

async fn run(cli: Cli) -> u8 {
    if cli.demo {
        init_logging(LogFormat::Pretty, "info");
        return match nexudus_nevis_sync::demo::run(300).await {
            Ok(report) => report.exit_code(),
            Err(e) => fatal(&e),
        };
    }
    let Some(path) = cli.config else {
        eprintln!("error: no configuration: pass --config FILE or set NEXUDUS_NEVIS_SYNC_CONFIG");
        return EXIT_FATAL;
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => return fatal(&e),
    };
    init_logging(config.log.format, &config.log.level);
    if !cli.sync_now {
        eprintln!(
            "error: daemon mode is not available in this version; run with --sync-now (from cron or a timer)"
        );
        return EXIT_FATAL;
    }
    sync_now(&config, cli.dry_run, cli.allow_mass_disable).await
}

async fn sync_now(config: &Config, dry_run: bool, allow_mass_disable: bool) -> u8 {
    // A dry run against a store that does not exist yet must not create it.
    let store = if dry_run && !config.store.path.exists() {
        Store::temporary()
    } else {
        Store::open(&config.store.path, config.store.cache_capacity_bytes)
    };
    let store = match store {
        Ok(s) => s,
        Err(e) => return fatal(&e),
    };
    let source = match NexudusClient::new(&config.nexudus, config.retry.clone()) {
        Ok(s) => Arc::new(s),
        Err(e) => return fatal(&e),
    };
    let target = match NevisClient::new(&config.nevis, config.retry.clone()) {
        Ok(t) => Arc::new(t),
        Err(e) => return fatal(&e),
    };
    let opts = RunOptions {
        dry_run: dry_run.then(stdout_plan_sink),
        allow_mass_disable,
    };
    match run_once(config, source, target, &store, &opts).await {
        Ok(report) => print_report(&report),
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

fn fatal(e: &dyn std::fmt::Display) -> u8 {
    tracing::error!(error = %e, "fatal");
    eprintln!("error: {e}");
    EXIT_FATAL
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
