//! The provisioning log's cost: the same import into an empty nevisIDM with the log off and on,
//! alternated (`rounds` each, the fastest of each kept, since these machines are noisy); the
//! store's growth per entry and for a 100,000-user import; and the entries an unchanged rerun
//! writes (none).

use std::path::Path;
use std::time::Duration;

use nexudus_nevis_sync::sandbox::{FakeNevis, NevisFakeConfig};
use nexudus_nevis_sync::store::Store;

/// What the phase measured.
pub struct AuditCost {
    /// The fastest import of each: log off, log on.
    pub off: Duration,
    pub on: Duration,
    pub entries: u64,
    /// Store bytes on disk after the import: log off, log on.
    pub bytes_off: u64,
    pub bytes_on: u64,
    /// Entries an unchanged full rerun wrote.
    pub rerun_entries: u64,
}

/// The log's entries and the store's size on disk (sled's own figure, as
/// `store_size_bytes` reports it).
fn measured(store: &Path) -> (u64, u64) {
    let Ok(store) = Store::open(store, 64 << 20) else {
        return (0, 0);
    };
    (
        store.audit_len().unwrap_or(0),
        store.size_on_disk().unwrap_or(0),
    )
}

impl AuditCost {
    pub fn print(&self, users: usize) {
        let per_entry =
            self.bytes_on.saturating_sub(self.bytes_off) as f64 / self.entries.max(1) as f64;
        println!(
            "provisioning log: import of {users} users {:.2}s with the log, {:.2}s without: \
             ratio {:.3} (target <= 1.05)",
            self.on.as_secs_f64(),
            self.off.as_secs_f64(),
            self.on.as_secs_f64() / self.off.as_secs_f64()
        );
        let grown = self.bytes_on.saturating_sub(self.bytes_off) as f64 / 1048576.0;
        println!(
            "provisioning log: {} entries; store {:.1} MiB with, {:.1} MiB without: it grew {grown:.1} \
             MiB for this import, {per_entry:.0} bytes an entry, {:.1} MiB for a 100,000-user \
             import at that rate; an unchanged rerun wrote {} entries",
            self.entries,
            self.bytes_on as f64 / 1048576.0,
            self.bytes_off as f64 / 1048576.0,
            per_entry * 100_000.0 / 1048576.0,
            self.rerun_entries
        );
    }
}

/// Measures the log's cost: `rounds` imports each way, alternated.
pub async fn measure(
    latency: Duration,
    rounds: usize,
    dir: &Path,
    config: impl Fn(&FakeNevis, &Path, bool) -> std::path::PathBuf,
    run: impl Fn(&Path, &[&str]) -> (i32, Duration),
) -> AuditCost {
    let mut cost = AuditCost {
        off: Duration::MAX,
        on: Duration::MAX,
        entries: 0,
        bytes_off: 0,
        bytes_on: 0,
        rerun_entries: 0,
    };
    for round in 0..rounds.max(1) {
        for on in [false, true] {
            // A fresh nevisIDM (everyone is created) and a fresh store for each import.
            let nevis = FakeNevis::start(NevisFakeConfig::default())
                .await
                .expect("start a fake nevisIDM");
            nevis.set_latency(latency);
            let sub = dir.join(format!("audit-{round}-{on}"));
            std::fs::create_dir_all(&sub).expect("a directory per import");
            let path = config(&nevis, &sub, on);
            let (code, wall) = run(&path, &[]);
            assert_eq!(code, 0, "the import exited {code}");
            let store = sub.join("store");
            let (entries, bytes) = measured(&store);
            if on {
                cost.on = cost.on.min(wall);
                cost.entries = entries;
                cost.bytes_on = bytes;
                let _ = run(&path, &[]);
                cost.rerun_entries = measured(&store).0 - entries;
            } else {
                cost.off = cost.off.min(wall);
                cost.bytes_off = bytes;
            }
            let _ = std::fs::remove_dir_all(&sub);
        }
    }
    cost
}
