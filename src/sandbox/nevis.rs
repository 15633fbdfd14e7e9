//! Fake nevisIDM Core REST API v1: the user endpoints the sync writes to.
//!
//! Modelled on the "Create a user" seed page and the API notes: bearer auth, users keyed by
//! `extId` with read-only `created`/`lastModified`/`version`, the default client policy (first
//! name, family name and email mandatory; a closed list of languages), 422 business errors
//! (`errors.duplicateValue`, `errors.policyViolation`, …), partial-JSON PATCH with optimistic
//! locking, archive, and the client-wide user listing with offset or continuation-token paging.
//! It also records every request and the peak number handled at once, so tests can check what
//! the sync sent and how many requests it kept in flight.
//!
//! Switches model what real deployments are known to do beyond the documentation (each off by
//! default): a login proxy redirecting writes to an HTML page ([`FakeNevis::set_login_redirect`]),
//! OAuth2 access tokens that expire ([`FakeNevis::enable_oauth`]), `version` required on PATCH
//! ([`FakeNevis::set_version_required`]), `languageCode` answered upper case
//! ([`FakeNevis::set_upper_case_languages`]), a continuation token on every page and the total
//! only on request ([`FakeNevis::set_token_on_every_page`]), exact-match query filters
//! ([`FakeNevis::set_exact_filters`]) and offset-only paging ([`FakeNevis::set_offset_paging_only`]).
//! The role side (`roles`): roles by extId, permissions (or 404), profiles (a default one at user
//! creation, or none), authorizations (a duplicate grant refused or accepted) and a policy
//! default role, each variant behind a switch.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderValue, Method, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

mod roles;

use super::directory_forms::{self, StoredForms};
use super::{
    Controls, Fault, RequestLine, Server, Slow, cut_off, empty_response, fake_uuid, json_response,
    stalled,
};

/// Route templates; the gate classifies requests by the one the router matched.
const CREATE_ROUTE: &str = "/nevisidm/api/core/v1/{client}/users";
const USER_ROUTE: &str = "/nevisidm/api/core/v1/{client}/users/{ext_id}";
const ARCHIVE_ROUTE: &str = "/nevisidm/api/core/v1/{client}/users/{ext_id}/archive";
const LIST_ROUTE: &str = "/nevisidm/api/core/v1/clients/{client}/users";
/// The OAuth2 token endpoint (on a real deployment, `https://login.<instance>/oauth/token`).
const TOKEN_ROUTE: &str = "/oauth/token";
const ROLE_ROUTE: &str = "/nevisidm/api/core/v1/roles/{role}";
const PERMISSIONS_ROUTE: &str = "/nevisidm/api/principal/v1/permissions";
const PROFILES_ROUTE: &str = "/nevisidm/api/core/v1/{client}/users/{ext_id}/profiles";
const AUTHORIZATIONS_ROUTE: &str =
    "/nevisidm/api/core/v1/{client}/profiles/{profile}/authorizations";
const AUTHORIZATION_ROUTE: &str =
    "/nevisidm/api/core/v1/{client}/profiles/{profile}/authorizations/{auth}";

const DEFAULT_LIMIT: u64 = 100;
const MAX_LIMIT: u64 = 1000;
/// Far above any user record; a body larger than this is a client bug.
const MAX_BODY: usize = 1024 * 1024;
/// Fields the server maintains; a client may only send `version`, as a locking precondition.
const READ_ONLY: [&str; 3] = ["created", "lastModified", "version"];

/// How the fake nevisIDM authenticates and which client policy it enforces.
#[derive(Clone, PartialEq, Eq)]
pub struct NevisFakeConfig {
    /// The only `clientExtId` the paths may name; others answer 404.
    pub client_ext_id: String,
    /// The bearer token every request must carry.
    pub token: String,
    /// Allowed `languageCode` values (lower-case ISO 639-1).
    pub allowed_languages: Vec<String>,
}

/// The token stays out of logs, even a fake's.
impl std::fmt::Debug for NevisFakeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NevisFakeConfig")
            .field("client_ext_id", &self.client_ext_id)
            .field("token", &"<redacted>")
            .field("allowed_languages", &self.allowed_languages)
            .finish()
    }
}

impl Default for NevisFakeConfig {
    fn default() -> Self {
        Self {
            client_ext_id: "client-123".to_owned(),
            token: "nevis-secret-token".to_owned(),
            allowed_languages: ["de", "en", "fr", "it", "es"].map(str::to_owned).to_vec(),
        }
    }
}

/// OAuth2 client credentials on the fake ([`FakeNevis::enable_oauth`]): the token endpoint
/// issues access tokens that expire after `lifetime`; nevisIDM then answers 401 to them.
#[derive(Clone, PartialEq, Eq)]
pub struct FakeOAuth {
    pub client_id: String,
    pub client_secret: String,
    pub lifetime: Duration,
    /// Whether the answer carries `expires_in` (a client without it learns of the expiry from
    /// a 401).
    pub report_expires_in: bool,
}

/// The secret stays out of logs, even a fake's.
impl std::fmt::Debug for FakeOAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeOAuth")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("lifetime", &self.lifetime)
            .field("report_expires_in", &self.report_expires_in)
            .finish()
    }
}

impl Default for FakeOAuth {
    fn default() -> Self {
        Self {
            client_id: "sync-client".to_owned(),
            client_secret: "oauth-client-secret-7f3a".to_owned(),
            lifetime: Duration::from_secs(3600),
            report_expires_in: true,
        }
    }
}

/// Requests received since start (or the last [`FakeNevis::reset_stats`]), failed ones included.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NevisStats {
    pub requests: u64,
    pub creates: u64,
    pub patches: u64,
    pub gets: u64,
    pub lists: u64,
    pub archives: u64,
    pub deletes: u64,
    /// Requests answered 401.
    pub unauthorized: u64,
    /// Requests to the OAuth2 token endpoint.
    pub token_requests: u64,
    /// Requests that consumed a queued [`Fault`].
    pub faults_injected: u64,
    /// Answers by HTTP status.
    pub status_counts: BTreeMap<u16, u64>,
}

/// One request as the fake received and answered it.
#[derive(Clone, Debug, PartialEq)]
pub struct LoggedRequest {
    pub method: String,
    /// The path, with `?query` when there was one.
    pub path: String,
    /// The JSON body; a body that is not JSON is kept as a string; `None` when empty.
    pub body: Option<Value>,
    /// The status sent (for a dropped answer, the status of its headers); 0 while the request is
    /// still being handled.
    pub status: u16,
}

/// A running fake nevisIDM; the server stops when this is dropped.
pub struct FakeNevis {
    state: Shared,
    server: Server,
}

/// Only the address: the state holds credentials and can be large.
impl std::fmt::Debug for FakeNevis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeNevis")
            .field("addr", &self.server.addr)
            .finish_non_exhaustive()
    }
}

type Shared = Arc<Mutex<Inner>>;

struct Inner {
    cfg: NevisFakeConfig,
    base_url: String,
    users: Users,
    /// Seeds the generated extIds.
    generated: u64,
    /// Errors forced by `reject_user`, by extId.
    rejections: HashMap<String, ApiError>,
    controls: Controls,
    /// False when the caller is authenticated before the fake (a TLS-terminating proxy that
    /// checked a client certificate): requests without a bearer token are then accepted.
    token_required: bool,
    offset_paging_only: bool,
    /// A login proxy in front of the API: writes are redirected to an HTML login page.
    login_redirect: bool,
    /// `languageCode` answered upper case (`EN`), as the on-prem schema lists it.
    upper_case_languages: bool,
    /// Identity Cloud paging: a token with every non-empty page, an empty last page, and
    /// `totalResult` only with `returnTotalResultCount=true`.
    token_on_every_page: bool,
    /// A PATCH without `version` is refused (422), as the one real client found requires it.
    version_required: bool,
    /// The `loginId` and `contacts.email` filters compare exactly (case-sensitive).
    exact_filters: bool,
    /// The forms values are kept in.
    stored_forms: StoredForms,
    /// A PATCH is answered 204 without the user.
    patch_no_content: bool,
    /// Fields a PATCH is answered for but leaves as they were (`contacts.email`, …): a policy or
    /// a read-only attribute keeping the old value.
    patch_keeps: Vec<String>,
    /// Values breaking the documented limits are refused (422, an item per breach).
    limits_enforced: bool,
    /// OAuth2 on: only access tokens from the token endpoint are accepted, until they expire.
    oauth: Option<FakeOAuth>,
    /// Access tokens issued, with when they expire, in issue order.
    issued: Vec<(String, std::time::Instant)>,
    /// The `scope` of every token request (`None` when it had none).
    token_scopes: Vec<Option<String>>,
    stats: NevisStats,
    log: Vec<LoggedRequest>,
    /// Off for long benchmark runs, where the log would only cost memory.
    log_enabled: bool,
    /// Entries dropped by `clear_request_log`, so in-flight requests still find their entry.
    log_cleared: usize,
    in_flight: usize,
    max_in_flight: usize,
    /// Roles, permissions, profiles and authorizations (`roles`).
    roles: roles::RoleState,
}

/// Users by extId, with a case-insensitive loginId index so that the uniqueness check stays
/// cheap at benchmark sizes (a scan per create made the fake the bottleneck at 20,000 users).
/// Reads go through `Deref`; every change goes through the methods, which keep the index.
#[derive(Default)]
struct Users {
    by_ext_id: BTreeMap<String, Value>,
    /// lower-cased loginId -> extId
    logins: HashMap<String, String>,
}

fn login_key(user: &Value) -> Option<String> {
    user.get("loginId")
        .and_then(Value::as_str)
        .map(str::to_lowercase)
}

impl std::ops::Deref for Users {
    type Target = BTreeMap<String, Value>;
    fn deref(&self) -> &Self::Target {
        &self.by_ext_id
    }
}

impl Users {
    fn insert(&mut self, ext_id: String, user: Value) {
        self.remove(&ext_id);
        if let Some(login) = login_key(&user) {
            self.logins.insert(login, ext_id.clone());
        }
        self.by_ext_id.insert(ext_id, user);
    }

    fn remove(&mut self, ext_id: &str) -> Option<Value> {
        let user = self.by_ext_id.remove(ext_id)?;
        if let Some(login) = login_key(&user)
            && self.logins.get(&login).is_some_and(|owner| owner == ext_id)
        {
            self.logins.remove(&login);
        }
        Some(user)
    }

    /// Edits a user in place and keeps the index right.
    fn edit<T>(&mut self, ext_id: &str, f: impl FnOnce(&mut Map<String, Value>) -> T) -> Option<T> {
        let mut user = self.remove(ext_id)?;
        let result = match &mut user {
            Value::Object(map) => Some(f(map)),
            _ => None,
        };
        self.insert(ext_id.to_string(), user);
        result
    }

    /// The extId holding this loginId (case-insensitive), if any.
    fn login_owner(&self, login: &str) -> Option<&String> {
        self.logins.get(&login.to_lowercase())
    }
}

fn lock(state: &Shared) -> MutexGuard<'_, Inner> {
    state.lock().expect("fake state poisoned")
}

fn now_stamp() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl FakeNevis {
    /// Binds `127.0.0.1:0` and serves the fake on a spawned task.
    pub async fn start(cfg: NevisFakeConfig) -> std::io::Result<Self> {
        let state: Shared = Arc::new(Mutex::new(Inner {
            cfg,
            base_url: String::new(),
            users: Users::default(),
            generated: 0,
            rejections: HashMap::new(),
            controls: Controls::default(),
            token_required: true,
            offset_paging_only: false,
            login_redirect: false,
            upper_case_languages: false,
            token_on_every_page: false,
            version_required: false,
            exact_filters: false,
            stored_forms: StoredForms::default(),
            patch_no_content: false,
            patch_keeps: Vec::new(),
            limits_enforced: false,
            oauth: None,
            issued: Vec::new(),
            token_scopes: Vec::new(),
            stats: NevisStats::default(),
            log: Vec::new(),
            log_enabled: true,
            log_cleared: 0,
            in_flight: 0,
            max_in_flight: 0,
            roles: roles::RoleState::default(),
        }));
        let router = Router::new()
            .route(CREATE_ROUTE, post(create_user))
            .route(
                USER_ROUTE,
                get(get_user).patch(patch_user).delete(delete_user),
            )
            .route(ARCHIVE_ROUTE, post(archive_user))
            .route(LIST_ROUTE, get(list_users))
            .route(TOKEN_ROUTE, post(token_grant))
            .route(ROLE_ROUTE, get(roles::get_role))
            .route(PERMISSIONS_ROUTE, get(roles::permissions))
            .route(
                PROFILES_ROUTE,
                get(roles::list_profiles).post(roles::create_profile),
            )
            .route(
                AUTHORIZATIONS_ROUTE,
                get(roles::list_authorizations).post(roles::grant),
            )
            .route(AUTHORIZATION_ROUTE, axum::routing::delete(roles::revoke))
            .fallback(no_route)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(middleware::from_fn_with_state(state.clone(), gate))
            .with_state(state.clone());
        let server = Server::start(router).await?;
        // Nothing can have connected yet: the address was unknown until now.
        lock(&state).base_url = server.base_url();
        Ok(Self { state, server })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.state)
    }

    /// Queues one fault for the next authorised request.
    pub fn push_fault(&self, fault: Fault) {
        self.push_faults(1, fault);
    }

    /// Queues `n` copies of `fault`; each request consumes at most one.
    pub fn push_faults(&self, n: usize, fault: Fault) {
        self.lock().controls.push_faults(n, fault);
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        self.lock().controls.faults.clear();
    }

    /// Delays every answer by `latency` (zero for none).
    pub fn set_latency(&self, latency: Duration) {
        self.lock().controls.latency = latency;
    }

    /// Delays the answers to the requests `picks` chooses by `delay` (on top of any latency), in
    /// place of any earlier choice: e.g. only the user listing, or only PATCHes. A write is
    /// applied once its delay is over.
    pub fn set_slow(
        &self,
        delay: Duration,
        picks: impl Fn(&RequestLine<'_>) -> bool + Send + Sync + 'static,
    ) {
        self.lock().controls.set_slow(Some(Slow::new(delay, picks)));
    }

    /// Answers every request without the selective delay again.
    pub fn clear_slow(&self) {
        self.lock().controls.set_slow(None);
    }

    /// Applies the requests `picks` chooses at once but holds their answers back by `delay`:
    /// the write is made in nevisIDM while the client still waits for its confirmation.
    pub fn set_slow_answer(
        &self,
        delay: Duration,
        picks: impl Fn(&RequestLine<'_>) -> bool + Send + Sync + 'static,
    ) {
        self.lock()
            .controls
            .set_slow_answer(Some(Slow::new(delay, picks)));
    }

    /// Answers at once again.
    pub fn clear_slow_answer(&self) {
        self.lock().controls.set_slow_answer(None);
    }

    /// Requests applied whose answer [`FakeNevis::set_slow_answer`] held back so far.
    pub fn answered_late(&self) -> usize {
        self.lock().controls.answered_late
    }

    /// Requests the selective delay picked since it was set (counted on arrival, before the
    /// delay): a test knows the run is waiting in the slow phase.
    pub fn slowed(&self) -> usize {
        self.lock().controls.slowed
    }

    /// While `Some(status)`, every request (authorised or not) is answered with that status.
    pub fn set_down(&self, status: Option<u16>) {
        self.lock().controls.down = status;
    }

    /// Whether requests need the bearer token. Off models a nevisIDM published behind a proxy
    /// that authenticates callers by client certificate; a wrong token is still refused.
    pub fn set_token_required(&self, required: bool) {
        self.lock().token_required = required;
    }

    /// Whether the user listing leaves out `continuationToken` (a server that pages only by
    /// `offset`/`limit`, as the API also allows).
    pub fn set_offset_paging_only(&self, only: bool) {
        self.lock().offset_paging_only = only;
    }

    /// Models nevisProxy in front of the API answering writes it does not let through with
    /// `302` to its login page, an HTML page answering `200` (`GET /login`).
    pub fn set_login_redirect(&self, on: bool) {
        self.lock().login_redirect = on;
    }

    /// Answers `languageCode` upper case (`EN`, as nevisIDM's on-prem schema lists it) in every
    /// user it returns, and accepts it in either case.
    pub fn set_upper_case_languages(&self, on: bool) {
        self.lock().upper_case_languages = on;
    }

    /// Pages as Identity Cloud documents it: a `continuationToken` with every page that has
    /// results (the last one too), so the listing ends with an empty page; `totalResult` only
    /// when asked for with `returnTotalResultCount=true`. Combined with
    /// [`FakeNevis::set_offset_paging_only`], no token at all and the total only on request.
    pub fn set_token_on_every_page(&self, on: bool) {
        self.lock().token_on_every_page = on;
    }

    /// Requires `version` on every PATCH: without it `422 errors.invalidData`; a stale one is
    /// `409` whether or not this is on. The PATCH answer is the updated user either way.
    pub fn set_version_required(&self, on: bool) {
        self.lock().version_required = on;
    }

    /// Makes the listing's `loginId=` and `contacts.email=` filters compare exactly (case
    /// matters), as nothing documents that they do not.
    /// Keeps values in these forms from now on (each switch off: as sent).
    pub fn set_stored_forms(&self, forms: StoredForms) {
        self.lock().stored_forms = forms;
    }

    /// Answers a PATCH 204 without the user (documented besides 200 with the user).
    pub fn set_patch_no_content(&self, on: bool) {
        self.lock().patch_no_content = on;
    }

    /// Answers a PATCH as usual (200 with the user, or 204) but leaves each of `fields`
    /// (`contacts.email`, `name.familyName`, `languageCode`) as it was; none: all taken again.
    pub fn set_patch_keeps(&self, fields: &[&str]) {
        self.lock().patch_keeps = fields.iter().map(|f| f.to_string()).collect();
    }

    /// Refuses values that break nevisIDM's documented limits: 422 `errors.invalidData`, one
    /// error item per breach.
    pub fn set_limits_enforced(&self, on: bool) {
        self.lock().limits_enforced = on;
    }

    pub fn set_exact_filters(&self, on: bool) {
        self.lock().exact_filters = on;
    }

    /// Turns on OAuth2 client credentials: `POST /oauth/token` issues access tokens, and only
    /// those are accepted (the static token no longer is), until they expire.
    pub fn enable_oauth(&self, oauth: FakeOAuth) {
        self.lock().oauth = Some(oauth);
    }

    /// The token endpoint's URL.
    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_ROUTE}", self.base_url())
    }

    /// Every access token issued so far, oldest first.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.lock().issued.iter().map(|(t, _)| t.clone()).collect()
    }

    /// The `scope` each token request carried, in order.
    pub fn token_scopes(&self) -> Vec<Option<String>> {
        self.lock().token_scopes.clone()
    }

    pub fn user(&self, ext_id: &str) -> Option<Value> {
        self.lock().users.get(ext_id).cloned()
    }

    /// All users, sorted by extId.
    pub fn users(&self) -> Vec<Value> {
        self.lock().users.values().cloned().collect()
    }

    pub fn user_count(&self) -> usize {
        self.lock().users.len()
    }

    /// Stores a pre-existing user without the API's validation. Missing `created`,
    /// `lastModified`, `version` and `userState` get their defaults.
    ///
    /// # Panics
    /// When `user` is not an object with a string `extId`: that is a bug in the calling test.
    pub fn insert_user(&self, user: Value) {
        let Value::Object(mut user) = user else {
            panic!("FakeNevis::insert_user needs a JSON object");
        };
        let Some(ext_id) = user.get("extId").and_then(Value::as_str).map(str::to_owned) else {
            panic!("FakeNevis::insert_user needs a string extId");
        };
        let now = now_stamp();
        for (key, default) in [
            ("created", json!(now)),
            ("lastModified", json!(now)),
            ("version", json!(0)),
            ("userState", json!("active")),
        ] {
            user.entry(key).or_insert(default);
        }
        let mut inner = self.lock();
        inner.roles.user_created(&ext_id);
        inner.users.insert(ext_id, Value::Object(user));
    }

    /// Edits a user by hand, as an administrator in the nevisIDM console would: bumps `version`
    /// and `lastModified`. Returns false when the extId is unknown.
    pub fn modify_user(&self, ext_id: &str, edit: impl FnOnce(&mut Map<String, Value>)) -> bool {
        self.lock()
            .users
            .edit(ext_id, |user| {
                edit(user);
                touch(user);
            })
            .is_some()
    }

    pub fn remove_user(&self, ext_id: &str) -> bool {
        self.lock().users.remove(ext_id).is_some()
    }

    /// Every create (matched by the body's extId) and PATCH of `ext_id` answers this error until
    /// [`FakeNevis::clear_rejections`].
    pub fn reject_user(&self, ext_id: &str, status: u16, code: &str, message: &str) {
        let rejection = error(status, code, message);
        self.lock().rejections.insert(ext_id.to_owned(), rejection);
    }

    /// Like [`FakeNevis::reject_user`], with several error items in the one answer.
    pub fn reject_user_with_items(&self, ext_id: &str, status: u16, items: &[(&str, &str)]) {
        let Some(((code, message), rest)) = items.split_first() else {
            return;
        };
        let also = rest
            .iter()
            .map(|(c, m)| (c.to_string(), m.to_string()))
            .collect();
        let rejection = ApiError {
            also,
            ..error(status, code, message)
        };
        self.lock().rejections.insert(ext_id.to_owned(), rejection);
    }

    pub fn clear_rejections(&self) {
        self.lock().rejections.clear();
    }

    pub fn stats(&self) -> NevisStats {
        self.lock().stats.clone()
    }

    /// Zeroes the counters and restarts the in-flight peak from the current load.
    pub fn reset_stats(&self) {
        let mut inner = self.lock();
        inner.stats = NevisStats::default();
        inner.max_in_flight = inner.in_flight;
    }

    /// Every request so far, in arrival order.
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.lock().log.clone()
    }

    /// Turns the request log on or off (on by default).
    pub fn set_request_log(&self, enabled: bool) {
        self.lock().log_enabled = enabled;
    }

    pub fn clear_request_log(&self) {
        let mut inner = self.lock();
        inner.log_cleared += inner.log.len();
        inner.log.clear();
    }

    /// The most requests ever handled at the same time (from arrival until the answer's
    /// headers, latency included).
    pub fn max_in_flight(&self) -> usize {
        self.lock().max_in_flight
    }
}

/// `POST /oauth/token`: the client credentials grant, client authenticated with HTTP Basic.
async fn token_grant(
    State(state): State<Shared>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let oauth_error = |status: u16, code: &str| {
        json_response(
            status,
            &json!({ "error": code, "error_description": format!("{code} (sandbox)") }),
            None,
        )
    };
    let mut inner = lock(&state);
    let Some(oauth) = inner.oauth.clone() else {
        return oauth_error(404, "not_found");
    };
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    inner.token_scopes.push(form.get("scope").cloned());
    let credentials = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok());
    let expected = format!("{}:{}", oauth.client_id, oauth.client_secret);
    if credentials.as_deref() != Some(expected.as_str()) {
        return oauth_error(401, "invalid_client");
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(400, "unsupported_grant_type");
    }
    let n = inner.issued.len() as u64 + 1;
    let token = format!("oauth-at-{n}-{}", fake_uuid(n ^ 0x6f61_7574_6800_0000));
    inner
        .issued
        .push((token.clone(), std::time::Instant::now() + oauth.lifetime));
    let mut answer = json!({ "access_token": token, "token_type": "Bearer" });
    if oauth.report_expires_in {
        answer["expires_in"] = json!(oauth.lifetime.as_secs());
    }
    json_response(200, &answer, None)
}

/// A user as the fake answers it (the stored document, in the configured spelling).
fn shown(inner: &Inner, user: &Value) -> Value {
    let mut user = user.clone();
    if inner.upper_case_languages
        && let Some(language) = user.get("languageCode").and_then(Value::as_str)
    {
        user["languageCode"] = json!(language.to_uppercase());
    }
    user
}

/// Bumps the read-only bookkeeping after a modification.
fn touch(user: &mut Map<String, Value>) {
    let version = user.get("version").and_then(Value::as_i64).unwrap_or(0);
    user.insert("version".into(), json!(version + 1));
    user.insert("lastModified".into(), json!(now_stamp()));
}

/// Decrements the in-flight count even when the client hangs up and the handler is dropped.
struct InFlight(Shared);

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.0).in_flight -= 1;
    }
}

/// Counting, latency, outage, auth and faults, in that order, in front of every route.
async fn gate(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let method = parts.method.to_string();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), ToString::to_string);
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_owned());
    let bytes = axum::body::to_bytes(body, MAX_BODY).await;
    let logged_body = match &bytes {
        Ok(bytes) if bytes.is_empty() => None,
        Ok(bytes) => Some(
            serde_json::from_slice(bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned())),
        ),
        Err(_) => None,
    };
    let (latency, log_index) = {
        let mut inner = lock(&state);
        inner.stats.requests += 1;
        let stats = &mut inner.stats;
        match (&parts.method, route.as_deref()) {
            (&Method::POST, Some(CREATE_ROUTE)) => stats.creates += 1,
            (&Method::GET, Some(USER_ROUTE)) => stats.gets += 1,
            (&Method::PATCH, Some(USER_ROUTE)) => stats.patches += 1,
            (&Method::DELETE, Some(USER_ROUTE)) => stats.deletes += 1,
            (&Method::POST, Some(ARCHIVE_ROUTE)) => stats.archives += 1,
            (&Method::GET, Some(LIST_ROUTE)) => stats.lists += 1,
            (&Method::POST, Some(TOKEN_ROUTE)) => stats.token_requests += 1,
            _ => {}
        }
        inner.in_flight += 1;
        inner.max_in_flight = inner.max_in_flight.max(inner.in_flight);
        // Logged on arrival so the log keeps arrival order; the status is filled in below.
        let log_index = inner.log_cleared + inner.log.len();
        if inner.log_enabled {
            inner.log.push(LoggedRequest {
                method,
                path,
                body: logged_body,
                status: 0,
            });
        }
        let delay = inner.controls.delay(&RequestLine {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or_default(),
        });
        (delay, log_index)
    };
    let (method_name, path_only, query_only) = (
        parts.method.to_string(),
        parts.uri.path().to_owned(),
        parts.uri.query().unwrap_or_default().to_owned(),
    );
    let _in_flight = InFlight(state.clone());
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let response = match bytes {
        Ok(bytes) => admit(&state, Request::from_parts(parts, Body::from(bytes)), next).await,
        Err(_) => error(
            400,
            "errors.invalidData",
            "The request body could not be read.",
        )
        .into_response(),
    };
    let status = response.status().as_u16();
    let late = lock(&state).controls.answer_delay(&RequestLine {
        method: &method_name,
        path: &path_only,
        query: &query_only,
    });
    if !late.is_zero() {
        tokio::time::sleep(late).await;
    }
    {
        let mut inner = lock(&state);
        *inner.stats.status_counts.entry(status).or_default() += 1;
        if let Some(index) = log_index.checked_sub(inner.log_cleared)
            && let Some(entry) = inner.log.get_mut(index)
        {
            entry.status = status;
        }
    }
    response
}

/// Outage, auth and faults; then the route itself.
async fn admit(state: &Shared, request: Request, next: Next) -> Response {
    let fault = {
        let mut inner = lock(state);
        if let Some(status) = inner.controls.down {
            return status_response(status, None);
        }
        if request.uri().path() == LOGIN_PAGE {
            return login_page();
        }
        let write = matches!(
            *request.method(),
            Method::POST | Method::PATCH | Method::DELETE
        );
        if inner.login_redirect && write {
            let location = format!("{}{LOGIN_PAGE}?return=api", inner.base_url);
            let mut response = empty_response(302, None);
            if let Ok(location) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            return response;
        }
        let expected = format!("Bearer {}", inner.cfg.token);
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|value| value.to_str().unwrap_or_default().trim().to_owned());
        let now = std::time::Instant::now();
        let authorized = match presented {
            // The token endpoint checks its own (Basic) credentials.
            _ if request.uri().path() == TOKEN_ROUTE => true,
            Some(value) if inner.oauth.is_some() => {
                value.strip_prefix("Bearer ").is_some_and(|token| {
                    inner
                        .issued
                        .iter()
                        .any(|(issued, expires)| issued == token && now < *expires)
                })
            }
            Some(value) => value == expected,
            None => !inner.token_required,
        };
        if !authorized {
            inner.stats.unauthorized += 1;
            return status_response(401, None);
        }
        let fault = inner.controls.faults.pop_front();
        if fault.is_some() {
            inner.stats.faults_injected += 1;
        }
        fault
    };
    match fault {
        None => next.run(request).await,
        Some(Fault::Status {
            status,
            retry_after,
        }) => status_response(status, retry_after),
        Some(Fault::Drop) => {
            let partial = json!({"extId": "", "items": [], "version": 0});
            cut_off(json_response(200, &partial, None)).await
        }
        Some(Fault::DropAfterApply) => cut_off(next.run(request).await).await,
        Some(Fault::Stall(pause)) => stalled(pause),
    }
}

/// Where the modelled login proxy sends callers it redirects.
const LOGIN_PAGE: &str = "/login";

/// The proxy's login page: HTML, 200.
fn login_page() -> Response {
    let mut response = Response::new(Body::from(
        "<!DOCTYPE html><html><head><title>Login</title></head>\
         <body><form method=\"post\"><input name=\"user\"></form></body></html>",
    ));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// A nevisIDM error answer: `{"errors":[{"code":…,"message":…}]}`.
#[derive(Clone, Debug)]
struct ApiError {
    status: u16,
    code: String,
    message: String,
    /// Further error items of the same answer: (code, message).
    also: Vec<(String, String)>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let items: Vec<Value> = std::iter::once((self.code, self.message))
            .chain(self.also)
            .map(|(code, message)| json!({ "code": code, "message": message }))
            .collect();
        json_response(self.status, &json!({ "errors": items }), None)
    }
}

fn error(status: u16, code: &str, message: &str) -> ApiError {
    ApiError {
        status,
        code: code.to_owned(),
        message: message.to_owned(),
        also: Vec::new(),
    }
}

/// 422 `errors.invalidData` with an item per breach of the documented limits, when enforced.
fn check_limits(inner: &Inner, user: &Map<String, Value>) -> Result<(), ApiError> {
    if !inner.limits_enforced {
        return Ok(());
    }
    let mut items = directory_forms::breaches(user)
        .into_iter()
        .map(|(_, message)| ("errors.invalidData".to_string(), message));
    let Some((code, message)) = items.next() else {
        return Ok(());
    };
    Err(ApiError {
        also: items.collect(),
        ..error(422, &code, &message)
    })
}

/// An injected or outage status with a plausible nevisIDM error body. Codes other than those in
/// the API notes (`notAuthorized`, `tooManyRequests`, `technicalError`) are our own naming.
fn status_response(status: u16, retry_after: Option<u64>) -> Response {
    let (code, message) = match status {
        400 => ("errors.invalidData", "The request is invalid."),
        401 => ("errors.notAuthenticated", "Authentication is required."),
        403 => ("errors.notAuthorized", "Missing permission."),
        404 => ("errors.noRecord", "No such record."),
        409 => (
            "errors.pessimisticLockingFailure",
            "The record was modified concurrently.",
        ),
        422 => ("errors.policyViolation", "A business rule was violated."),
        429 => ("errors.tooManyRequests", "Too many requests."),
        _ => ("errors.technicalError", "A technical error occurred."),
    };
    if (200..300).contains(&status) {
        return empty_response(status, retry_after);
    }
    let body = json!({ "errors": [{ "code": code, "message": message }] });
    json_response(status, &body, retry_after)
}

async fn no_route(uri: Uri) -> ApiError {
    error(
        404,
        "errors.noRecord",
        &format!("No resource at {}.", uri.path()),
    )
}

async fn method_not_allowed(method: Method) -> ApiError {
    error(
        405,
        "errors.methodNotAllowed",
        &format!("Method {method} is not supported here."),
    )
}

/// 404 unless the path names the configured client.
fn check_client(inner: &Inner, client: &str) -> Result<(), ApiError> {
    if client == inner.cfg.client_ext_id {
        Ok(())
    } else {
        Err(error(
            404,
            "errors.noRecord",
            &format!("Client '{client}' does not exist."),
        ))
    }
}

fn check_rejection(inner: &Inner, ext_id: Option<&str>) -> Result<(), ApiError> {
    match ext_id.and_then(|ext_id| inner.rejections.get(ext_id)) {
        Some(rejection) => Err(rejection.clone()),
        None => Ok(()),
    }
}

fn no_user(ext_id: &str) -> ApiError {
    error(
        404,
        "errors.noRecord",
        &format!("User '{ext_id}' does not exist."),
    )
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(body)) => Ok(body),
        Ok(_) => Err(error(
            400,
            "errors.invalidData",
            "The body must be a JSON object.",
        )),
        Err(err) => Err(error(
            400,
            "errors.invalidData",
            &format!("The body is not valid JSON: {err}."),
        )),
    }
}

/// How a field of the create page must look.
enum Shape {
    Str,
    Bool,
    Int,
    OneOf(&'static [&'static str]),
    /// ISO date or date-time.
    Date,
    Object(&'static [(&'static str, Shape)]),
    /// Custom properties: any names, string values.
    Properties,
}

/// The writable fields of the "Create a user" page.
const USER_FIELDS: &[(&str, Shape)] = &[
    ("extId", Shape::Str),
    (
        "userState",
        Shape::OneOf(&["active", "disabled", "archived"]),
    ),
    ("loginId", Shape::Str),
    ("languageCode", Shape::Str),
    ("isTechnicalUser", Shape::Bool),
    (
        "name",
        Shape::Object(&[
            ("title", Shape::Str),
            ("firstName", Shape::Str),
            ("familyName", Shape::Str),
        ]),
    ),
    ("properties", Shape::Properties),
    ("sex", Shape::OneOf(&["male", "female", "other"])),
    ("gender", Shape::OneOf(&["female", "male", "other"])),
    ("birthDate", Shape::Date),
    (
        "address",
        Shape::Object(&[
            ("addressline1", Shape::Str),
            ("addressline2", Shape::Str),
            ("postalCode", Shape::Str),
            ("city", Shape::Str),
            ("street", Shape::Str),
            ("houseNumber", Shape::Str),
            ("countryCode", Shape::Str),
            ("postOfficeBoxText", Shape::Str),
            ("postOfficeBoxNumber", Shape::Int),
            ("dwellingNumber", Shape::Str),
            ("locality", Shape::Str),
        ]),
    ),
    (
        "contacts",
        Shape::Object(&[
            ("telephone", Shape::Str),
            ("telefax", Shape::Str),
            ("mobile", Shape::Str),
            ("email", Shape::Str),
        ]),
    ),
    (
        "validity",
        Shape::Object(&[("from", Shape::Date), ("to", Shape::Date)]),
    ),
    ("remarks", Shape::Str),
    ("modificationComment", Shape::Str),
];

/// 400 `errors.invalidData` for unknown fields and values of the wrong type; `null` is accepted
/// everywhere (on PATCH it clears the field). The read-only fields are left to the caller.
fn check_shape(body: &Map<String, Value>) -> Result<(), ApiError> {
    fn check(path: &str, value: &Value, shape: &Shape) -> Result<(), String> {
        let ok = match (shape, value) {
            (_, Value::Null) => true,
            (Shape::Str, value) => value.is_string(),
            (Shape::Bool, value) => value.is_boolean(),
            (Shape::Int, value) => value.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
            (Shape::OneOf(allowed), value) => value.as_str().is_some_and(|v| allowed.contains(&v)),
            (Shape::Date, value) => value.as_str().is_some_and(is_iso_date),
            (Shape::Properties, Value::Object(properties)) => properties
                .values()
                .all(|value| value.is_string() || value.is_null()),
            (Shape::Object(fields), Value::Object(object)) => {
                for (key, value) in object {
                    let Some((_, shape)) = fields.iter().find(|(name, _)| name == key) else {
                        return Err(format!("Unknown field '{path}.{key}'."));
                    };
                    check(&format!("{path}.{key}"), value, shape)?;
                }
                true
            }
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("Invalid value for '{path}': {value}."))
        }
    }
    for (key, value) in body {
        if READ_ONLY.contains(&key.as_str()) {
            continue;
        }
        let Some((_, shape)) = USER_FIELDS.iter().find(|(name, _)| name == key) else {
            return Err(error(
                400,
                "errors.invalidData",
                &format!("Unknown field '{key}'."),
            ));
        };
        check(key, value, shape).map_err(|message| error(400, "errors.invalidData", &message))?;
    }
    Ok(())
}

fn is_iso_date(value: &str) -> bool {
    NaiveDate::parse_from_str(value, "%Y-%m-%d").is_ok()
        || DateTime::parse_from_rfc3339(value).is_ok()
        || NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f").is_ok()
}

/// The client policy, checked on the user as it would be stored: 422 when it fails.
fn check_policy(inner: &Inner, user: &Map<String, Value>) -> Result<(), ApiError> {
    for (object, key) in [
        ("name", "firstName"),
        ("name", "familyName"),
        ("contacts", "email"),
    ] {
        let value = user
            .get(object)
            .and_then(|object| object.get(key))
            .and_then(Value::as_str);
        if value.is_none_or(|value| value.trim().is_empty()) {
            return Err(error(
                422,
                "errors.policyViolation",
                &format!("The mandatory field '{object}.{key}' is missing."),
            ));
        }
    }
    if let Some(language) = user.get("languageCode").and_then(Value::as_str)
        && !inner.cfg.allowed_languages.iter().any(|l| {
            l == language || (inner.upper_case_languages && l.eq_ignore_ascii_case(language))
        })
    {
        return Err(error(
            422,
            "errors.invalidData",
            &format!("The language '{language}' is not allowed for this client."),
        ));
    }
    Ok(())
}

/// 422 `errors.duplicateValue` when another user has the same loginId (case-insensitive).
fn check_login_unique(
    inner: &Inner,
    user: &Map<String, Value>,
    ext_id: &str,
) -> Result<(), ApiError> {
    let Some(login) = user.get("loginId").and_then(Value::as_str) else {
        return Ok(());
    };
    let taken = inner
        .users
        .login_owner(login)
        .is_some_and(|owner| owner != ext_id);
    if taken {
        return Err(error(
            422,
            "errors.duplicateValue",
            &format!("The loginId '{login}' is already used by another user."),
        ));
    }
    Ok(())
}

/// Drops `null`s, top level and one level down: on create a `null` means "not given".
fn without_nulls(body: Map<String, Value>) -> Map<String, Value> {
    body.into_iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(key, value)| match value {
            Value::Object(nested) => {
                let nested = nested.into_iter().filter(|(_, v)| !v.is_null()).collect();
                (key, Value::Object(nested))
            }
            value => (key, value),
        })
        .collect()
}

/// PATCH semantics: absent fields stay, `null` removes, nested objects merge key by key.
fn merge(user: &mut Map<String, Value>, patch: Map<String, Value>) {
    for (key, value) in patch {
        match (user.get_mut(&key), value) {
            (_, Value::Null) => {
                user.remove(&key);
            }
            (Some(Value::Object(current)), Value::Object(nested)) => {
                for (nested_key, nested_value) in nested {
                    if nested_value.is_null() {
                        current.remove(&nested_key);
                    } else {
                        current.insert(nested_key, nested_value);
                    }
                }
            }
            (_, value) => {
                user.insert(key, value);
            }
        }
    }
}

async fn create_user(
    State(state): State<Shared>,
    Path(client): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut guard = lock(&state);
    let inner = &mut *guard;
    check_client(inner, &client)?;
    let body = parse_object(&body)?;
    check_rejection(inner, body.get("extId").and_then(Value::as_str))?;
    check_shape(&body)?;
    if let Some(key) = READ_ONLY.iter().find(|key| body.contains_key(**key)) {
        return Err(error(
            422,
            "errors.modifyReadonlyData",
            &format!("The field '{key}' is read-only."),
        ));
    }
    let mut user = without_nulls(body);
    check_limits(inner, &user)?;
    check_policy(inner, &user)?;
    let ext_id = match user.get("extId").and_then(Value::as_str) {
        Some(ext_id) if inner.users.contains_key(ext_id) => {
            return Err(error(
                422,
                "errors.duplicateValue",
                &format!("A user with extId '{ext_id}' already exists."),
            ));
        }
        Some(ext_id) => ext_id.to_owned(),
        None => loop {
            inner.generated += 1;
            let candidate = fake_uuid(inner.generated ^ 0x6e65_7669_7300_0000);
            if !inner.users.contains_key(&candidate) {
                break candidate;
            }
        },
    };
    check_login_unique(inner, &user, &ext_id)?;
    let now = now_stamp();
    user.insert("extId".into(), json!(ext_id));
    user.entry("userState").or_insert(json!("active"));
    user.entry("isTechnicalUser").or_insert(json!(false));
    user.insert("created".into(), json!(now));
    user.insert("lastModified".into(), json!(now));
    user.insert("version".into(), json!(0));
    inner.stored_forms.keep(&mut user);
    let user = Value::Object(user);
    inner.users.insert(ext_id.clone(), user.clone());
    inner.roles.user_created(&ext_id);
    let mut response = json_response(201, &shown(inner, &user), None);
    let location = format!(
        "{}/nevisidm/api/core/v1/{client}/users/{ext_id}",
        inner.base_url
    );
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn get_user(
    State(state): State<Shared>,
    Path((client, ext_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let inner = lock(&state);
    check_client(&inner, &client)?;
    let user = inner.users.get(&ext_id).ok_or_else(|| no_user(&ext_id))?;
    Ok(json_response(200, &shown(&inner, user), None))
}

async fn patch_user(
    State(state): State<Shared>,
    Path((client, ext_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut guard = lock(&state);
    let inner = &mut *guard;
    check_client(inner, &client)?;
    check_rejection(inner, Some(&ext_id))?;
    let Some(Value::Object(current)) = inner.users.get(&ext_id) else {
        return Err(no_user(&ext_id));
    };
    let patch = parse_object(&body)?;
    check_shape(&patch)?;
    let changes_ext_id = patch
        .get("extId")
        .is_some_and(|value| value.as_str() != Some(ext_id.as_str()));
    if changes_ext_id {
        return Err(error(
            422,
            "errors.modifyReadonlyData",
            "The extId of a user cannot be changed.",
        ));
    }
    if let Some(key) = ["created", "lastModified"]
        .iter()
        .find(|key| patch.contains_key(**key))
    {
        return Err(error(
            422,
            "errors.modifyReadonlyData",
            &format!("The field '{key}' is read-only."),
        ));
    }
    let has_version = patch.get("version").is_some_and(|value| !value.is_null());
    if inner.version_required && !has_version {
        return Err(error(
            422,
            "errors.invalidData",
            "The field 'version' is required for optimistic locking.",
        ));
    }
    if let Some(version) = patch.get("version").filter(|value| !value.is_null()) {
        let Some(version) = version.as_i64() else {
            return Err(error(
                400,
                "errors.invalidData",
                "The version must be an integer.",
            ));
        };
        if Some(version) != current.get("version").and_then(Value::as_i64) {
            return Err(error(
                409,
                "errors.pessimisticLockingFailure",
                "The user was modified by someone else; reload it and retry.",
            ));
        }
    }
    let mut user = current.clone();
    let mut patch = patch;
    patch.remove("version");
    merge(&mut user, patch);
    directory_forms::keep_old(current, &mut user, &inner.patch_keeps);
    check_limits(inner, &user)?;
    check_policy(inner, &user)?;
    check_login_unique(inner, &user, &ext_id)?;
    touch(&mut user);
    inner.stored_forms.keep(&mut user);
    let user = Value::Object(user);
    let response = if inner.patch_no_content {
        empty_response(204, None)
    } else {
        json_response(200, &shown(inner, &user), None)
    };
    inner.users.insert(ext_id, user);
    Ok(response)
}

async fn archive_user(
    State(state): State<Shared>,
    Path((client, ext_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let mut inner = lock(&state);
    check_client(&inner, &client)?;
    let archived = inner.users.edit(&ext_id, |user| {
        user.insert("userState".into(), json!("archived"));
        touch(user);
        Value::Object(user.clone())
    });
    let archived = archived.ok_or_else(|| no_user(&ext_id))?;
    Ok(json_response(200, &shown(&inner, &archived), None))
}

async fn delete_user(
    State(state): State<Shared>,
    Path((client, ext_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let mut inner = lock(&state);
    check_client(&inner, &client)?;
    inner
        .users
        .remove(&ext_id)
        .ok_or_else(|| no_user(&ext_id))?;
    Ok(empty_response(204, None))
}

/// The opaque continuation token: the next offset, base64url-encoded.
fn encode_token(offset: u64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("offset:{offset}"))
}

fn decode_token(token: &str) -> Option<u64> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    String::from_utf8(raw)
        .ok()?
        .strip_prefix("offset:")?
        .parse()
        .ok()
}

async fn list_users(
    State(state): State<Shared>,
    Path(client): Path<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let inner = lock(&state);
    check_client(&inner, &client)?;
    let Query(params) = Query::<HashMap<String, String>>::try_from_uri(&uri)
        .map_err(|_| error(400, "errors.invalidData", "The query string is malformed."))?;
    let number = |key: &str| -> Result<Option<u64>, ApiError> {
        params
            .get(key)
            .map(|value| {
                value.parse::<u64>().map_err(|_| {
                    error(
                        400,
                        "errors.invalidData",
                        &format!("Invalid value for '{key}': {value}."),
                    )
                })
            })
            .transpose()
    };
    let limit = number("limit")?
        .unwrap_or(DEFAULT_LIMIT)
        .clamp(1, MAX_LIMIT);
    let offset = match params.get("continuationToken") {
        Some(token) => decode_token(token)
            .ok_or_else(|| error(400, "errors.invalidData", "Invalid continuationToken."))?,
        None => number("offset")?.unwrap_or(0),
    };
    let exact_filters = inner.exact_filters;
    let filter = |field: &str| {
        params.get(field).map(|value| {
            if exact_filters {
                value.clone()
            } else {
                value.to_lowercase()
            }
        })
    };
    let (login, email) = (filter("loginId"), filter("contacts.email"));
    let (state_filter, ext_id) = (params.get("userState"), params.get("extId"));
    let text = |user: &Value, pointer: &str| {
        user.pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let matching: Vec<&Value> = inner
        .users
        .values()
        .filter(|user| {
            let ci = |wanted: &Option<String>, pointer: &str| {
                wanted.as_ref().is_none_or(|wanted| {
                    text(user, pointer).is_some_and(|value| {
                        if exact_filters {
                            value == *wanted
                        } else {
                            value.to_lowercase() == *wanted
                        }
                    })
                })
            };
            let exact = |wanted: Option<&String>, pointer: &str| {
                wanted.is_none_or(|wanted| text(user, pointer).as_ref() == Some(wanted))
            };
            ci(&login, "/loginId")
                && ci(&email, "/contacts/email")
                && exact(state_filter, "/userState")
                && exact(ext_id, "/extId")
        })
        .collect();
    let total = matching.len() as u64;
    let items: Vec<Value> = matching
        .into_iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(|user| shown(&inner, user))
        .collect();
    let next = offset.saturating_add(limit);
    let mut pagination = json!({ "limit": limit, "totalResult": total });
    if inner.token_on_every_page {
        if params.get("returnTotalResultCount").map(String::as_str) != Some("true") {
            pagination = json!({ "limit": limit });
        }
        if !items.is_empty() && !inner.offset_paging_only {
            pagination["continuationToken"] = json!(encode_token(next));
        }
    } else if next < total && !inner.offset_paging_only {
        pagination["continuationToken"] = json!(encode_token(next));
    }
    let body = json!({ "items": items, "_pagination": pagination });
    Ok(json_response(200, &body, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    const TOKEN: &str = "nevis-secret-token";

    async fn start() -> FakeNevis {
        FakeNevis::start(NevisFakeConfig::default())
            .await
            .expect("fake starts")
    }

    fn users_url(fake: &FakeNevis) -> String {
        format!("{}/nevisidm/api/core/v1/client-123/users", fake.base_url())
    }

    fn list_url(fake: &FakeNevis) -> String {
        format!(
            "{}/nevisidm/api/core/v1/clients/client-123/users",
            fake.base_url()
        )
    }

    fn person(ext_id: &str, login: &str) -> Value {
        json!({
            "extId": ext_id,
            "loginId": login,
            "languageCode": "en",
            "name": {"firstName": "Zoë", "familyName": "Ångström"},
            "contacts": {"email": format!("{login}@example.com")},
        })
    }

    /// Sends an authorised request; answers the status, the `Location` header and the JSON body
    /// (`null` when there is none).
    async fn call(
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Option<String>, Value) {
        let mut request = reqwest::Client::new()
            .request(method, url)
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.expect("body read");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, location, body)
    }

    fn code(body: &Value) -> &str {
        body["errors"][0]["code"].as_str().unwrap_or_default()
    }

    #[tokio::test]
    async fn create_answers_201_with_location_and_stored_user() {
        let fake = start().await;
        let (status, location, user) =
            call(Method::POST, &users_url(&fake), Some(&person("u-1", "zoe"))).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(location, Some(format!("{}/u-1", users_url(&fake))));
        assert_eq!(user["extId"], "u-1");
        assert_eq!(user["userState"], "active");
        assert_eq!(user["version"], 0);
        assert!(user["created"].is_string() && user["lastModified"].is_string());
        assert_eq!(fake.user("u-1"), Some(user.clone()));
        let (status, _, fetched) =
            call(Method::GET, &format!("{}/u-1", users_url(&fake)), None).await;
        assert_eq!((status, fetched), (StatusCode::OK, user));

        let mut anonymous = person("", "anon");
        anonymous.as_object_mut().expect("object").remove("extId");
        let (status, _, generated) = call(Method::POST, &users_url(&fake), Some(&anonymous)).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(generated["extId"].as_str().map(str::len), Some(36));
        assert_eq!(fake.user_count(), 2);

        let (status, _, body) =
            call(Method::GET, &format!("{}/missing", users_url(&fake)), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(code(&body), "errors.noRecord");
    }

    #[tokio::test]
    async fn duplicate_ext_id_or_login_id_is_422_duplicate_value() {
        let fake = start().await;
        let url = users_url(&fake);
        assert_eq!(
            call(Method::POST, &url, Some(&person("u-1", "zoe")))
                .await
                .0,
            StatusCode::CREATED
        );
        let (status, _, body) = call(Method::POST, &url, Some(&person("u-1", "other"))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(code(&body), "errors.duplicateValue");
        let (status, _, body) = call(Method::POST, &url, Some(&person("u-2", "ZOE"))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(code(&body), "errors.duplicateValue");
        assert_eq!(fake.user_count(), 1);
    }

    #[tokio::test]
    async fn create_enforces_policy_and_shape() {
        let fake = start().await;
        let url = users_url(&fake);
        let with = |edit: &dyn Fn(&mut Value)| {
            let mut user = person("u-1", "zoe");
            edit(&mut user);
            user
        };
        let cases = [
            (
                with(&|u| u["name"] = json!({"firstName": "Zoë"})),
                422,
                "errors.policyViolation",
                "name.familyName",
            ),
            (
                with(&|u| u["contacts"]["email"] = json!("  ")),
                422,
                "errors.policyViolation",
                "contacts.email",
            ),
            (
                with(&|u| u["languageCode"] = json!("xx")),
                422,
                "errors.invalidData",
                "xx",
            ),
            (
                with(&|u| u["nickname"] = json!("z")),
                400,
                "errors.invalidData",
                "nickname",
            ),
            (
                with(&|u| u["userState"] = json!("gone")),
                400,
                "errors.invalidData",
                "userState",
            ),
            (
                with(&|u| u["name"]["middleName"] = json!("x")),
                400,
                "errors.invalidData",
                "name.middleName",
            ),
            (
                with(&|u| u["version"] = json!(3)),
                422,
                "errors.modifyReadonlyData",
                "version",
            ),
            (json!([1, 2]), 400, "errors.invalidData", "object"),
        ];
        for (body, status, expected_code, mentions) in cases {
            let (got, _, answer) = call(Method::POST, &url, Some(&body)).await;
            assert_eq!(got.as_u16(), status, "{body}");
            assert_eq!(code(&answer), expected_code, "{body}");
            let message = answer["errors"][0]["message"].as_str().unwrap_or_default();
            assert!(message.contains(mentions), "{message}");
        }
        assert_eq!(fake.user_count(), 0);
        let spanish = with(&|u| u["languageCode"] = json!("es"));
        assert_eq!(
            call(Method::POST, &url, Some(&spanish)).await.0,
            StatusCode::CREATED
        );
    }

    #[tokio::test]
    async fn patch_merges_nested_objects_and_checks_versions() {
        let fake = start().await;
        let url = users_url(&fake);
        call(Method::POST, &url, Some(&person("u-1", "zoe"))).await;
        let user_url = format!("{url}/u-1");

        let (status, _, user) = call(
            Method::PATCH,
            &user_url,
            Some(&json!({"name": {"firstName": "Zoé"}, "remarks": "hi"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            user["name"],
            json!({"firstName": "Zoé", "familyName": "Ångström"})
        );
        assert_eq!(user["contacts"]["email"], "zoe@example.com");
        assert_eq!(user["remarks"], "hi");
        assert_eq!(user["version"], 1);

        let (status, _, body) = call(
            Method::PATCH,
            &user_url,
            Some(&json!({"version": 0, "remarks": "x"})),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(code(&body), "errors.pessimisticLockingFailure");
        let (status, _, user) = call(
            Method::PATCH,
            &user_url,
            Some(&json!({"version": 1, "remarks": "x"})),
        )
        .await;
        assert_eq!(
            (status, user["version"].clone()),
            (StatusCode::OK, json!(2))
        );

        for (patch, expected) in [
            (json!({"extId": "u-2"}), "errors.modifyReadonlyData"),
            (
                json!({"created": "2020-01-01T00:00:00Z"}),
                "errors.modifyReadonlyData",
            ),
            (
                json!({"contacts": {"email": null}}),
                "errors.policyViolation",
            ),
            (json!({"languageCode": "xx"}), "errors.invalidData"),
        ] {
            let (status, _, body) = call(Method::PATCH, &user_url, Some(&patch)).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{patch}");
            assert_eq!(code(&body), expected, "{patch}");
        }
        assert_eq!(
            fake.user("u-1").expect("kept")["version"],
            2,
            "nothing applied"
        );

        call(Method::POST, &url, Some(&person("u-2", "bob"))).await;
        let (status, _, body) =
            call(Method::PATCH, &user_url, Some(&json!({"loginId": "Bob"}))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(code(&body), "errors.duplicateValue");
        let same = call(
            Method::PATCH,
            &user_url,
            Some(&json!({"extId": "u-1", "loginId": "ZOE"})),
        )
        .await;
        assert_eq!(
            same.0,
            StatusCode::OK,
            "own loginId and unchanged extId are fine"
        );

        let (status, _, body) =
            call(Method::PATCH, &format!("{url}/nobody"), Some(&json!({}))).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::NOT_FOUND, "errors.noRecord")
        );

        assert!(fake.modify_user("u-1", |user| {
            user.insert("remarks".into(), json!("by hand"));
        }));
        assert_eq!(fake.user("u-1").expect("kept")["version"], 4);
    }

    #[tokio::test]
    async fn list_filters_and_follows_continuation_tokens() {
        let fake = start().await;
        for i in 0..250 {
            let mut user = person(&format!("u-{i:03}"), &format!("Login{i}"));
            if i % 5 == 0 {
                user["userState"] = json!("disabled");
            }
            fake.insert_user(user);
        }
        let client = reqwest::Client::new();
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut request = client.get(list_url(&fake)).bearer_auth(TOKEN);
            if let Some(token) = &token {
                request = request.query(&[("continuationToken", token)]);
            }
            let page: Value = request
                .send()
                .await
                .expect("sent")
                .json()
                .await
                .expect("JSON");
            pages += 1;
            assert_eq!(page["_pagination"]["totalResult"], 250);
            assert_eq!(page["_pagination"]["limit"], 100);
            for item in page["items"].as_array().expect("items") {
                seen.push(item["extId"].as_str().expect("extId").to_owned());
            }
            match page["_pagination"]["continuationToken"].as_str() {
                Some(next) => token = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(seen, sorted);
        assert_eq!(seen.len(), 250);

        let query = |params: &[(&str, &str)]| {
            let request = client.get(list_url(&fake)).bearer_auth(TOKEN).query(params);
            async move {
                request
                    .send()
                    .await
                    .expect("sent")
                    .json::<Value>()
                    .await
                    .expect("JSON")
            }
        };
        let page = query(&[("loginId", "LOGIN7")]).await;
        assert_eq!(page["items"][0]["extId"], "u-007");
        assert_eq!(page["_pagination"]["totalResult"], 1);
        assert!(page["_pagination"].get("continuationToken").is_none());
        let page = query(&[("contacts.email", "login12@EXAMPLE.com")]).await;
        assert_eq!(page["items"][0]["extId"], "u-012");
        let page = query(&[("userState", "disabled"), ("limit", "1000")]).await;
        assert_eq!(page["_pagination"]["totalResult"], 50);
        let page = query(&[("extId", "u-249")]).await;
        assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
        let page = query(&[("offset", "240"), ("limit", "5")]).await;
        assert_eq!(page["items"][0]["extId"], "u-240");
        assert!(page["_pagination"]["continuationToken"].is_string());
        let bad = client
            .get(list_url(&fake))
            .bearer_auth(TOKEN)
            .query(&[("continuationToken", "garbage!")])
            .send()
            .await
            .expect("sent");
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        assert_eq!(fake.stats().lists, 9);
    }

    #[tokio::test]
    async fn auth_and_client_are_checked() {
        let fake = start().await;
        let anonymous = reqwest::get(list_url(&fake)).await.expect("sent");
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
        let body: Value = anonymous.json().await.expect("JSON");
        assert_eq!(code(&body), "errors.notAuthenticated");
        let wrong = reqwest::Client::new()
            .get(list_url(&fake))
            .bearer_auth("wrong")
            .send()
            .await
            .expect("sent");
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
        let other_client = format!("{}/nevisidm/api/core/v1/other/users", fake.base_url());
        let (status, _, body) = call(Method::POST, &other_client, Some(&person("u", "u"))).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::NOT_FOUND, "errors.noRecord")
        );
        let stats = fake.stats();
        assert_eq!((stats.unauthorized, stats.lists, stats.creates), (2, 2, 1));
        assert_eq!(stats.status_counts, BTreeMap::from([(401, 2), (404, 1)]));
    }

    #[tokio::test]
    async fn rejections_archive_delete_and_request_log() {
        let fake = start().await;
        let url = users_url(&fake);
        fake.reject_user("u-1", 422, "errors.duplicateEmail", "email taken");
        let (status, _, body) = call(Method::POST, &url, Some(&person("u-1", "zoe"))).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::UNPROCESSABLE_ENTITY, "errors.duplicateEmail")
        );
        let (status, _, _) = call(Method::PATCH, &format!("{url}/u-1"), Some(&json!({}))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        fake.clear_rejections();
        assert_eq!(
            call(Method::POST, &url, Some(&person("u-1", "zoe")))
                .await
                .0,
            StatusCode::CREATED
        );

        let (status, _, user) = call(Method::POST, &format!("{url}/u-1/archive"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (user["userState"].clone(), user["version"].clone()),
            (json!("archived"), json!(1))
        );
        assert_eq!(
            call(Method::DELETE, &format!("{url}/u-1"), None).await.0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(fake.user_count(), 0);

        let stats = fake.stats();
        assert_eq!(
            (
                stats.requests,
                stats.creates,
                stats.patches,
                stats.archives,
                stats.deletes
            ),
            (5, 2, 1, 1, 1)
        );
        let log = fake.request_log();
        let summary: Vec<(&str, u16)> = log.iter().map(|r| (r.method.as_str(), r.status)).collect();
        assert_eq!(
            summary,
            [
                ("POST", 422),
                ("PATCH", 422),
                ("POST", 201),
                ("POST", 200),
                ("DELETE", 204)
            ]
        );
        assert_eq!(log[2].body, Some(person("u-1", "zoe")));
        assert_eq!(log[2].path, "/nevisidm/api/core/v1/client-123/users");
        assert_eq!(log[3].body, None);
    }

    #[tokio::test]
    async fn dropped_answers_and_status_faults() {
        let fake = start().await;
        let url = users_url(&fake);
        let client = reqwest::Client::new();
        let post = |body: Value| client.post(&url).bearer_auth(TOKEN).json(&body).send();

        fake.push_fault(Fault::Drop);
        let response = post(person("u-1", "zoe")).await.expect("headers arrive");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.json::<Value>().await.is_err(),
            "the body must fail"
        );
        assert_eq!(fake.user_count(), 0, "Drop applies nothing");

        fake.push_fault(Fault::DropAfterApply);
        let response = post(person("u-1", "zoe")).await.expect("headers arrive");
        assert_eq!(response.status(), StatusCode::CREATED);
        assert!(response.bytes().await.is_err(), "the body must fail");
        assert!(
            fake.user("u-1").is_some(),
            "DropAfterApply applies the create"
        );

        fake.push_faults(
            2,
            Fault::Status {
                status: 503,
                retry_after: Some(2),
            },
        );
        for _ in 0..2 {
            let response = post(person("u-2", "bob")).await.expect("sent");
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[header::RETRY_AFTER], "2");
            let body: Value = response.json().await.expect("JSON");
            assert!(code(&body).starts_with("errors."));
        }
        assert_eq!(
            post(person("u-2", "bob")).await.expect("sent").status(),
            StatusCode::CREATED
        );
        assert_eq!(fake.stats().faults_injected, 4);

        fake.set_down(Some(502));
        assert_eq!(
            reqwest::get(&url).await.expect("sent").status(),
            StatusCode::BAD_GATEWAY
        );
    }

    #[tokio::test]
    async fn field_switches_answer_as_real_deployments_do() {
        let fake = start().await;
        let url = users_url(&fake);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");

        // A login proxy: writes are redirected to an HTML page answering 200.
        fake.set_login_redirect(true);
        let response = client
            .post(&url)
            .bearer_auth(TOKEN)
            .json(&person("u-1", "zoe"))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), StatusCode::FOUND);
        let location = response.headers()[header::LOCATION]
            .to_str()
            .expect("text")
            .to_owned();
        let page = client.get(&location).send().await.expect("sent");
        assert_eq!(page.status(), StatusCode::OK);
        assert!(
            page.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert_eq!(fake.user_count(), 0);
        fake.set_login_redirect(false);

        // version required on PATCH; languageCode answered upper case.
        call(Method::POST, &url, Some(&person("u-1", "zoe"))).await;
        fake.set_version_required(true);
        fake.set_upper_case_languages(true);
        let user_url = format!("{url}/u-1");
        let (status, _, body) =
            call(Method::PATCH, &user_url, Some(&json!({"remarks": "x"}))).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::UNPROCESSABLE_ENTITY, "errors.invalidData")
        );
        let (status, _, user) = call(
            Method::PATCH,
            &user_url,
            Some(&json!({"remarks": "x", "version": 0})),
        )
        .await;
        assert_eq!(
            (status, user["version"].clone()),
            (StatusCode::OK, json!(1))
        );
        assert_eq!(user["languageCode"], "EN");
        assert_eq!(
            fake.user("u-1").unwrap()["languageCode"],
            "en",
            "stored as given"
        );

        // Exact filters; a token on every page, an empty last page, the total on request.
        fake.insert_user(person("u-2", "Zed"));
        fake.set_exact_filters(true);
        fake.set_token_on_every_page(true);
        let list = |query: &'static [(&'static str, &'static str)]| {
            let request = client.get(list_url(&fake)).bearer_auth(TOKEN).query(query);
            async move {
                request
                    .send()
                    .await
                    .expect("sent")
                    .json::<Value>()
                    .await
                    .expect("JSON")
            }
        };
        let page = list(&[("loginId", "zed")]).await;
        assert_eq!(page["items"].as_array().map(Vec::len), Some(0));
        let page = list(&[("loginId", "Zed")]).await;
        assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
        let page = list(&[("limit", "5")]).await;
        assert!(page["_pagination"].get("totalResult").is_none());
        let token = page["_pagination"]["continuationToken"]
            .as_str()
            .expect("token")
            .to_owned();
        let last = client
            .get(list_url(&fake))
            .bearer_auth(TOKEN)
            .query(&[
                ("continuationToken", token.as_str()),
                ("returnTotalResultCount", "true"),
            ])
            .send()
            .await
            .expect("sent")
            .json::<Value>()
            .await
            .expect("JSON");
        assert_eq!(last["items"].as_array().map(Vec::len), Some(0));
        assert_eq!(last["_pagination"]["totalResult"], 2);
        assert!(last["_pagination"].get("continuationToken").is_none());
    }

    #[tokio::test]
    async fn oauth_tokens_are_issued_to_the_client_and_expire() {
        let fake = start().await;
        fake.enable_oauth(FakeOAuth {
            lifetime: Duration::from_millis(300),
            ..FakeOAuth::default()
        });
        let client = reqwest::Client::new();
        let grant = |secret: &'static str| {
            client
                .post(fake.token_url())
                .basic_auth("sync-client", Some(secret))
                .form(&[("grant_type", "client_credentials"), ("scope", "nevis")])
                .send()
        };
        let refused = grant("wrong").await.expect("sent");
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        let body: Value = refused.json().await.expect("JSON");
        assert_eq!(body["error"], "invalid_client");
        let answer: Value = grant("oauth-client-secret-7f3a")
            .await
            .expect("sent")
            .json()
            .await
            .expect("JSON");
        let token = answer["access_token"].as_str().expect("token").to_owned();
        assert_eq!(answer["expires_in"], 0, "whole seconds of 300 ms");
        let with = |token: &str| client.get(list_url(&fake)).bearer_auth(token).send();
        assert_eq!(with(&token).await.expect("sent").status(), StatusCode::OK);
        assert_eq!(
            with(TOKEN).await.expect("sent").status(),
            StatusCode::UNAUTHORIZED,
            "the static token is not accepted any more"
        );
        // The expiry is real time; this bounded wait is not an assertion on speed.
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(
            with(&token).await.expect("sent").status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(fake.issued_tokens(), [token]);
        assert_eq!(
            fake.token_scopes(),
            [Some("nevis".to_owned()), Some("nevis".to_owned())]
        );
        assert_eq!(fake.stats().token_requests, 2);
    }

    #[tokio::test]
    async fn a_selective_delay_holds_back_only_the_requests_it_picks() {
        let fake = start().await;
        let delay = Duration::from_millis(150);
        fake.set_slow(delay, |r| r.method == "GET" && r.path.ends_with("/users"));
        let client = reqwest::Client::new();
        let started = std::time::Instant::now();
        let listed = client.get(list_url(&fake)).bearer_auth(TOKEN).send().await;
        assert_eq!(listed.expect("sent").status(), StatusCode::OK);
        assert!(started.elapsed() >= delay);
        let read = client
            .get(format!("{}/nobody", users_url(&fake)))
            .bearer_auth(TOKEN)
            .send()
            .await;
        assert_eq!(read.expect("sent").status(), StatusCode::NOT_FOUND);
        assert_eq!(fake.slowed(), 1, "only the listing was picked");
        fake.clear_slow();
        assert_eq!(fake.slowed(), 0);
    }

    #[tokio::test]
    async fn max_in_flight_tracks_concurrent_requests() {
        let fake = start().await;
        fake.set_latency(Duration::from_millis(200));
        let client = reqwest::Client::new();
        let url = list_url(&fake);
        let requests = (0..5).map(|_| client.get(&url).bearer_auth(TOKEN).send());
        for response in futures::future::join_all(requests).await {
            assert_eq!(response.expect("sent").status(), StatusCode::OK);
        }
        assert_eq!(fake.max_in_flight(), 5);
        fake.set_latency(Duration::ZERO);
        fake.reset_stats();
        assert_eq!(fake.max_in_flight(), 0);
        client
            .get(&url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("sent");
        assert_eq!(fake.max_in_flight(), 1);
    }
}
