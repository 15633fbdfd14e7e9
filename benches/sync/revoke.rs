//! Time to revoke: the real daemon with its default settings (a 15-second schedule; `--revoke-
//! schedule-s` changes it) against the fakes, a batch of deactivations (`Active` set to false),
//! deletions, changes (a new `FullName`) and creations made in the Nexudus fake at random moments
//! (seeded, so a run can be repeated), and the delay from each until nevisIDM shows it: the user
//! disabled, renamed or created. The daemon's first (full) run is over before the first event.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nexudus_nevis_sync::sandbox::{FakeNevis, FakeNexudus, NexudusUserSpec};
use serde_json::json;

pub struct RevokeArgs {
    /// Seconds between the daemon's ticks (`sync.schedule`, `*/N` seconds).
    pub schedule_s: u64,
    pub events: usize,
    pub window: Duration,
    pub seed: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Deactivation,
    Deletion,
    /// `FullName` changed: nevisIDM's `familyName` follows.
    Change,
    /// A new user: nevisIDM has it (`id` is known once it is made).
    Creation,
}

struct Event {
    kind: Kind,
    id: u64,
    at: Duration,
    made: Option<Instant>,
    delay: Option<Duration>,
}

pub struct Measured {
    /// Delays by kind; `None`: not disabled within the bound.
    pub delays: Vec<(Kind, Option<Duration>)>,
    pub nexudus_requests: u64,
    pub nexudus_throttled: u64,
    pub wall: Duration,
}

/// No event may wait longer than this for its disable.
const BOUND: Duration = Duration::from_secs(300);

/// splitmix64: a seeded generator, enough for picking users and moments.
pub struct Rng(pub u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Of every six events: two deactivations, two deletions, a change and a creation (deletions stay
/// one in three, as before changes and creations were measured), on distinct active users, at
/// random moments.
fn plan(nexudus: &FakeNexudus, nevis: &FakeNevis, args: &RevokeArgs) -> Vec<Event> {
    let mut rng = Rng(args.seed);
    let ids: Vec<u64> = nexudus
        .user_ids()
        .into_iter()
        .filter(|&id| nexudus.user(id).is_some_and(|u| u["Active"] == json!(true)))
        .filter(|&id| {
            nevis
                .user(&format!("nexudus-{id}"))
                .is_some_and(|u| u["userState"] == "active")
        })
        .collect();
    let mut chosen = std::collections::BTreeSet::new();
    let mut events = Vec::new();
    while events.len() < args.events.min(ids.len()) {
        let id = ids[rng.below(ids.len() as u64) as usize];
        if !chosen.insert(id) {
            continue;
        }
        let kind = match events.len() % 6 {
            2 | 5 => Kind::Deletion,
            1 => Kind::Change,
            4 => Kind::Creation,
            _ => Kind::Deactivation,
        };
        let at = Duration::from_millis(rng.below(args.window.as_millis() as u64));
        events.push(Event {
            kind,
            id,
            at,
            made: None,
            delay: None,
        });
    }
    events.sort_by_key(|e| e.at);
    events
}

pub async fn measure(
    nexudus: &FakeNexudus,
    nevis: &FakeNevis,
    config: &Path,
    port: u16,
    log: &Path,
    args: &RevokeArgs,
) -> Measured {
    let mut child = start_daemon(config, port, log).await;
    let mut events = plan(nexudus, nevis, args);
    nexudus.reset_stats();
    let started = Instant::now();
    while events.iter().any(|e| e.delay.is_none()) && started.elapsed() < args.window + BOUND {
        let now = started.elapsed();
        for e in events.iter_mut() {
            match e.made {
                None if e.at <= now => {
                    match e.kind {
                        Kind::Deactivation => {
                            nexudus.update_user(e.id, |u| {
                                u.insert("Active".into(), json!(false));
                            });
                        }
                        Kind::Deletion => {
                            nexudus.remove_user(e.id);
                        }
                        Kind::Change => {
                            nexudus.update_user(e.id, |u| {
                                u.insert("FullName".into(), json!(renamed(e.id)));
                            });
                        }
                        Kind::Creation => {
                            e.id = nexudus.insert_user(NexudusUserSpec::new(
                                "Revoke Newcomer",
                                format!("newcomer.{}@example.com", e.id),
                            ));
                        }
                    }
                    e.made = Some(Instant::now());
                }
                Some(made) if e.delay.is_none() => {
                    let ext_id = format!("nexudus-{}", e.id);
                    let shown = nevis.user(&ext_id).is_some_and(|u| match e.kind {
                        Kind::Deactivation | Kind::Deletion => u["userState"] == "disabled",
                        Kind::Change => u["name"]["familyName"] == family_name(e.id).as_str(),
                        Kind::Creation => true,
                    });
                    if shown {
                        e.delay = Some(made.elapsed());
                    }
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let wall = started.elapsed();
    let stats = nexudus.stats();
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let _ = child.wait();
    Measured {
        delays: events.iter().map(|e| (e.kind, e.delay)).collect(),
        nexudus_requests: stats.requests,
        nexudus_throttled: stats.throttled,
        wall,
    }
}

/// The new `FullName` of a changed user, and the `familyName` it maps to.
fn renamed(id: u64) -> String {
    format!("Renamed {}", family_name(id))
}

fn family_name(id: u64) -> String {
    format!("Changed{id}")
}

/// Waits (bounded) until the daemon's `/readyz` answers 200: its first run is over.
/// The daemon on `config`, its log in `log`, once `/healthz` on `port` answers.
pub async fn start_daemon(config: &Path, port: u16, log: &Path) -> std::process::Child {
    let child = Command::new(env!("CARGO_BIN_EXE_nexudus-nevis-sync"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("start the daemon");
    wait_ready(port).await;
    child
}

async fn wait_ready(port: u16) {
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/readyz");
    let deadline = Instant::now() + BOUND;
    while Instant::now() < deadline {
        if let Ok(r) = http.get(&url).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the daemon was not ready within {BOUND:?}");
}

/// p50, p99 and max of the delays of one kind, in seconds; `missed`: never disabled.
pub fn summary(delays: &[(Kind, Option<Duration>)], kind: Kind) -> (f64, f64, f64, usize) {
    let mut got: Vec<f64> = delays
        .iter()
        .filter(|(k, _)| *k == kind)
        .filter_map(|(_, d)| d.map(|d| d.as_secs_f64()))
        .collect();
    let missed = delays
        .iter()
        .filter(|(k, d)| *k == kind && d.is_none())
        .count();
    if got.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN, missed);
    }
    got.sort_by(f64::total_cmp);
    let at = |q: f64| got[((q * got.len() as f64).ceil() as usize).clamp(1, got.len()) - 1];
    (at(0.50), at(0.99), got[got.len() - 1], missed)
}
