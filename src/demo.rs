//! `--demo`: the whole job with no account. Starts both fakes in-process, seeds sample Nexudus
//! users (mixed languages, inactive ones, accented and one-word names), runs a real sync over HTTP
//! with a temporary store, then a second run to show that nothing changed means nothing written.

use std::sync::Arc;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::nevis::NevisClient;
use crate::nexudus::NexudusClient;
use crate::report::RunReport;
use crate::sandbox::{FakeNevis, FakeNexudus, NevisFakeConfig, NexudusFakeConfig, sample_users};
use crate::store::Store;
use crate::sync::{RunOptions, run_once};

#[derive(Debug, thiserror::Error)]
#[error("demo failed: {0}")]
pub struct DemoError(String);

fn err(e: impl std::fmt::Display) -> DemoError {
    DemoError(e.to_string())
}

/// A config pointing at the two fakes; the demo, the tests and the benchmark share it.
pub fn sandbox_config_toml(
    nexudus: &FakeNexudus,
    nevis: &FakeNevis,
    store: &std::path::Path,
) -> String {
    let nx = NexudusFakeConfig::default();
    let nv = NevisFakeConfig::default();
    format!(
        r#"
[nexudus]
base_url = "{}"
username = "{}"
password = "{}"
page_size = 100
[nevis]
base_url = "{}"
client_ext_id = "{}"
token = "{}"
[sync]
concurrency = 8
[retry]
initial_delay = "50ms"
max_delay = "1s"
max_elapsed = "20s"
[store]
path = {:?}
"#,
        nexudus.base_url(),
        nx.username,
        nx.password,
        nevis.base_url(),
        nv.client_ext_id,
        nv.token,
        store.display().to_string(),
    )
}

/// Runs the demo with `users` sample users; returns the report of the first (import) run.
pub async fn run(users: usize) -> Result<RunReport, DemoError> {
    let (nexudus, nevis) = crate::sandbox::start_both().await.map_err(err)?;
    for user in sample_users(users) {
        nexudus.insert_user(user);
    }
    let dir = tempfile::tempdir().map_err(err)?;
    let config =
        Config::from_toml_str(&sandbox_config_toml(&nexudus, &nevis, dir.path())).map_err(err)?;
    let store = Store::open(&config.store.path, config.store.cache_capacity_bytes).map_err(err)?;
    let metrics = Arc::new(Metrics::new());
    let source = Arc::new(
        NexudusClient::new(
            &config.nexudus,
            config.retry.clone(),
            Arc::clone(&metrics),
            None,
        )
        .map_err(err)?,
    );
    let target =
        Arc::new(NevisClient::new(&config.nevis, config.retry.clone(), metrics).map_err(err)?);
    let opts = RunOptions::default();

    println!(
        "demo: fake Nexudus at {} with {users} users, fake nevisIDM at {}",
        nexudus.base_url(),
        nevis.base_url()
    );
    let first = run_once(
        &config,
        Arc::clone(&source),
        Arc::clone(&target),
        &store,
        &opts,
    )
    .await
    .map_err(err)?;
    for line in first.problem_lines() {
        println!("demo: {line}");
    }
    println!("demo: import  -> {}", first.summary_line());
    println!(
        "demo: nevisIDM now holds {} users ({} disabled)",
        nevis.user_count(),
        nevis
            .users()
            .iter()
            .filter(|u| u["userState"] == "disabled")
            .count()
    );
    let writes_before = nevis.stats().creates + nevis.stats().patches;
    let second = run_once(&config, source, target, &store, &opts)
        .await
        .map_err(err)?;
    let writes = nevis.stats().creates + nevis.stats().patches - writes_before;
    println!(
        "demo: rerun   -> {} ({writes} writes)",
        second.summary_line()
    );
    Ok(first)
}
