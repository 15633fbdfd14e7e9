//! Validation: the raw file format into [`Config`], one function per section. Each check names
//! the offending key; nothing downstream sees an unchecked value.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use super::raw::{
    RawAudit, RawConfig, RawHttp, RawLog, RawMapping, RawNevis, RawNexudus, RawRetry, RawRoles,
    RawScope, RawStore, RawSync,
};
use super::secrets::{bearer_token_file, optional_secret, read_pem, secret};
use super::{
    AdminScope, AdoptMode, AuditConfig, AuditValues, Config, ConfigError, HttpConfig, LogConfig,
    LogFormat, LoginIdSource, MappingConfig, NameSplit, NevisConfig, NevisOAuth, NevisTls,
    NexudusAuth, NexudusConfig, RetryConfig, RoleMapping, RoleSourceName, RolesConfig, ScopeConfig,
    StoreConfig, SyncConfig, invalid,
};

/// The sections are checked in the order they always were, so a file with several mistakes names
/// the same one first: `sync.archive_after`, `http.ready_max_age` and the mapping come last.
pub(super) fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let nexudus = nexudus(raw.nexudus)?;
    let nevis = nevis(raw.nevis)?;
    let archive_after = raw.sync.archive_after;
    let mut sync = sync(raw.sync)?;
    let retry = retry(raw.retry)?;
    let store = store(raw.store)?;
    let listen = raw
        .http
        .listen
        .parse::<SocketAddr>()
        .map_err(|e| invalid("http.listen", format!("not an address:port ({e})")))?;
    let log = log(raw.log)?;
    let scope = scope(raw.scope)?;
    let roles = roles(raw.roles)?;
    let audit = audit(raw.audit)?;
    let mut warnings = Vec::new();
    if nevis.tls.insecure_skip_verify {
        warnings.push(
            "nevis.insecure_skip_verify = true: nevisIDM's TLS certificate is NOT verified; \
             anyone on the network path can impersonate nevisIDM and read what is sent to it. \
             Use nevis.ca_cert for a private CA instead."
                .to_string(),
        );
    }
    sync.archive_after = match archive_after {
        Some(d) => Some(positive("sync.archive_after", d)?),
        None => None,
    };
    let http = http(raw.http, listen, sync.interval)?;
    Ok(Config {
        warnings,
        scope,
        roles,
        audit,
        nexudus,
        nevis,
        sync,
        retry,
        store,
        http,
        mapping: mapping(raw.mapping)?,
        log,
    })
}

/// `[http]` but `listen` (parsed first, in its old place): `ready_max_age`, by default from the
/// schedule's `interval`, and the bearer token of `auth_token_file`.
fn http(raw: RawHttp, listen: SocketAddr, interval: Duration) -> Result<HttpConfig, ConfigError> {
    let ready_max_age = match raw.ready_max_age {
        Some(age) => positive("http.ready_max_age", age)?,
        // Three ticks, but never under ten minutes: a full listing of a large account takes
        // a minute or more, and the schedule is seconds apart.
        None => (interval * 3).max(Duration::from_secs(600)),
    };
    let auth_token = raw
        .auth_token_file
        .as_deref()
        .map(|path| bearer_token_file("http.auth_token_file", path))
        .transpose()?;
    Ok(HttpConfig {
        listen,
        ready_max_age,
        auth_token,
    })
}

fn nexudus(nexudus: RawNexudus) -> Result<NexudusConfig, ConfigError> {
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
    Ok(NexudusConfig {
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
    })
}

fn nevis(nevis: RawNevis) -> Result<NevisConfig, ConfigError> {
    let client = nevis.client_ext_id.trim();
    if client.is_empty() || client.contains('/') {
        return Err(invalid(
            "nevis.client_ext_id",
            "must be a non-empty external id without '/'",
        ));
    }
    let tls = nevis_tls(&nevis)?;
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
    Ok(NevisConfig {
        base_url: parse_url("nevis.base_url", &nevis.base_url)?,
        client_ext_id: client.to_string(),
        token,
        oauth,
        request_timeout: positive("nevis.request_timeout", nevis.request_timeout)?,
        tls,
    })
}

/// `nevis.client_cert`, `nevis.client_key` (together or not at all), `nevis.ca_cert`.
fn nevis_tls(nevis: &RawNevis) -> Result<NevisTls, ConfigError> {
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
    Ok(tls)
}

/// Everything of `[sync]` but `archive_after` (left `None`; see [`validate`]).
fn sync(sync: RawSync) -> Result<SyncConfig, ConfigError> {
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
    Ok(SyncConfig {
        schedule: sync.schedule,
        interval,
        concurrency: sync.concurrency as usize,
        max_disables: sync.max_disables as u64,
        max_disable_percent: sync.max_disable_percent,
        shutdown_grace: sync.shutdown_grace,
        full_every: sync.full_every as u32,
        incremental_overlap: sync.incremental_overlap,
        missing_runs_before_disable: sync.missing_runs_before_disable as u32,
        archive_after: None,
        adopt,
        reenable_on_reconcile: sync.reenable_on_reconcile,
        reconcile_schedule,
    })
}

fn retry(retry: RawRetry) -> Result<RetryConfig, ConfigError> {
    if !(1..=100).contains(&retry.max_attempts) {
        return Err(invalid("retry.max_attempts", "must be between 1 and 100"));
    }
    if retry.max_delay < retry.initial_delay {
        return Err(invalid(
            "retry.max_delay",
            "must not be shorter than retry.initial_delay",
        ));
    }
    Ok(RetryConfig {
        max_attempts: retry.max_attempts as usize,
        initial_delay: retry.initial_delay,
        max_delay: retry.max_delay,
        max_elapsed: retry.max_elapsed,
    })
}

fn store(store: RawStore) -> Result<StoreConfig, ConfigError> {
    if store.path.as_os_str().is_empty() {
        return Err(invalid("store.path", "must not be empty"));
    }
    if !(1..=4096).contains(&store.cache_capacity_mib) {
        return Err(invalid(
            "store.cache_capacity_mib",
            "must be between 1 and 4096",
        ));
    }
    if store.open_wait > Duration::from_secs(600) {
        return Err(invalid("store.open_wait", "must be at most 10m"));
    }
    Ok(StoreConfig {
        path: store.path,
        cache_capacity_bytes: store.cache_capacity_mib as u64 * 1024 * 1024,
        open_wait: store.open_wait,
    })
}

fn audit(raw: RawAudit) -> Result<AuditConfig, ConfigError> {
    let values = match raw.values.as_str() {
        "full" => AuditValues::Full,
        "hashed" => AuditValues::Hashed,
        "none" => AuditValues::None,
        other => {
            return Err(invalid(
                "audit.values",
                format!("{other:?} is not one of \"full\", \"hashed\", \"none\""),
            ));
        }
    };
    if raw.max_entries < 1 {
        return Err(invalid("audit.max_entries", "must be at least 1"));
    }
    Ok(AuditConfig {
        enabled: raw.enabled,
        retention: positive("audit.retention", raw.retention)?,
        max_entries: raw.max_entries as u64,
        values,
    })
}

fn log(log: RawLog) -> Result<LogConfig, ConfigError> {
    let format = match log.format.as_str() {
        "pretty" => LogFormat::Pretty,
        "json" => LogFormat::Json,
        other => {
            return Err(invalid(
                "log.format",
                format!("must be \"pretty\" or \"json\", not {other:?}"),
            ));
        }
    };
    if tracing_subscriber::EnvFilter::try_new(&log.level).is_err() {
        return Err(invalid(
            "log.level",
            "not a valid level or filter directive",
        ));
    }
    if log.progress_interval < Duration::from_secs(1) {
        return Err(invalid("log.progress_interval", "must be at least 1s"));
    }
    Ok(LogConfig {
        format,
        level: log.level,
        progress_interval: log.progress_interval,
    })
}

fn scope(raw: RawScope) -> Result<ScopeConfig, ConfigError> {
    let scope = ScopeConfig {
        admins: match raw.admins.as_deref() {
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
        exclude_ids: raw.exclude_ids.into_iter().collect(),
        email_domains: raw
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
    Ok(scope)
}

/// `[roles]`: `None` without `[[roles.map]]` (nothing about roles changes). Names and ids are
/// checked for form here; whether they exist is asked of both APIs at the start of a run.
fn roles(raw: RawRoles) -> Result<Option<RolesConfig>, ConfigError> {
    if raw.map.is_empty() {
        return Ok(None);
    }
    let mut map = Vec::with_capacity(raw.map.len());
    for (i, entry) in raw.map.into_iter().enumerate() {
        let key = format!("roles.map[{i}]");
        let source = RoleSourceName::parse(&entry.nexudus)
            .map_err(|why| invalid(&format!("{key}.nexudus"), why))?;
        if entry.nevis.is_empty() {
            return Err(invalid(
                &format!("{key}.nevis"),
                "names no nevisIDM roleExtId",
            ));
        }
        for role in &entry.nevis {
            let len = role.chars().count();
            if role.trim() != role || !(1..=129).contains(&len) {
                return Err(invalid(
                    &format!("{key}.nevis"),
                    format!(
                        "{role:?} is no roleExtId (1 to 129 characters, no surrounding spaces)"
                    ),
                ));
            }
        }
        if map.iter().any(|m: &RoleMapping| m.nexudus == source) {
            return Err(invalid(
                &format!("{key}.nexudus"),
                format!(
                    "{:?} is mapped twice; list every roleExtId in one entry",
                    entry.nexudus
                ),
            ));
        }
        map.push(RoleMapping {
            nexudus: source,
            nevis: entry.nevis,
        });
    }
    let unit = match raw.profile_unit_ext_id {
        Some(unit) if unit.trim().is_empty() => {
            return Err(invalid("roles.profile_unit_ext_id", "is empty"));
        }
        other => other,
    };
    let max_revokes = u64::try_from(raw.max_revokes)
        .map_err(|_| invalid("roles.max_revokes", "must not be negative"))?;
    let max_revoke_percent = u64::try_from(raw.max_revoke_percent)
        .ok()
        .filter(|p| *p <= 100)
        .ok_or_else(|| invalid("roles.max_revoke_percent", "must be between 0 and 100"))?;
    Ok(Some(RolesConfig {
        map,
        profile_unit_ext_id: unit,
        max_revokes,
        max_revoke_percent,
        full_read_every: positive("roles.full_read_every", raw.full_read_every)?,
    }))
}

pub(super) fn mapping(raw: RawMapping) -> Result<MappingConfig, ConfigError> {
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
    const NEXUDUS_ID_DIGITS: usize = 10;
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
    // A Nexudus Id has up to 10 digits; nevisIDM's identifiers are at most 129 characters.
    let longest = crate::limits::MAX_EXT_ID_CHARS - NEXUDUS_ID_DIGITS;
    if prefix.chars().count() > longest {
        return Err(invalid(
            "mapping.ext_id_prefix",
            format!(
                "is {} characters; at most {longest} leave room for a {NEXUDUS_ID_DIGITS}-digit \
                 Nexudus Id within nevisIDM's 129-character extId",
                prefix.chars().count()
            ),
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
        properties: properties(raw.properties)?,
        remarks: raw.remarks.filter(|r| !r.trim().is_empty()),
        modification_comment: raw.modification_comment.filter(|c| !c.trim().is_empty()),
    })
}

fn properties(raw: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ConfigError> {
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
#[cfg(test)]
mod tests {
    use super::super::testing::{MINIMAL, err};
    use crate::config::{AdminScope, Config, NexudusAuth};
    use secrecy::ExposeSecret;

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
    fn with_several_mistakes_the_same_key_is_named_first() {
        // sync.archive_after, http.ready_max_age and the mapping come after every other section.
        let e = err(&format!(
            "{MINIMAL}\n[sync]\narchive_after = \"0s\"\n[retry]\nmax_attempts = 0\n"
        ));
        assert!(e.contains("retry.max_attempts"), "{e}");
        let e = err(&format!(
            "{MINIMAL}\n[sync]\narchive_after = \"0s\"\n[http]\nready_max_age = \"0s\"\n\
             [mapping]\nname_split = \"x\"\n"
        ));
        assert!(e.contains("sync.archive_after"), "{e}");
        let e = err(&format!(
            "{MINIMAL}\n[http]\nready_max_age = \"0s\"\n[mapping]\nname_split = \"x\"\n"
        ));
        assert!(e.contains("http.ready_max_age"), "{e}");
    }

    #[test]
    fn roles_are_validated_and_absent_without_a_map() {
        assert!(Config::from_toml_str(MINIMAL).unwrap().roles.is_none());
        let c = Config::from_toml_str(&format!(
            "{MINIMAL}\n[roles]\nprofile_unit_ext_id = \"members\"\n\
             [[roles.map]]\nnexudus = \"Receptionist\"\nnevis = [\"frontdesk\"]\n\
             [[roles.map]]\nnexudus = \"id:42\"\nnevis = [\"finance\", \"frontdesk\"]\n\
             [[roles.map]]\nnexudus = \"@admin\"\nnevis = [\"space-admin\"]\n"
        ))
        .unwrap();
        let roles = c.roles.unwrap();
        assert_eq!(roles.map[1].nexudus, crate::config::RoleSourceName::Id(42));
        assert_eq!(roles.map[2].nexudus, crate::config::RoleSourceName::Admin);
        assert_eq!(roles.owned(), ["frontdesk", "finance", "space-admin"]);
        assert_eq!((roles.max_revokes, roles.max_revoke_percent), (5, 25));
        assert_eq!(roles.profile_unit_ext_id.as_deref(), Some("members"));
        for (entry, key) in [
            (
                "nexudus = \"@boss\"\nnevis = [\"x\"]",
                "roles.map[0].nexudus",
            ),
            (
                "nexudus = \"id:abc\"\nnevis = [\"x\"]",
                "roles.map[0].nexudus",
            ),
            ("nexudus = \"R\"\nnevis = []", "roles.map[0].nevis"),
            ("nexudus = \"R\"\nnevis = [\" x\"]", "roles.map[0].nevis"),
        ] {
            let e = err(&format!("{MINIMAL}\n[[roles.map]]\n{entry}\n"));
            assert!(e.contains(key), "{e}");
        }
        let e = err(&format!(
            "{MINIMAL}\n[roles]\nmax_revoke_percent = 101\n[[roles.map]]\nnexudus = \"R\"\nnevis = [\"x\"]\n"
        ));
        assert!(e.contains("roles.max_revoke_percent"), "{e}");
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
}
