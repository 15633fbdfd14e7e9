//! Configuration: TOML file plus `NEXUDUS_NEVIS_SYNC__SECTION__KEY` environment overrides, parsed
//! into raw serde types and then validated into [`Config`], the only type the rest of the crate sees.
//!
//! Validation names the offending key. Secrets are read (inline or from `*_file`) into
//! [`SecretString`], whose `Debug` prints `[REDACTED]`, so no config value can leak a credential.
//!
//! - this file: the validated types and loading (file, string, environment)
//! - `raw`: the file format as the operator writes it (serde types, every default)
//! - `validate`: raw -> [`Config`], one function per section
//! - `secrets`: `*_file` reading (the daemon's own bearer token too), PEM files, the warning for an
//!   inline secret others may read
//!
//! Cron expressions are checked with [`crate::schedule::cron`], a leaf module, so that the
//! config never imports the daemon loop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

/// Environment variable prefix for overrides: `NEXUDUS_NEVIS_SYNC__NEVIS__TOKEN` sets `nevis.token`.
pub const ENV_PREFIX: &str = "NEXUDUS_NEVIS_SYNC";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(String),
    #[error("invalid configuration key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

mod raw;
mod secrets;
mod validate;

pub use raw::EXT_ID_PREFIX;

#[derive(Debug, Clone)]
pub struct Config {
    pub nexudus: NexudusConfig,
    pub nevis: NevisConfig,
    pub sync: SyncConfig,
    pub retry: RetryConfig,
    pub store: StoreConfig,
    pub http: HttpConfig,
    pub mapping: MappingConfig,
    pub log: LogConfig,
    pub scope: ScopeConfig,
    /// `[roles]`: `None` without `[[roles.map]]`, and then nothing about roles changes.
    pub roles: Option<RolesConfig>,
    /// `[audit]`: the provisioning log.
    pub audit: AuditConfig,
    /// Problems worth a warning at start-up that do not stop it (logged by `main`).
    pub warnings: Vec<String>,
}

/// Nexudus UserRoles -> nevisIDM roles (`[roles]`, issue 21). The sync owns exactly the
/// roleExtIds on the right-hand side of the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolesConfig {
    pub map: Vec<RoleMapping>,
    /// Unit of the profile created for a user who has none; without it such a user fails.
    pub profile_unit_ext_id: Option<String>,
    /// The revocation safety, per owned role: its revocations are held when more of its holders
    /// would lose it in one run than `max_revokes` and than `max_revoke_percent` % of them.
    pub max_revokes: u64,
    pub max_revoke_percent: u64,
    /// Every mapped UserRole is read in full at least this often (the safety net for membership
    /// changes that do not move the UserRole's `UpdatedOn`).
    pub full_read_every: Duration,
}

impl RolesConfig {
    /// Every roleExtId the sync owns, each once, in map order.
    pub fn owned(&self) -> Vec<String> {
        let mut owned: Vec<String> = Vec::new();
        for role in self.map.iter().flat_map(|m| &m.nevis) {
            if !owned.contains(role) {
                owned.push(role.clone());
            }
        }
        owned
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleMapping {
    pub nexudus: RoleSourceName,
    /// nevisIDM roleExtIds this source role implies.
    pub nevis: Vec<String>,
}

/// The left-hand side of a `[[roles.map]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoleSourceName {
    /// A UserRole's `Name`, resolved to its Id at the start of a run.
    Name(String),
    /// `id:<UserRole Id>`: picks one of several UserRoles sharing a name.
    Id(u64),
    /// `@admin`: Nexudus full administrators (`IsAdmin`).
    Admin,
}

impl RoleSourceName {
    pub fn parse(text: &str) -> Result<RoleSourceName, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("is empty".into());
        }
        if text == "@admin" {
            return Ok(RoleSourceName::Admin);
        }
        if text.starts_with('@') {
            return Err(format!("{text:?}: the only special name is \"@admin\""));
        }
        match text.strip_prefix("id:") {
            Some(id) => id
                .trim()
                .parse()
                .map(RoleSourceName::Id)
                .map_err(|_| format!("{text:?}: id: takes a UserRole Id (digits)")),
            None => Ok(RoleSourceName::Name(text.to_string())),
        }
    }
}

impl std::fmt::Display for RoleSourceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoleSourceName::Name(name) => write!(f, "{name:?}"),
            RoleSourceName::Id(id) => write!(f, "id:{id}"),
            RoleSourceName::Admin => f.write_str("@admin"),
        }
    }
}

/// Which Nexudus users the sync manages. A user who leaves the scope is treated like one who
/// disappeared: disabled by the next full listing, under the same deletion safety.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeConfig {
    pub admins: AdminScope,
    pub exclude_ids: std::collections::BTreeSet<u64>,
    /// Allowed email domains, lower-cased; empty means every domain.
    pub email_domains: std::collections::BTreeSet<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AdminScope {
    #[default]
    Include,
    Exclude,
    Only,
}

impl ScopeConfig {
    /// Whether a user with this Id and admin flag is managed (the email is checked separately).
    pub fn admits(&self, nexudus_id: u64, is_admin: bool) -> bool {
        let admin_ok = match self.admins {
            AdminScope::Include => true,
            AdminScope::Exclude => !is_admin,
            AdminScope::Only => is_admin,
        };
        admin_ok && !self.exclude_ids.contains(&nexudus_id)
    }

    /// Whether this (already validated) email's domain is allowed.
    pub fn admits_email(&self, email: &str) -> bool {
        self.email_domains.is_empty()
            || email
                .rsplit_once('@')
                .is_some_and(|(_, domain)| self.email_domains.contains(&domain.to_lowercase()))
    }
}

#[derive(Debug, Clone)]
pub struct NexudusConfig {
    pub base_url: Url,
    pub username: String,
    pub password: SecretString,
    pub page_size: u32,
    pub request_timeout: Duration,
    /// Smallest gap between two requests (token bucket of one).
    pub min_request_interval: Duration,
    /// Requests allowed in any sliding minute.
    pub max_requests_per_minute: u32,
    /// Requests allowed in any sliding hour, counted across runs and restarts (in the store).
    pub max_requests_per_hour: u32,
    /// Requests allowed in any sliding day, counted across runs and restarts (in the store).
    pub max_requests_per_day: u32,
    pub auth: NexudusAuth,
    /// One-time code sent with the password grant (`auth = "token"`, accounts with 2FA).
    pub totp: Option<SecretString>,
    /// `client_id` header of the token grants (Nexudus wants the same one on refresh); defaults to
    /// the username, as Nexudus does.
    pub client_id: String,
}

/// `nexudus.auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NexudusAuth {
    /// HTTP Basic with username and password on every request.
    Basic,
    /// Bearer tokens from `POST /api/token`, renewed with the rotating refresh token.
    Token,
}

#[derive(Debug, Clone)]
pub struct NevisConfig {
    pub base_url: Url,
    pub client_ext_id: String,
    /// Bearer token; optional when a client certificate or OAuth2 authenticates instead.
    pub token: Option<SecretString>,
    /// OAuth2 client credentials: short-lived access tokens instead of a static `token`.
    pub oauth: Option<NevisOAuth>,
    pub request_timeout: Duration,
    pub tls: NevisTls,
}

/// OAuth2 client credentials grant for nevisIDM access tokens (`nevis.oauth_*`).
#[derive(Debug, Clone)]
pub struct NevisOAuth {
    /// `POST` here with `grant_type=client_credentials` (e.g. `https://login.<instance>/oauth/token`).
    pub token_url: Url,
    pub client_id: String,
    pub client_secret: SecretString,
    /// Sent only when set (e.g. `nevis`).
    pub scope: Option<String>,
}

/// TLS towards nevisIDM: a client certificate (mTLS) and a private CA, all PEM.
#[derive(Debug, Clone, Default)]
pub struct NevisTls {
    /// Client certificate chain (PEM) and its private key (PEM, a secret).
    pub client_cert: Option<String>,
    pub client_key: Option<SecretString>,
    /// Extra trusted root (PEM): the CA of a private nevisIDM deployment.
    pub ca_cert: Option<String>,
    /// Accept any server certificate. Dangerous; logged loudly at every start.
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub schedule: String,
    /// Time between two scheduled runs (from the cron expression).
    pub interval: Duration,
    pub concurrency: usize,
    pub max_disables: u64,
    pub max_disable_percent: f64,
    /// How long a shutdown waits for the writes in flight.
    pub shutdown_grace: Duration,
    /// The daemon lists every user on every `full_every`-th run (and at start-up); the runs in
    /// between ask only for users changed since the watermark.
    pub full_every: u32,
    /// How far incremental listings reach back before the watermark.
    pub incremental_overlap: Duration,
    /// How many complete full listings a user must be missing from before it is disabled.
    pub missing_runs_before_disable: u32,
    /// Archive users this tool disabled that long ago (archiving deletes credentials); off if None.
    pub archive_after: Option<Duration>,
    /// Whether a Nexudus user whose create would collide with an existing nevisIDM user may take
    /// that user over (`email`) or not (`off`).
    pub adopt: AdoptMode,
    /// A reconcile re-enables users disabled by hand in nevisIDM while active in Nexudus (off:
    /// they are reported and left disabled).
    pub reenable_on_reconcile: bool,
    /// When the daemon runs a reconcile instead of an ordinary run; `None` when set to `"off"`.
    pub reconcile_schedule: Option<String>,
}

/// `sync.adopt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdoptMode {
    /// Never take over a user this tool did not create.
    Off,
    /// Take over the one nevisIDM user whose loginId or email matches, if it is unique and unlinked.
    Email,
}

#[derive(Debug, Clone)]
pub struct RetryConfig {
    pub max_attempts: usize,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub max_elapsed: Duration,
}

/// The provisioning log (`[audit]`, issue 22).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// `audit.enabled` (default true): off, no entry is written (the log kept is still read).
    pub enabled: bool,
    /// Entries older than this are pruned (default 90 days).
    pub retention: Duration,
    /// The oldest entries beyond this many are pruned (default 1,000,000).
    pub max_entries: u64,
    pub values: AuditValues,
}

/// What an entry keeps of the values it records (`audit.values`): names and emails are personal
/// data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditValues {
    /// The values before and after, as they are.
    Full,
    /// A keyed hash of each value: that it changed, and whether two entries saw the same value.
    Hashed,
    /// Only which fields changed.
    None,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub cache_capacity_bytes: u64,
    /// How long a run waits for a store another process holds (a `--status` or `--history`
    /// reading it) before it gives up, exit 2.
    pub open_wait: Duration,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// `/readyz` fails when the last successful run is older than this.
    pub ready_max_age: Duration,
    /// `http.auth_token_file`: when set, the endpoints with personal data (`/status`) answer only
    /// requests with `Authorization: Bearer <token>`, and `--status` sends it to the daemon.
    pub auth_token: Option<SecretString>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MappingConfig {
    /// Nexudus `Language` (eLanguage) -> nevisIDM `languageCode`.
    pub languages: BTreeMap<i64, String>,
    pub default_language: String,
    /// Codes nevisIDM's client policy accepts; any other mapped code becomes `default_language`.
    pub allowed_languages: std::collections::BTreeSet<String>,
    pub name_split: NameSplit,
    pub login_id: LoginIdSource,
    /// Prefix of the `extId` of users this tool creates (existing users keep theirs).
    pub ext_id_prefix: String,
    /// `remarks` set on the users this tool creates (marks them as synced), if any.
    pub remarks: Option<String>,
    /// `modificationComment` sent with every create and update this tool makes, if any.
    pub modification_comment: Option<String>,
    /// Static custom `properties` set on every synced user (diffed like any mapped field).
    pub properties: BTreeMap<String, String>,
}

/// Which word of `FullName` is the family name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameSplit {
    /// "Anna Maria Smith" -> first "Anna Maria", family "Smith".
    LastWord,
    /// "Smith Anna Maria" -> family "Smith", first "Anna Maria".
    FirstWord,
}

/// Where nevisIDM's `loginId` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginIdSource {
    /// The email, trimmed and lower-cased.
    Email,
    /// The `extId`.
    ExtId,
    /// Not sent: nevisIDM's login-ID generator chooses it, and the sync never changes it.
    None,
}

impl Default for MappingConfig {
    fn default() -> Self {
        validate::mapping(raw::RawMapping::default()).expect("built-in mapping defaults are valid")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    /// How often a run not on a terminal logs its progress (`log.progress_interval`, default 10s).
    pub progress_interval: Duration,
}

impl Config {
    /// Loads `path` (TOML) with environment overrides and validates it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::Load(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        let source = config::File::from(path).format(config::FileFormat::Toml);
        let mut config = Self::build(config::Config::builder().add_source(source))?;
        if let Some(warning) = secrets::exposed_secrets(path) {
            config.warnings.push(warning);
        }
        Ok(config)
    }

    /// Parses a TOML string with environment overrides (tests and the demo use this).
    pub fn from_toml_str(toml: &str) -> Result<Config, ConfigError> {
        let source = config::File::from_str(toml, config::FileFormat::Toml);
        Self::build(config::Config::builder().add_source(source))
    }

    fn build(
        builder: config::ConfigBuilder<config::builder::DefaultState>,
    ) -> Result<Config, ConfigError> {
        let env = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__");
        let raw: raw::RawConfig = builder
            .add_source(env)
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        validate::validate(raw)
    }
}

/// What the crate's unit tests share: a minimal valid file, and configs built on it.
#[cfg(test)]
pub(crate) mod testing {
    use super::Config;

    pub const MINIMAL: &str = r#"
        [nexudus]
        base_url = "https://spaces.nexudus.com"
        username = "sync@example.com"
        password = "hunter2-nexudus"
        [nevis]
        base_url = "https://idm.example.com"
        client_ext_id = "client-123"
        token = "tok-secret-nevis"
        [store]
        path = "/tmp/x"
    "#;

    pub fn err(toml: &str) -> String {
        Config::from_toml_str(toml).unwrap_err().to_string()
    }

    /// [`MINIMAL`] with each of `parts` (TOML) merged over it in turn, key by key: a part's
    /// `[sync]` adds its keys to the `[sync]` an earlier part has (or replaces the same key),
    /// where two `[sync]` headers in one text would not parse. The APIs are never contacted: unit
    /// tests run the pipeline over in-memory sources and targets.
    pub fn config(parts: &[&str]) -> Config {
        let toml = |text: &str| ::config::File::from_str(text, ::config::FileFormat::Toml);
        let builder = parts.iter().fold(
            ::config::Config::builder().add_source(toml(MINIMAL)),
            |builder, part| builder.add_source(toml(part)),
        );
        Config::build(builder).unwrap_or_else(|e| panic!("test config {parts:?}: {e}"))
    }

    #[test]
    fn parts_merge_into_the_tables_before_them() {
        let c = config(&[
            "[sync]\nmax_disables = 3\n[nexudus]\npage_size = 2",
            "[sync]\nmax_disables = 4\nmax_disable_percent = 50\n[scope]\nexclude_ids = [5]",
        ]);
        assert_eq!(
            (c.sync.max_disables, c.sync.max_disable_percent),
            (4, 50.0),
            "the later part wins, the tables merge"
        );
        assert_eq!(c.nexudus.page_size, 2);
        assert_eq!(c.nevis.client_ext_id, "client-123", "MINIMAL underneath");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn shipped_example_config_is_valid() {
        let text = include_str!("../../config/example.toml");
        let c = Config::from_toml_str(text).expect("config/example.toml must load");
        assert_eq!(c.nevis.client_ext_id, "client-123");
        assert_eq!(c.store.path, PathBuf::from("/var/lib/nexudus-nevis-sync"));
    }
}
