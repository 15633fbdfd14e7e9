//! The configuration file as the operator writes it: serde types with `deny_unknown_fields`, and
//! every default. Nothing here is checked; [`super::validate`] turns it into [`super::Config`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Default of `mapping.ext_id_prefix`: the prefix of every `extId` this tool creates.
pub const EXT_ID_PREFIX: &str = "nexudus-";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) nexudus: RawNexudus,
    pub(super) nevis: RawNevis,
    #[serde(default)]
    pub(super) sync: RawSync,
    #[serde(default)]
    pub(super) retry: RawRetry,
    pub(super) store: RawStore,
    #[serde(default)]
    pub(super) http: RawHttp,
    #[serde(default)]
    pub(super) mapping: RawMapping,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) scope: RawScope,
    #[serde(default)]
    pub(super) roles: RawRoles,
    #[serde(default)]
    pub(super) audit: RawAudit,
}

/// `[audit]`: the provisioning log (issue 22).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAudit {
    pub(super) enabled: bool,
    #[serde(with = "humantime_serde")]
    pub(super) retention: Duration,
    pub(super) max_entries: i64,
    pub(super) values: String,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            enabled: true,
            retention: Duration::from_secs(90 * 86_400),
            max_entries: 1_000_000,
            values: "full".into(),
        }
    }
}

/// `[roles]` and its `[[roles.map]]` entries (issue 21): without a map, roles are not synced.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRoles {
    pub(super) map: Vec<RawRoleMap>,
    pub(super) profile_unit_ext_id: Option<String>,
    pub(super) max_revokes: i64,
    pub(super) max_revoke_percent: i64,
    #[serde(with = "humantime_serde")]
    pub(super) full_read_every: Duration,
}

impl Default for RawRoles {
    fn default() -> Self {
        RawRoles {
            map: Vec::new(),
            profile_unit_ext_id: None,
            // A role's revocations are held only when more of its holders than both the floor
            // and the share would lose it (`roles::plan::revocations_held`): a one-person role
            // or a few leavers are never delayed; an emptied role of six or more is.
            max_revokes: 5,
            max_revoke_percent: 25,
            // Memberships may change without the UserRole's UpdatedOn moving: every mapped
            // UserRole is read in full at least this often (the 15-minute target, with room).
            full_read_every: Duration::from_secs(600),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoleMap {
    pub(super) nexudus: String,
    pub(super) nevis: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawScope {
    pub(super) admins: Option<String>,
    pub(super) exclude_ids: Vec<u64>,
    pub(super) email_domains: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNexudus {
    pub(super) base_url: String,
    pub(super) username: String,
    pub(super) password: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    #[serde(default = "default_page_size")]
    pub(super) page_size: i64,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub(super) request_timeout: Duration,
    #[serde(default = "default_min_interval", with = "humantime_serde")]
    pub(super) min_request_interval: Duration,
    #[serde(default = "default_per_minute")]
    pub(super) max_requests_per_minute: i64,
    #[serde(default = "default_per_hour")]
    pub(super) max_requests_per_hour: i64,
    #[serde(default = "default_per_day")]
    pub(super) max_requests_per_day: i64,
    #[serde(default = "default_auth")]
    pub(super) auth: String,
    pub(super) totp: Option<String>,
    pub(super) totp_file: Option<PathBuf>,
    pub(super) client_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNevis {
    pub(super) base_url: String,
    pub(super) client_ext_id: String,
    pub(super) token: Option<String>,
    pub(super) token_file: Option<PathBuf>,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub(super) request_timeout: Duration,
    pub(super) client_cert: Option<PathBuf>,
    pub(super) client_key: Option<PathBuf>,
    pub(super) ca_cert: Option<PathBuf>,
    #[serde(default)]
    pub(super) insecure_skip_verify: bool,
    pub(super) oauth_token_url: Option<String>,
    pub(super) oauth_client_id: Option<String>,
    pub(super) oauth_client_secret: Option<String>,
    pub(super) oauth_client_secret_file: Option<PathBuf>,
    pub(super) oauth_scope: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSync {
    pub(super) schedule: String,
    pub(super) concurrency: i64,
    pub(super) max_disables: i64,
    pub(super) max_disable_percent: f64,
    #[serde(with = "humantime_serde")]
    pub(super) shutdown_grace: Duration,
    pub(super) full_every: i64,
    #[serde(with = "humantime_serde")]
    pub(super) incremental_overlap: Duration,
    pub(super) missing_runs_before_disable: i64,
    #[serde(with = "humantime_serde")]
    pub(super) archive_after: Option<Duration>,
    pub(super) adopt: String,
    pub(super) reenable_on_reconcile: bool,
    pub(super) reconcile_schedule: String,
}

impl Default for RawSync {
    fn default() -> Self {
        RawSync {
            // Every 15 seconds: time to revoke within a minute, and within Nexudus's quota (an
            // incremental tick costs two requests: 480 an hour; README "Time to revoke").
            schedule: "*/15 * * * * *".into(),
            concurrency: 8,
            max_disables: 50,
            max_disable_percent: 10.0,
            shutdown_grace: Duration::from_secs(30),
            // One full listing an hour on the default schedule (deletions are noticed sooner by
            // the probe of every incremental run).
            full_every: 240,
            incremental_overlap: Duration::from_secs(600),
            missing_runs_before_disable: 1,
            archive_after: None,
            adopt: "off".into(),
            reenable_on_reconcile: false,
            // Daily at 03:30 (seconds minutes hours day-of-month month day-of-week).
            reconcile_schedule: "0 30 3 * * *".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRetry {
    pub(super) max_attempts: i64,
    #[serde(with = "humantime_serde")]
    pub(super) initial_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub(super) max_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub(super) max_elapsed: Duration,
}

impl Default for RawRetry {
    fn default() -> Self {
        RawRetry {
            max_attempts: 6,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(120),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) path: PathBuf,
    #[serde(default = "default_cache_mib")]
    pub(super) cache_capacity_mib: i64,
    #[serde(default = "default_open_wait", with = "humantime_serde")]
    pub(super) open_wait: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawHttp {
    pub(super) listen: String,
    #[serde(with = "humantime_serde")]
    pub(super) ready_max_age: Option<Duration>,
    /// Without it `/status` is open to whoever reaches `listen`, as it always was.
    pub(super) auth_token_file: Option<PathBuf>,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            listen: "127.0.0.1:9464".into(),
            ready_max_age: None,
            auth_token_file: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMapping {
    pub(super) languages: BTreeMap<String, String>,
    pub(super) default_language: String,
    pub(super) allowed_languages: Vec<String>,
    pub(super) name_split: String,
    pub(super) login_id: String,
    pub(super) ext_id_prefix: String,
    pub(super) remarks: Option<String>,
    pub(super) modification_comment: Option<String>,
    pub(super) properties: BTreeMap<String, String>,
}

impl Default for RawMapping {
    fn default() -> Self {
        RawMapping {
            languages: [("1", "en"), ("2", "es"), ("3", "en")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            default_language: "en".into(),
            // nevisIDM's default client policy.
            allowed_languages: ["de", "en", "fr", "it"].map(String::from).to_vec(),
            name_split: "last_word".into(),
            login_id: "email".into(),
            ext_id_prefix: EXT_ID_PREFIX.into(),
            remarks: None,
            modification_comment: None,
            properties: BTreeMap::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLog {
    pub(super) format: String,
    pub(super) level: String,
    #[serde(with = "humantime_serde")]
    pub(super) progress_interval: Duration,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: "pretty".into(),
            level: "info".into(),
            progress_interval: Duration::from_secs(10),
        }
    }
}

fn default_auth() -> String {
    "basic".into()
}
fn default_page_size() -> i64 {
    1000
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_min_interval() -> Duration {
    // Nexudus documents one request per 100 ms; keep a margin for clock jitter on both ends.
    Duration::from_millis(110)
}
fn default_per_minute() -> i64 {
    // Nexudus documents 120 a minute; the same margin.
    110
}
fn default_per_hour() -> i64 {
    // Nexudus documents 5,000 an hour: a 10 % margin for other clients of the same API user and
    // for counts a crash loses between two store flushes.
    4500
}
fn default_per_day() -> i64 {
    // Nexudus documents 200,000 a day: the same margin.
    180_000
}
fn default_cache_mib() -> i64 {
    // Tens of MiB are plenty: an unchanged user costs one read of a small value, and the
    // benchmark keeps a 100,000-user import under 64 MiB peak RSS with this.
    16
}
fn default_open_wait() -> Duration {
    // A `--status` or `--history` holds the store for the moment it takes to open it, read and
    // close: an idle tick, process start and store open included, takes 0.1-0.2 s at 100,000
    // users (BENCHMARKS.md). Five seconds is many times that, and still fails a real second
    // process (a daemon and a timer on one store) within seconds.
    Duration::from_secs(5)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{MINIMAL, err};
    use crate::config::Config;
    use secrecy::ExposeSecret;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::from_toml_str(MINIMAL).unwrap();
        assert_eq!(c.nexudus.page_size, 1000);
        assert_eq!(c.sync.concurrency, 8);
        assert_eq!(c.sync.max_disables, 50);
        assert_eq!(c.sync.max_disable_percent, 10.0);
        assert_eq!(c.sync.schedule, "*/15 * * * * *");
        assert_eq!(c.sync.full_every, 240);
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:9464");
        assert_eq!(c.mapping.languages.get(&2).map(String::as_str), Some("es"));
        assert_eq!(c.mapping.default_language, "en");
        assert_eq!(
            c.mapping.allowed_languages.iter().collect::<Vec<_>>(),
            ["de", "en", "fr", "it"]
        );
        assert_eq!(
            (
                c.nexudus.max_requests_per_hour,
                c.nexudus.max_requests_per_day
            ),
            (4500, 180_000)
        );
        assert_eq!(
            c.nevis.token.as_ref().unwrap().expose_secret(),
            "tok-secret-nevis"
        );
    }

    #[test]
    fn store_open_wait_defaults_to_five_seconds_and_is_bounded() {
        let c = Config::from_toml_str(MINIMAL).unwrap();
        assert_eq!(c.store.open_wait, std::time::Duration::from_secs(5));
        let e = err(&MINIMAL.replace("[store]", "[store]\nopen_wait = \"1h\""));
        assert!(e.contains("store.open_wait"), "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e = err(&MINIMAL.replace("[store]", "[store]\npaht = \"x\""));
        assert!(e.contains("paht"), "{e}");
        let e = err(&format!("{MINIMAL}\n[bogus]\nx = 1\n"));
        assert!(e.contains("bogus"), "{e}");
    }
}
