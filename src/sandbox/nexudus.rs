//! Fake Nexudus REST API: the user listing the sync reads, plus the writes the demo seeds with.
//!
//! Modelled on the seed pages (`GET/POST/PUT /api/sys/users`, `GET /api/sys/users/{id}`,
//! `POST /api/security/userroles`) and the API notes: Basic auth or a bearer token on every
//! request, `POST /api/token` issuing expiring access tokens and rotating refresh tokens,
//! throttling answered with **409** + `Retry-After` and an empty body, full user
//! records with every documented field, hard deletes, and minute-precision `UpdatedOn` filters.
//! Test hooks can skew `TotalItems` or shorten pages to imitate an inconsistent listing.
//!
//! Switches imitate what real accounts answer beyond the documentation (API notes, "What real
//! clients show"): records without `Language` ([`FakeNexudus::set_omit_language`]) and with a
//! `PreferredLanguageId` into a paged `GET /api/sys/languages`; throttles as 429 with the wait in
//! the body or with a fractional `Retry-After` ([`Throttle`]); HTML pages from a WAF or load
//! balancer, with 503 or 200 ([`FakeNexudus::push_html`]); all four documented windows (100 ms,
//! minute, hour, day) enforced; the `/api/token` refusal codes
//! ([`FakeNexudus::set_token_refusal`]); `UpdatedOn` in each form seen ([`DateForm`]); and Ids of
//! 9 and 10 digits. Every request's arrival and answer is logged ([`FakeNexudus::request_log`]).
//! UserRoles (`roles`): the listing without `Users`, the single GET with them, the same Name in
//! two businesses, and whether a membership change moves `UpdatedOn`, by a switch.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use base64::Engine as _;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

mod roles;

use super::{
    Controls, Fault, RequestLine, Server, Slow, cut_off, empty_response, fake_uuid, json_response,
    stalled,
};

const DENIED: &str = "Authorization has been denied for this request.";
/// Ids of users created by the fake start here, so they never look like list positions: real
/// accounts have Ids of 9 to 10 digits, and the tenth user crosses from 9 digits to 10.
const FIRST_USER_ID: u64 = 999_999_991;
const FIRST_ROLE_ID: u64 = 501;
const DEFAULT_PAGE_SIZE: u64 = 25;
const MAX_PAGE_SIZE: u64 = 1000;
/// The documented filter format: minute precision, no zone.
const FILTER_FORMAT: &str = "%Y-%m-%dT%H:%M";

/// How the fake Nexudus authenticates and throttles.
#[derive(Clone, PartialEq, Eq)]
pub struct NexudusFakeConfig {
    /// Basic-auth user name (the API user's email).
    pub username: String,
    /// Basic-auth password.
    pub password: String,
    /// Most requests accepted within any 1000 ms; `None` for no limit.
    pub per_second_limit: Option<u32>,
    /// Most requests accepted within any 60 s; `None` for no limit.
    pub per_minute_limit: Option<u32>,
    /// The `Retry-After` seconds sent with a throttled (409) answer.
    pub retry_after_secs: u64,
    /// Lifetime of the access tokens `POST /api/token` issues (`expires_in`).
    pub token_ttl: Duration,
    /// When set, the password grant also needs this `totp` code.
    pub totp: Option<String>,
    /// Smallest gap between two admitted requests (Nexudus documents one per 100 ms); `None`
    /// for no limit.
    pub min_gap: Option<Duration>,
    /// Most requests accepted within any hour (5,000 documented); `None` for no limit.
    pub per_hour_limit: Option<u32>,
    /// Most requests accepted within any day (200,000 documented); `None` for no limit.
    pub per_day_limit: Option<u32>,
    /// How the rate limiter answers a request over a limit.
    pub throttle: Throttle,
}

/// How a throttled request is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Throttle {
    pub status: u16,
    /// The `Retry-After` header as written (`"1"`, `"0.7"`, an HTTP date); `None` for none.
    pub retry_after: Option<String>,
    /// A JSON body `{"Message": …}`; `None` for the documented empty body.
    pub message: Option<String>,
}

impl Throttle {
    /// The documented form: 409, `Retry-After: <secs>`, an empty body.
    pub fn documented(secs: u64) -> Throttle {
        Throttle {
            status: 409,
            retry_after: Some(secs.to_string()),
            message: None,
        }
    }

    /// 429 without `Retry-After`, the wait written in the body's `Message` ("Wait 1.3 seconds").
    pub fn wait_in_body(wait: &str) -> Throttle {
        Throttle {
            status: 429,
            retry_after: None,
            message: Some(format!("API rate limit exceeded. Wait {wait} seconds")),
        }
    }

    /// `Retry-After` with a fraction of a second (`"0.7"`), empty body.
    pub fn fractional(status: u16, retry_after: &str) -> Throttle {
        Throttle {
            status,
            retry_after: Some(retry_after.to_owned()),
            message: None,
        }
    }

    fn response(&self) -> Response {
        let mut response = match &self.message {
            Some(message) => json_response(self.status, &json!({ "Message": message }), None),
            None => empty_response(self.status, None),
        };
        if let Some(value) = self
            .retry_after
            .as_deref()
            .and_then(|v| header::HeaderValue::from_str(v).ok())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// The form of `UpdatedOn` (and `CreatedOn`) stamps, as real records carry them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DateForm {
    /// `2025-01-15T10:30:00Z` (the example response).
    #[default]
    Zulu,
    /// `2025-01-15T10:30:00`, no zone (UTC).
    NoZone,
    /// `2025-01-15T10:30:00.1234567`, fractional seconds, no zone.
    Fraction,
    /// `2025-01-15T12:30:00+02:00`: the same instant with an offset of this many minutes east.
    Offset(i32),
}

/// One request as the fake saw it: when it arrived, what it asked, how it was answered.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub at: Instant,
    pub path: String,
    /// The query string (without `?`; empty when there was none).
    pub query: String,
    pub status: u16,
    /// The `Accept` header sent, if any.
    pub accept: Option<String>,
}

/// The password stays out of logs, even a fake's.
impl std::fmt::Debug for NexudusFakeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NexudusFakeConfig")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("per_second_limit", &self.per_second_limit)
            .field("per_minute_limit", &self.per_minute_limit)
            .field("retry_after_secs", &self.retry_after_secs)
            .field("token_ttl", &self.token_ttl)
            .field("totp", &self.totp.as_ref().map(|_| "<redacted>"))
            .field("min_gap", &self.min_gap)
            .field("per_hour_limit", &self.per_hour_limit)
            .field("per_day_limit", &self.per_day_limit)
            .field("throttle", &self.throttle)
            .finish()
    }
}

impl Default for NexudusFakeConfig {
    fn default() -> Self {
        Self {
            username: "sync@example.com".to_owned(),
            password: "nexudus-secret".to_owned(),
            per_second_limit: Some(10),
            per_minute_limit: Some(120),
            retry_after_secs: 1,
            token_ttl: Duration::from_secs(7 * 24 * 3600),
            totp: None,
            min_gap: None,
            per_hour_limit: Some(5_000),
            per_day_limit: Some(200_000),
            throttle: Throttle::documented(1),
        }
    }
}

/// What the fake Nexudus has seen since start (or the last [`FakeNexudus::reset_stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NexudusStats {
    /// Every request received, whatever its answer.
    pub requests: u64,
    /// Listing requests that reached the handler (not refused by auth, throttling or a fault):
    /// the number of pages actually served.
    pub list_requests: u64,
    /// Requests answered 409 by the rate limiter.
    pub throttled: u64,
    /// Requests answered 401.
    pub unauthorized: u64,
    /// Requests that consumed a queued [`Fault`].
    pub faults_injected: u64,
    /// Tokens issued by `POST /api/token`, per grant.
    pub password_grants: u64,
    pub refresh_grants: u64,
    /// Token requests refused (400 `invalid_grant` / `unsupported_grant_type`).
    pub refused_grants: u64,
    /// Single-user reads (`GET /api/sys/users/{id}`) that reached the handler.
    pub user_requests: u64,
    /// Languages pages (`GET /api/sys/languages`) that reached the handler.
    pub language_requests: u64,
    /// Requests answered from the queue of pushed answers (throttles, HTML pages).
    pub pushed_answers: u64,
}

/// The interesting part of a user record; everything else gets the defaults of the example response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NexudusUserSpec {
    /// `None`: the next free Id.
    pub id: Option<u64>,
    /// `None` stores `null`, as a malformed record would carry.
    pub full_name: Option<String>,
    /// `None` stores `null`, as a malformed record would carry.
    pub email: Option<String>,
    /// eLanguage: 1 = EnglishUS, 2 = Spanish, 3 = EnglishUK.
    pub language: i64,
    pub active: bool,
    pub is_admin: bool,
    /// `PreferredLanguageId`: an Id of the languages listing; `None` stores `null`.
    pub preferred_language_id: Option<u64>,
}

impl NexudusUserSpec {
    /// An active, non-admin EnglishUS user with the next free Id.
    pub fn new(full_name: impl Into<String>, email: impl Into<String>) -> Self {
        Self {
            id: None,
            full_name: Some(full_name.into()),
            email: Some(email.into()),
            language: 1,
            active: true,
            is_admin: false,
            preferred_language_id: None,
        }
    }
}

/// A running fake Nexudus; the server stops when this is dropped.
pub struct FakeNexudus {
    state: Shared,
    server: Server,
}

/// Only the address: the state holds credentials and can be large.
impl std::fmt::Debug for FakeNexudus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeNexudus")
            .field("addr", &self.server.addr)
            .finish_non_exhaustive()
    }
}

type Shared = Arc<Mutex<Inner>>;

struct Inner {
    cfg: NexudusFakeConfig,
    users: BTreeMap<u64, Value>,
    next_user_id: u64,
    user_roles: BTreeMap<u64, Value>,
    next_role_id: u64,
    /// Access tokens accepted, with their expiry (`None`: registered by a test, never expires).
    bearer_tokens: HashMap<String, Option<Instant>>,
    /// Live refresh tokens: the `client_id` they were issued to, and their expiry.
    refresh_tokens: HashMap<String, (String, Instant)>,
    /// Every refresh token ever issued, in order (tests inspect rotation).
    issued_refresh_tokens: Vec<String>,
    next_token: u64,
    /// Revoke every access token once this many pages were served (tests of renewal on 401).
    revoke_access_after_pages: Option<u64>,
    controls: Controls,
    clock: Option<DateTime<Utc>>,
    /// Arrival times of the requests the rate limiter let through in the last minute.
    admitted: VecDeque<Instant>,
    total_items_skew: i64,
    short_pages: bool,
    /// Added to `TotalItems` once per page after the first (a total that moves mid-listing).
    total_items_drift: i64,
    /// Pages after the first start one record early: a record inserted ahead of the reader.
    page_shift: bool,
    order_descending: bool,
    /// Once page 1 has been served: remove this user and add this one (churn during a listing).
    churn_after_first_page: Option<(u64, NexudusUserSpec)>,
    /// Arrival times of admitted requests for the hour and day windows (pruned after a day).
    admitted_long: VecDeque<Instant>,
    /// Answers pushed by a test, served (after auth) before anything else; each to the first
    /// request whose path starts with its prefix (any path when `None`).
    pushed: VecDeque<(Option<String>, Response)>,
    /// Records served without their `Language` field, as a captured real record.
    omit_language: bool,
    /// `GET /api/sys/languages`: Id -> (Name, Culture).
    languages: BTreeMap<u64, (String, String)>,
    /// The password grant is refused with this `error` code while set.
    token_refusal: Option<String>,
    date_form: DateForm,
    request_log: Vec<RequestRecord>,
    stats: NexudusStats,
    /// A UserRole's membership change moves its `UpdatedOn` (undocumented: a switch).
    role_updates_move_updated_on: bool,
    /// The UserRole listing's envelope leaves out `HasNextPage` (`CurrentPage`/`TotalPages` stay).
    role_listing_without_has_next_page: bool,
    /// Each non-empty page of the UserRole listing leaves out its last record while its envelope
    /// (`TotalItems`, `HasNextPage`) still describes the full page.
    role_listing_short_pages: bool,
}

/// Requests the log keeps (the oldest are dropped beyond it).
const REQUEST_LOG_LIMIT: usize = 100_000;

/// The languages listing a fresh fake holds.
fn default_languages() -> BTreeMap<u64, (String, String)> {
    [
        (1, "English (United Kingdom)", "en-GB"),
        (2, "Español", "es-ES"),
        (3, "Deutsch (Schweiz)", "de-CH"),
        (4, "Français (France)", "fr-FR"),
        (5, "Italiano", "it-IT"),
        (6, "English (United States)", "en-US"),
    ]
    .into_iter()
    .map(|(id, name, culture)| (id, (name.to_owned(), culture.to_owned())))
    .collect()
}

fn lock(state: &Shared) -> MutexGuard<'_, Inner> {
    state.lock().expect("fake state poisoned")
}

impl FakeNexudus {
    /// Binds `127.0.0.1:0` and serves the fake on a spawned task.
    pub async fn start(cfg: NexudusFakeConfig) -> std::io::Result<Self> {
        let state: Shared = Arc::new(Mutex::new(Inner {
            cfg,
            users: BTreeMap::new(),
            next_user_id: FIRST_USER_ID,
            user_roles: BTreeMap::new(),
            next_role_id: FIRST_ROLE_ID,
            bearer_tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            issued_refresh_tokens: Vec::new(),
            next_token: 1,
            revoke_access_after_pages: None,
            controls: Controls::default(),
            clock: None,
            admitted: VecDeque::new(),
            total_items_skew: 0,
            short_pages: false,
            total_items_drift: 0,
            page_shift: false,
            order_descending: false,
            churn_after_first_page: None,
            admitted_long: VecDeque::new(),
            pushed: VecDeque::new(),
            omit_language: false,
            languages: default_languages(),
            token_refusal: None,
            date_form: DateForm::default(),
            request_log: Vec::new(),
            stats: NexudusStats::default(),
            role_updates_move_updated_on: true,
            role_listing_without_has_next_page: false,
            role_listing_short_pages: false,
        }));
        let router = Router::new()
            .route(
                "/api/sys/users",
                get(list_users).post(create_user).put(update_user),
            )
            .route("/api/sys/users/{id}", get(get_user))
            .route("/api/sys/languages", get(list_languages))
            .route(
                "/api/security/userroles",
                get(roles::list_user_roles).post(create_user_role),
            )
            .route("/api/security/userroles/{id}", get(roles::get_user_role))
            .route(TOKEN_PATH, post(token))
            .fallback(no_route)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(middleware::from_fn_with_state(state.clone(), gate))
            .with_state(state.clone());
        let server = Server::start(router).await?;
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

    /// Queues one fault for the next authorised, unthrottled request.
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
    /// place of any earlier choice: e.g. only the deletion probe (`page=1&size=1`), the search's
    /// steps, or the look-ups `GET /api/sys/users/{id}`.
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

    /// Requests the selective delay picked since it was set (counted on arrival, before the
    /// delay): a test knows the run is waiting in the slow phase.
    pub fn slowed(&self) -> usize {
        self.lock().controls.slowed
    }

    /// While `Some(status)`, every request (authorised or not) is answered with that status.
    pub fn set_down(&self, status: Option<u16>) {
        self.lock().controls.down = status;
    }

    /// Accepts `Authorization: Bearer <token>` from now on, as if issued by `/api/token`.
    pub fn add_bearer_token(&self, token: &str) {
        self.lock().bearer_tokens.insert(token.to_owned(), None);
    }

    /// Stops accepting `token` (an expired or revoked token); returns whether it was known.
    pub fn remove_bearer_token(&self, token: &str) -> bool {
        self.lock().bearer_tokens.remove(token).is_some()
    }

    /// Revokes every access token (as if all expired at once): the next request with one gets 401.
    pub fn revoke_access_tokens(&self) {
        self.lock().bearer_tokens.clear();
    }

    /// Revokes every access token right after the `pages`-th listing page (counted as
    /// [`NexudusStats::list_requests`]) is served: the next page request meets a 401.
    pub fn revoke_access_tokens_after_pages(&self, pages: Option<u64>) {
        self.lock().revoke_access_after_pages = pages;
    }

    /// Revokes every refresh token: the next refresh grant is refused with `invalid_grant`.
    pub fn revoke_refresh_tokens(&self) {
        self.lock().refresh_tokens.clear();
    }

    /// Changes the `totp` code the password grant needs (`None`: no second factor), as the
    /// authenticator app moves on to the next code.
    pub fn set_totp(&self, code: Option<&str>) {
        self.lock().cfg.totp = code.map(str::to_owned);
    }

    /// Every refresh token issued so far, oldest first.
    pub fn issued_refresh_tokens(&self) -> Vec<String> {
        self.lock().issued_refresh_tokens.clone()
    }

    /// Pins the fake's clock (`CreatedOn`/`UpdatedOn` stamps); `None` follows real UTC time.
    pub fn set_clock(&self, now: Option<DateTime<Utc>>) {
        self.lock().clock = now;
    }

    /// Adds `skew` to every reported `TotalItems`, leaving the records and paging untouched.
    pub fn set_total_items_skew(&self, skew: i64) {
        self.lock().total_items_skew = skew;
    }

    /// Adds `drift` to `TotalItems` for every page after the first, so the total a listing sees
    /// changes between its pages.
    pub fn set_total_items_drift(&self, drift: i64) {
        self.lock().total_items_drift = drift;
    }

    /// When true, every page after the first starts one record early, as if a user had been
    /// inserted ahead of the reader: that page repeats the previous page's last Id, and the last
    /// user of the listing is never served.
    pub fn set_page_shift(&self, shift: bool) {
        self.lock().page_shift = shift;
    }

    /// When true, the listing is served by descending Id whatever `orderBy`/`dir` ask (the notes
    /// call the order untrusted: the default order varies, and `dir`'s encoding with it).
    pub fn set_order_descending(&self, descending: bool) {
        self.lock().order_descending = descending;
    }

    /// When true, each non-empty page leaves out its last record while its envelope still
    /// describes the full page.
    pub fn set_short_pages(&self, short: bool) {
        self.lock().short_pages = short;
    }

    /// Right after the next listing's first page is served, user `remove` is deleted and a user
    /// built from `add` is created (it sorts last): the pages after the first shift one record
    /// back, so the listing skips one user while `TotalItems` and the count of distinct Ids
    /// still agree. Nothing in the listing itself shows the gap.
    pub fn churn_after_first_page(&self, remove: u64, add: NexudusUserSpec) {
        self.lock().churn_after_first_page = Some((remove, add));
    }

    /// Stores a user built from `spec` and returns its Id.
    pub fn insert_user(&self, spec: NexudusUserSpec) -> u64 {
        self.lock().insert_spec(spec)
    }

    /// Stores `record` verbatim under `id` (for malformed-data tests).
    pub fn insert_raw(&self, id: u64, record: Value) {
        self.lock().store_user(id, record);
    }

    /// Edits a stored record as an administrator would, then bumps its `UpdatedOn`. Returns false
    /// when the Id is unknown or the stored record is not a JSON object.
    pub fn update_user(&self, id: u64, edit: impl FnOnce(&mut Map<String, Value>)) -> bool {
        let mut inner = self.lock();
        let now = inner.stamp();
        match inner.users.get_mut(&id) {
            Some(Value::Object(record)) => {
                edit(record);
                record.insert("UpdatedOn".into(), now.into());
                true
            }
            _ => false,
        }
    }

    /// Hard-deletes a user, as Nexudus does: it simply vanishes from the listing.
    pub fn remove_user(&self, id: u64) -> bool {
        self.lock().users.remove(&id).is_some()
    }

    pub fn user(&self, id: u64) -> Option<Value> {
        self.lock().users.get(&id).cloned()
    }

    /// All stored Ids, ascending.
    pub fn user_ids(&self) -> Vec<u64> {
        self.lock().users.keys().copied().collect()
    }

    pub fn user_count(&self) -> usize {
        self.lock().users.len()
    }

    /// The user roles created through `POST /api/security/userroles`, by Id.
    pub fn user_roles(&self) -> Vec<Value> {
        self.lock().user_roles.values().cloned().collect()
    }

    pub fn stats(&self) -> NexudusStats {
        self.lock().stats.clone()
    }

    /// Queues a throttled answer for the next authorised request (before the rate limiter).
    pub fn push_throttle(&self, throttle: &Throttle) {
        self.lock().pushed.push_back((None, throttle.response()));
    }

    /// Queues `n` HTML pages answering `status` (a WAF's 503, a login page's 200), as a proxy in
    /// front of the API sends them, for the next authorised requests.
    pub fn push_html(&self, n: usize, status: u16) {
        let mut inner = self.lock();
        for _ in 0..n {
            inner.pushed.push_back((None, html_page(status)));
        }
    }

    /// Like [`FakeNexudus::push_html`], for the next requests whose path starts with `prefix`
    /// only (`"/api/sys/users/"`: the single-user reads).
    pub fn push_html_at(&self, prefix: &str, n: usize, status: u16) {
        let mut inner = self.lock();
        for _ in 0..n {
            inner
                .pushed
                .push_back((Some(prefix.to_owned()), html_page(status)));
        }
    }

    /// Queues a `302` to `location` (an HTML body, as a proxy or an old address answers) for the
    /// next authorised request.
    pub fn push_redirect(&self, location: &str) {
        let mut response = html_page(302);
        *response.status_mut() = axum::http::StatusCode::FOUND;
        if let Ok(value) = header::HeaderValue::from_str(location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        self.lock().pushed.push_back((None, response));
    }

    /// Queues an answer with this status, content type and body for the next authorised request.
    pub fn push_raw(&self, status: u16, content_type: Option<&str>, body: &[u8]) {
        let mut response = Response::new(axum::body::Body::from(body.to_vec()));
        *response.status_mut() =
            axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::OK);
        if let Some(value) = content_type.and_then(|v| header::HeaderValue::from_str(v).ok()) {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        self.lock().pushed.push_back((None, response));
    }

    /// How the rate limiter answers from now on.
    pub fn set_throttle(&self, throttle: Throttle) {
        self.lock().cfg.throttle = throttle;
    }

    /// Changes the four windows (`None`: no limit) from now on.
    pub fn set_limits(
        &self,
        min_gap: Option<Duration>,
        per_minute: Option<u32>,
        per_hour: Option<u32>,
        per_day: Option<u32>,
    ) {
        let mut inner = self.lock();
        inner.cfg.min_gap = min_gap;
        inner.cfg.per_minute_limit = per_minute;
        inner.cfg.per_hour_limit = per_hour;
        inner.cfg.per_day_limit = per_day;
    }

    /// When true, records are served without `Language`, like the record captured from a real
    /// account (which carries `PreferredLanguageId` instead).
    pub fn set_omit_language(&self, omit: bool) {
        self.lock().omit_language = omit;
    }

    /// Adds (or replaces) a record of `GET /api/sys/languages`.
    pub fn insert_language(&self, id: u64, name: &str, culture: &str) {
        self.lock()
            .languages
            .insert(id, (name.to_owned(), culture.to_owned()));
    }

    /// While `Some(code)`, the password grant is refused with `{"error": code}` (400):
    /// `two_factor_auth_check`, `must_reset_password`, `invalid_grant`, or anything else.
    pub fn set_token_refusal(&self, code: Option<&str>) {
        self.lock().token_refusal = code.map(str::to_owned);
    }

    /// The form of the `UpdatedOn` and `CreatedOn` stamps written from now on.
    pub fn set_date_form(&self, form: DateForm) {
        self.lock().date_form = form;
    }

    /// Every request seen so far (up to the last 100,000), in arrival order.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.lock().request_log.clone()
    }

    pub fn reset_stats(&self) {
        self.lock().stats = NexudusStats::default();
    }
}

impl Inner {
    fn now(&self) -> DateTime<Utc> {
        self.clock.unwrap_or_else(Utc::now)
    }

    /// `YYYY-MM-DDTHH:MM:SSZ`, the form of the example response, or the form set by
    /// [`FakeNexudus::set_date_form`].
    fn stamp(&self) -> String {
        let now = self.now();
        match self.date_form {
            DateForm::Zulu => now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            DateForm::NoZone => now.format("%Y-%m-%dT%H:%M:%S").to_string(),
            DateForm::Fraction => {
                let micros = now.timestamp_subsec_micros();
                format!("{}.{micros:06}7", now.format("%Y-%m-%dT%H:%M:%S"))
            }
            DateForm::Offset(minutes) => match chrono::FixedOffset::east_opt(minutes * 60) {
                Some(zone) => now
                    .with_timezone(&zone)
                    .format("%Y-%m-%dT%H:%M:%S%:z")
                    .to_string(),
                None => now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            },
        }
    }

    /// Stores a user built from `spec` and returns its Id.
    fn insert_spec(&mut self, spec: NexudusUserSpec) -> u64 {
        let id = spec.id.unwrap_or(self.next_user_id);
        let mut record = self.new_record(id);
        record.insert("FullName".into(), spec.full_name.clone().into());
        record.insert("Email".into(), spec.email.into());
        record.insert("Language".into(), spec.language.into());
        record.insert("Active".into(), spec.active.into());
        record.insert("IsAdmin".into(), spec.is_admin.into());
        record.insert(
            "PreferredLanguageId".into(),
            spec.preferred_language_id.into(),
        );
        record.insert("ToStringText".into(), spec.full_name.into());
        self.store_user(id, Value::Object(record));
        id
    }

    /// A record with the example response's defaults and the system fields set for `id`.
    fn new_record(&self, id: u64) -> Map<String, Value> {
        let now = self.stamp();
        let mut record: Map<String, Value> = FIELDS
            .iter()
            .filter(|field| field.kind != Kind::System)
            .map(|field| (field.name.to_owned(), field.init.value()))
            .collect();
        record.extend([
            ("Id".to_owned(), id.into()),
            ("UniqueId".to_owned(), fake_uuid(id).into()),
            ("CreatedOn".to_owned(), now.clone().into()),
            ("UpdatedOn".to_owned(), now.into()),
            ("UpdatedBy".to_owned(), self.cfg.username.clone().into()),
            ("IsNew".to_owned(), false.into()),
            ("SystemId".to_owned(), Value::Null),
            ("AvatarFileName".to_owned(), Value::Null),
            ("ToStringText".to_owned(), Value::Null),
            ("LocalizationDetails".to_owned(), Value::Null),
            ("CustomFields".to_owned(), Value::Null),
        ]);
        record
    }

    fn store_user(&mut self, id: u64, record: Value) {
        self.next_user_id = self.next_user_id.max(id.saturating_add(1));
        self.users.insert(id, record);
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some((scheme, credentials)) = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().split_once(' '))
        else {
            return false;
        };
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            base64::engine::general_purpose::STANDARD
                .decode(credentials)
                .ok()
                .and_then(|raw| String::from_utf8(raw).ok())
                .is_some_and(|pair| {
                    pair.split_once(':').is_some_and(|(user, password)| {
                        user == self.cfg.username && password == self.cfg.password
                    })
                })
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let now = Instant::now();
            self.bearer_tokens
                .get(credentials)
                .is_some_and(|expiry| expiry.is_none_or(|at| now < at))
        } else {
            false
        }
    }

    /// Sliding-window rate limiting; a refused request is not counted in the windows.
    fn admit(&mut self, now: Instant) -> bool {
        const SECOND: Duration = Duration::from_secs(1);
        const MINUTE: Duration = Duration::from_secs(60);
        while self
            .admitted
            .front()
            .is_some_and(|&at| now.duration_since(at) >= MINUTE)
        {
            self.admitted.pop_front();
        }
        let over = |limit: Option<u32>, count: usize| {
            limit.is_some_and(|limit| count >= usize::try_from(limit).unwrap_or(usize::MAX))
        };
        if over(self.cfg.per_minute_limit, self.admitted.len()) {
            return false;
        }
        let last_second = self
            .admitted
            .iter()
            .rev()
            .take_while(|&&at| now.duration_since(at) < SECOND)
            .count();
        if over(self.cfg.per_second_limit, last_second) {
            return false;
        }
        if let (Some(gap), Some(&last)) = (self.cfg.min_gap, self.admitted.back())
            && now.duration_since(last) < gap
        {
            return false;
        }
        const HOUR: Duration = Duration::from_secs(3600);
        const DAY: Duration = Duration::from_secs(86_400);
        while self
            .admitted_long
            .front()
            .is_some_and(|&at| now.duration_since(at) >= DAY)
        {
            self.admitted_long.pop_front();
        }
        if over(self.cfg.per_day_limit, self.admitted_long.len()) {
            return false;
        }
        let last_hour = self
            .admitted_long
            .iter()
            .rev()
            .take_while(|&&at| now.duration_since(at) < HOUR)
            .count();
        if over(self.cfg.per_hour_limit, last_hour) {
            return false;
        }
        self.admitted.push_back(now);
        if self.cfg.per_hour_limit.is_some() || self.cfg.per_day_limit.is_some() {
            self.admitted_long.push_back(now);
        }
        true
    }
}

/// Auth, pushed answers, rate limit and faults, in that order, in front of every route. Every
/// request is logged with its arrival time and the status it was answered with.
async fn gate(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let at = Instant::now();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let accept = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let response = gate_inner(&state, request, next).await;
    let mut inner = lock(&state);
    if inner.request_log.len() >= REQUEST_LOG_LIMIT {
        inner.request_log.remove(0);
    }
    inner.request_log.push(RequestRecord {
        at,
        path,
        query,
        status: response.status().as_u16(),
        accept,
    });
    response
}

async fn gate_inner(state: &Shared, request: Request, next: Next) -> Response {
    let latency = {
        let mut inner = lock(state);
        inner.stats.requests += 1;
        inner.controls.delay(&RequestLine {
            method: request.method().as_str(),
            path: request.uri().path(),
            query: request.uri().query().unwrap_or_default(),
        })
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let fault = {
        let mut inner = lock(state);
        if let Some(status) = inner.controls.down {
            return status_response(status, None);
        }
        // The token endpoint authenticates by its form, not by the Authorization header.
        if request.uri().path() != TOKEN_PATH && !inner.authorized(request.headers()) {
            inner.stats.unauthorized += 1;
            return status_response(401, None);
        }
        let path = request.uri().path();
        let pushed = inner
            .pushed
            .iter()
            .position(|(prefix, _)| prefix.as_deref().is_none_or(|p| path.starts_with(p)));
        if let Some((_, answer)) = pushed.and_then(|at| inner.pushed.remove(at)) {
            inner.stats.pushed_answers += 1;
            return answer;
        }
        if !inner.admit(Instant::now()) {
            inner.stats.throttled += 1;
            let mut throttle = inner.cfg.throttle.clone();
            // The default form follows the older `retry_after_secs` knob.
            if throttle == Throttle::documented(1) {
                throttle = Throttle::documented(inner.cfg.retry_after_secs);
            }
            return throttle.response();
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
            let partial = json!({"Records": [], "CurrentPage": 1, "WasSuccessful": true});
            cut_off(json_response(200, &partial, None)).await
        }
        Some(Fault::DropAfterApply) => cut_off(next.run(request).await).await,
        Some(Fault::Stall(pause)) => stalled(pause),
    }
}

const TOKEN_PATH: &str = "/api/token";
/// Refresh tokens live 15 days, as documented.
const REFRESH_TTL: Duration = Duration::from_secs(15 * 24 * 3600);

fn token_error(inner: &mut Inner, error: &str, description: &str) -> Response {
    inner.stats.refused_grants += 1;
    json_response(
        400,
        &json!({ "error": error, "error_description": description }),
        None,
    )
}

/// `POST /api/token`: the password and refresh_token grants, form-encoded only (JSON answers
/// `unsupported_grant_type`, as the real endpoint does). Each refresh retires the refresh token
/// used and issues a new one, bound to the same `client_id` header (the username when absent).
async fn token(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let mut guard = lock(&state);
    let inner = &mut *guard;
    let form_encoded = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form_encoded {
        return token_error(
            inner,
            "unsupported_grant_type",
            "The grant type is not supported.",
        );
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    let client_id = headers
        .get("client_id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let now = Instant::now();
    let bound_client = match field("grant_type") {
        "password" => {
            if let Some(code) = inner.token_refusal.clone() {
                return token_error(inner, &code, "Refused by a test switch.");
            }
            let good =
                field("username") == inner.cfg.username && field("password") == inner.cfg.password;
            if !good {
                return token_error(
                    inner,
                    "invalid_grant",
                    "The user name or password is incorrect.",
                );
            }
            let second_factor = inner
                .cfg
                .totp
                .as_deref()
                .is_none_or(|code| field("totp") == code);
            if !second_factor {
                return token_error(
                    inner,
                    "two_factor_auth_check",
                    "A valid two-factor authentication code is required.",
                );
            }
            inner.stats.password_grants += 1;
            client_id.unwrap_or_else(|| inner.cfg.username.clone())
        }
        "refresh_token" => {
            let presented = field("refresh_token").to_owned();
            let Some((bound, expiry)) = inner.refresh_tokens.remove(&presented) else {
                return token_error(inner, "invalid_grant", "The refresh token is invalid.");
            };
            let asked = client_id.unwrap_or_else(|| inner.cfg.username.clone());
            if expiry <= now || asked != bound {
                return token_error(
                    inner,
                    "invalid_grant",
                    "The refresh token was issued to another client or has expired.",
                );
            }
            inner.stats.refresh_grants += 1;
            bound
        }
        _ => {
            return token_error(
                inner,
                "unsupported_grant_type",
                "The grant type is not supported.",
            );
        }
    };
    let serial = inner.next_token;
    inner.next_token += 1;
    let access = format!("at-{serial}-{}", fake_uuid(serial));
    let refresh = format!("rt-{serial}-{}", fake_uuid(serial + 1_000_000));
    let ttl = inner.cfg.token_ttl;
    inner.bearer_tokens.insert(access.clone(), Some(now + ttl));
    inner
        .refresh_tokens
        .insert(refresh.clone(), (bound_client, now + REFRESH_TTL));
    inner.issued_refresh_tokens.push(refresh.clone());
    json_response(
        200,
        &json!({
            "access_token": access,
            "token_type": "bearer",
            "expires_in": ttl.as_secs(),
            "refresh_token": refresh,
        }),
        None,
    )
}

/// An error status with the body Nexudus gives it.
fn status_response(status: u16, retry_after: Option<u64>) -> Response {
    match status {
        409 | 429 => empty_response(status, retry_after),
        401 => json_response(status, &json!({ "Message": DENIED }), retry_after),
        _ => json_response(
            status,
            &json!({ "Message": "An error has occurred." }),
            retry_after,
        ),
    }
}

async fn no_route(uri: Uri) -> Response {
    let message = format!("No HTTP resource was found that matches the request URI '{uri}'.");
    json_response(404, &json!({ "Message": message }), None)
}

async fn method_not_allowed(method: Method) -> Response {
    let message = format!("The requested resource does not support http method '{method}'.");
    json_response(405, &json!({ "Message": message }), None)
}

/// 400 for a bad query string or body that is not about one field.
fn bad_request(message: &str) -> Response {
    let body = json!({ "Message": message, "Value": null, "Errors": null, "WasSuccessful": false });
    json_response(400, &body, None)
}

/// One entry of a write endpoint's `Errors` array.
struct FieldError {
    property: &'static str,
    attempted: Value,
    message: &'static str,
}

/// 400 in the seed pages' validation shape.
fn validation_failed(errors: &[FieldError]) -> Response {
    let message = errors
        .iter()
        .map(|error| format!("{}: {}", error.property, error.message))
        .collect::<Vec<_>>()
        .join(", ");
    let errors: Vec<Value> = errors
        .iter()
        .map(|error| {
            json!({
                "AttemptedValue": error.attempted,
                "Message": error.message,
                "PropertyName": error.property,
            })
        })
        .collect();
    let body =
        json!({ "Message": message, "Value": null, "Errors": errors, "WasSuccessful": false });
    json_response(400, &body, None)
}

/// 200 in the seed pages' success shape.
fn write_succeeded(inner: &Inner, message: &str, id: u64) -> Response {
    let body = json!({
        "Status": 200,
        "Message": message,
        "Value": { "Id": id },
        "OpenInDialog": false,
        "OpenInWindow": false,
        "RedirectURL": null,
        "JavaScript": null,
        "UpdatedOn": inner.stamp(),
        "UpdatedBy": inner.cfg.username,
        "Errors": null,
        "WasSuccessful": true,
    });
    json_response(200, &body, None)
}

/// Query parameters of `GET /api/sys/users`, validated.
#[derive(Debug)]
struct ListQuery {
    page: u64,
    size: u64,
    email: Option<String>,
    full_name: Option<String>,
    active: Option<bool>,
    updated_from: Option<NaiveDateTime>,
    updated_to: Option<NaiveDateTime>,
}

impl ListQuery {
    /// Parameter names are matched case-insensitively, as ASP.NET binds them; empty values are
    /// ignored. `orderBy` and `dir` are accepted but the order is always Id ascending (descending
    /// with [`FakeNexudus::set_order_descending`]).
    fn parse(uri: &Uri) -> Result<Self, String> {
        let Query(raw) = Query::<Vec<(String, String)>>::try_from_uri(uri)
            .map_err(|_| "The query string is malformed.".to_owned())?;
        let params: HashMap<String, String> = raw
            .into_iter()
            .filter(|(_, value)| !value.trim().is_empty())
            .map(|(key, value)| (key.to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        let number = |key: &str, name: &str| -> Result<Option<u64>, String> {
            params
                .get(key)
                .map(|value| {
                    value
                        .parse::<u64>()
                        .map_err(|_| format!("The value '{value}' is not valid for {name}."))
                })
                .transpose()
        };
        let minute = |key: &str, name: &str| -> Result<Option<NaiveDateTime>, String> {
            params
                .get(key)
                .map(|value| {
                    NaiveDateTime::parse_from_str(value, FILTER_FORMAT).map_err(|_| {
                        format!("The value '{value}' is not valid for {name} (YYYY-MM-DDTHH:mm).")
                    })
                })
                .transpose()
        };
        let active = params
            .get("user_active")
            .map(|value| match value.to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(format!("The value '{value}' is not valid for User_Active.")),
            })
            .transpose()?;
        Ok(Self {
            page: number("page", "page")?.unwrap_or(1).max(1),
            size: number("size", "size")?
                .unwrap_or(DEFAULT_PAGE_SIZE)
                .clamp(1, MAX_PAGE_SIZE),
            email: params.get("user_email").map(|value| value.to_lowercase()),
            full_name: params
                .get("user_fullname")
                .map(|value| value.to_lowercase()),
            active,
            updated_from: minute("from_user_updatedon", "from_User_UpdatedOn")?,
            updated_to: minute("to_user_updatedon", "to_User_UpdatedOn")?,
        })
    }

    fn matches(&self, record: &Value) -> bool {
        let text = |field: &str| record.get(field).and_then(Value::as_str);
        if let Some(email) = &self.email
            && text("Email").is_none_or(|value| value.to_lowercase() != *email)
        {
            return false;
        }
        if let Some(part) = &self.full_name
            && text("FullName").is_none_or(|value| !value.to_lowercase().contains(part.as_str()))
        {
            return false;
        }
        if let Some(active) = self.active
            && record.get("Active").and_then(Value::as_bool) != Some(active)
        {
            return false;
        }
        if self.updated_from.is_none() && self.updated_to.is_none() {
            return true;
        }
        let Some(updated) = text("UpdatedOn").and_then(updated_minute) else {
            return false;
        };
        self.updated_from.is_none_or(|from| updated >= from)
            && self.updated_to.is_none_or(|to| updated <= to)
    }
}

/// A record's `UpdatedOn`, truncated to the minute as the filters compare it.
fn updated_minute(stamp: &str) -> Option<NaiveDateTime> {
    let at = DateTime::parse_from_rfc3339(stamp)
        .map(|at| at.naive_utc())
        .or_else(|_| NaiveDateTime::parse_from_str(stamp, "%Y-%m-%dT%H:%M:%S%.f"))
        .ok()?;
    let minute = at.format(FILTER_FORMAT).to_string();
    NaiveDateTime::parse_from_str(&minute, FILTER_FORMAT).ok()
}

async fn list_users(State(state): State<Shared>, uri: Uri) -> Response {
    let query = match ListQuery::parse(&uri) {
        Ok(query) => query,
        Err(message) => return bad_request(&message),
    };
    let mut inner = lock(&state);
    inner.stats.list_requests += 1;
    if inner.revoke_access_after_pages == Some(inner.stats.list_requests) {
        inner.bearer_tokens.clear();
    }
    let mut matching: Vec<&Value> = inner
        .users
        .values()
        .filter(|record| query.matches(record))
        .collect();
    if inner.order_descending {
        matching.reverse();
    }
    let total = matching.len() as u64;
    let total_pages = total.div_ceil(query.size);
    let mut start = (query.page - 1).saturating_mul(query.size);
    if inner.page_shift && query.page > 1 {
        start -= 1;
    }
    let omit_language = inner.omit_language;
    let mut records: Vec<Value> = matching
        .into_iter()
        .skip(usize::try_from(start).unwrap_or(usize::MAX))
        .take(usize::try_from(query.size).unwrap_or(usize::MAX))
        .cloned()
        .map(|mut record| {
            if omit_language && let Some(fields) = record.as_object_mut() {
                fields.remove("Language");
            }
            record
        })
        .collect();
    let (first_item, last_item) = match records.len() as u64 {
        0 => (0, 0),
        len => (start + 1, start + len),
    };
    if inner.short_pages {
        records.pop();
    }
    let reported_total = i64::try_from(total)
        .unwrap_or(i64::MAX)
        .saturating_add(inner.total_items_skew)
        .saturating_add(
            inner
                .total_items_drift
                .saturating_mul(i64::try_from(query.page).unwrap_or(i64::MAX) - 1),
        )
        .max(0);
    if query.page == 1
        && let Some((remove, add)) = inner.churn_after_first_page.take()
    {
        inner.users.remove(&remove);
        inner.insert_spec(add);
    }
    let body = json!({
        "Records": records,
        "CurrentPage": query.page,
        "CurrentPageSize": query.size,
        "CurrentOrderField": "Id",
        "CurrentSortDirection": 1,
        "FirstItem": first_item,
        "LastItem": last_item,
        "TotalItems": reported_total,
        "TotalPages": total_pages,
        "HasNextPage": query.page < total_pages,
        "HasPreviousPage": query.page > 1,
    });
    drop(inner);
    json_response(200, &body, None)
}

/// `GET /api/sys/languages`: paged like the users listing (`page`, `size`), records with `Id`,
/// `Name` and `Culture`.
async fn list_languages(State(state): State<Shared>, uri: Uri) -> Response {
    let query = match ListQuery::parse(&uri) {
        Ok(query) => query,
        Err(message) => return bad_request(&message),
    };
    let mut inner = lock(&state);
    inner.stats.language_requests += 1;
    let total = inner.languages.len() as u64;
    let total_pages = total.div_ceil(query.size);
    let start = (query.page - 1).saturating_mul(query.size);
    let records: Vec<Value> = inner
        .languages
        .iter()
        .skip(usize::try_from(start).unwrap_or(usize::MAX))
        .take(usize::try_from(query.size).unwrap_or(usize::MAX))
        .map(|(id, (name, culture))| {
            json!({
                "Id": id,
                "Name": name,
                "Culture": culture,
                "UniqueId": fake_uuid(*id + 7_000_000),
                "IsNew": false,
                "SystemId": null,
            })
        })
        .collect();
    drop(inner);
    let body = json!({
        "Records": records,
        "CurrentPage": query.page,
        "CurrentPageSize": query.size,
        "CurrentOrderField": "Id",
        "CurrentSortDirection": 1,
        "TotalItems": total,
        "TotalPages": total_pages,
        "HasNextPage": query.page < total_pages,
        "HasPreviousPage": query.page > 1,
    });
    json_response(200, &body, None)
}

/// An HTML page such as CloudFront or a WAF answers in front of the API.
fn html_page(status: u16) -> Response {
    let title = if status == 200 {
        "Sign in".to_owned()
    } else {
        format!("{status} ERROR")
    };
    let body = format!(
        "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01 Transitional//EN\">\n<HTML><HEAD>\
         <TITLE>{title}</TITLE></HEAD><BODY>\n<H1>{title}</H1>\nThe request could not be \
         satisfied.\n<HR noshade size=\"1px\">\nGenerated by cloudfront (CloudFront)\n\
         </BODY></HTML>"
    );
    let mut response = Response::new(axum::body::Body::from(body));
    *response.status_mut() =
        axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::OK);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

async fn get_user(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let mut inner = lock(&state);
    inner.stats.user_requests += 1;
    let mut record = id
        .parse::<u64>()
        .ok()
        .and_then(|id| inner.users.get(&id).cloned());
    if inner.omit_language
        && let Some(fields) = record.as_mut().and_then(Value::as_object_mut)
    {
        fields.remove("Language");
    }
    drop(inner);
    match record {
        Some(record) => json_response(200, &record, None),
        None => json_response(404, &json!({ "Message": "Not found." }), None),
    }
}

async fn create_user(State(state): State<Shared>, body: Bytes) -> Response {
    let Some(body) = parse_object(&body) else {
        return bad_request("The request is invalid.");
    };
    let mut errors = required(&body, &["FullName", "Email"]);
    errors.extend(mistyped(&body));
    if !errors.is_empty() {
        return validation_failed(&errors);
    }
    let mut inner = lock(&state);
    let id = inner.next_user_id;
    let mut record = inner.new_record(id);
    merge_writable(&mut record, &body);
    let display = record.get("FullName").cloned().unwrap_or(Value::Null);
    record.insert("ToStringText".into(), display);
    inner.store_user(id, Value::Object(record));
    write_succeeded(&inner, "User was successfully created.", id)
}

async fn update_user(State(state): State<Shared>, body: Bytes) -> Response {
    let Some(body) = parse_object(&body) else {
        return bad_request("The request is invalid.");
    };
    let mut errors = required(&body, &["FullName", "Email"]);
    errors.extend(present(
        &body,
        &[
            "Id",
            "Language",
            "PasswordSalt",
            "LastHelpVisited",
            "InvalidLoginAttempts",
        ],
    ));
    errors.extend(mistyped(&body));
    let id = body.get("Id").filter(|value| !value.is_null());
    if let Some(value) = id
        && !value.is_u64()
    {
        errors.push(FieldError {
            property: "Id",
            attempted: value.clone(),
            message: "is not a valid value",
        });
    }
    let id = match id.and_then(Value::as_u64) {
        Some(id) if errors.is_empty() => id,
        _ => return validation_failed(&errors),
    };
    let mut inner = lock(&state);
    let now = inner.stamp();
    let by = inner.cfg.username.clone();
    let Some(Value::Object(record)) = inner.users.get_mut(&id) else {
        let body = json!({
            "Status": 404,
            "Message": format!("User with Id {id} was not found."),
            "Value": null,
            "Errors": null,
            "WasSuccessful": false,
        });
        return json_response(404, &body, None);
    };
    merge_writable(record, &body);
    apply_list_edits(record, &body);
    let display = record.get("FullName").cloned().unwrap_or(Value::Null);
    record.insert("ToStringText".into(), display);
    record.insert("UpdatedOn".into(), now.into());
    record.insert("UpdatedBy".into(), by.into());
    write_succeeded(&inner, "User was successfully updated.", id)
}

async fn create_user_role(State(state): State<Shared>, body: Bytes) -> Response {
    let Some(body) = parse_object(&body) else {
        return bad_request("The request is invalid.");
    };
    let mut errors = required(&body, &["Name"]);
    match body.get("BusinessId") {
        Some(value) if value.is_u64() => {}
        Some(value) if !value.is_null() => errors.push(FieldError {
            property: "BusinessId",
            attempted: value.clone(),
            message: "is not a valid value",
        }),
        _ => errors.push(FieldError {
            property: "BusinessId",
            attempted: Value::Null,
            message: "is a required field",
        }),
    }
    for list in ["Roles", "Users"] {
        if !body.get(list).is_none_or(is_id_list) {
            errors.push(FieldError {
                property: list,
                attempted: body.get(list).cloned().unwrap_or(Value::Null),
                message: "is not a valid value",
            });
        }
    }
    if !errors.is_empty() {
        return validation_failed(&errors);
    }
    let mut inner = lock(&state);
    let id = inner.next_role_id;
    inner.next_role_id += 1;
    let now = inner.stamp();
    let list = |name: &str| match body.get(name) {
        Some(Value::Array(items)) => Value::Array(items.clone()),
        _ => json!([]),
    };
    let role = json!({
        "Id": id,
        "BusinessId": body.get("BusinessId").cloned().unwrap_or(Value::Null),
        "Name": body.get("Name").cloned().unwrap_or(Value::Null),
        "Roles": list("Roles"),
        "Users": list("Users"),
        "UniqueId": fake_uuid(id),
        "CreatedOn": now,
        "UpdatedOn": now,
        "UpdatedBy": inner.cfg.username,
        "IsNew": false,
        "SystemId": null,
    });
    inner.user_roles.insert(id, role);
    write_succeeded(&inner, "UserRole was successfully created.", id)
}

fn parse_object(body: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(body)) => Some(body),
        _ => None,
    }
}

/// Fields that must be non-blank strings.
fn required(body: &Map<String, Value>, names: &[&'static str]) -> Vec<FieldError> {
    names
        .iter()
        .copied()
        .filter(|name| {
            body.get(*name)
                .and_then(Value::as_str)
                .is_none_or(|value| value.trim().is_empty())
        })
        .map(|name| FieldError {
            property: name,
            attempted: body.get(name).cloned().unwrap_or(Value::Null),
            message: "is a required field",
        })
        .collect()
}

/// Fields that must be present and not null (an empty `PasswordSalt` is fine, as in the seed).
fn present(body: &Map<String, Value>, names: &[&'static str]) -> Vec<FieldError> {
    names
        .iter()
        .copied()
        .filter(|name| body.get(*name).is_none_or(Value::is_null))
        .map(|name| FieldError {
            property: name,
            attempted: Value::Null,
            message: "is a required field",
        })
        .collect()
}

/// Known fields whose value has the wrong JSON type.
fn mistyped(body: &Map<String, Value>) -> Vec<FieldError> {
    FIELDS
        .iter()
        .filter_map(|field| {
            let value = body.get(field.name)?;
            let ok = value.is_null()
                || match field.kind {
                    Kind::Str | Kind::Secret => value.is_string(),
                    Kind::Int => value.is_i64(),
                    Kind::Bool => value.is_boolean(),
                    Kind::IdList => is_id_list(value),
                    Kind::System => true,
                };
            (!ok).then(|| FieldError {
                property: field.name,
                attempted: value.clone(),
                message: "is not a valid value",
            })
        })
        .collect()
}

fn is_id_list(value: &Value) -> bool {
    value
        .as_array()
        .is_some_and(|items| items.iter().all(Value::is_u64))
}

/// Copies the writable fields of a create/update body; system fields and unknown names are
/// ignored (as ASP.NET model binding does) and passwords are never echoed back.
fn merge_writable(record: &mut Map<String, Value>, body: &Map<String, Value>) {
    for field in FIELDS {
        if matches!(field.kind, Kind::System | Kind::Secret) {
            continue;
        }
        if let Some(value) = body.get(field.name) {
            record.insert(field.name.to_owned(), value.clone());
        }
    }
}

/// The update page's `Added…`/`Removed…` lists edit the linked Id lists in place.
fn apply_list_edits(record: &mut Map<String, Value>, body: &Map<String, Value>) {
    for list in ["Businesses", "UserRoles", "ChatRooms"] {
        let ids = |prefix: &str| -> Vec<u64> {
            body.get(&format!("{prefix}{list}"))
                .and_then(Value::as_array)
                .map(|items| items.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default()
        };
        let (added, removed) = (ids("Added"), ids("Removed"));
        if added.is_empty() && removed.is_empty() {
            continue;
        }
        let mut current: Vec<u64> = record
            .get(list)
            .and_then(Value::as_array)
            .map(|items| items.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        for id in added {
            if !current.contains(&id) {
                current.push(id);
            }
        }
        current.retain(|id| !removed.contains(id));
        record.insert(list.to_owned(), json!(current));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Str,
    /// Accepted on writes, never stored or returned (`Password`, `NewPassword`).
    Secret,
    Int,
    Bool,
    IdList,
    /// Set by the server (`Id`, `UniqueId`, `CreatedOn`, …); ignored in request bodies.
    System,
}

/// A field's value in a fresh record, as in the "Get one User" example response.
#[derive(Clone, Copy, Debug)]
enum Init {
    Null,
    EmptyString,
    Zero,
    False,
    EmptyList,
}

impl Init {
    fn value(self) -> Value {
        match self {
            Init::Null => Value::Null,
            Init::EmptyString => json!(""),
            Init::Zero => json!(0),
            Init::False => json!(false),
            Init::EmptyList => json!([]),
        }
    }
}

struct Field {
    name: &'static str,
    kind: Kind,
    init: Init,
}

const fn field(name: &'static str, kind: Kind, init: Init) -> Field {
    Field { name, kind, init }
}

/// Every field of the "Get one User" page, in its order, with the example response's defaults.
const FIELDS: &[Field] = &[
    field("FullName", Kind::Str, Init::EmptyString),
    field("Email", Kind::Str, Init::EmptyString),
    field("AccessToken", Kind::Str, Init::Null),
    field("Language", Kind::Int, Init::Zero),
    field("PreferredLanguageId", Kind::Int, Init::Null),
    field("NewPassword", Kind::Secret, Init::Null),
    field("Password", Kind::Secret, Init::Null),
    field("PasswordSalt", Kind::Str, Init::EmptyString),
    field("AvatarFileName", Kind::System, Init::Null),
    field("NewAvatarUrl", Kind::Str, Init::Null),
    field("ClearAvatarFile", Kind::Bool, Init::Null),
    field("ApplicationId", Kind::Int, Init::Null),
    field("PassportNumber", Kind::Str, Init::Null),
    field("PassportCardNumber", Kind::Str, Init::Null),
    field("EnablePassportAccess", Kind::Bool, Init::False),
    field("Active", Kind::Bool, Init::False),
    field("IsAdmin", Kind::Bool, Init::False),
    field("APIAccess", Kind::Bool, Init::False),
    field("Validated", Kind::Bool, Init::False),
    field("MustResetPassword", Kind::Bool, Init::False),
    field("LastAccess", Kind::Str, Init::Null),
    field("Devices", Kind::Str, Init::Null),
    field("OnNewEmail", Kind::Bool, Init::False),
    field("OnHelpDeskMsg", Kind::Bool, Init::False),
    field("OnNewWallPost", Kind::Bool, Init::False),
    field("OnNewMember", Kind::Bool, Init::False),
    field("OnProfileChanges", Kind::Bool, Init::False),
    field("OnNewBlogComment", Kind::Bool, Init::False),
    field("OnNewEventComment", Kind::Bool, Init::False),
    field("OnTariffChange", Kind::Bool, Init::False),
    field("OnBookingChange", Kind::Bool, Init::False),
    field("OnTentativeBookingChange", Kind::Bool, Init::False),
    field("OnPurchases", Kind::Bool, Init::False),
    field("OnVisitorRegistration", Kind::Bool, Init::False),
    field("OnPlaformInvoices", Kind::Bool, Init::False),
    field("ReceiveCommunityDigest", Kind::Bool, Init::False),
    field("ReceiveEveryMessage", Kind::Bool, Init::False),
    field("TwoFactorEnabled", Kind::Bool, Init::False),
    field("TwoFactorSecret", Kind::Str, Init::Null),
    field("EmailCallBackGuid", Kind::Str, Init::Null),
    field("Businesses", Kind::IdList, Init::EmptyList),
    field("UserRoles", Kind::IdList, Init::EmptyList),
    field("ChatRooms", Kind::IdList, Init::EmptyList),
    field("DefaultBusinessId", Kind::Int, Init::Null),
    field("LastHelpVisited", Kind::Int, Init::Zero),
    field("LastReceivedCommunityThreadDate", Kind::Str, Init::Null),
    field("LastReceivedCommunityMessageDate", Kind::Str, Init::Null),
    field("NextCommunityDigest", Kind::Str, Init::Null),
    field("SupportTeamUserEmail", Kind::Str, Init::Null),
    field("InvalidLoginAttempts", Kind::Int, Init::Zero),
    field("LastLoginAttempt", Kind::Str, Init::Null),
    field("OnAccessControlErrors", Kind::Bool, Init::False),
    field("NextHelpDeskMessageReminder", Kind::Str, Init::Null),
    field("OnMemberRemovedFromTeam", Kind::Bool, Init::False),
    field("OnVirtualOfficeTariffChange", Kind::Bool, Init::False),
    field(
        "OnVirtualOfficeDeliveryPreferenceUpdate",
        Kind::Bool,
        Init::False,
    ),
    field("OnIdentityCheckUpdate", Kind::Bool, Init::False),
    field("Id", Kind::System, Init::Null),
    field("UniqueId", Kind::System, Init::Null),
    field("CreatedOn", Kind::System, Init::Null),
    field("UpdatedOn", Kind::System, Init::Null),
    field("UpdatedBy", Kind::System, Init::Null),
    field("IsNew", Kind::System, Init::Null),
    field("SystemId", Kind::System, Init::Null),
];

/// A deterministic demo population of `n` valid users with unique emails: mixed languages
/// (1/2/3), about 10% inactive, a few admins, accented, one-word and multi-word names, names with
/// stray whitespace, and mixed-case emails.
pub fn sample_users(n: usize) -> Vec<NexudusUserSpec> {
    const FIRST: [&str; 14] = [
        "José",
        "Zoë",
        "François",
        "Łukasz",
        "Anna",
        "Björn",
        "Søren",
        "Chloé",
        "Mateo",
        "Aoife",
        "Renée",
        "Jürgen",
        "Inés",
        "Priya",
    ];
    const LAST: [&str; 13] = [
        "Müller",
        "Ångström",
        "Dœuf",
        "Żółć",
        "García",
        "O'Brien",
        "Nguyen",
        "Kowalski",
        "Smith",
        "Dubois",
        "Østergaard",
        "Çelik",
        "Novák",
    ];
    const MONONYMS: [&str; 4] = ["Cher", "Björk", "Madonna", "Zendaya"];
    const LONG: [&str; 4] = [
        "Anna Maria de la Cruz",
        "Jean-Luc van der Berg",
        "María José García López",
        "Ludwig von Beethoven-Schmidt",
    ];
    const DOMAINS: [&str; 3] = ["example.com", "example.org", "coworking.test"];
    (0..n)
        .map(|i| {
            let (first, last) = (FIRST[i % FIRST.len()], LAST[i % LAST.len()]);
            let full_name = match i % 20 {
                7 => MONONYMS[(i / 20) % MONONYMS.len()].to_owned(),
                13 => LONG[(i / 20) % LONG.len()].to_owned(),
                17 => format!("  {first}   {last} "),
                _ => format!("{first} {last}"),
            };
            let local = full_name
                .split_whitespace()
                .map(ascii_fold)
                .collect::<Vec<_>>()
                .join(".");
            let domain = DOMAINS[i % DOMAINS.len()];
            let email = if i % 6 == 1 {
                format!("{}.{i}@{}", capitalize_words(&local), domain.to_uppercase())
            } else {
                format!("{}.{i}@{domain}", local.to_lowercase())
            };
            NexudusUserSpec {
                id: None,
                full_name: Some(full_name),
                email: Some(email),
                language: [1, 2, 3][i % 3],
                active: i % 10 != 9,
                is_admin: i % 25 == 4,
                preferred_language_id: None,
            }
        })
        .collect()
}

/// The ASCII letters of a name, accents stripped, for building email addresses.
fn ascii_fold(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        let folded = match c {
            c if c.is_ascii_alphanumeric() => {
                out.push(c);
                continue;
            }
            'á' | 'à' | 'â' | 'ä' | 'å' => "a",
            'Å' | 'Á' => "A",
            'ç' | 'ć' => "c",
            'Ç' => "C",
            'é' | 'è' | 'ê' | 'ë' => "e",
            'í' | 'ï' => "i",
            'ñ' => "n",
            'ó' | 'ö' | 'ø' => "o",
            'Ø' => "O",
            'œ' => "oe",
            'ú' | 'ü' => "u",
            'ł' => "l",
            'Ł' => "L",
            'ż' | 'ź' => "z",
            'Ż' => "Z",
            _ => "",
        };
        out.push_str(folded);
    }
    out
}

fn capitalize_words(local: &str) -> String {
    local
        .split('.')
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use reqwest::StatusCode;

    const USER: &str = "sync@example.com";
    const PASSWORD: &str = "nexudus-secret";

    /// A fake without rate limits, so tests that are not about throttling never trip it.
    async fn unthrottled() -> FakeNexudus {
        FakeNexudus::start(NexudusFakeConfig {
            per_second_limit: None,
            per_minute_limit: None,
            ..NexudusFakeConfig::default()
        })
        .await
        .expect("fake starts")
    }

    async fn get(fake: &FakeNexudus, path: &str) -> (StatusCode, Value) {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", fake.base_url()))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .expect("request sent");
        let status = response.status();
        let text = response.text().await.expect("body read");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn send(
        fake: &FakeNexudus,
        method: Method,
        path: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let response = reqwest::Client::new()
            .request(method, format!("{}{path}", fake.base_url()))
            .basic_auth(USER, Some(PASSWORD))
            .json(&body)
            .send()
            .await
            .expect("request sent");
        let status = response.status();
        (status, response.json().await.expect("JSON body"))
    }

    fn ids(page: &Value) -> Vec<u64> {
        page["Records"]
            .as_array()
            .expect("Records array")
            .iter()
            .map(|record| record["Id"].as_u64().expect("numeric Id"))
            .collect()
    }

    #[tokio::test]
    async fn paging_envelope_counts_pages_and_positions() {
        let fake = unthrottled().await;
        for spec in sample_users(2500) {
            fake.insert_user(spec);
        }

        let (status, first) = get(&fake, "/api/sys/users?page=1&size=1000&orderBy=Id&dir=1").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(first["CurrentPage"], 1);
        assert_eq!(first["CurrentPageSize"], 1000);
        assert_eq!(first["CurrentOrderField"], "Id");
        assert_eq!(first["CurrentSortDirection"], 1);
        assert_eq!(first["TotalItems"], 2500);
        assert_eq!(first["TotalPages"], 3);
        assert_eq!(
            (first["FirstItem"].clone(), first["LastItem"].clone()),
            (json!(1), json!(1000))
        );
        assert_eq!(first["HasNextPage"], true);
        assert_eq!(first["HasPreviousPage"], false);
        assert_eq!(ids(&first).first(), Some(&FIRST_USER_ID));

        let (_, last) = get(&fake, "/api/sys/users?page=3&size=1000").await;
        assert_eq!(ids(&last).len(), 500);
        assert_eq!(
            (last["FirstItem"].clone(), last["LastItem"].clone()),
            (json!(2001), json!(2500))
        );
        assert_eq!(last["HasNextPage"], false);
        assert_eq!(last["HasPreviousPage"], true);
        assert_eq!(ids(&last).last(), Some(&(FIRST_USER_ID + 2499)));

        let (_, beyond) = get(&fake, "/api/sys/users?page=4&size=1000").await;
        assert!(ids(&beyond).is_empty());
        assert_eq!(
            (beyond["FirstItem"].clone(), beyond["LastItem"].clone()),
            (json!(0), json!(0))
        );

        let (_, default) = get(&fake, "/api/sys/users").await;
        assert_eq!(ids(&default).len(), 25);
        assert_eq!(default["TotalPages"], 100);
        let (_, clamped) = get(&fake, "/api/sys/users?page=3&size=5000").await;
        assert_eq!(clamped["CurrentPageSize"], 1000);
        assert_eq!(clamped["FirstItem"], 2001);
        assert_eq!(fake.stats().list_requests, 5);
    }

    #[tokio::test]
    async fn records_carry_every_documented_field() {
        let fake = unthrottled().await;
        let id = fake.insert_user(NexudusUserSpec::new("Zoë Ångström", "Zoe@Example.com"));
        let (status, record) = get(&fake, &format!("/api/sys/users/{id}")).await;
        assert_eq!(status, StatusCode::OK);
        for field in FIELDS {
            assert!(record.get(field.name).is_some(), "missing {}", field.name);
        }
        for name in ["ToStringText", "LocalizationDetails", "CustomFields"] {
            assert!(record.get(name).is_some(), "missing {name}");
        }
        assert_eq!(record["FullName"], "Zoë Ångström");
        assert_eq!(record["Active"], true);
        assert_eq!(record["UniqueId"], fake_uuid(id));
        assert_eq!(record["UniqueId"].as_str().map(str::len), Some(36));
        let (_, listed) = get(&fake, "/api/sys/users").await;
        assert_eq!(listed["Records"][0], record);

        let (status, _) = get(&fake, "/api/sys/users/999999").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = get(&fake, "/api/sys/nothing").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn requests_without_valid_credentials_get_401() {
        let fake = unthrottled().await;
        let url = format!("{}/api/sys/users", fake.base_url());
        let client = reqwest::Client::new();
        let anonymous = client.get(&url).send().await.expect("sent");
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
        let body: Value = anonymous.json().await.expect("JSON body");
        assert_eq!(body["Message"], DENIED);
        let wrong = client
            .get(&url)
            .basic_auth(USER, Some("nope"))
            .send()
            .await
            .expect("sent");
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
        let unknown_token = client
            .get(&url)
            .bearer_auth("t0k3n")
            .send()
            .await
            .expect("sent");
        assert_eq!(unknown_token.status(), StatusCode::UNAUTHORIZED);

        fake.add_bearer_token("t0k3n");
        let known_token = client
            .get(&url)
            .bearer_auth("t0k3n")
            .send()
            .await
            .expect("sent");
        assert_eq!(known_token.status(), StatusCode::OK);
        assert!(fake.remove_bearer_token("t0k3n"));
        let revoked = client
            .get(&url)
            .bearer_auth("t0k3n")
            .send()
            .await
            .expect("sent");
        assert_eq!(revoked.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(fake.stats().unauthorized, 4);
        assert_eq!(fake.stats().requests, 5);
    }

    #[tokio::test]
    async fn hour_day_and_gap_windows_throttle_in_the_configured_form() {
        let fake = unthrottled().await;
        let client = reqwest::Client::new();
        let statuses = |n: usize| {
            let client = client.clone();
            let url = format!("{}/api/sys/users", fake.base_url());
            async move {
                let mut out = Vec::new();
                for _ in 0..n {
                    let r = client
                        .get(&url)
                        .basic_auth(USER, Some(PASSWORD))
                        .send()
                        .await
                        .expect("sent");
                    let retry_after = r
                        .headers()
                        .get(header::RETRY_AFTER)
                        .map(|v| v.to_str().unwrap_or_default().to_owned());
                    out.push((
                        r.status().as_u16(),
                        retry_after,
                        r.text().await.unwrap_or_default(),
                    ));
                }
                out
            }
        };
        fake.set_limits(None, None, Some(2), None);
        fake.set_throttle(Throttle::wait_in_body("1.3"));
        let got = statuses(3).await;
        assert_eq!((got[0].0, got[1].0, got[2].0), (200, 200, 429));
        assert_eq!(got[2].1, None);
        assert!(got[2].2.contains("Wait 1.3 seconds"), "{}", got[2].2);
        fake.set_limits(None, None, None, Some(3));
        fake.set_throttle(Throttle::fractional(409, "0.7"));
        let got = statuses(2).await;
        assert_eq!((got[0].0, got[1].0), (200, 409));
        assert_eq!(got[1].1.as_deref(), Some("0.7"));
        fake.set_limits(Some(Duration::from_secs(60)), None, None, None);
        assert_eq!(
            statuses(1).await[0].0,
            409,
            "within a minute of the last admitted"
        );
        assert_eq!(fake.stats().throttled, 3);
        let log = fake.request_log();
        assert_eq!(log.len(), 6);
        assert!(log.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[tokio::test]
    async fn languages_are_listed_in_pages_and_pushed_answers_come_first() {
        let fake = unthrottled().await;
        fake.insert_language(1_000_001, "Norsk", "nb-NO");
        let (status, page) = get(&fake, "/api/sys/languages?page=2&size=4").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ids(&page), [5, 6, 1_000_001]);
        assert_eq!(page["Records"][2]["Culture"], "nb-NO");
        assert_eq!(page["HasNextPage"], false);
        fake.push_html(1, 503);
        let response = reqwest::Client::new()
            .get(format!("{}/api/sys/users", fake.base_url()))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status().as_u16(), 503);
        assert!(
            response.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert_eq!(fake.stats().pushed_answers, 1);
    }

    #[tokio::test]
    async fn eleventh_request_in_a_second_is_throttled_with_409() {
        let fake = FakeNexudus::start(NexudusFakeConfig::default())
            .await
            .expect("fake starts");
        let client = reqwest::Client::new();
        let mut statuses = Vec::new();
        let mut last = None;
        for _ in 0..11 {
            let response = client
                .get(format!("{}/api/sys/users", fake.base_url()))
                .basic_auth(USER, Some(PASSWORD))
                .send()
                .await
                .expect("sent");
            statuses.push(response.status().as_u16());
            last = Some(response);
        }
        assert_eq!(statuses[..10], [200; 10]);
        assert_eq!(statuses[10], 409);
        let last = last.expect("eleven responses");
        assert_eq!(last.headers()[header::RETRY_AFTER], "1");
        assert!(last.text().await.expect("body read").is_empty());
        assert_eq!(fake.stats().throttled, 1);
        assert_eq!(fake.stats().list_requests, 10);
    }

    #[tokio::test]
    async fn minute_window_throttles_and_refused_requests_are_not_counted() {
        let fake = FakeNexudus::start(NexudusFakeConfig {
            per_second_limit: None,
            per_minute_limit: Some(3),
            retry_after_secs: 30,
            ..NexudusFakeConfig::default()
        })
        .await
        .expect("fake starts");
        let mut statuses = Vec::new();
        for _ in 0..5 {
            statuses.push(get(&fake, "/api/sys/users").await.0.as_u16());
        }
        assert_eq!(statuses, [200, 200, 200, 409, 409]);
        assert_eq!(fake.lock().admitted.len(), 3);
    }

    #[tokio::test]
    async fn dropped_answer_is_a_body_error_and_nothing_is_applied() {
        let fake = unthrottled().await;
        fake.push_fault(Fault::Drop);
        let response = reqwest::Client::new()
            .post(format!("{}/api/sys/users", fake.base_url()))
            .basic_auth(USER, Some(PASSWORD))
            .json(&json!({"FullName": "Cher", "Email": "cher@example.com"}))
            .send()
            .await
            .expect("headers arrive");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.bytes().await.is_err(), "the body must fail");
        assert_eq!(fake.user_count(), 0);
        assert_eq!(fake.stats().faults_injected, 1);
        // The queue is empty again: the next request is served normally.
        assert_eq!(get(&fake, "/api/sys/users").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn drop_after_apply_creates_the_user_but_loses_the_answer() {
        let fake = unthrottled().await;
        fake.push_fault(Fault::DropAfterApply);
        let response = reqwest::Client::new()
            .post(format!("{}/api/sys/users", fake.base_url()))
            .basic_auth(USER, Some(PASSWORD))
            .json(&json!({"FullName": "Cher", "Email": "cher@example.com"}))
            .send()
            .await
            .expect("headers arrive");
        assert!(response.json::<Value>().await.is_err());
        assert_eq!(fake.user_ids(), [FIRST_USER_ID]);
        assert_eq!(
            fake.user(FIRST_USER_ID).expect("created")["FullName"],
            "Cher"
        );
    }

    #[tokio::test]
    async fn status_faults_outages_and_latency() {
        let fake = unthrottled().await;
        fake.push_fault(Fault::Status {
            status: 500,
            retry_after: None,
        });
        fake.push_faults(
            2,
            Fault::Status {
                status: 409,
                retry_after: Some(7),
            },
        );
        let (status, body) = get(&fake, "/api/sys/users").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body, json!({"Message": "An error has occurred."}));
        for _ in 0..2 {
            let response = reqwest::Client::new()
                .get(format!("{}/api/sys/users", fake.base_url()))
                .basic_auth(USER, Some(PASSWORD))
                .send()
                .await
                .expect("sent");
            assert_eq!(response.status(), StatusCode::CONFLICT);
            assert_eq!(response.headers()[header::RETRY_AFTER], "7");
            assert!(response.text().await.expect("body").is_empty());
        }
        assert_eq!(get(&fake, "/api/sys/users").await.0, StatusCode::OK);
        assert_eq!(fake.stats().faults_injected, 3);

        fake.set_down(Some(503));
        let anonymous = reqwest::get(format!("{}/api/sys/users", fake.base_url()))
            .await
            .expect("sent");
        assert_eq!(anonymous.status(), StatusCode::SERVICE_UNAVAILABLE);
        fake.set_down(None);

        fake.set_latency(Duration::from_millis(150));
        let started = std::time::Instant::now();
        assert_eq!(get(&fake, "/api/sys/users").await.0, StatusCode::OK);
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn a_selective_delay_holds_back_only_the_requests_it_picks() {
        let fake = unthrottled().await;
        let id = fake.insert_user(NexudusUserSpec::new("Anna Smith", "anna@example.com"));
        let delay = Duration::from_millis(150);
        fake.set_slow(delay, |r| {
            r.method == "GET" && r.path.starts_with("/api/sys/users/")
        });
        let probe = "/api/sys/users?page=1&size=1&orderBy=Id";
        assert_eq!(get(&fake, probe).await.0, StatusCode::OK);
        assert_eq!(fake.slowed(), 0, "the listing is not picked");
        let started = std::time::Instant::now();
        let look_up = format!("/api/sys/users/{id}");
        assert_eq!(get(&fake, &look_up).await.0, StatusCode::OK);
        assert!(started.elapsed() >= delay);
        assert_eq!(fake.slowed(), 1, "counted");
        // The query is seen too; a new choice replaces the old one and starts counting afresh.
        fake.set_slow(delay, |r| r.query.starts_with("page=1&size=1&"));
        assert_eq!(get(&fake, &look_up).await.0, StatusCode::OK);
        assert_eq!(get(&fake, probe).await.0, StatusCode::OK);
        assert_eq!(fake.slowed(), 1);
        fake.clear_slow();
        assert_eq!(get(&fake, probe).await.0, StatusCode::OK);
        assert_eq!(fake.slowed(), 0);
    }

    #[tokio::test]
    async fn create_validates_required_fields_like_the_seed() {
        let fake = unthrottled().await;
        let (status, body) = send(
            &fake,
            Method::POST,
            "/api/sys/users",
            json!({"Email": "a@b.c"}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            json!({
                "Message": "FullName: is a required field",
                "Value": null,
                "Errors": [{"AttemptedValue": null, "Message": "is a required field", "PropertyName": "FullName"}],
                "WasSuccessful": false,
            })
        );
        let (status, body) = send(
            &fake,
            Method::POST,
            "/api/sys/users",
            json!({"FullName": "X", "Email": "x@y.z", "Active": "yes"}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["Errors"][0]["PropertyName"], "Active");

        fake.set_clock(Some(
            Utc.with_ymd_and_hms(2025, 1, 15, 10, 30, 0)
                .single()
                .expect("valid date"),
        ));
        let (status, body) = send(
            &fake,
            Method::POST,
            "/api/sys/users",
            json!({"FullName": "José Müller", "Email": "jose@example.com", "Language": 2, "Active": true, "Password": "pw", "Id": 5}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["WasSuccessful"], true);
        assert_eq!(body["Message"], "User was successfully created.");
        assert_eq!(body["Value"], json!({"Id": FIRST_USER_ID}));
        assert_eq!(body["Errors"], Value::Null);
        let record = fake.user(FIRST_USER_ID).expect("stored");
        assert_eq!(record["Language"], 2);
        assert_eq!(record["Password"], Value::Null);
        assert_eq!(record["CreatedOn"], "2025-01-15T10:30:00Z");
        assert_eq!(record["UpdatedOn"], "2025-01-15T10:30:00Z");
        assert_eq!(record["ToStringText"], "José Müller");
    }

    #[tokio::test]
    async fn update_requires_the_documented_fields_and_merges() {
        let fake = unthrottled().await;
        fake.set_clock(Some(
            Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
                .single()
                .expect("valid date"),
        ));
        let id = fake.insert_user(NexudusUserSpec::new("Anna Smith", "anna@example.com"));
        let full = |id: u64| {
            json!({"Id": id, "FullName": "Anna Smith-Jones", "Email": "anna@example.com", "Language": 3,
                   "PasswordSalt": "", "LastHelpVisited": 0, "InvalidLoginAttempts": 0, "AddedUserRoles": [7]})
        };
        let (status, body) = send(
            &fake,
            Method::PUT,
            "/api/sys/users",
            json!({"Id": id, "FullName": "A", "Email": "a@b.c"}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let missing: Vec<&str> = body["Errors"]
            .as_array()
            .expect("errors")
            .iter()
            .filter_map(|error| error["PropertyName"].as_str())
            .collect();
        assert_eq!(
            missing,
            [
                "Language",
                "PasswordSalt",
                "LastHelpVisited",
                "InvalidLoginAttempts"
            ]
        );

        let (status, body) = send(&fake, Method::PUT, "/api/sys/users", full(42)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["WasSuccessful"], false);

        fake.set_clock(Some(
            Utc.with_ymd_and_hms(2025, 2, 1, 12, 0, 0)
                .single()
                .expect("valid date"),
        ));
        let (status, body) = send(&fake, Method::PUT, "/api/sys/users", full(id)).await;
        assert_eq!(
            (status, body["Message"].clone()),
            (StatusCode::OK, json!("User was successfully updated."))
        );
        let record = fake.user(id).expect("stored");
        assert_eq!(record["FullName"], "Anna Smith-Jones");
        assert_eq!(record["Language"], 3);
        assert_eq!(record["UserRoles"], json!([7]));
        assert_eq!(record["Active"], true, "fields left out stay");
        assert_eq!(record["CreatedOn"], "2025-01-01T00:00:00Z");
        assert_eq!(record["UpdatedOn"], "2025-02-01T12:00:00Z");
    }

    #[tokio::test]
    async fn list_filters_by_email_name_active_and_updated_on() {
        let fake = unthrottled().await;
        let at = |h, m, s| {
            Utc.with_ymd_and_hms(2025, 3, 1, h, m, s)
                .single()
                .expect("valid date")
        };
        fake.set_clock(Some(at(9, 0, 0)));
        let anna = fake.insert_user(NexudusUserSpec::new(
            "Anna Maria de la Cruz",
            "Anna@Example.com",
        ));
        fake.set_clock(Some(at(10, 15, 59)));
        let bob = fake.insert_user(NexudusUserSpec {
            active: false,
            ..NexudusUserSpec::new("Bob Annan", "bob@example.com")
        });
        fake.set_clock(Some(at(11, 0, 0)));
        let cher = fake.insert_user(NexudusUserSpec::new("Cher", "cher@example.com"));

        let (_, page) = get(&fake, "/api/sys/users?User_Email=anna%40EXAMPLE.com").await;
        assert_eq!(ids(&page), [anna]);
        let (_, page) = get(&fake, "/api/sys/users?User_FullName=ann").await;
        assert_eq!(ids(&page), [anna, bob]);
        let (_, page) = get(&fake, "/api/sys/users?User_Active=false").await;
        assert_eq!(ids(&page), [bob]);
        let (_, page) = get(&fake, "/api/sys/users?from_User_UpdatedOn=2025-03-01T10:15").await;
        assert_eq!(ids(&page), [bob, cher]);
        let (_, page) =
            get(&fake, "/api/sys/users?from_User_UpdatedOn=2025-03-01T09:00&to_User_UpdatedOn=2025-03-01T10:15").await;
        assert_eq!(ids(&page), [anna, bob]);

        fake.set_clock(Some(at(12, 0, 0)));
        assert!(fake.update_user(anna, |record| {
            record.insert("FullName".into(), json!("Anna Cruz"));
        }));
        let (_, page) = get(&fake, "/api/sys/users?from_User_UpdatedOn=2025-03-01T11:30").await;
        assert_eq!(ids(&page), [anna]);

        let (status, body) = get(&fake, "/api/sys/users?from_User_UpdatedOn=2025-03-01").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["WasSuccessful"], false);
        assert_eq!(
            get(&fake, "/api/sys/users?User_Active=maybe").await.0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            get(&fake, "/api/sys/users?page=x").await.0,
            StatusCode::BAD_REQUEST
        );

        assert!(fake.remove_user(bob));
        let (_, page) = get(&fake, "/api/sys/users").await;
        assert_eq!(ids(&page), [anna, cher]);
    }

    #[tokio::test]
    async fn skewed_totals_and_short_pages_misreport_the_listing() {
        let fake = unthrottled().await;
        for spec in sample_users(5) {
            fake.insert_user(spec);
        }
        fake.insert_raw(7, json!({"Id": 7, "FullName": null}));
        fake.set_total_items_skew(2);
        fake.set_short_pages(true);
        let (_, page) = get(&fake, "/api/sys/users?size=4").await;
        assert_eq!(page["TotalItems"], 8);
        assert_eq!(page["TotalPages"], 2);
        assert_eq!(page["LastItem"], 4);
        assert_eq!(page["HasNextPage"], true);
        assert_eq!(ids(&page), [7, FIRST_USER_ID, FIRST_USER_ID + 1]);
        assert_eq!(
            fake.insert_user(NexudusUserSpec::new("New", "new@example.com")),
            FIRST_USER_ID + 5
        );
    }

    #[tokio::test]
    async fn user_roles_require_business_and_name() {
        let fake = unthrottled().await;
        let (status, body) = send(
            &fake,
            Method::POST,
            "/api/security/userroles",
            json!({"BusinessId": 1}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["Message"], "Name: is a required field");
        let (status, body) = send(
            &fake,
            Method::POST,
            "/api/security/userroles",
            json!({"BusinessId": 1, "Name": "Sync", "Users": [1001]}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["Message"], "UserRole was successfully created.");
        assert_eq!(body["Value"]["Id"], FIRST_ROLE_ID);
        assert_eq!(fake.user_roles()[0]["Users"], json!([1001]));
    }

    #[test]
    fn sample_population_is_varied_valid_and_unique() {
        let users = sample_users(200);
        let emails: std::collections::HashSet<String> = users
            .iter()
            .filter_map(|user| user.email.as_deref())
            .map(str::to_lowercase)
            .collect();
        assert_eq!(emails.len(), 200);
        assert!(
            emails
                .iter()
                .all(|email| email.is_ascii() && email.contains('@'))
        );
        assert!(users.iter().any(|user| {
            user.email
                .as_deref()
                .is_some_and(|e| e.chars().any(char::is_uppercase))
        }));
        let inactive = users.iter().filter(|user| !user.active).count();
        assert!((15..=25).contains(&inactive), "{inactive} inactive");
        assert!(users.iter().any(|user| user.is_admin));
        for language in 1..=3 {
            assert!(users.iter().any(|user| user.language == language));
        }
        let names: Vec<&str> = users
            .iter()
            .filter_map(|user| user.full_name.as_deref())
            .collect();
        for wanted in [
            "José Müller",
            "Zoë Ångström",
            "François Dœuf",
            "Łukasz Żółć",
            "Cher",
            "Anna Maria de la Cruz",
        ] {
            assert!(names.contains(&wanted), "missing {wanted}");
        }
        assert!(
            names
                .iter()
                .any(|name| name.starts_with(' ') && name.contains("   "))
        );
        assert_eq!(sample_users(200), users, "deterministic");
    }
}
