//! `--demo`: the whole job with no account. Starts both fakes in-process, seeds sample Nexudus
//! users (mixed languages, inactive ones, accented and one-word names) and walks the lifecycle
//! over real HTTP with a temporary store, narrating each step and checking that the product did
//! what it says (a step that misbehaves ends the demo with an error, so `--demo` exits non-zero):
//!
//! 1. the first import, and a rerun that writes nothing;
//! 2. changes in Nexudus (a rename, a language change, a deactivation, a deletion), shown as the
//!    `--dry-run` plan, then applied;
//! 3. a mass disappearance held by the deletion safety, then approved (`--allow-mass-disable`);
//! 4. a hand edit in nevisIDM, invisible to the checkpoints, set back by `--reconcile`;
//! 5. roles (`[[roles.map]]`): a Nexudus UserRole grants a nevisIDM role, leaving it revokes the
//!    role, and a role granted by hand is left alone;
//! 6. the final state as a small table;
//! 7. one user's provisioning log (`--history`): every change the sync made to them, and why.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::config::{Config, RoleMapping, RoleSourceName, RolesConfig};
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

/// A step's check: `Err` naming what the product did wrong.
fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), DemoError> {
    if ok {
        Ok(())
    } else {
        Err(DemoError(format!("the product misbehaved: {}", what())))
    }
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

/// Requests a minute the demo's client may send (Nexudus documents 120; the demo's fake allows
/// more).
const DEMO_PER_MINUTE: u32 = 1_100;

/// The fakes, one store and one pair of clients, shared by every step, as the daemon shares them.
struct Demo {
    nexudus: FakeNexudus,
    nevis: FakeNevis,
    config: Config,
    store: Store,
    source: Arc<NexudusClient>,
    target: Arc<NevisClient>,
    ids: Vec<u64>,
    _dir: tempfile::TempDir,
}

impl Demo {
    async fn start(users: usize) -> Result<Demo, DemoError> {
        // A fake account with ten times Nexudus's second and minute limits (and the client paced
        // to match), so the demo takes seconds; everything else answers as documented.
        let nexudus = FakeNexudus::start(NexudusFakeConfig {
            per_second_limit: Some(100),
            per_minute_limit: Some(DEMO_PER_MINUTE + 100),
            ..NexudusFakeConfig::default()
        })
        .await
        .map_err(err)?;
        let nevis = FakeNevis::start(NevisFakeConfig::default())
            .await
            .map_err(err)?;
        let ids = sample_users(users)
            .into_iter()
            .map(|u| nexudus.insert_user(u))
            .collect();
        let dir = tempfile::tempdir().map_err(err)?;
        let mut config = Config::from_toml_str(&sandbox_config_toml(&nexudus, &nevis, dir.path()))
            .map_err(err)?;
        config.nexudus.min_request_interval = Duration::from_millis(11);
        config.nexudus.max_requests_per_minute = DEMO_PER_MINUTE;
        let store =
            Store::open(&config.store.path, config.store.cache_capacity_bytes).map_err(err)?;
        let metrics = Arc::new(Metrics::new());
        let source = Arc::new(
            NexudusClient::new(
                &config.nexudus,
                config.retry.clone(),
                Arc::clone(&metrics),
                Some(store.clone()),
            )
            .map_err(err)?,
        );
        let target =
            Arc::new(NevisClient::new(&config.nevis, config.retry.clone(), metrics).map_err(err)?);
        Ok(Demo {
            nexudus,
            nevis,
            config,
            store,
            source,
            target,
            ids,
            _dir: dir,
        })
    }

    async fn run(&self, opts: &RunOptions) -> Result<RunReport, DemoError> {
        run_once(
            &self.config,
            Arc::clone(&self.source),
            Arc::clone(&self.target),
            &self.store,
            opts,
        )
        .await
        .map_err(err)
    }

    fn ext(&self, id: u64) -> String {
        crate::mapper::ext_id_with(&self.config.mapping.ext_id_prefix, id)
    }

    fn user(&self, id: u64) -> Value {
        self.nevis.user(&self.ext(id)).unwrap_or(Value::Null)
    }

    fn writes(&self) -> u64 {
        let stats = self.nevis.stats();
        stats.creates + stats.patches
    }

    fn state_count(&self, state: &str) -> usize {
        self.nevis
            .users()
            .iter()
            .filter(|u| u["userState"] == state)
            .count()
    }
}

/// Runs the demo with `users` sample users (at least 100); `Ok` when every step did what it
/// should.
pub async fn run(users: usize) -> Result<(), DemoError> {
    let started = Instant::now();
    let mut demo = Demo::start(users.max(100)).await?;
    println!(
        "demo: fake Nexudus at {} with {} users, fake nevisIDM at {}",
        demo.nexudus.base_url(),
        demo.ids.len(),
        demo.nevis.base_url()
    );
    import(&demo).await?;
    let picks = picked(&demo);
    changes(&demo, picks).await?;
    mass_disappearance(&demo).await?;
    hand_edit(&demo, picks[4]).await?;
    roles(&mut demo, [picks[0], picks[1]]).await?;
    final_table(&demo, &picks);
    history(&demo, picks[0])?;
    println!(
        "demo: every step did what it should ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Step 1: the first import creates everyone; a rerun with nothing changed writes nothing.
async fn import(demo: &Demo) -> Result<(), DemoError> {
    println!("\n1. First import: every Nexudus user is created in nevisIDM.");
    let first = demo.run(&RunOptions::default()).await?;
    println!("   import -> {}", first.summary_line());
    check(
        first.exit_code() == 0 && demo.nevis.user_count() == demo.ids.len(),
        || format!("{} users in nevisIDM", demo.nevis.user_count()),
    )?;
    println!(
        "   nevisIDM now holds {} users ({} disabled: inactive in Nexudus)",
        demo.nevis.user_count(),
        demo.state_count("disabled")
    );
    let before = demo.writes();
    let rerun = demo.run(&RunOptions::default()).await?;
    let writes = demo.writes() - before;
    println!("   rerun  -> {} ({writes} writes)", rerun.summary_line());
    check(writes == 0, || {
        format!("an unchanged rerun wrote {writes} times")
    })
}

/// The users the lifecycle steps change: the first five active after the import (renamed, French,
/// deactivated, deleted, edited by hand).
fn picked(demo: &Demo) -> [u64; 5] {
    let active: Vec<u64> = demo
        .ids
        .iter()
        .copied()
        .filter(|id| demo.user(*id)["userState"] == "active")
        .take(5)
        .collect();
    [active[0], active[1], active[2], active[3], active[4]]
}

/// Step 2: four changes in Nexudus, planned by a dry run (nothing written), then applied.
async fn changes(demo: &Demo, picks: [u64; 5]) -> Result<(), DemoError> {
    let [renamed, french, deactivated, deleted, _] = picks;
    println!(
        "\n2. Changes in Nexudus: user {renamed} renamed, {french} now prefers French, \
         {deactivated} deactivated, {deleted} deleted."
    );
    demo.nexudus.update_user(renamed, |u| {
        u.insert("FullName".into(), json!("Renée Zellweger-Demo"));
    });
    demo.nexudus.update_user(french, |u| {
        u.insert("PreferredLanguageId".into(), json!(4)); // fr-FR in the fake's languages
    });
    demo.nexudus.update_user(deactivated, |u| {
        u.insert("Active".into(), json!(false));
    });
    demo.nexudus.remove_user(deleted);

    let plan = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&plan);
    let dry = RunOptions {
        dry_run: Some(Arc::new(move |op: &Value| {
            sink.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(op.clone());
        })),
        ..RunOptions::default()
    };
    let before = demo.writes();
    demo.run(&dry).await?;
    let plan = plan
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    println!("   --dry-run plans {} writes and makes none:", plan.len());
    for op in &plan {
        println!("     {op}");
    }
    check(plan.len() == 4 && demo.writes() == before, || {
        format!("the plan has {} writes: {plan:?}", plan.len())
    })?;

    let applied = demo.run(&RunOptions::default()).await?;
    println!("   applied -> {}", applied.summary_line());
    let (r, f, a, d) = (
        demo.user(renamed),
        demo.user(french),
        demo.user(deactivated),
        demo.user(deleted),
    );
    check(
        r["name"]["familyName"] == "Zellweger-Demo"
            && f["languageCode"] == "fr"
            && a["userState"] == "disabled"
            && d["userState"] == "disabled",
        || format!("after applying: {r} {f} {a} {d}"),
    )
}

/// Step 3: more users vanish at once than the deletion safety allows: held, then approved.
async fn mass_disappearance(demo: &Demo) -> Result<(), DemoError> {
    let limit = demo.config.sync.max_disable_percent;
    let known = demo.ids.len() as f64;
    let vanish = (known * limit / 100.0).floor() as usize + 5;
    let gone: Vec<u64> = demo
        .ids
        .iter()
        .rev()
        .copied()
        .filter(|id| demo.user(*id)["userState"] == "active")
        .take(vanish)
        .collect();
    println!(
        "\n3. {} users vanish from Nexudus at once (over sync.max_disable_percent = {limit} %): \
         the deletion safety holds every disable.",
        gone.len()
    );
    for id in &gone {
        demo.nexudus.remove_user(*id);
    }
    let held = demo.run(&RunOptions::default()).await?;
    println!(
        "   run -> {} (exit {})",
        held.summary_line(),
        held.exit_code()
    );
    let still_active = gone
        .iter()
        .all(|id| demo.user(*id)["userState"] == "active");
    check(
        held.counts().held_disables == gone.len() as u64 && held.exit_code() == 1 && still_active,
        || format!("held {} of {}", held.counts().held_disables, gone.len()),
    )?;
    println!("   an operator checks, then approves with --sync-now --allow-mass-disable:");
    let approved = demo
        .run(&RunOptions {
            allow_mass_disable: true,
            ..RunOptions::default()
        })
        .await?;
    println!("   run -> {}", approved.summary_line());
    let all_disabled = gone
        .iter()
        .all(|id| demo.user(*id)["userState"] == "disabled");
    check(
        approved.counts().disabled == gone.len() as u64 && all_disabled,
        || format!("disabled {} of {}", approved.counts().disabled, gone.len()),
    )
}

/// Step 4: someone edits a user in the nevisIDM console; checkpoints cannot see it, a reconcile
/// compares with nevisIDM itself and sets it back.
async fn hand_edit(demo: &Demo, edited: u64) -> Result<(), DemoError> {
    let ext = demo.ext(edited);
    let right = demo.user(edited)["name"]["familyName"].clone();
    println!("\n4. An administrator renames {ext} by hand in nevisIDM.");
    demo.nevis.modify_user(&ext, |u| {
        u.insert(
            "name".into(),
            json!({"firstName": "Hand", "familyName": "Edited"}),
        );
    });
    let ordinary = demo.run(&RunOptions::default()).await?;
    println!(
        "   an ordinary run compares with its checkpoints and sees nothing -> updated={}",
        ordinary.counts().updated
    );
    let reconcile = demo
        .run(&RunOptions {
            reconcile: true,
            ..RunOptions::default()
        })
        .await?;
    println!("   --reconcile -> {}", reconcile.summary_line());
    let now = demo.user(edited)["name"]["familyName"].clone();
    check(reconcile.counts().drift >= 1 && now == right, || {
        format!("after the reconcile the family name is {now}, expected {right}")
    })
}

/// Step 5: a UserRole "Receptionist" is mapped onto the nevisIDM role `frontdesk`: its members
/// are granted it, a member who leaves loses it, and a role granted by hand stays.
async fn roles(demo: &mut Demo, picks: [u64; 2]) -> Result<(), DemoError> {
    println!(
        "\n5. Roles: the Nexudus UserRole \"Receptionist\" is mapped onto nevisIDM's frontdesk."
    );
    demo.nevis.add_roles(&["frontdesk", "vip"]);
    let role = demo
        .nexudus
        .add_user_role(1, "Main Street", "Receptionist", &picks);
    demo.config.roles = Some(RolesConfig {
        map: vec![RoleMapping {
            nexudus: RoleSourceName::Name("Receptionist".into()),
            nevis: vec!["frontdesk".into()],
        }],
        profile_unit_ext_id: None,
        max_revokes: 5,
        max_revoke_percent: 25,
        full_read_every: Duration::from_secs(600),
    });
    let (kept, left) = (demo.ext(picks[0]), demo.ext(picks[1]));
    demo.nevis.grant_by_hand(&kept, "vip");
    println!("   an administrator grants {kept} the unmapped role vip by hand");
    let granted = demo.run(&RunOptions::default()).await?;
    println!("   both receptionists -> {}", granted.summary_line());
    check(granted.counts().granted == 2, || {
        format!("{} roles granted, expected 2", granted.counts().granted)
    })?;
    demo.nexudus.set_role_members(role, &picks[..1]);
    println!("   {left} leaves the front desk in Nexudus");
    let revoked = demo.run(&RunOptions::default()).await?;
    println!("   -> {}", revoked.summary_line());
    let (kept_roles, left_roles) = (demo.nevis.user_roles(&kept), demo.nevis.user_roles(&left));
    println!("   {kept} holds {kept_roles:?}; {left} holds {left_roles:?}");
    check(
        revoked.counts().revoked == 1
            && kept_roles == ["frontdesk", "vip"]
            && !left_roles.iter().any(|r| r == "frontdesk"),
        || format!("{kept} holds {kept_roles:?}, {left} holds {left_roles:?}"),
    )
}

/// Step 7: the provisioning log of the user renamed in step 2 (and granted a role in step 5).
fn history(demo: &Demo, id: u64) -> Result<(), DemoError> {
    let query = crate::audit::query::Query {
        who: Some(id.to_string()),
        ..Default::default()
    };
    let page = query.run(&demo.store).map_err(err)?;
    println!(
        "\n7. The provisioning log of {} (--history {id}), newest first:",
        demo.ext(id)
    );
    for line in crate::audit::query::table(&page).lines() {
        println!("   {line}");
    }
    let ops: Vec<&str> = page.entries.iter().map(|e| e.operation.as_str()).collect();
    check(ops == ["grant", "update", "create"], || {
        format!("the log of {id} holds {ops:?}")
    })
}

/// Step 6: what nevisIDM holds now, in numbers and for the users the steps touched.
fn final_table(demo: &Demo, picks: &[u64]) {
    println!(
        "\n6. nevisIDM now: {} users, {} active, {} disabled. The users the steps touched:",
        demo.nevis.user_count(),
        demo.state_count("active"),
        demo.state_count("disabled")
    );
    println!("   {:<22} {:<32} {:<4} state", "extId", "name", "lang");
    for &id in picks {
        let u = demo.user(id);
        let name = format!(
            "{} {}",
            u["name"]["firstName"].as_str().unwrap_or(""),
            u["name"]["familyName"].as_str().unwrap_or("")
        );
        println!(
            "   {:<22} {:<32} {:<4} {}",
            demo.ext(id),
            name.trim(),
            u["languageCode"].as_str().unwrap_or("?"),
            u["userState"].as_str().unwrap_or("?")
        );
    }
}
