//! The target: nevisIDM Core REST API v1 users of one client
//! (`/nevisidm/api/core/v1/{clientExtId}/users`).
//!
//! Every answer is classified here, once: success, the user already exists (a create answered
//! 422 `errors.duplicateValue` or 409), not found, a stale `version` (a PATCH answered 409: never
//! retried with the same body), rejected (400/422: not retried, reported with nevisIDM's code and
//! message), authentication refused (fatal), or unavailable (429, 5xx, timeouts, dropped
//! connections: retried by [`crate::retry`], honouring `Retry-After`).
//!
//! The wire is trusted only as far as it is documented: redirects are never followed (a 3xx is
//! a login proxy in front of the API, fatal), a success counts only in its documented status
//! (create 201, update and archive 200 or 204), and a body is data only when it is a JSON object
//! announced as JSON (an HTML page is a login page, fatal). Access tokens come from a static
//! `nevis.token` or from OAuth2 client credentials (`oauth`).

mod authorizations;
mod oauth;

use std::future::Future;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use url::Url;

use std::sync::Arc;
use std::time::Instant;

use crate::client::{self, TlsFailure, describe, join, retry_after};
use crate::config::{NevisConfig, RetryConfig};
use crate::diff::{Changes, create_body};
use crate::mapper::DesiredUser;
use crate::metrics::Metrics;
use crate::retry::{Classify, RetryPolicy, Verdict};

/// Anything that can hold nevisIDM users (the HTTP client, or a fake in unit tests).
pub trait Target: Send + Sync + 'static {
    /// `POST …/users` with the full desired user.
    fn create(&self, user: &DesiredUser) -> impl Future<Output = Result<(), TargetError>> + Send;
    /// `PATCH …/users/{extId}` with only the changed fields and, when known, the `version`
    /// nevisIDM last reported for the user (optimistic locking: a stale one answers
    /// [`TargetError::Stale`]). Answers the user as nevisIDM holds it after the write when it
    /// answered 200 with it (its `version`, and the form it keeps each value in), `None` for 204.
    fn update(
        &self,
        ext_id: &str,
        changes: &Changes,
        version: Option<i64>,
    ) -> impl Future<Output = Result<Option<Value>, TargetError>> + Send;
    /// `POST …/users/{extId}/archive` (archives profiles and deletes credentials).
    fn archive(&self, ext_id: &str) -> impl Future<Output = Result<(), TargetError>> + Send;
    /// `GET …/users/{extId}`; `None` when nevisIDM has no such user.
    fn get(&self, ext_id: &str) -> impl Future<Output = Result<Option<Value>, TargetError>> + Send;
    /// One page of `GET …/clients/{clientExtId}/users`, filtered by `filters` (e.g.
    /// `("loginId", "a@b.c")`), `limit` at a time, from `cursor` (`PageCursor::Start` first).
    fn list_page(
        &self,
        filters: &[(&str, &str)],
        limit: u32,
        cursor: &PageCursor,
    ) -> impl Future<Output = Result<UserPage, TargetError>> + Send;

    /// The role side (issue 21), only called with `[[roles.map]]`; a target without roles
    /// refuses every call (the in-memory fakes of unit tests).
    fn roles(&self) -> Option<&dyn RoleTarget> {
        None
    }
}

/// A user's profile in nevisIDM (authorizations hang off it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub ext_id: String,
    pub is_default: bool,
    /// `profileState` is `active` (or absent).
    pub active: bool,
}

/// One authorization of a profile: the role it grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub ext_id: String,
    pub role_ext_id: String,
}

/// What the role sync asks of nevisIDM. Boxed futures: the trait is used as `dyn`.
pub trait RoleTarget: Send + Sync {
    /// `GET /core/v1/roles/{extId}`: whether the role exists.
    fn role_exists<'a>(&'a self, role_ext_id: &'a str) -> BoxFuture<'a, Result<bool, TargetError>>;
    /// `GET /principal/v1/permissions`; `None` when the endpoint does not exist (404).
    fn permissions(&self) -> BoxFuture<'_, Result<Option<Vec<String>>, TargetError>>;
    /// `GET …/users/{extId}/profiles`.
    fn profiles<'a>(
        &'a self,
        user_ext_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Profile>, TargetError>>;
    /// `POST …/users/{extId}/profiles` in `unit_ext_id`: the new profile's extId, when its
    /// `Location` names it.
    fn create_profile<'a>(
        &'a self,
        user_ext_id: &'a str,
        unit_ext_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, TargetError>>;
    /// `GET …/profiles/{extId}/authorizations`.
    fn authorizations<'a>(
        &'a self,
        profile_ext_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Authorization>, TargetError>>;
    /// `POST …/profiles/{extId}/authorizations` with `{"roleExtId"}`: the authorization's
    /// extId when its `Location` names it; a duplicate is [`TargetError::Duplicate`].
    fn grant<'a>(
        &'a self,
        profile_ext_id: &'a str,
        role_ext_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, TargetError>>;
    /// `DELETE …/profiles/{extId}/authorizations/{authExtId}`.
    fn revoke<'a>(
        &'a self,
        profile_ext_id: &'a str,
        authorization_ext_id: &'a str,
    ) -> BoxFuture<'a, Result<(), TargetError>>;
}

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// nevisIDM's optimistic-locking counter in a user document (a read, a listing item, the
/// answer to a PATCH); `None` when the document has none.
pub fn version_of(user: &Value) -> Option<i64> {
    user.get("version").and_then(Value::as_i64)
}

/// Where a page of the user listing starts. nevisIDM pages by `continuationToken` or by
/// `offset`/`limit`; the token is followed when the server hands one out, and `offset` is the
/// fallback when it does not but `totalResult` says more users follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageCursor {
    Start,
    Token(String),
    Offset(u64),
}

impl PageCursor {
    /// The cursor of the page after `page`, which was read from `self`, with `received` items
    /// read so far (this page included); `None` when the listing is complete.
    pub fn next(&self, page: &UserPage, received: u64) -> Result<Option<PageCursor>, TargetError> {
        // An empty page ends the listing, token or not (Identity Cloud hands out a token with
        // every page that has results, the last one too).
        if page.items.is_empty() {
            return Ok(None);
        }
        match &page.continuation {
            Some(token) if *self == PageCursor::Token(token.clone()) => {
                Err(TargetError::Unavailable {
                    status: None,
                    detail: "user listing handed out the same continuationToken twice".into(),
                    retry_after: None,
                })
            }
            Some(token) => Ok(Some(PageCursor::Token(token.clone()))),
            None => match page.total {
                Some(total) if received < total && !page.items.is_empty() => {
                    Ok(Some(PageCursor::Offset(received)))
                }
                _ => Ok(None),
            },
        }
    }
}

/// Hands every page of the client's users matching `filters` to `each`, following the
/// continuation token (or `offset`). Bounded: a listing that goes on beyond `max_pages` is an
/// error, not a hang.
pub async fn for_each_page<T: Target>(
    target: &T,
    filters: &[(&str, &str)],
    limit: u32,
    max_pages: u32,
    mut each: impl FnMut(Vec<Value>),
) -> Result<(), TargetError> {
    let mut cursor = PageCursor::Start;
    let mut received = 0u64;
    for _ in 0..max_pages {
        let mut page = target.list_page(filters, limit, &cursor).await?;
        received += page.items.len() as u64;
        let next = cursor.next(&page, received)?;
        each(std::mem::take(&mut page.items));
        match next {
            Some(next) => cursor = next,
            None => return Ok(()),
        }
    }
    Err(TargetError::EndlessListing { max_pages })
}

/// Every user of the client matching `filters` (see `for_each_page`).
pub async fn list_all<T: Target>(
    target: &T,
    filters: &[(&str, &str)],
    limit: u32,
    max_pages: u32,
) -> Result<Vec<Value>, TargetError> {
    let mut out = Vec::new();
    for_each_page(target, filters, limit, max_pages, |items| out.extend(items)).await?;
    Ok(out)
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TargetError {
    #[error(
        "nevisIDM refused the credentials (HTTP {status}); check nevis.token (or nevis.oauth_client_id and its rights, or the client certificate) and the technical user's rights"
    )]
    Auth { status: u16 },
    #[error("nevisIDM says the user already exists (HTTP {status} {code}: {message})")]
    Duplicate {
        status: u16,
        code: String,
        message: String,
    },
    /// A PATCH answered 409: the user changed in nevisIDM since its `version` was read.
    #[error("nevisIDM user changed concurrently (HTTP 409{detail})")]
    Stale { detail: String },
    /// OAuth2 went wrong in a way that will not heal by itself (credentials refused, no token
    /// in the answer, nevisIDM refusing a fresh token). Fatal.
    #[error("nevisIDM OAuth2: {detail}")]
    OAuth { detail: String },
    #[error("nevisIDM has no such user (HTTP 404)")]
    NotFound,
    #[error("nevisIDM rejected the user (HTTP {status} {code}: {message})")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// The user listing went on past its page bound: an error, not a hang.
    #[error("nevisIDM's user listing did not end within {max_pages} pages")]
    EndlessListing { max_pages: u32 },
    /// The TLS settings are not usable, or the handshake failed: the server's certificate does
    /// not verify, or the server refused our client certificate (or its absence). Not retried:
    /// it will not heal by itself. `detail` says which, and names the setting to check.
    #[error("TLS with nevisIDM failed: {detail}")]
    Tls { detail: String },
    /// nevisIDM answered a redirect. Fatal: every later request would meet it too.
    #[error(
        "nevisIDM answered HTTP {status} redirecting to {location:?} instead of answering the API \
         call (redirects are never followed): most likely a login proxy (e.g. nevisProxy) in front \
         of the REST API; publish the API for token or certificate authentication (nevis.token / \
         nevis.oauth_* or nevis.client_cert) and check nevis.base_url"
    )]
    Redirect { status: u16, location: String },
    /// A success status with an HTML page: a login page answered instead of the API. Fatal.
    #[error(
        "nevisIDM answered HTTP {status} with an HTML page ({content_type}) instead of JSON: most \
         likely the login page of a proxy in front of the REST API; publish the API for token or \
         certificate authentication and check nevis.base_url"
    )]
    LoginPage { status: u16, content_type: String },
    /// An answer not in the documented form (a create not answered 201, a read that is not a
    /// JSON user): nothing is taken from it, and the user is not checkpointed.
    #[error("nevisIDM answered in an undocumented form: {detail}")]
    Protocol { status: u16, detail: String },
    #[error("nevisIDM unavailable: {detail}")]
    Unavailable {
        status: Option<u16>,
        detail: String,
        retry_after: Option<Duration>,
    },
}

impl TargetError {
    /// Errors that end the run (exit 2): every later request would meet them too.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            TargetError::Auth { .. }
                | TargetError::Tls { .. }
                | TargetError::Redirect { .. }
                | TargetError::LoginPage { .. }
                | TargetError::OAuth { .. }
        )
    }
}

impl Classify for TargetError {
    fn verdict(&self) -> Verdict {
        match self {
            TargetError::Unavailable { retry_after, .. } => Verdict::Retry {
                after: *retry_after,
            },
            _ => Verdict::Final,
        }
    }

    fn label(&self) -> String {
        match self {
            TargetError::Auth { status }
            | TargetError::Duplicate { status, .. }
            | TargetError::Rejected { status, .. } => status.to_string(),
            TargetError::NotFound => "404".into(),
            TargetError::Stale { .. } => "409".into(),
            TargetError::EndlessListing { .. } => "endless".into(),
            TargetError::OAuth { .. } => "oauth".into(),
            TargetError::Tls { .. } => "tls".into(),
            TargetError::Redirect { status, .. }
            | TargetError::LoginPage { status, .. }
            | TargetError::Protocol { status, .. } => status.to_string(),
            TargetError::Unavailable { status, .. } => {
                status.map_or_else(|| "transport".into(), |s| s.to_string())
            }
        }
    }
}

/// The kind of request, because the same status means different things on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// `POST …/users`: documented answer 201.
    Create,
    /// `PATCH …/users/{extId}`: 200 with the updated user, or 204.
    Update,
    /// `POST …/archive`: 200 or 204.
    Archive,
    /// A read or a listing: 200 with a JSON object.
    Get,
    /// `POST` of a sub-resource (a profile, an authorization): 201, its `Location` is the answer.
    Add,
    /// `DELETE` of an authorization: 200 or 204.
    Remove,
}

pub struct NevisClient {
    http: reqwest::Client,
    /// `…/nevisidm/api/`: profiles, authorizations, roles and permissions hang off it.
    api_url: Url,
    client_ext_id: String,
    users_url: Url,
    /// `GET /nevisidm/api/core/v1/clients/{clientExtId}/users`: the paged, filterable listing.
    list_url: Url,
    token: Option<SecretString>,
    /// OAuth2 client credentials: access tokens fetched and renewed instead of a static token.
    oauth: Option<oauth::OAuth>,
    /// Whether a client certificate is configured: a server asking for one means different
    /// things with and without.
    client_cert: bool,
    retry: RetryPolicy,
    metrics: Arc<Metrics>,
    /// `remarks` for creates and `modificationComment` for every write (`[mapping]`).
    remarks: Option<String>,
    modification_comment: Option<String>,
}

impl NevisClient {
    pub fn new(
        cfg: &NevisConfig,
        retry: RetryConfig,
        metrics: Arc<Metrics>,
    ) -> Result<NevisClient, TargetError> {
        Self::with_marks(cfg, retry, metrics, None, None)
    }

    /// A client that marks its writes: `remarks` on creates, `modification_comment` on every
    /// create and update.
    pub fn with_marks(
        cfg: &NevisConfig,
        retry: RetryConfig,
        metrics: Arc<Metrics>,
        remarks: Option<String>,
        modification_comment: Option<String>,
    ) -> Result<NevisClient, TargetError> {
        let http = client::build_tls(cfg.request_timeout, &cfg.tls)
            .map_err(|detail| TargetError::Tls { detail })?;
        let users_url = join(
            &cfg.base_url,
            &format!("nevisidm/api/core/v1/{}/users", cfg.client_ext_id),
        );
        let list_url = join(
            &cfg.base_url,
            &format!("nevisidm/api/core/v1/clients/{}/users", cfg.client_ext_id),
        );
        Ok(NevisClient {
            http,
            api_url: join(&cfg.base_url, "nevisidm/api/"),
            client_ext_id: cfg.client_ext_id.clone(),
            users_url,
            list_url,
            token: cfg.token.clone(),
            oauth: cfg.oauth.clone().map(oauth::OAuth::new),
            client_cert: cfg.tls.client_cert.is_some(),
            retry: RetryPolicy::new("nevis", retry, Arc::clone(&metrics)),
            metrics,
            remarks,
            modification_comment,
        })
    }

    fn user_url(&self, ext_id: &str) -> Url {
        let mut url = self.users_url.clone();
        url.path_segments_mut()
            .expect("http(s) URLs have path segments")
            .push(ext_id);
        url
    }

    async fn send_once(
        &self,
        call: Call,
        method: Method,
        url: Url,
        body: Option<&Value>,
        token: Option<&SecretString>,
    ) -> Result<Option<Value>, TargetError> {
        let mut request = self.http.request(method, url);
        if let Some(token) = token {
            request = request.bearer_auth(token.expose_secret());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let started = Instant::now();
        let response = request.send().await.map_err(|e| self.unavailable(e))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let location = client::location(response.headers());
        let created_at = header_text(response.headers(), reqwest::header::LOCATION);
        let content_type = header_text(response.headers(), reqwest::header::CONTENT_TYPE);
        let bytes = response.bytes().await.map_err(|e| self.unavailable(e))?;
        self.metrics.observe_request("nevis", started.elapsed());
        if status.is_redirection() {
            return Err(TargetError::Redirect {
                status: status.as_u16(),
                location,
            });
        }
        if status.is_success() {
            let answer = success(call, status.as_u16(), content_type.as_deref(), &bytes)?;
            // What an `Add` created is named by its Location (the body is not documented).
            return Ok(match call {
                Call::Add => created_at.map(Value::String),
                _ => answer,
            });
        }
        Err(classify(call, status, retry_after, &bytes))
    }

    async fn send(
        &self,
        call: Call,
        method: Method,
        url: Url,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Option<Value>, TargetError> {
        let Some(oauth) = &self.oauth else {
            let token = self.token.as_ref();
            return self
                .retry
                .run(what, || {
                    self.send_once(call, method.clone(), url.clone(), body, token)
                })
                .await;
        };
        // OAuth2: a 401 renews the token once and repeats the request once.
        let bearer = oauth.bearer(&self.http, &self.retry).await?;
        let first = self
            .retry
            .run(what, || {
                self.send_once(call, method.clone(), url.clone(), body, Some(&bearer.token))
            })
            .await;
        if !matches!(first, Err(TargetError::Auth { status: 401 })) {
            return first;
        }
        tracing::debug!("nevisIDM answered 401: renewing the access token once");
        oauth.refused(bearer.generation).await;
        let bearer = oauth.bearer(&self.http, &self.retry).await?;
        match self
            .retry
            .run(what, || {
                self.send_once(call, method.clone(), url.clone(), body, Some(&bearer.token))
            })
            .await
        {
            Err(TargetError::Auth { status }) => Err(TargetError::OAuth {
                detail: format!(
                    "nevisIDM refused a freshly issued access token (HTTP {status}); check the \
                     rights of the client nevis.oauth_client_id and nevis.oauth_scope"
                ),
            }),
            other => other,
        }
    }
}

/// One page of the nevisIDM user listing.
#[derive(Debug, Clone, Default)]
pub struct UserPage {
    pub items: Vec<Value>,
    /// Pass back to get the next page; `None` on the last page.
    pub continuation: Option<String>,
    pub total: Option<u64>,
}

impl NevisClient {
    /// Filters are sent on every page, as the continuation token only carries the position.
    async fn list_page_http(
        &self,
        filters: &[(&str, &str)],
        limit: u32,
        cursor: &PageCursor,
    ) -> Result<UserPage, TargetError> {
        let mut url = self.list_url.clone();
        {
            let mut query = url.query_pairs_mut();
            for (k, v) in filters {
                query.append_pair(k, v);
            }
            query.append_pair("limit", &limit.to_string());
            // `totalResult` decides whether `offset` paging goes on; nevisIDM only counts when
            // asked to.
            query.append_pair("returnTotalResultCount", "true");
            match cursor {
                PageCursor::Start => {}
                PageCursor::Token(token) => {
                    query.append_pair("continuationToken", token);
                }
                PageCursor::Offset(offset) => {
                    query.append_pair("offset", &offset.to_string());
                }
            }
        }
        let doc = self
            .send(Call::Get, Method::GET, url, None, "list users")
            .await?
            .unwrap_or(Value::Null);
        let items = match doc.get("items") {
            Some(Value::Array(items)) => items.clone(),
            _ => {
                return Err(TargetError::Protocol {
                    status: 200,
                    detail: "the user listing has no items array".into(),
                });
            }
        };
        let pagination = doc.get("_pagination");
        Ok(UserPage {
            items,
            continuation: pagination
                .and_then(|p| p.get("continuationToken"))
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(String::from),
            total: pagination
                .and_then(|p| p.get("totalResult"))
                .and_then(Value::as_u64),
        })
    }
}

impl Target for NevisClient {
    async fn create(&self, user: &DesiredUser) -> Result<(), TargetError> {
        let mut body = create_body(user);
        if let Some(remarks) = &self.remarks {
            body["remarks"] = Value::from(remarks.as_str());
        }
        if let Some(comment) = &self.modification_comment {
            body["modificationComment"] = Value::from(comment.as_str());
        }
        let what = format!("create {}", user.ext_id);
        self.send(
            Call::Create,
            Method::POST,
            self.users_url.clone(),
            Some(&body),
            &what,
        )
        .await
        .map(drop)
    }

    async fn update(
        &self,
        ext_id: &str,
        changes: &Changes,
        version: Option<i64>,
    ) -> Result<Option<Value>, TargetError> {
        let mut body = changes.to_json();
        if let Some(comment) = &self.modification_comment {
            body["modificationComment"] = Value::from(comment.as_str());
        }
        if let Some(version) = version {
            body["version"] = Value::from(version);
        }
        let what = format!("update {ext_id}");
        self.send(
            Call::Update,
            Method::PATCH,
            self.user_url(ext_id),
            Some(&body),
            &what,
        )
        .await
        .and_then(|answer| match answer {
            // The updated user: it must be the one we wrote to.
            Some(user)
                if user
                    .get("extId")
                    .is_some_and(|e| e.as_str() != Some(ext_id)) =>
            {
                Err(TargetError::Protocol {
                    status: 200,
                    detail: format!("updating user {ext_id} answered a document of another extId"),
                })
            }
            answer => Ok(answer),
        })
    }

    async fn archive(&self, ext_id: &str) -> Result<(), TargetError> {
        let mut url = self.user_url(ext_id);
        url.path_segments_mut()
            .expect("http(s) URLs have path segments")
            .push("archive");
        let what = format!("archive {ext_id}");
        self.send(Call::Archive, Method::POST, url, None, &what)
            .await
            .map(drop)
    }

    async fn list_page(
        &self,
        filters: &[(&str, &str)],
        limit: u32,
        cursor: &PageCursor,
    ) -> Result<UserPage, TargetError> {
        self.list_page_http(filters, limit, cursor).await
    }

    fn roles(&self) -> Option<&dyn RoleTarget> {
        Some(self)
    }

    async fn get(&self, ext_id: &str) -> Result<Option<Value>, TargetError> {
        let what = format!("read {ext_id}");
        match self
            .send(Call::Get, Method::GET, self.user_url(ext_id), None, &what)
            .await
        {
            Err(TargetError::NotFound) => Ok(None),
            Ok(Some(doc)) if doc.get("extId").and_then(Value::as_str) != Some(ext_id) => {
                Err(TargetError::Protocol {
                    status: 200,
                    detail: format!("reading user {ext_id} answered a document of another extId"),
                })
            }
            other => other,
        }
    }
}

/// Longest message kept of one error item (messages may quote whole values).
const ERROR_MESSAGE_CHARS: usize = 200;
/// Error items reported at most from one answer.
const ERROR_ITEMS: usize = 10;

/// nevisIDM's error document, `{"errors":[{"code":"errors.…","message":"…"}, …]}`: the first
/// item's code (what the answer is classified by) and every item's message, each cut to a
/// sensible length, the later ones with their code: `first message; errors.x: second message`.
/// An answer that is no such document gives its first 200 characters.
fn errors(body: &[u8]) -> (String, String) {
    let doc: Option<Value> = serde_json::from_slice(body).ok();
    let items: Vec<&Value> = doc
        .as_ref()
        .and_then(|d| d.get("errors"))
        .and_then(Value::as_array)
        .map(|items| items.iter().take(ERROR_ITEMS).collect())
        .unwrap_or_default();
    let field = |item: &Value, k: &str| {
        item.get(k)
            .and_then(Value::as_str)
            .map(|v| v.chars().take(ERROR_MESSAGE_CHARS).collect::<String>())
            .unwrap_or_default()
    };
    let Some(first) = items.first() else {
        return (
            String::new(),
            String::from_utf8_lossy(body).chars().take(200).collect(),
        );
    };
    let mut message = field(first, "message");
    for item in &items[1..] {
        message.push_str(&format!(
            "; {}: {}",
            field(item, "code"),
            field(item, "message")
        ));
    }
    (field(first, "code"), message)
}

/// A header's value as text, if it is text.
fn header_text(
    headers: &reqwest::header::HeaderMap,
    name: reqwest::header::HeaderName,
) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A 2xx answer, accepted only in the documented form: create 201; update 200 (the user) or
/// 204; archive 200 or 204; read and listing 200 with a JSON object. An HTML page is a login
/// page (fatal); anything else undocumented is a [`TargetError::Protocol`], never data.
fn success(
    call: Call,
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Option<Value>, TargetError> {
    let html = content_type.is_some_and(|ct| ct.to_ascii_lowercase().contains("html"));
    if html {
        return Err(TargetError::LoginPage {
            status,
            content_type: content_type.unwrap_or_default().to_string(),
        });
    }
    let allowed: &[u16] = match call {
        Call::Create | Call::Add => &[201],
        Call::Update | Call::Archive | Call::Remove => &[200, 204],
        Call::Get => &[200],
    };
    if !allowed.contains(&status) {
        return Err(TargetError::Protocol {
            status,
            detail: format!("HTTP {status} where {allowed:?} is documented"),
        });
    }
    // A create's 201 carries no body worth reading (the Location header names the user); an
    // archive's answer is not needed either.
    let wants_body = match call {
        Call::Create | Call::Archive | Call::Add | Call::Remove => false,
        Call::Update => status == 200 && !body.iter().all(u8::is_ascii_whitespace),
        Call::Get => true,
    };
    if !wants_body {
        return Ok(None);
    }
    if !content_type.is_some_and(client::is_json) {
        return Err(TargetError::Protocol {
            status,
            detail: format!(
                "expected a JSON object, got content type {:?}",
                content_type.unwrap_or("(none)")
            ),
        });
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(doc @ Value::Object(_)) => Ok(Some(doc)),
        Ok(_) => Err(TargetError::Protocol {
            status,
            detail: "expected a JSON object, got another JSON value".into(),
        }),
        Err(e) => Err(TargetError::Protocol {
            status,
            detail: format!("the body is not JSON: {e}"),
        }),
    }
}

fn classify(
    call: Call,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> TargetError {
    let code = status.as_u16();
    let (err_code, message) = errors(body);
    match (code, call) {
        (401 | 403, _) => TargetError::Auth { status: code },
        (404, _) => TargetError::NotFound,
        (409, Call::Create | Call::Add) => TargetError::Duplicate {
            status: code,
            code: err_code,
            message,
        },
        (422, Call::Create | Call::Add) if err_code.starts_with("errors.duplicate") => {
            TargetError::Duplicate {
                status: code,
                code: err_code,
                message,
            }
        }
        // A stale `version` (or a concurrent writer): never retried with the same body; the
        // dispatcher reads the user, diffs again and sends a fresh version once.
        (409, Call::Update) => TargetError::Stale {
            detail: if err_code.is_empty() {
                String::new()
            } else {
                format!(" {err_code}: {message}")
            },
        },
        (408 | 409 | 429 | 500..=599, _) => TargetError::Unavailable {
            status: Some(code),
            detail: if err_code.is_empty() {
                format!("HTTP {code}")
            } else {
                format!("HTTP {code} {err_code}: {message}")
            },
            retry_after,
        },
        _ => TargetError::Rejected {
            status: code,
            code: err_code,
            message,
        },
    }
}

impl NevisClient {
    /// A transport error: a TLS failure (final, explained) or nevisIDM unavailable (retried).
    fn unavailable(&self, e: reqwest::Error) -> TargetError {
        match client::tls_failure(&e) {
            Some(failure) => TargetError::Tls {
                detail: tls_detail(failure, self.client_cert),
            },
            None => TargetError::Unavailable {
                status: None,
                detail: describe(e),
                retry_after: None,
            },
        }
    }
}

/// What a TLS failure means for the operator, naming the one setting to check.
fn tls_detail(failure: TlsFailure, client_cert: bool) -> String {
    match failure {
        TlsFailure::ServerCertificate(why) => format!(
            "nevisIDM's server certificate is not trusted ({why}); set nevis.ca_cert to the CA \
             that signed it"
        ),
        TlsFailure::ClientCertificate(why) if !client_cert => format!(
            "nevisIDM requires a client certificate and none is configured ({why}); set \
             nevis.client_cert and nevis.client_key"
        ),
        TlsFailure::ClientCertificate(why) => format!(
            "nevisIDM refused our client certificate ({why}); check that nevis.client_cert / \
             nevis.client_key are the certificate and key nevisIDM expects, signed by a CA it \
             trusts"
        ),
        TlsFailure::Other(why) => format!(
            "{why}; check nevis.ca_cert (the CA that signed nevisIDM's certificate) and \
             nevis.client_cert / nevis.client_key (the client certificate nevisIDM expects)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(items: usize, continuation: Option<&str>, total: Option<u64>) -> UserPage {
        UserPage {
            items: vec![Value::Null; items],
            continuation: continuation.map(String::from),
            total,
        }
    }

    #[test]
    fn listing_follows_the_token_falls_back_to_offset_and_stops_when_done() {
        let start = PageCursor::Start;
        // A token is followed, whatever totalResult says.
        assert_eq!(
            start.next(&page(100, Some("t1"), Some(250)), 100).unwrap(),
            Some(PageCursor::Token("t1".into()))
        );
        // No token but more to come: offset paging from what was received.
        assert_eq!(
            start.next(&page(100, None, Some(250)), 100).unwrap(),
            Some(PageCursor::Offset(100))
        );
        // Done when everything was received, when an empty page arrives (a shrinking listing
        // must not loop), or when the server says nothing about the total.
        let offset = PageCursor::Offset(200);
        assert_eq!(offset.next(&page(50, None, Some(250)), 250).unwrap(), None);
        assert_eq!(offset.next(&page(0, None, Some(250)), 200).unwrap(), None);
        assert_eq!(start.next(&page(100, None, None), 100).unwrap(), None);
        // The same token twice is an error, not a loop.
        let token = PageCursor::Token("t1".into());
        assert!(token.next(&page(100, Some("t1"), Some(250)), 200).is_err());
        // A token on every page: the empty page ends the listing, even with a token.
        assert_eq!(token.next(&page(0, Some("t2"), None), 200).unwrap(), None);
        assert_eq!(
            token.next(&page(3, Some("t2"), None), 203).unwrap(),
            Some(PageCursor::Token("t2".into()))
        );
    }

    fn body(code: &str) -> Vec<u8> {
        format!(r#"{{"errors":[{{"code":"{code}","message":"m"}}]}}"#).into_bytes()
    }

    #[test]
    fn only_documented_successes_are_taken() {
        let json = Some("application/json; charset=utf-8");
        assert!(matches!(success(Call::Create, 201, None, b""), Ok(None)));
        assert!(matches!(
            success(Call::Create, 200, json, b"{}"),
            Err(TargetError::Protocol { status: 200, .. })
        ));
        assert!(matches!(success(Call::Update, 204, None, b""), Ok(None)));
        assert!(matches!(
            success(Call::Update, 200, json, br#"{"extId":"a","version":3}"#),
            Ok(Some(_))
        ));
        assert!(matches!(
            success(Call::Update, 201, json, b"{}"),
            Err(TargetError::Protocol { .. })
        ));
        assert!(matches!(success(Call::Archive, 200, None, b""), Ok(None)));
        // A login page answering 200 is fatal, whatever the call.
        for call in [Call::Create, Call::Update, Call::Archive, Call::Get] {
            let e = success(call, 200, Some("text/html; charset=utf-8"), b"<html>").unwrap_err();
            assert!(e.is_fatal(), "{e}");
        }
        // A read must be a JSON object, announced as JSON.
        assert!(matches!(
            success(Call::Get, 200, Some("text/plain"), b"{}"),
            Err(TargetError::Protocol { .. })
        ));
        assert!(matches!(
            success(Call::Get, 200, json, b"[1]"),
            Err(TargetError::Protocol { .. })
        ));
        assert!(matches!(
            success(Call::Get, 200, Some("application/problem+json"), b"{}"),
            Ok(Some(_))
        ));
    }

    #[test]
    fn duplicates_on_create_mean_the_user_exists() {
        let e = classify(
            Call::Create,
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
            &body("errors.duplicateValue"),
        );
        assert!(
            matches!(e, TargetError::Duplicate { status: 422, .. }),
            "{e:?}"
        );
        let e = classify(Call::Create, StatusCode::CONFLICT, None, b"");
        assert!(
            matches!(e, TargetError::Duplicate { status: 409, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn validation_errors_are_rejected_with_code_and_message() {
        let e = classify(
            Call::Update,
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
            &body("errors.invalidData"),
        );
        match e {
            TargetError::Rejected {
                status,
                code,
                message,
            } => {
                assert_eq!(
                    (status, code.as_str(), message.as_str()),
                    (422, "errors.invalidData", "m")
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(e_verdict(400), Verdict::Final);
    }

    #[test]
    fn every_error_item_is_reported_each_cut_to_a_sensible_length() {
        let long = "x".repeat(500);
        let answer = serde_json::json!({"errors": [
            {"code": "errors.invalidData", "message": "firstName is too long"},
            {"code": "errors.invalidData", "message": long},
            {"code": "errors.policyViolation", "message": "loginId breaks the policy"},
        ]});
        let e = classify(
            Call::Create,
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
            answer.to_string().as_bytes(),
        );
        let text = e.to_string();
        assert!(
            text.contains("errors.invalidData: firstName is too long"),
            "{text}"
        );
        assert!(
            text.contains("errors.policyViolation: loginId breaks the policy"),
            "{text}"
        );
        assert!(
            text.contains(&"x".repeat(200)) && !text.contains(&"x".repeat(201)),
            "{text}"
        );
    }

    fn e_verdict(status: u16) -> Verdict {
        classify(
            Call::Update,
            StatusCode::from_u16(status).unwrap(),
            None,
            b"",
        )
        .verdict()
    }

    #[test]
    fn only_transient_answers_are_retried() {
        assert_eq!(e_verdict(429), Verdict::Retry { after: None });
        assert_eq!(e_verdict(503), Verdict::Retry { after: None });
        // A 409 on a PATCH is a stale version: never retried blindly with the same body.
        assert_eq!(e_verdict(409), Verdict::Final);
        assert!(matches!(
            classify(Call::Update, StatusCode::CONFLICT, None, b""),
            TargetError::Stale { .. }
        ));
        assert_eq!(e_verdict(401), Verdict::Final);
        assert_eq!(e_verdict(403), Verdict::Final);
        assert_eq!(e_verdict(422), Verdict::Final);
        let e = classify(
            Call::Get,
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(3)),
            b"",
        );
        assert_eq!(
            e.verdict(),
            Verdict::Retry {
                after: Some(Duration::from_secs(3))
            }
        );
    }
}
