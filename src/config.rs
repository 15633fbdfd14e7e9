//! Configuration: TOML file plus `NEXUDUS_NEVIS_SYNC__SECTION__KEY` environment overrides, parsed
//! into raw serde types and then validated into [`Config`], the only type the rest of the crate sees.
//!
//! Validation names the offending key. Secrets are read (inline or from `*_file`) into
//! [`SecretString`], whose `Debug` prints `[REDACTED]`, so no config value can leak a credential.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

/// Environment variable prefix for overrides: `NEXUDUS_NEVIS_SYNC__NEVIS__TOKEN` sets `nevis.token`.
pub const ENV_PREFIX: &str = "NEXUDUS_NEVIS_SYNC";

/// Default of `mapping.ext_id_prefix`: the prefix of every `extId` this tool creates.
pub const EXT_ID_PREFIX: &str = "nexudus-";

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

// ---------------------------------------------------------------------------------------------
// Raw, as written by the operator.
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    nexudus: RawNexudus,
    nevis: RawNevis,
    #[serde(default)]
    sync: RawSync,
    #[serde(default)]
    retry: RawRetry,
    store: RawStore,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    mapping: RawMapping,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    scope: RawScope,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawScope {
    admins: Option<String>,
    exclude_ids: Vec<u64>,
    email_domains: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNexudus {
    base_url: String,
    username: String,
    password: Option<String>,
    password_file: Option<PathBuf>,
    #[serde(default = "default_page_size")]
    page_size: i64,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    request_timeout: Duration,
    #[serde(default = "default_min_interval", with = "humantime_serde")]
    min_request_interval: Duration,
    #[serde(default = "default_per_minute")]
    max_requests_per_minute: i64,
    #[serde(default = "default_per_hour")]
    max_requests_per_hour: i64,
    #[serde(default = "default_per_day")]
    max_requests_per_day: i64,
    #[serde(default = "default_auth")]
    auth: String,
    totp: Option<String>,
    totp_file: Option<PathBuf>,
    client_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNevis {
    base_url: String,
    client_ext_id: String,
    token: Option<String>,
    token_file: Option<PathBuf>,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    request_timeout: Duration,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    ca_cert: Option<PathBuf>,
    #[serde(default)]
    insecure_skip_verify: bool,
    oauth_token_url: Option<String>,
    oauth_client_id: Option<String>,
    oauth_client_secret: Option<String>,
    oauth_client_secret_file: Option<PathBuf>,
    oauth_scope: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSync {
    schedule: String,
    concurrency: i64,
    max_disables: i64,
    max_disable_percent: f64,
    #[serde(with = "humantime_serde")]
    shutdown_grace: Duration,
    full_every: i64,
    #[serde(with = "humantime_serde")]
    incremental_overlap: Duration,
    missing_runs_before_disable: i64,
    #[serde(with = "humantime_serde")]
    archive_after: Option<Duration>,
    adopt: String,
    reenable_on_reconcile: bool,
    reconcile_schedule: String,
}

impl Default for RawSync {
    fn default() -> Self {
        RawSync {
            schedule: "0 */15 * * * *".into(),
            concurrency: 8,
            max_disables: 50,
            max_disable_percent: 10.0,
            shutdown_grace: Duration::from_secs(30),
            full_every: 12,
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
struct RawRetry {
    max_attempts: i64,
    #[serde(with = "humantime_serde")]
    initial_delay: Duration,
    #[serde(with = "humantime_serde")]
    max_delay: Duration,
    #[serde(with = "humantime_serde")]
    max_elapsed: Duration,
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
struct RawStore {
    path: PathBuf,
    #[serde(default = "default_cache_mib")]
    cache_capacity_mib: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHttp {
    listen: String,
    #[serde(with = "humantime_serde")]
    ready_max_age: Option<Duration>,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            listen: "127.0.0.1:9464".into(),
            ready_max_age: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMapping {
    languages: BTreeMap<String, String>,
    default_language: String,
    allowed_languages: Vec<String>,
    name_split: String,
    login_id: String,
    ext_id_prefix: String,
    remarks: Option<String>,
    modification_comment: Option<String>,
    properties: BTreeMap<String, String>,
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
struct RawLog {
    format: String,
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: "pretty".into(),
            level: "info".into(),
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

// ---------------------------------------------------------------------------------------------
// Validated.
// ---------------------------------------------------------------------------------------------

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
    /// Problems worth a warning at start-up that do not stop it (logged by `main`).
    pub warnings: Vec<String>,
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

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub cache_capacity_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// `/readyz` fails when the last successful run is older than this.
    pub ready_max_age: Duration,
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
        validate_mapping(RawMapping::default()).expect("built-in mapping defaults are valid")
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
        if let Some(warning) = exposed_secrets(path) {
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
        let raw: RawConfig = builder
            .add_source(env)
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        validate(raw)
    }
}

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let nexudus = raw.nexudus;
    let page_size = nexudus.page_size;
    if !(1..=1000).contains(&page_size) {
        return Err(invalid("nexudus.page_size", "must be between 1 and 1000"));
    }
    if nexudus.username.trim().is_empty() {
        return Err(invalid("nexudus.username", "must not be empty"));
    }
    if nexudus.max_requests_per_minute < 1 {
        return Err(invalid(
            "nexudus.max_requests_per_minute",
            "must be at least 1",
        ));
    }
    for (key, value) in [
        (
            "nexudus.max_requests_per_hour",
            nexudus.max_requests_per_hour,
        ),
        ("nexudus.max_requests_per_day", nexudus.max_requests_per_day),
    ] {
        if !(1..=i64::from(u32::MAX)).contains(&value) {
            return Err(invalid(key, "must be at least 1"));
        }
    }
    let nexudus_cfg = NexudusConfig {
        base_url: parse_url("nexudus.base_url", &nexudus.base_url)?,
        password: secret(
            "nexudus.password",
            nexudus.password,
            nexudus.password_file.as_deref(),
        )?,
        username: nexudus.username.clone(),
        page_size: page_size as u32,
        request_timeout: positive("nexudus.request_timeout", nexudus.request_timeout)?,
        min_request_interval: nexudus.min_request_interval,
        max_requests_per_minute: nexudus.max_requests_per_minute as u32,
        max_requests_per_hour: nexudus.max_requests_per_hour as u32,
        max_requests_per_day: nexudus.max_requests_per_day as u32,
        auth: match nexudus.auth.as_str() {
            "basic" => NexudusAuth::Basic,
            "token" => NexudusAuth::Token,
            other => {
                return Err(invalid(
                    "nexudus.auth",
                    format!("must be \"basic\" or \"token\", not {other:?}"),
                ));
            }
        },
        totp: optional_secret("nexudus.totp", nexudus.totp, nexudus.totp_file.as_deref())?,
        client_id: nexudus
            .client_id
            .filter(|c| !c.trim().is_empty())
            .unwrap_or_else(|| nexudus.username.clone()),
    };

    let nevis = raw.nevis;
    let client = nevis.client_ext_id.trim();
    if client.is_empty() || client.contains('/') {
        return Err(invalid(
            "nevis.client_ext_id",
            "must be a non-empty external id without '/'",
        ));
    }
    let tls = NevisTls {
        client_cert: nevis
            .client_cert
            .as_deref()
            .map(|p| read_pem("nevis.client_cert", p))
            .transpose()?,
        client_key: nevis
            .client_key
            .as_deref()
            .map(|p| read_pem("nevis.client_key", p).map(SecretString::from))
            .transpose()?,
        ca_cert: nevis
            .ca_cert
            .as_deref()
            .map(|p| read_pem("nevis.ca_cert", p))
            .transpose()?,
        insecure_skip_verify: nevis.insecure_skip_verify,
    };
    if tls.client_cert.is_some() != tls.client_key.is_some() {
        return Err(invalid(
            "nevis.client_cert",
            "set nevis.client_cert and nevis.client_key together",
        ));
    }
    let token = optional_secret("nevis.token", nevis.token, nevis.token_file.as_deref())?;
    let oauth = nevis_oauth(
        nevis.oauth_token_url,
        nevis.oauth_client_id,
        nevis.oauth_client_secret,
        nevis.oauth_client_secret_file,
        nevis.oauth_scope,
    )?;
    if token.is_some() && oauth.is_some() {
        return Err(invalid(
            "nevis.token",
            "set either nevis.token / nevis.token_file or OAuth2 (nevis.oauth_token_url, \
             nevis.oauth_client_id, nevis.oauth_client_secret), not both",
        ));
    }
    if token.is_none() && oauth.is_none() && tls.client_cert.is_none() {
        return Err(invalid(
            "nevis.token",
            "missing: set nevis.token or nevis.token_file, OAuth2 client credentials \
             (nevis.oauth_token_url, nevis.oauth_client_id, nevis.oauth_client_secret), or a \
             client certificate (nevis.client_cert and nevis.client_key)",
        ));
    }
    let nevis_cfg = NevisConfig {
        base_url: parse_url("nevis.base_url", &nevis.base_url)?,
        client_ext_id: client.to_string(),
        token,
        oauth,
        request_timeout: positive("nevis.request_timeout", nevis.request_timeout)?,
        tls,
    };

    let sync = raw.sync;
    let cron =
        crate::schedule::cron::parse(&sync.schedule).map_err(|e| invalid("sync.schedule", e))?;
    let interval = crate::schedule::cron::interval(&cron)
        .ok_or_else(|| invalid("sync.schedule", "never fires"))?;
    if !(1..=256).contains(&sync.concurrency) {
        return Err(invalid("sync.concurrency", "must be between 1 and 256"));
    }
    if !(1..=1000).contains(&sync.missing_runs_before_disable) {
        return Err(invalid(
            "sync.missing_runs_before_disable",
            "must be between 1 and 1000",
        ));
    }
    if !(1..=10_000).contains(&sync.full_every) {
        return Err(invalid("sync.full_every", "must be between 1 and 10000"));
    }
    if sync.incremental_overlap < Duration::from_secs(60) {
        return Err(invalid(
            "sync.incremental_overlap",
            "must be at least one minute (filters have minute precision)",
        ));
    }
    let adopt = match sync.adopt.as_str() {
        "off" => AdoptMode::Off,
        "email" => AdoptMode::Email,
        other => {
            return Err(invalid(
                "sync.adopt",
                format!("must be \"off\" or \"email\", not {other:?}"),
            ));
        }
    };
    let reconcile_schedule = match sync.reconcile_schedule.trim() {
        "" | "off" => None,
        expr => {
            let cron = crate::schedule::cron::parse(expr)
                .map_err(|e| invalid("sync.reconcile_schedule", e))?;
            crate::schedule::cron::interval(&cron)
                .ok_or_else(|| invalid("sync.reconcile_schedule", "never fires"))?;
            Some(expr.to_string())
        }
    };
    if sync.max_disables < 0 {
        return Err(invalid("sync.max_disables", "must not be negative"));
    }
    if !(0.0..=100.0).contains(&sync.max_disable_percent) {
        return Err(invalid(
            "sync.max_disable_percent",
            "must be between 0 and 100",
        ));
    }

    let retry = raw.retry;
    if !(1..=100).contains(&retry.max_attempts) {
        return Err(invalid("retry.max_attempts", "must be between 1 and 100"));
    }
    if retry.max_delay < retry.initial_delay {
        return Err(invalid(
            "retry.max_delay",
            "must not be shorter than retry.initial_delay",
        ));
    }

    if raw.store.path.as_os_str().is_empty() {
        return Err(invalid("store.path", "must not be empty"));
    }
    if !(1..=4096).contains(&raw.store.cache_capacity_mib) {
        return Err(invalid(
            "store.cache_capacity_mib",
            "must be between 1 and 4096",
        ));
    }

    let listen = raw
        .http
        .listen
        .parse::<SocketAddr>()
        .map_err(|e| invalid("http.listen", format!("not an address:port ({e})")))?;

    let format = match raw.log.format.as_str() {
        "pretty" => LogFormat::Pretty,
        "json" => LogFormat::Json,
        other => {
            return Err(invalid(
                "log.format",
                format!("must be \"pretty\" or \"json\", not {other:?}"),
            ));
        }
    };
    if tracing_subscriber::EnvFilter::try_new(&raw.log.level).is_err() {
        return Err(invalid(
            "log.level",
            "not a valid level or filter directive",
        ));
    }

    let scope = ScopeConfig {
        admins: match raw.scope.admins.as_deref() {
            None | Some("include") => AdminScope::Include,
            Some("exclude") => AdminScope::Exclude,
            Some("only") => AdminScope::Only,
            Some(other) => {
                return Err(invalid(
                    "scope.admins",
                    format!("must be \"include\", \"exclude\" or \"only\", not {other:?}"),
                ));
            }
        },
        exclude_ids: raw.scope.exclude_ids.into_iter().collect(),
        email_domains: raw
            .scope
            .email_domains
            .iter()
            .map(|d| d.trim().trim_start_matches('@').to_lowercase())
            .collect(),
    };
    if scope
        .email_domains
        .iter()
        .any(|d| d.is_empty() || d.contains('@'))
    {
        return Err(invalid(
            "scope.email_domains",
            "entries must be domain names",
        ));
    }

    let mut warnings = Vec::new();
    if nevis_cfg.tls.insecure_skip_verify {
        warnings.push(
            "nevis.insecure_skip_verify = true: nevisIDM's TLS certificate is NOT verified; \
             anyone on the network path can impersonate nevisIDM and read what is sent to it. \
             Use nevis.ca_cert for a private CA instead."
                .to_string(),
        );
    }
    Ok(Config {
        warnings,
        scope,
        nexudus: nexudus_cfg,
        nevis: nevis_cfg,
        sync: SyncConfig {
            schedule: sync.schedule,
            interval,
            concurrency: sync.concurrency as usize,
            max_disables: sync.max_disables as u64,
            max_disable_percent: sync.max_disable_percent,
            shutdown_grace: sync.shutdown_grace,
            full_every: sync.full_every as u32,
            incremental_overlap: sync.incremental_overlap,
            missing_runs_before_disable: sync.missing_runs_before_disable as u32,
            archive_after: match sync.archive_after {
                Some(d) => Some(positive("sync.archive_after", d)?),
                None => None,
            },
            adopt,
            reenable_on_reconcile: sync.reenable_on_reconcile,
            reconcile_schedule,
        },
        retry: RetryConfig {
            max_attempts: retry.max_attempts as usize,
            initial_delay: retry.initial_delay,
            max_delay: retry.max_delay,
            max_elapsed: retry.max_elapsed,
        },
        store: StoreConfig {
            path: raw.store.path,
            cache_capacity_bytes: raw.store.cache_capacity_mib as u64 * 1024 * 1024,
        },
        http: HttpConfig {
            listen,
            ready_max_age: match raw.http.ready_max_age {
                Some(age) => positive("http.ready_max_age", age)?,
                None => interval * 3,
            },
        },
        mapping: validate_mapping(raw.mapping)?,
        log: LogConfig {
            format,
            level: raw.log.level,
        },
    })
}

fn validate_mapping(raw: RawMapping) -> Result<MappingConfig, ConfigError> {
    let mut languages = BTreeMap::new();
    for (k, v) in raw.languages {
        let key = format!("mapping.languages.{k}");
        let n: i64 = k
            .trim()
            .parse()
            .map_err(|_| invalid(&key, "keys must be Nexudus eLanguage numbers"))?;
        languages.insert(n, language_code(&key, &v)?);
    }
    let name_split = match raw.name_split.as_str() {
        "last_word" => NameSplit::LastWord,
        "first_word" => NameSplit::FirstWord,
        other => {
            return Err(invalid(
                "mapping.name_split",
                format!("must be \"last_word\" or \"first_word\", not {other:?}"),
            ));
        }
    };
    let login_id = match raw.login_id.as_str() {
        "email" => LoginIdSource::Email,
        "ext_id" => LoginIdSource::ExtId,
        "none" => LoginIdSource::None,
        other => {
            return Err(invalid(
                "mapping.login_id",
                format!("must be \"email\", \"ext_id\" or \"none\", not {other:?}"),
            ));
        }
    };
    let prefix = raw.ext_id_prefix;
    if prefix.is_empty()
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(
            "mapping.ext_id_prefix",
            "must be non-empty ASCII letters, digits, '-', '_' or '.'",
        ));
    }
    let default_language = language_code("mapping.default_language", &raw.default_language)?;
    let allowed_languages = raw
        .allowed_languages
        .iter()
        .map(|code| language_code("mapping.allowed_languages", code))
        .collect::<Result<std::collections::BTreeSet<_>, _>>()?;
    if !allowed_languages.contains(&default_language) {
        return Err(invalid(
            "mapping.default_language",
            format!(
                "{default_language:?} is not in mapping.allowed_languages ({}): nevisIDM would \
                 refuse it; allow it there or choose another default",
                allowed_languages
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    Ok(MappingConfig {
        languages,
        default_language,
        allowed_languages,
        name_split,
        login_id,
        ext_id_prefix: prefix,
        properties: validate_properties(raw.properties)?,
        remarks: raw.remarks.filter(|r| !r.trim().is_empty()),
        modification_comment: raw.modification_comment.filter(|c| !c.trim().is_empty()),
    })
}

fn validate_properties(
    raw: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    for name in raw.keys() {
        let ok = !name.is_empty()
            && name.len() <= 255
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(invalid(
                &format!("mapping.properties.{name}"),
                "property names must be ASCII letters, digits, '-', '_' or '.'",
            ));
        }
    }
    Ok(raw)
}

fn language_code(key: &str, value: &str) -> Result<String, ConfigError> {
    let code = value.trim();
    if code.len() == 2 && code.chars().all(|c| c.is_ascii_lowercase()) {
        Ok(code.to_string())
    } else {
        Err(invalid(
            key,
            format!("{value:?} is not a lower-case ISO 639-1 code"),
        ))
    }
}

fn parse_url(key: &str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value.trim()).map_err(|e| invalid(key, format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(key, "must be an http:// or https:// URL"));
    }
    if url.host_str().is_none() {
        return Err(invalid(key, "must name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            key,
            "must not carry credentials; use the username/password keys",
        ));
    }
    Ok(url)
}

fn positive(key: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        Err(invalid(key, "must be longer than zero"))
    } else {
        Ok(d)
    }
}

/// `nevis.oauth_*`: all of URL, client id and secret, or none of them.
fn nevis_oauth(
    token_url: Option<String>,
    client_id: Option<String>,
    secret_inline: Option<String>,
    secret_file: Option<PathBuf>,
    scope: Option<String>,
) -> Result<Option<NevisOAuth>, ConfigError> {
    let secret_given = secret_inline.is_some() || secret_file.is_some();
    if token_url.is_none() && client_id.is_none() && !secret_given && scope.is_none() {
        return Ok(None);
    }
    let Some(token_url) = token_url else {
        return Err(invalid(
            "nevis.oauth_token_url",
            "missing: OAuth2 needs nevis.oauth_token_url, nevis.oauth_client_id and \
             nevis.oauth_client_secret (or nevis.oauth_client_secret_file)",
        ));
    };
    let client_id = client_id
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            invalid(
                "nevis.oauth_client_id",
                "missing: OAuth2 needs nevis.oauth_client_id with nevis.oauth_token_url",
            )
        })?;
    let client_secret = secret(
        "nevis.oauth_client_secret",
        secret_inline,
        secret_file.as_deref(),
    )?;
    Ok(Some(NevisOAuth {
        token_url: parse_url("nevis.oauth_token_url", &token_url)?,
        client_id,
        client_secret,
        scope: scope
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()),
    }))
}

/// Reads a secret given inline (`key`) or from a file (`key_file`), never both.
/// Secrets written inline in the file itself (not `*_file`, not the environment).
#[derive(Deserialize, Default)]
struct SecretProbe {
    #[serde(default)]
    nexudus: SecretProbeSection,
    #[serde(default)]
    nevis: SecretProbeSection,
}

#[derive(Deserialize, Default)]
struct SecretProbeSection {
    password: Option<toml_value::Ignored>,
    totp: Option<toml_value::Ignored>,
    token: Option<toml_value::Ignored>,
    oauth_client_secret: Option<toml_value::Ignored>,
}

mod toml_value {
    /// Any value: only its presence matters.
    pub struct Ignored;
    impl<'de> serde::Deserialize<'de> for Ignored {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            serde::de::IgnoredAny::deserialize(d).map(|_| Ignored)
        }
    }
}

/// A warning naming the config file when others may read it and it holds a secret inline.
#[cfg(unix)]
fn exposed_secrets(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    if mode & 0o004 == 0 {
        return None;
    }
    let probe: SecretProbe = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .unwrap_or_default();
    let mut inline = Vec::new();
    for (section, s) in [("nexudus", &probe.nexudus), ("nevis", &probe.nevis)] {
        for (key, present) in [
            ("password", s.password.is_some()),
            ("totp", s.totp.is_some()),
            ("token", s.token.is_some()),
            ("oauth_client_secret", s.oauth_client_secret.is_some()),
        ] {
            if present {
                inline.push(format!("{section}.{key}"));
            }
        }
    }
    if inline.is_empty() {
        return None;
    }
    Some(format!(
        "config file {} is readable by every user (mode {:o}) and holds {} inline: \
         chmod 600 it, or move the secret to a *_file (systemd credentials, Kubernetes secrets)",
        path.display(),
        mode & 0o777,
        inline.join(", ")
    ))
}

#[cfg(not(unix))]
fn exposed_secrets(_path: &Path) -> Option<String> {
    None
}

/// A PEM file's text; checked to hold a PEM block, so a wrong path fails at start-up.
fn read_pem(key: &str, path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    if !text.contains("-----BEGIN ") {
        return Err(invalid(
            key,
            format!("{} holds no PEM block", path.display()),
        ));
    }
    Ok(text)
}

/// Like [`secret`], but absent is allowed.
fn optional_secret(
    key: &str,
    inline: Option<String>,
    file: Option<&Path>,
) -> Result<Option<SecretString>, ConfigError> {
    if inline.is_none() && file.is_none() {
        return Ok(None);
    }
    secret(key, inline, file).map(Some)
}

fn secret(
    key: &str,
    inline: Option<String>,
    file: Option<&Path>,
) -> Result<SecretString, ConfigError> {
    let value = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                key,
                format!("set either {key} or {key}_file, not both"),
            ));
        }
        (Some(v), None) => v,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    &format!("{key}_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            // Files written by `echo` or editors end in a newline that is not part of the secret.
            text.strip_suffix("\r\n")
                .or_else(|| text.strip_suffix('\n'))
                .unwrap_or(&text)
                .to_string()
        }
        (None, None) => {
            return Err(invalid(key, format!("missing: set {key} or {key}_file")));
        }
    };
    if value.is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    Ok(SecretString::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    const MINIMAL: &str = r#"
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

    fn err(toml: &str) -> String {
        Config::from_toml_str(toml).unwrap_err().to_string()
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::from_toml_str(MINIMAL).unwrap();
        assert_eq!(c.nexudus.page_size, 1000);
        assert_eq!(c.sync.concurrency, 8);
        assert_eq!(c.sync.max_disables, 50);
        assert_eq!(c.sync.max_disable_percent, 10.0);
        assert_eq!(c.sync.schedule, "0 */15 * * * *");
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
    fn oauth_client_credentials_are_complete_and_exclusive_with_a_token() {
        let oauth = r#"oauth_token_url = "https://login.example.com/oauth/token"
        oauth_client_id = "sync-client"
        oauth_client_secret = "oauth-secret-4242""#;
        let text = MINIMAL.replace("token = \"tok-secret-nevis\"", oauth);
        let c = Config::from_toml_str(&text).unwrap();
        let o = c.nevis.oauth.as_ref().unwrap();
        assert!(c.nevis.token.is_none());
        assert_eq!(
            o.token_url.as_str(),
            "https://login.example.com/oauth/token"
        );
        assert_eq!(
            (o.client_id.as_str(), o.client_secret.expose_secret()),
            ("sync-client", "oauth-secret-4242")
        );
        assert_eq!(o.scope, None, "the scope is sent only when set");
        assert!(!format!("{c:?}").contains("oauth-secret-4242"));
        let scoped = Config::from_toml_str(&text.replace(
            "oauth_client_id",
            "oauth_scope = \"nevis\"\noauth_client_id",
        ))
        .unwrap();
        assert_eq!(scoped.nevis.oauth.unwrap().scope.as_deref(), Some("nevis"));

        let both = MINIMAL.replace(
            "token = \"tok-secret-nevis\"",
            &format!("token = \"t\"\n{oauth}"),
        );
        let e = err(&both);
        assert!(
            e.contains("nevis.token") && e.contains("nevis.oauth_token_url"),
            "{e}"
        );
        let e = err(&text.replace("oauth_client_id = \"sync-client\"", ""));
        assert!(e.contains("nevis.oauth_client_id"), "{e}");
        let e = err(&text.replace("oauth_client_secret = \"oauth-secret-4242\"", ""));
        assert!(e.contains("nevis.oauth_client_secret"), "{e}");
        let e = err(&text.replace("https://login.example.com/oauth/token", "nope"));
        assert!(e.contains("nevis.oauth_token_url"), "{e}");
        let e = err(&text.replace(
            "oauth_token_url = \"https://login.example.com/oauth/token\"",
            "",
        ));
        assert!(e.contains("nevis.oauth_token_url"), "{e}");
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let c = Config::from_toml_str(MINIMAL).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2-nexudus"), "{dbg}");
        assert!(!dbg.contains("tok-secret-nevis"), "{dbg}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e = err(&MINIMAL.replace("[store]", "[store]\npaht = \"x\""));
        assert!(e.contains("paht"), "{e}");
        let e = err(&format!("{MINIMAL}\n[bogus]\nx = 1\n"));
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn missing_required_keys_are_named() {
        let e = err(&MINIMAL.replace("client_ext_id = \"client-123\"", ""));
        assert!(e.contains("client_ext_id"), "{e}");
        let e = err(&MINIMAL.replace("token = \"tok-secret-nevis\"", ""));
        assert!(e.contains("nevis.token"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = err(&MINIMAL.replace("https://idm.example.com", "not a url"));
        assert!(e.contains("nevis.base_url"), "{e}");
        let e = err(&format!("{MINIMAL}\n[sync]\nschedule = \"*/5 * * * *\"\n"));
        assert!(e.contains("sync.schedule"), "{e}");
        let e = err(&MINIMAL.replace(
            "password = \"hunter2-nexudus\"",
            "password = \"p\"\npage_size = 5000",
        ));
        assert!(e.contains("nexudus.page_size"), "{e}");
        let e = err(&format!(
            "{MINIMAL}\n[mapping]\ndefault_language = \"English\"\n"
        ));
        assert!(e.contains("mapping.default_language"), "{e}");
        let e = err(&format!(
            "{MINIMAL}\n[mapping]\ndefault_language = \"es\"\n"
        ));
        assert!(e.contains("not in mapping.allowed_languages"), "{e}");
        let e = err(&format!(
            "{MINIMAL}\n[mapping]\nallowed_languages = [\"en\", \"Spanish\"]\n"
        ));
        assert!(e.contains("mapping.allowed_languages"), "{e}");
        let e = err(&MINIMAL.replace(
            "password = \"hunter2-nexudus\"",
            "password = \"p\"\nmax_requests_per_hour = 0",
        ));
        assert!(e.contains("nexudus.max_requests_per_hour"), "{e}");
    }

    #[test]
    fn scope_is_validated() {
        let c = Config::from_toml_str(&format!(
            "{MINIMAL}\n[scope]\nadmins = \"only\"\nexclude_ids = [3]\nemail_domains = [\"@Example.COM\"]\n"
        ))
        .unwrap();
        assert_eq!(c.scope.admins, AdminScope::Only);
        assert!(c.scope.admits(1, true) && !c.scope.admits(1, false) && !c.scope.admits(3, true));
        assert!(c.scope.admits_email("a@example.com") && !c.scope.admits_email("a@other.com"));
        let e = err(&format!("{MINIMAL}\n[scope]\nadmins = \"some\"\n"));
        assert!(e.contains("scope.admins"), "{e}");
    }

    #[test]
    fn secrets_come_from_files_without_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file-token\n").unwrap();
        let toml = MINIMAL.replace(
            "token = \"tok-secret-nevis\"",
            &format!("token_file = {:?}", file.display().to_string()),
        );
        let c = Config::from_toml_str(&toml).unwrap();
        assert_eq!(
            c.nevis.token.as_ref().unwrap().expose_secret(),
            "from-file-token"
        );
    }

    #[test]
    fn token_auth_tls_files_and_their_errors() {
        let dir = tempfile::tempdir().unwrap();
        let pem = |name: &str| {
            let p = dir.path().join(name);
            std::fs::write(
                &p,
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            )
            .unwrap();
            p.display().to_string()
        };
        let (cert, key, ca) = (pem("c.pem"), pem("k.pem"), pem("ca.pem"));
        let toml = MINIMAL
            .replace(
                "token = \"tok-secret-nevis\"",
                &format!("client_cert = {cert:?}\nclient_key = {key:?}\nca_cert = {ca:?}"),
            )
            .replace(
                "password = \"hunter2-nexudus\"",
                "password = \"pw\"\nauth = \"token\"\ntotp = \"123456\"",
            );
        let c = Config::from_toml_str(&toml).unwrap();
        assert!(c.nevis.token.is_none());
        assert!(c.nevis.tls.client_cert.is_some() && c.nevis.tls.ca_cert.is_some());
        assert_eq!(c.nexudus.auth, NexudusAuth::Token);
        assert_eq!(c.nexudus.client_id, "sync@example.com");
        assert_eq!(c.nexudus.totp.as_ref().unwrap().expose_secret(), "123456");
        assert!(c.warnings.is_empty());

        // OAuth2 with a client certificate, the secret from a file.
        let secret = dir.path().join("oauth-secret");
        std::fs::write(&secret, "from-file-oauth\n").unwrap();
        let with_cert = MINIMAL.replace(
            "token = \"tok-secret-nevis\"",
            &format!(
                "client_cert = {cert:?}\nclient_key = {key:?}\n\
                 oauth_token_url = \"https://login.example.com/oauth/token\"\n\
                 oauth_client_id = \"c\"\noauth_client_secret_file = {:?}",
                secret.display().to_string()
            ),
        );
        let c = Config::from_toml_str(&with_cert).unwrap();
        assert!(c.nevis.tls.client_cert.is_some());
        assert_eq!(
            c.nevis.oauth.unwrap().client_secret.expose_secret(),
            "from-file-oauth"
        );

        let no_auth = MINIMAL.replace("token = \"tok-secret-nevis\"", "");
        assert!(err(&no_auth).contains("nevis.token"), "{}", err(&no_auth));
        let half = MINIMAL.replace(
            "token = \"tok-secret-nevis\"",
            &format!("client_cert = {cert:?}"),
        );
        assert!(err(&half).contains("client_key"));
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not pem").unwrap();
        let bad = MINIMAL.replace(
            "token = \"tok-secret-nevis\"",
            &format!("token = \"t\"\nca_cert = {:?}", bad.display().to_string()),
        );
        assert!(err(&bad).contains("no PEM block"));
        let auth = MINIMAL.replace(
            "password = \"hunter2-nexudus\"",
            "password = \"p\"\nauth = \"oauth\"",
        );
        assert!(err(&auth).contains("nexudus.auth"));
        let insecure = MINIMAL.replace(
            "token = \"tok-secret-nevis\"",
            "token = \"t\"\ninsecure_skip_verify = true",
        );
        let c = Config::from_toml_str(&insecure).unwrap();
        assert!(c.warnings[0].contains("NOT verified"));
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_config_with_an_inline_secret_is_named_in_a_warning() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        let w = &c.warnings[0];
        assert!(w.contains(&path.display().to_string()), "{w}");
        assert!(
            w.contains("nexudus.password") && w.contains("nevis.token"),
            "{w}"
        );
        assert!(!w.contains("hunter2") && !w.contains("tok-secret"), "{w}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Config::load(&path).unwrap().warnings.is_empty());
        // World-readable but every secret in a file: nothing to warn about.
        let secret = dir.path().join("pw");
        std::fs::write(&secret, "x").unwrap();
        let text = MINIMAL
            .replace(
                "password = \"hunter2-nexudus\"",
                &format!("password_file = {:?}", secret.display().to_string()),
            )
            .replace(
                "token = \"tok-secret-nevis\"",
                &format!("token_file = {:?}", secret.display().to_string()),
            );
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Config::load(&path).unwrap().warnings.is_empty());
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn shipped_example_config_is_valid() {
        let text = include_str!("../config/example.toml");
        let c = Config::from_toml_str(text).expect("config/example.toml must load");
        assert_eq!(c.nevis.client_ext_id, "client-123");
        assert_eq!(c.store.path, PathBuf::from("/var/lib/nexudus-nevis-sync"));
    }
}
