//! Roles (issue 21): `mapped` UserRoles seeded in the Nexudus fake (their `UpdatedOn` two hours
//! old, as an account's settled roles are), each mapped onto a role of its own in nevisIDM, and
//! `members` users in each. Measured:
//!
//! 1. the first run with the map (`--sync-now`, full: resolution, the reads, every grant);
//! 2. an idle incremental tick without the map and one with it: what the map adds to a tick;
//! 3. the daemon on its default schedule, membership changes (a user added to or removed from a
//!    UserRole) made in the fake at random moments (seeded), half of them moving the UserRole's
//!    `UpdatedOn` and half not (on separate UserRoles, so that a change which moved it does not
//!    make the next one on the same UserRole arrive early), and the delay from each until the
//!    grant or revocation shows in the nevisIDM fake; with the Nexudus requests of the window by
//!    kind.

use std::path::Path;
use std::time::{Duration, Instant};

use nexudus_nevis_sync::sandbox::{FakeNevis, FakeNexudus};

use super::revoke::{Kind, summary};

pub struct RolesArgs {
    pub mapped: usize,
    pub members: usize,
    pub events: usize,
    pub window: Duration,
    pub seed: u64,
}

/// No change may wait longer than this: the slow safety net is 10 minutes on the defaults.
const BOUND: Duration = Duration::from_secs(20 * 60);

/// The `[[roles.map]]` tables of the bench: UserRole `Bench Role {k}` onto `bench-{k}`.
pub fn map_toml(args: &RolesArgs) -> String {
    (0..args.mapped)
        .map(|k| format!("[[roles.map]]\nnexudus = \"Bench Role {k}\"\nnevis = [\"bench-{k}\"]\n"))
        .collect()
}

/// Seeds the UserRoles (two hours old) and the nevisIDM roles; answers each UserRole's Id and
/// members.
pub fn seed(nexudus: &FakeNexudus, nevis: &FakeNevis, args: &RolesArgs) -> Vec<(u64, Vec<u64>)> {
    let names: Vec<String> = (0..args.mapped).map(|k| format!("bench-{k}")).collect();
    nevis.add_roles(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let users = nexudus.user_ids();
    nexudus.set_clock(Some(chrono::Utc::now() - chrono::Duration::hours(2)));
    let ids = (0..args.mapped)
        .map(|k| {
            let members: Vec<u64> = users
                .iter()
                .skip(k * args.members)
                .take(args.members)
                .copied()
                .collect();
            let id = nexudus.add_user_role(1, "Main Street", &format!("Bench Role {k}"), &members);
            (id, members)
        })
        .collect();
    nexudus.set_clock(None);
    ids
}

struct Change {
    role: usize,
    user: u64,
    grant: bool,
    moves: bool,
    at: Duration,
    made: Option<Instant>,
    delay: Option<Duration>,
}

pub struct Measured {
    /// (moved `UpdatedOn`, grant, delay or `None`: not seen within the bound).
    pub delays: Vec<(bool, bool, Option<Duration>)>,
    pub wall: Duration,
    pub users_requests: usize,
    pub listing_requests: usize,
    pub read_requests: usize,
    pub throttled: u64,
}

impl Measured {
    /// p50, p99, max, missed of the changes that moved `UpdatedOn` (`moves`) or did not.
    pub fn summary(&self, moves: bool) -> (usize, (f64, f64, f64, usize)) {
        // revoke::summary takes kinds: one kind stands for the group asked for.
        let group: Vec<(Kind, Option<Duration>)> = self
            .delays
            .iter()
            .filter(|(m, _, _)| *m == moves)
            .map(|(_, _, d)| (Kind::Change, *d))
            .collect();
        (group.len(), summary(&group, Kind::Change))
    }
}

/// The daemon (already configured with the map) and the changes; see the module doc.
pub async fn measure(
    nexudus: &FakeNexudus,
    nevis: &FakeNevis,
    roles: &mut [(u64, Vec<u64>)],
    config: &Path,
    port: u16,
    log: &Path,
    args: &RolesArgs,
) -> Measured {
    let mut child = super::revoke::start_daemon(config, port, log).await;
    let mut changes = plan(nexudus, roles.len(), args);
    nexudus.reset_stats();
    let started = Instant::now();
    while changes.iter().any(|c| c.delay.is_none()) && started.elapsed() < args.window + BOUND {
        let now = started.elapsed();
        for c in changes.iter_mut() {
            let ext_id = format!("nexudus-{}", c.user);
            match c.made {
                None if c.at <= now => {
                    let (id, members) = &mut roles[c.role];
                    if c.grant {
                        members.push(c.user);
                    } else {
                        members.retain(|&u| u != c.user);
                    }
                    nexudus.set_role_updates_move_updated_on(c.moves);
                    nexudus.set_role_members(*id, members);
                    nexudus.set_role_updates_move_updated_on(true);
                    c.made = Some(Instant::now());
                }
                Some(made) if c.delay.is_none() => {
                    let role = format!("bench-{}", c.role);
                    if nevis.user_roles(&ext_id).contains(&role) == c.grant {
                        c.delay = Some(made.elapsed());
                    }
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = started.elapsed();
    let requests: Vec<_> = nexudus
        .request_log()
        .into_iter()
        .filter(|r| r.at >= started.into())
        .collect();
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let _ = child.wait();
    let listing = "/api/security/userroles";
    Measured {
        delays: changes
            .iter()
            .map(|c| (c.moves, c.grant, c.delay))
            .collect(),
        wall,
        users_requests: requests
            .iter()
            .filter(|r| !r.path.starts_with(listing))
            .count(),
        listing_requests: requests.iter().filter(|r| r.path == listing).count(),
        read_requests: requests
            .iter()
            .filter(|r| r.path.starts_with(&format!("{listing}/")))
            .count(),
        throttled: nexudus.stats().throttled,
    }
}

/// Alternately a grant (a user of no mapped UserRole added) and a revocation (a member removed);
/// even changes move `UpdatedOn` on even UserRoles, odd ones do not, on odd UserRoles.
fn plan(nexudus: &FakeNexudus, mapped: usize, args: &RolesArgs) -> Vec<Change> {
    let mut rng = super::revoke::Rng(args.seed);
    let users = nexudus.user_ids();
    let outsiders = &users[(args.mapped * args.members).min(users.len())..];
    let mut used = std::collections::BTreeSet::new();
    let mut changes = Vec::new();
    let pairs = mapped / 2;
    while changes.len() < args.events && pairs > 0 && args.members > 0 {
        let i = changes.len();
        let moves = i % 2 == 0;
        let role = 2 * (rng.below(pairs as u64) as usize) + usize::from(!moves);
        let grant = (i / 2) % 2 == 0;
        let user = if grant {
            outsiders[rng.below(outsiders.len() as u64) as usize]
        } else {
            users[role * args.members + rng.below(args.members as u64) as usize]
        };
        if !used.insert(user) {
            continue;
        }
        changes.push(Change {
            role,
            user,
            grant,
            moves,
            at: Duration::from_millis(rng.below(args.window.as_millis() as u64)),
            made: None,
            delay: None,
        });
    }
    changes.sort_by_key(|c| c.at);
    changes
}
