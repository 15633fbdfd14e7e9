//! The source: Nexudus users, listed page by page through `GET /api/sys/users`, with their
//! preferred languages from `GET /api/sys/languages`.
//!
//! The client paces itself below all four of Nexudus's documented limits ([`pacer`]) so that a
//! run draws no throttling, classifies every answer once — 409 and 429 are throttles whose wait
//! comes from `Retry-After` or the body's message; an answer that is not the documented JSON
//! (an HTML page, an empty or cut-off body) is "unavailable" and retried — and leaves the retry
//! timing to [`crate::retry`].

mod answer;
pub mod auth;
pub mod pacer;
pub mod userroles;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use std::sync::Arc;
use std::time::Instant;

use crate::client::{self, describe, join, retry_after};
use crate::config::{NexudusAuth, NexudusConfig, RetryConfig};
use crate::metrics::Metrics;
use crate::retry::{Classify, RetryPolicy, Verdict};
use crate::store::Store;
use auth::{Grant, GrantError, TokenAuth};
use pacer::Pacer;
pub use userroles::{UserRole, UserRolePage};
pub use wire::{InvalidRecord, SourcePage};

/// Anything that can list Nexudus users page by page (the HTTP client, or a fake in unit tests).
pub trait Source: Send + Sync + 'static {
    /// Fetches page `page` (from 1), with retries already applied. With `updated_since`
    /// (`YYYY-MM-DDTHH:mm`, inclusive), only users changed since then are listed.
    fn fetch_page(
        &self,
        page: u32,
        updated_since: Option<&str>,
    ) -> impl Future<Output = Result<SourcePage, SourceError>> + Send;

    /// Whether Nexudus still has user `id` (`GET /api/sys/users/{id}`), with retries. Asked
    /// before a user missing from a listing is disabled: offset paging can skip a user when
    /// others are deleted and added while the pages are read, and nothing in the listing shows it.
    fn fetch_user(&self, id: u64) -> impl Future<Output = Result<Presence, SourceError>> + Send;

    /// `TotalItems` of the unfiltered listing, read with one request for as little as possible
    /// (a page of size 1): the deletion probe of incremental runs. `None` when Nexudus did not
    /// report it.
    fn count_users(&self) -> impl Future<Output = Result<Option<u64>, SourceError>> + Send {
        async move { Ok(self.fetch_page(1, None).await?.total_items) }
    }

    /// The Ids on page `page` (from 1) of size `size` of the unfiltered listing ordered by Id, with
    /// one request, and the listing's `TotalItems`: the steps (size 1: the user at a position) and
    /// the page reads of the search that tells who was deleted without a full listing
    /// ([`crate::sync`]'s pinpoint).
    fn ids_at(
        &self,
        page: u32,
        size: u32,
    ) -> impl Future<Output = Result<PageIds, SourceError>> + Send;

    /// Called once at the start of every run (`full`: a full listing follows): what is reported
    /// once per run may be reported again, and a full listing reads the languages listing again
    /// (an incremental run keeps the one read by an earlier run, up to an hour old).
    fn begin_run(&self, full: bool) -> impl Future<Output = ()> + Send {
        let _ = full;
        async {}
    }

    /// Page `page` (from 1) of `GET /api/security/userroles` (no `Users` in it), only the
    /// UserRoles changed since `updated_since` when given. Only called with `[[roles.map]]`;
    /// a source without UserRoles answers that it has none.
    fn userroles_page(
        &self,
        page: u32,
        updated_since: Option<&str>,
    ) -> impl Future<Output = Result<UserRolePage, SourceError>> + Send {
        let _ = (page, updated_since);
        async { Ok(UserRolePage::none()) }
    }

    /// `GET /api/security/userroles/{id}` with its `Users`; `None` when it does not exist.
    fn userrole(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<Option<UserRole>, SourceError>> + Send {
        let _ = id;
        async { Ok(None) }
    }
}

/// The Ids of one page of the listing ordered by Id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PageIds {
    /// In the order served (`None`: a record without a usable Id).
    pub ids: Vec<Option<u64>>,
    /// `TotalItems`, when the envelope carried it.
    pub total_items: Option<u64>,
}

impl PageIds {
    pub fn of(page: &SourcePage) -> PageIds {
        let ids = page
            .records
            .iter()
            .map(|record| match record {
                Ok(user) => Some(user.id),
                Err(bad) => bad.id,
            })
            .collect();
        PageIds {
            ids,
            total_items: page.total_items,
        }
    }
}

/// What a single-user read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// 404: the user is gone.
    Gone,
    Active,
    Inactive,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    #[error(
        "Nexudus refused the credentials (HTTP {status}); check nexudus.username/password and API access"
    )]
    Auth { status: u16 },
    #[error("Nexudus throttled the request (HTTP {status})")]
    Throttled {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("Nexudus answered HTTP {status}")]
    Server {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("Nexudus request failed: {0}")]
    Transport(String),
    /// Redirects are never followed (a POST would turn into a GET of whatever page it points
    /// at): the address is wrong, or something in front of the API sends requests elsewhere.
    #[error(
        "Nexudus answered HTTP {status} redirecting to {location}; the API answers at its own \
         address and never redirects: check nexudus.base_url (scheme and host of the API, no \
         path) and any proxy in front of it"
    )]
    Redirect { status: u16, location: String },
    #[error("Nexudus answered HTTP {status} unexpectedly: {detail}")]
    Unexpected { status: u16, detail: String },
    /// An answer that is not the documented JSON: an HTML page (a WAF, a load balancer), an
    /// empty body, a body cut off or not the expected shape. Retried like an outage.
    #[error(
        "Nexudus is unavailable: HTTP {status} answered with {content_type} instead of the \
         documented JSON ({why}); the answer began {excerpt}"
    )]
    Unavailable {
        status: u16,
        content_type: String,
        why: String,
        excerpt: String,
        retry_after: Option<Duration>,
    },
    /// The password grant was refused; `hint` says what to fix (a fresh `nexudus.totp`, …).
    #[error("Nexudus refused the sign-in at /api/token (HTTP {status} {error}); {hint}")]
    SignIn {
        status: u16,
        error: String,
        hint: String,
    },
    #[error("cannot keep the Nexudus refresh token in the store: {0}")]
    TokenStore(String),
}

impl SourceError {
    /// Authentication refusals end the run at once.
    pub fn is_auth(&self) -> bool {
        matches!(self, SourceError::Auth { .. } | SourceError::SignIn { .. })
    }
}

impl Classify for SourceError {
    fn verdict(&self) -> Verdict {
        match self {
            SourceError::Throttled { retry_after, .. }
            | SourceError::Server { retry_after, .. }
            | SourceError::Unavailable { retry_after, .. } => Verdict::Retry {
                after: *retry_after,
            },
            SourceError::Transport(_) => Verdict::Retry { after: None },
            SourceError::Auth { .. }
            | SourceError::Redirect { .. }
            | SourceError::Unexpected { .. }
            | SourceError::SignIn { .. }
            | SourceError::TokenStore(_) => Verdict::Final,
        }
    }

    fn label(&self) -> String {
        match self {
            SourceError::Auth { status }
            | SourceError::SignIn { status, .. }
            | SourceError::Throttled { status, .. }
            | SourceError::Server { status, .. }
            | SourceError::Redirect { status, .. }
            | SourceError::Unexpected { status, .. } => status.to_string(),
            SourceError::Unavailable { status, .. } => format!("{status}-not-json"),
            SourceError::Transport(_) => "transport".into(),
            SourceError::TokenStore(_) => "store".into(),
        }
    }
}

/// How requests are authenticated (`nexudus.auth`).
enum Auth {
    Basic {
        username: String,
        password: SecretString,
    },
    Token(Box<TokenAuth>),
}

/// The Nexudus HTTP client.
pub struct NexudusClient {
    http: reqwest::Client,
    users_url: Url,
    userroles_url: Url,
    languages_url: Url,
    token_url: Url,
    auth: Auth,
    page_size: u32,
    retry: RetryPolicy,
    pacer: Pacer,
    metrics: Arc<Metrics>,
    store: Option<Store>,
    languages: tokio::sync::Mutex<Languages>,
}

/// The languages listing as last read, and what was reported about it in this run.
///
/// Kept across runs: an idle incremental tick must not pay a languages request. It is read again
/// on every full listing, and by an incremental run when it is older than [`LANGUAGES_MAX_AGE`].
#[derive(Default)]
struct Languages {
    /// `PreferredLanguageId` -> language code (`None`: the culture is not a usable language).
    /// `None` until read (again).
    table: Option<HashMap<u64, Option<String>>>,
    /// When `table` was read.
    read_at: Option<Instant>,
    /// Ids reported as unknown in this run (each once).
    reported: HashSet<u64>,
}

/// How long an incremental run may use the languages listing read by an earlier run.
const LANGUAGES_MAX_AGE: Duration = Duration::from_secs(3600);

/// Pages of `/api/sys/languages` read at most (a listing that says `HasNextPage` forever).
const MAX_LANGUAGE_PAGES: u32 = 50;

/// Store key (meta tree) of the `TotalItems` of the last full listing, for the start-up check of
/// the hourly budget.
pub const LISTING_SIZE_KEY: &str = "nexudus_listing_size";

impl NexudusClient {
    /// A client; with `nexudus.auth = "token"`, `store` keeps the rotating refresh token across
    /// restarts (without one, every start signs in with the password).
    pub fn new(
        cfg: &NexudusConfig,
        retry: RetryConfig,
        metrics: Arc<Metrics>,
        store: Option<Store>,
    ) -> Result<NexudusClient, SourceError> {
        let http = client::build(cfg.request_timeout)
            .map_err(|e| SourceError::Transport(format!("cannot build HTTP client: {e}")))?;
        let users_url = join(&cfg.base_url, "api/sys/users");
        let limits = pacer::Limits {
            min_interval: cfg.min_request_interval,
            per_minute: cfg.max_requests_per_minute,
            per_hour: cfg.max_requests_per_hour,
            per_day: cfg.max_requests_per_day,
        };
        let pacer = Pacer::new(&limits, store.clone(), Arc::clone(&metrics));
        let auth = match cfg.auth {
            NexudusAuth::Basic => Auth::Basic {
                username: cfg.username.clone(),
                password: cfg.password.clone(),
            },
            NexudusAuth::Token => Auth::Token(Box::new(TokenAuth::new(
                cfg.username.clone(),
                cfg.password.clone(),
                cfg.totp.clone(),
                cfg.client_id.clone(),
                store.clone(),
            ))),
        };
        Ok(NexudusClient {
            http,
            users_url,
            userroles_url: join(&cfg.base_url, "api/security/userroles"),
            languages_url: join(&cfg.base_url, "api/sys/languages"),
            token_url: join(&cfg.base_url, "api/token"),
            auth,
            page_size: cfg.page_size,
            retry: RetryPolicy::new("nexudus", retry, Arc::clone(&metrics)),
            pacer,
            metrics,
            store,
            languages: tokio::sync::Mutex::default(),
        })
    }

    async fn fetch_once(
        &self,
        page: u32,
        size: u32,
        updated_since: Option<&str>,
    ) -> Result<SourcePage, SourceError> {
        let started = Instant::now();
        let mut query = vec![
            ("page", page.to_string()),
            ("size", size.to_string()),
            ("orderBy", "Id".to_string()),
        ];
        if let Some(since) = updated_since {
            query.push(("from_User_UpdatedOn", since.to_string()));
        }
        let request = self.http.get(self.users_url.clone()).query(&query);
        let response = self.send(request).await?;
        let answer = self.body_of(response, started).await?;
        let listed = wire::decode_page(&answer.body).map_err(|why| answer.unavailable(why))?;
        if page == 1
            && updated_since.is_none()
            && let (Some(store), Some(total)) = (&self.store, listed.total_items)
            && let Err(e) = store.set_meta_bytes(LISTING_SIZE_KEY, total.to_string().as_bytes())
        {
            tracing::debug!(error = %e, "cannot record the listing size");
        }
        Ok(listed)
    }

    /// A successful answer that announces JSON (timed from `started`); any other status, or a
    /// success that is not JSON, classified.
    async fn body_of(
        &self,
        response: reqwest::Response,
        started: Instant,
    ) -> Result<Answer, SourceError> {
        let status = response.status();
        if status.is_redirection() {
            return Err(SourceError::Redirect {
                status: status.as_u16(),
                location: client::location(response.headers()),
            });
        }
        let header_wait = retry_after(response.headers());
        let content_type = answer::content_type(response.headers());
        // A body cut off mid-way is a transport error here, retried like one.
        let body = response.bytes().await.map_err(transport)?;
        let answer = Answer {
            status: status.as_u16(),
            content_type,
            body,
            retry_after: header_wait,
        };
        if !status.is_success() {
            return Err(self.classify(answer));
        }
        if !answer::is_json(&answer.content_type) {
            return Err(answer.unavailable("not JSON".into()));
        }
        self.metrics.observe_request("nexudus", started.elapsed());
        Ok(answer)
    }

    /// An error answer, classified once. A throttle's wait is the longest of `Retry-After` and
    /// the wait its body states; every later request is held back that long.
    fn classify(&self, answer: Answer) -> SourceError {
        let code = answer.status;
        let json = answer::is_json(&answer.content_type);
        match code {
            // A WAF in front of the API refuses with its own HTML page: not Nexudus's word on
            // the credentials.
            403 if answer.content_type.to_ascii_lowercase().contains("html") => {
                answer.unavailable("an error page in front of the API".into())
            }
            401 | 403 => SourceError::Auth { status: code },
            // Nexudus documents 409; 429 is what real accounts and proxies also answer.
            409 | 429 => {
                let retry_after = answer.retry_after.max(answer::body_wait(&answer.body));
                self.metrics.count_throttle("nexudus", code);
                if let Some(wait) = retry_after {
                    self.pacer.hold(wait);
                }
                SourceError::Throttled {
                    status: code,
                    retry_after,
                }
            }
            408 | 500..=599 if json || answer.body.is_empty() => SourceError::Server {
                status: code,
                retry_after: answer.retry_after,
            },
            408 | 500..=599 => answer.unavailable("an error page".into()),
            _ => SourceError::Unexpected {
                status: code,
                detail: format!(
                    "{} answered with {}",
                    answer::excerpt(&answer.body),
                    answer.content_type
                ),
            },
        }
    }

    /// One `GET /api/sys/users/{id}`: whether Nexudus still has the user.
    async fn fetch_user_once(&self, id: u64) -> Result<Presence, SourceError> {
        let started = Instant::now();
        let mut url = self.users_url.clone();
        url.path_segments_mut()
            .expect("the users URL is a base URL")
            .push(&id.to_string());
        let response = self.send(self.http.get(url)).await?;
        if response.status() == StatusCode::NOT_FOUND {
            // Only Nexudus's own 404 (JSON, or empty) says the user is gone: an HTML 404 from
            // something in front of the API says nothing about the user, and "gone" disables.
            let answer = Answer {
                status: 404,
                content_type: answer::content_type(response.headers()),
                body: response.bytes().await.map_err(transport)?,
                retry_after: None,
            };
            if answer::is_json(&answer.content_type)
                || answer.body.iter().all(u8::is_ascii_whitespace)
            {
                return Ok(Presence::Gone);
            }
            return Err(answer.unavailable("a 404 page that is not Nexudus's".into()));
        }
        let answer = self.body_of(response, started).await?;
        let doc: serde_json::Value = serde_json::from_slice(&answer.body)
            .map_err(|e| answer.unavailable(format!("not a user record: {e}")))?;
        Ok(
            match doc.get("Active").and_then(serde_json::Value::as_bool) {
                Some(false) => Presence::Inactive,
                _ => Presence::Active,
            },
        )
    }

    /// Sends one paced, authenticated GET; with a bearer token, a 401 renews it and asks again
    /// once. The answer's status is the caller's to judge.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, SourceError> {
        self.pacer.wait().await;
        Ok(match &self.auth {
            Auth::Basic { username, password } => request
                .basic_auth(username, Some(password.expose_secret()))
                .send()
                .await
                .map_err(transport)?,
            Auth::Token(auth) => {
                let token = self.bearer(auth, None).await?;
                let response = request
                    .try_clone()
                    .expect("a GET without a body can be cloned")
                    .bearer_auth(token.expose_secret())
                    .send()
                    .await
                    .map_err(transport)?;
                if response.status() == StatusCode::UNAUTHORIZED {
                    // Expired or revoked before its time: renew once and ask again.
                    tracing::info!("Nexudus answered 401 to the access token; renewing it");
                    let token = self.bearer(auth, Some(&token)).await?;
                    self.pacer.wait().await;
                    request
                        .bearer_auth(token.expose_secret())
                        .send()
                        .await
                        .map_err(transport)?
                } else {
                    response
                }
            }
        })
    }

    /// An access token from `auth`, signing in or refreshing as needed. Token requests have no
    /// retries of their own: they are part of the listing attempt that needs the token, so one
    /// retry budget (the page's) bounds them — a failing token endpoint is asked at most
    /// `retry.max_attempts` times, not that number squared.
    async fn bearer(
        &self,
        auth: &TokenAuth,
        stale: Option<&SecretString>,
    ) -> Result<SecretString, SourceError> {
        auth.bearer(stale, |grant| async move {
            let result = self.grant_once(auth, &grant).await;
            if let Err(e) = &result {
                tracing::debug!(grant = grant.name(), error = %e, "token request failed");
            }
            result
        })
        .await
        .map_err(|e| match e {
            GrantError::SignIn {
                status,
                error,
                hint,
            } => SourceError::SignIn {
                status,
                error,
                hint,
            },
            // A refused refresh grant falls back to the password inside `bearer`; should one
            // escape, it is a refused sign-in all the same.
            GrantError::Refused { status, error, .. } => SourceError::SignIn {
                status,
                error,
                hint: "check nexudus.username, nexudus.password and nexudus.totp".into(),
            },
            GrantError::Transient(e) => e,
            GrantError::Store(e) => SourceError::TokenStore(e),
        })
    }

    /// One `POST /api/token`, form-encoded, with the `client_id` header.
    async fn grant_once(&self, auth: &TokenAuth, grant: &Grant) -> Result<Vec<u8>, GrantError> {
        self.pacer.wait().await;
        let response = self
            .http
            .post(self.token_url.clone())
            .header("client_id", &auth.client_id)
            .form(&auth.form(grant))
            .send()
            .await
            .map_err(|e| GrantError::Transient(transport(e)))?;
        let status = response.status();
        let answer = Answer {
            status: status.as_u16(),
            retry_after: retry_after(response.headers()),
            content_type: answer::content_type(response.headers()),
            body: response
                .bytes()
                .await
                .map_err(|e| GrantError::Transient(transport(e)))?,
        };
        let code = answer.status;
        let json = answer::is_json(&answer.content_type);
        if status.is_success() {
            if !json || serde_json::from_slice::<serde_json::Value>(&answer.body).is_err() {
                return Err(GrantError::Transient(answer.unavailable("not JSON".into())));
            }
            return Ok(answer.body.to_vec());
        }
        match code {
            // `{"error":"invalid_grant","error_description":"…"}`; never the request echoed. A
            // refusal that is not JSON (a WAF's page) is not Nexudus's word on the credentials.
            400 | 401 | 403 if json || answer.body.is_empty() || code == 401 => {
                let doc: Option<serde_json::Value> = serde_json::from_slice(&answer.body).ok();
                let text = |key: &str, max: usize| {
                    doc.as_ref()
                        .and_then(|d| d.get(key))
                        .and_then(serde_json::Value::as_str)
                        .map(|s| {
                            s.chars()
                                .take(max)
                                .collect::<String>()
                                .escape_debug()
                                .to_string()
                        })
                };
                Err(GrantError::Refused {
                    status: code,
                    error: text("error", 100).unwrap_or_else(|| "refused".into()),
                    description: text("error_description", 200),
                })
            }
            _ => Err(GrantError::Transient(self.classify(answer))),
        }
    }
}

impl NexudusClient {
    /// Fills in each user's `preferred_language` from the languages listing, read only when a
    /// record names a `PreferredLanguageId` and kept across runs (see [`Source::begin_run`]). An id the listing does not hold is
    /// reported once per run; the mapper then falls back to `Language` and the default.
    async fn resolve_languages(&self, page: &mut SourcePage) -> Result<(), SourceError> {
        if !page
            .records
            .iter()
            .any(|r| r.as_ref().is_ok_and(|u| u.preferred_language_id.is_some()))
        {
            return Ok(());
        }
        let mut languages = self.languages.lock().await;
        if languages.table.is_none() {
            languages.table = Some(self.read_languages().await?);
            languages.read_at = Some(Instant::now());
        }
        let Languages {
            table, reported, ..
        } = &mut *languages;
        let table = table.as_ref().expect("read just above");
        for user in page.records.iter_mut().filter_map(|r| r.as_mut().ok()) {
            let Some(id) = user.preferred_language_id else {
                continue;
            };
            match table.get(&id) {
                Some(Some(code)) => user.preferred_language = Some(code.clone()),
                found => {
                    if reported.insert(id) {
                        let why = if found.is_some() {
                            "names a culture without a two-letter language"
                        } else {
                            "is not in /api/sys/languages"
                        };
                        tracing::warn!(
                            preferred_language_id = id,
                            "PreferredLanguageId {id} {why}; its users get the language of \
                             Language (mapping.languages) or mapping.default_language \
                             (reported once per run)"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// `GET /api/sys/languages`, every page, each with retries. An account whose API user may not
    /// read it (403) or that has no such listing (404) is reported once per run and resolves no
    /// id; any other failure fails the listing, like a failed page (a language read wrongly
    /// would be written to nevisIDM and back again).
    async fn read_languages(&self) -> Result<HashMap<u64, Option<String>>, SourceError> {
        let mut table = HashMap::new();
        for page in 1..=MAX_LANGUAGE_PAGES {
            let what = format!("languages page {page}");
            let read = self
                .retry
                .run(&what, || async {
                    let started = Instant::now();
                    let query = [("page", page.to_string()), ("size", "1000".to_string())];
                    let request = self.http.get(self.languages_url.clone()).query(&query);
                    let response = self.send(request).await?;
                    let answer = self.body_of(response, started).await?;
                    wire::decode_languages(&answer.body).map_err(|why| answer.unavailable(why))
                })
                .await;
            let (records, more) = match read {
                Ok(read) => read,
                Err(
                    SourceError::Auth { status: 403 } | SourceError::Unexpected { status: 404, .. },
                ) => {
                    tracing::warn!(
                        "cannot read /api/sys/languages (the API user needs the Language-Read \
                         role); PreferredLanguageId is not used in this run"
                    );
                    return Ok(table);
                }
                Err(e) => return Err(e),
            };
            table.extend(records);
            if !more {
                break;
            }
        }
        tracing::debug!(languages = table.len(), "Nexudus languages read");
        Ok(table)
    }
}

/// The start-up check of the hourly budget: `Some(warning)` when the steady state of
/// `sync.schedule` — a full listing (pages of the last full listing's size, plus the languages)
/// every `sync.full_every`-th run, idle incremental runs in between — cannot fit
/// `nexudus.max_requests_per_hour`. `None` also when no full listing has been seen yet.
pub fn hourly_budget_warning(cfg: &crate::config::Config, store: &Store) -> Option<String> {
    let size: u64 = store
        .meta_bytes(LISTING_SIZE_KEY)
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.trim().parse().ok())?;
    let pages = size.div_ceil(u64::from(cfg.nexudus.page_size)).max(1);
    let runs_per_hour = 3600.0 / cfg.sync.interval.as_secs_f64().max(1.0);
    pacer::hourly_budget_warning(
        pages,
        runs_per_hour,
        cfg.sync.full_every,
        cfg.nexudus.max_requests_per_hour,
    )
}

/// An answer read whole, before it is judged.
struct Answer {
    status: u16,
    content_type: String,
    body: bytes::Bytes,
    retry_after: Option<Duration>,
}

impl Answer {
    fn unavailable(&self, why: String) -> SourceError {
        SourceError::Unavailable {
            status: self.status,
            content_type: self.content_type.clone(),
            why,
            excerpt: answer::excerpt(&self.body),
            retry_after: self.retry_after,
        }
    }
}

impl Source for NexudusClient {
    async fn fetch_page(
        &self,
        page: u32,
        updated_since: Option<&str>,
    ) -> Result<SourcePage, SourceError> {
        let what = format!("users page {page}");
        let mut listed = self
            .retry
            .run(&what, || {
                self.fetch_once(page, self.page_size, updated_since)
            })
            .await?;
        self.resolve_languages(&mut listed).await?;
        Ok(listed)
    }

    async fn count_users(&self) -> Result<Option<u64>, SourceError> {
        Ok(self.ids_at(1, 1).await?.total_items)
    }

    async fn ids_at(&self, page: u32, size: u32) -> Result<PageIds, SourceError> {
        // The records are not mapped: no languages are resolved for them.
        let what = format!("users page {page} of size {size}");
        let listed = self
            .retry
            .run(&what, || self.fetch_once(page, size, None))
            .await?;
        Ok(PageIds::of(&listed))
    }

    async fn begin_run(&self, full: bool) {
        {
            let mut languages = self.languages.lock().await;
            languages.reported.clear();
            let stale = languages
                .read_at
                .is_none_or(|at| at.elapsed() >= LANGUAGES_MAX_AGE);
            if full || stale {
                languages.table = None;
            }
        }
        if !full {
            return;
        }
        // Say up front when this run's listing cannot fit what is left of the hour: its requests
        // will wait for the budget (each wait is logged and shown in /status as it happens).
        let size = self
            .store
            .as_ref()
            .and_then(|s| s.meta_bytes(LISTING_SIZE_KEY).ok().flatten())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.trim().parse::<u64>().ok());
        if let Some(size) = size {
            let needed = size.div_ceil(u64::from(self.page_size)).max(1) + 1;
            let (used, limit) = self.pacer.hour_used().await;
            let left = u64::from(limit.saturating_sub(used));
            if needed > left {
                tracing::warn!(
                    needed,
                    left,
                    limit,
                    "this run's full listing needs about {needed} Nexudus requests and the hour \
                     has {left} of {limit} left (nexudus.max_requests_per_hour): it will wait for \
                     the budget rather than draw throttles"
                );
            }
        }
    }

    async fn fetch_user(&self, id: u64) -> Result<Presence, SourceError> {
        let what = format!("user {id}");
        self.retry.run(&what, || self.fetch_user_once(id)).await
    }

    async fn userroles_page(
        &self,
        page: u32,
        updated_since: Option<&str>,
    ) -> Result<UserRolePage, SourceError> {
        let what = format!("UserRoles page {page}");
        self.retry
            .run(&what, || self.userroles_once(page, updated_since))
            .await
    }

    async fn userrole(&self, id: u64) -> Result<Option<UserRole>, SourceError> {
        let what = format!("UserRole {id}");
        self.retry.run(&what, || self.userrole_once(id)).await
    }
}

fn transport(e: reqwest::Error) -> SourceError {
    SourceError::Transport(describe(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_server_errors_retry_auth_does_not() {
        let t = SourceError::Throttled {
            status: 409,
            retry_after: Some(Duration::from_secs(2)),
        };
        assert_eq!(
            t.verdict(),
            Verdict::Retry {
                after: Some(Duration::from_secs(2))
            }
        );
        assert_eq!(SourceError::Auth { status: 401 }.verdict(), Verdict::Final);
        assert_eq!(
            SourceError::Transport("reset".into()).verdict(),
            Verdict::Retry { after: None }
        );
    }
}
