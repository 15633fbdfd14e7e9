//! The fake's role side: roles by extId (`GET /core/v1/roles/{extId}`, 403 while the caller's
//! permission list lacks `AccessControl.RoleView`), the caller's
//! permissions (`GET /principal/v1/permissions`, or 404 as older releases answer, by a switch),
//! profiles of a user (a default profile at user creation, or none, by a switch; `POST` creates
//! one in a unit), and authorizations of a profile (201 with `Location`; a duplicate grant
//! answered `422 errors.duplicateValue` or accepted, by a switch; `DELETE` 204). A profile
//! policy grants a default role to every new profile ([`FakeNevis::set_policy_default_role`]).
//! Reads of a user's authorizations can be refused, and slowed while the peak of reads at the
//! same time is recorded (each by a switch).
//! Profiles can be removed, added or archived by hand; an archived profile refuses grants and
//! revocations (`422 errors.policyViolation`).

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::{
    ApiError, FakeNevis, Inner, Shared, check_client, empty_response, error, json_response, lock,
    no_user, parse_object,
};

/// Every permission the role sync asks for, as a fresh fake grants them.
const ALL_PERMISSIONS: [&str; 6] = [
    "AccessControl.AuthorizationView",
    "AccessControl.AuthorizationCreate",
    "AccessControl.AuthorizationDelete",
    "AccessControl.ProfileView",
    "AccessControl.ProfileCreate",
    "AccessControl.RoleView",
];

/// What reading a role needs; a caller without it is refused (403), as nevisIDM refuses it.
const ROLE_VIEW: &str = "AccessControl.RoleView";

#[derive(Debug, Clone)]
struct FakeProfile {
    ext_id: String,
    unit: String,
    is_default: bool,
    archived: bool,
}

/// The role side's state, inside the fake's.
pub(super) struct RoleState {
    roles: BTreeSet<String>,
    /// `None`: the permissions endpoint answers 404.
    permissions: Option<Vec<String>>,
    profiles: BTreeMap<String, Vec<FakeProfile>>,
    /// profile extId -> (authorization extId, roleExtId)
    authorizations: BTreeMap<String, Vec<(String, String)>>,
    default_profile: bool,
    policy_default_role: Option<String>,
    accept_duplicate_grants: bool,
    next: u64,
    /// Switches of the authorization reads ([`FakeNevis::set_authorization_read_delay`],
    /// [`FakeNevis::refuse_authorization_reads`]).
    reads: Reads,
}

impl Default for RoleState {
    fn default() -> Self {
        RoleState {
            roles: BTreeSet::new(),
            permissions: Some(ALL_PERMISSIONS.map(String::from).to_vec()),
            profiles: BTreeMap::new(),
            authorizations: BTreeMap::new(),
            default_profile: true,
            policy_default_role: None,
            accept_duplicate_grants: false,
            next: 0,
            reads: Reads::default(),
        }
    }
}

impl RoleState {
    fn new_profile(&mut self, user: &str, unit: &str, is_default: bool) -> String {
        self.next += 1;
        let ext_id = format!("profile-{}", self.next);
        self.profiles
            .entry(user.to_string())
            .or_default()
            .push(FakeProfile {
                ext_id: ext_id.clone(),
                unit: unit.to_string(),
                is_default,
                archived: false,
            });
        let auths = self.authorizations.entry(ext_id.clone()).or_default();
        if let Some(role) = self.policy_default_role.clone() {
            self.next += 1;
            auths.push((format!("auth-{}", self.next), role));
        }
        ext_id
    }

    fn add_authorization(&mut self, profile: &str, role: &str) -> String {
        self.next += 1;
        let ext_id = format!("auth-{}", self.next);
        self.authorizations
            .entry(profile.to_string())
            .or_default()
            .push((ext_id.clone(), role.to_string()));
        ext_id
    }

    /// The policy's default profile for a user just created (unless switched off).
    pub(super) fn user_created(&mut self, user: &str) {
        if self.default_profile {
            self.new_profile(user, "root", true);
        }
    }
}

impl FakeNevis {
    /// Roles that exist (by roleExtId).
    pub fn add_roles(&self, roles: &[&str]) {
        self.lock()
            .roles
            .roles
            .extend(roles.iter().map(|r| r.to_string()));
    }

    /// What `GET /principal/v1/permissions` answers; `None`: 404 (an older release).
    pub fn set_permissions(&self, permissions: Option<&[&str]>) {
        self.lock().roles.permissions =
            permissions.map(|p| p.iter().map(|s| s.to_string()).collect());
    }

    /// Whether user creation gives the user a default profile (default on).
    pub fn set_default_profile(&self, on: bool) {
        self.lock().roles.default_profile = on;
    }

    /// A role the profile policy grants every new profile.
    pub fn set_policy_default_role(&self, role: Option<&str>) {
        self.lock().roles.policy_default_role = role.map(String::from);
    }

    /// Whether a second grant of a held role is accepted (201) instead of refused (422).
    pub fn set_accept_duplicate_grants(&self, on: bool) {
        self.lock().roles.accept_duplicate_grants = on;
    }

    /// Grants `role` on the user's first profile by hand; answers the authorization's extId.
    pub fn grant_by_hand(&self, user: &str, role: &str) -> Option<String> {
        let mut inner = self.lock();
        let profile = inner.roles.profiles.get(user)?.first()?.ext_id.clone();
        Some(inner.roles.add_authorization(&profile, role))
    }

    /// Removes every authorization of `role` from the user's profiles by hand.
    pub fn revoke_by_hand(&self, user: &str, role: &str) {
        let mut inner = self.lock();
        let profiles: Vec<String> = inner
            .roles
            .profiles
            .get(user)
            .map(|p| p.iter().map(|p| p.ext_id.clone()).collect())
            .unwrap_or_default();
        for p in profiles {
            if let Some(auths) = inner.roles.authorizations.get_mut(&p) {
                auths.retain(|(_, r)| r != role);
            }
        }
    }

    /// Removes the user's profile `profile` by hand, with its authorizations.
    pub fn remove_profile_by_hand(&self, user: &str, profile: &str) {
        let mut inner = self.lock();
        if let Some(profiles) = inner.roles.profiles.get_mut(user) {
            profiles.retain(|p| p.ext_id != profile);
        }
        inner.roles.authorizations.remove(profile);
    }

    /// Adds a profile to the user by hand (the policy's default role with it); answers its extId.
    pub fn add_profile_by_hand(&self, user: &str, unit: &str, is_default: bool) -> String {
        self.lock().roles.new_profile(user, unit, is_default)
    }

    /// Archives the user's profile `profile` by hand: no longer the default, listed as
    /// `archived`, refusing grants and revocations.
    pub fn archive_profile_by_hand(&self, user: &str, profile: &str) {
        let mut inner = self.lock();
        for p in inner.roles.profiles.get_mut(user).into_iter().flatten() {
            if p.ext_id == profile {
                p.archived = true;
                p.is_default = false;
            }
        }
    }

    /// The roleExtIds the user's profiles hold, sorted (a role held twice shows twice).
    pub fn user_roles(&self, user: &str) -> Vec<String> {
        let inner = self.lock();
        let mut roles: Vec<String> = inner
            .roles
            .profiles
            .get(user)
            .into_iter()
            .flatten()
            .flat_map(|p| {
                inner
                    .roles
                    .authorizations
                    .get(&p.ext_id)
                    .into_iter()
                    .flatten()
            })
            .map(|(_, r)| r.clone())
            .collect();
        roles.sort();
        roles
    }

    /// The user's profiles as (extId, unit, isDefault).
    pub fn profiles_of(&self, user: &str) -> Vec<(String, String, bool)> {
        let inner = self.lock();
        inner
            .roles
            .profiles
            .get(user)
            .into_iter()
            .flatten()
            .map(|p| (p.ext_id.clone(), p.unit.clone(), p.is_default))
            .collect()
    }
}

fn no_profile(profile: &str) -> ApiError {
    error(
        404,
        "errors.noRecord",
        &format!("Profile '{profile}' does not exist."),
    )
}

fn with_location(mut response: Response, location: &str) -> Response {
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn profile_exists(inner: &Inner, profile: &str) -> bool {
    inner.roles.authorizations.contains_key(profile)
}

/// An archived profile takes no write: `422 errors.policyViolation`.
fn refuse_if_archived(inner: &Inner, profile: &str) -> Result<(), ApiError> {
    let archived =
        (inner.roles.profiles.values().flatten()).any(|p| p.ext_id == profile && p.archived);
    if archived {
        return Err(error(
            422,
            "errors.policyViolation",
            &format!("Profile '{profile}' is archived."),
        ));
    }
    Ok(())
}

pub(super) async fn get_role(
    State(state): State<Shared>,
    Path(role): Path<String>,
) -> Result<Response, ApiError> {
    let inner = lock(&state);
    // Only a known permission list can lack it: an older release (no permissions endpoint)
    // grants whatever the test did not take away.
    if let Some(held) = &inner.roles.permissions
        && !held.iter().any(|p| p == ROLE_VIEW)
    {
        return Err(error(403, "errors.notAuthorized", "Missing permission."));
    }
    if !inner.roles.roles.contains(&role) {
        return Err(error(
            404,
            "errors.noRecord",
            &format!("Role '{role}' does not exist."),
        ));
    }
    let body = json!({"extId": role, "name": role, "applicationName": "spaces"});
    Ok(json_response(200, &body, None))
}

pub(super) async fn permissions(State(state): State<Shared>) -> Result<Response, ApiError> {
    let inner = lock(&state);
    match &inner.roles.permissions {
        Some(p) => Ok(json_response(
            200,
            &json!({"elementaryPermissions": p}),
            None,
        )),
        None => Err(error(
            404,
            "errors.noRecord",
            "No resource at /principal/v1/permissions.",
        )),
    }
}

pub(super) async fn list_profiles(
    State(state): State<Shared>,
    Path((client, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let inner = lock(&state);
    check_client(&inner, &client)?;
    if !inner.users.contains_key(&user) {
        return Err(no_user(&user));
    }
    let items: Vec<Value> = inner
        .roles
        .profiles
        .get(&user)
        .into_iter()
        .flatten()
        .map(|p| {
            let state = if p.archived { "archived" } else { "active" };
            json!({"extId": p.ext_id, "unitExtId": p.unit, "isDefaultProfile": p.is_default,
                   "profileState": state})
        })
        .collect();
    Ok(json_response(200, &json!({"items": items}), None))
}

pub(super) async fn create_profile(
    State(state): State<Shared>,
    Path((client, user)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut guard = lock(&state);
    let inner = &mut *guard;
    check_client(inner, &client)?;
    if !inner.users.contains_key(&user) {
        return Err(no_user(&user));
    }
    let body = parse_object(&body)?;
    let Some(unit) = body.get("unitExtId").and_then(Value::as_str) else {
        return Err(error(422, "errors.invalidData", "unitExtId is mandatory."));
    };
    let first = inner.roles.profiles.get(&user).is_none_or(Vec::is_empty);
    let profile = inner.roles.new_profile(&user, unit, first);
    let location = format!(
        "{}/nevisidm/api/core/v1/{client}/profiles/{profile}",
        inner.base_url
    );
    Ok(with_location(empty_response(201, None), &location))
}

pub(super) async fn list_authorizations(
    State(state): State<Shared>,
    Path((client, profile)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let reading = Reading::start(&state);
    if !reading.delay.is_zero() {
        tokio::time::sleep(reading.delay).await;
    }
    let inner = lock(&state);
    check_client(&inner, &client)?;
    let owner = inner
        .roles
        .profiles
        .iter()
        .find(|(_, profiles)| profiles.iter().any(|p| p.ext_id == profile));
    if let Some(status) = owner.and_then(|(user, _)| inner.roles.reads.refused.get(user)) {
        return Err(error(
            *status,
            "errors.technical",
            &format!("Authorizations of profile '{profile}' cannot be read (sandbox)."),
        ));
    }
    let auths = inner
        .roles
        .authorizations
        .get(&profile)
        .ok_or_else(|| no_profile(&profile))?;
    let items: Vec<Value> = auths
        .iter()
        .map(|(ext_id, role)| json!({"extId": ext_id, "roleExtId": role, "version": 0}))
        .collect();
    Ok(json_response(200, &json!({"items": items}), None))
}

pub(super) async fn grant(
    State(state): State<Shared>,
    Path((client, profile)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut guard = lock(&state);
    let inner = &mut *guard;
    check_client(inner, &client)?;
    if !profile_exists(inner, &profile) {
        return Err(no_profile(&profile));
    }
    refuse_if_archived(inner, &profile)?;
    let body = parse_object(&body)?;
    let Some(role) = body.get("roleExtId").and_then(Value::as_str) else {
        return Err(error(422, "errors.invalidData", "roleExtId is mandatory."));
    };
    if !inner.roles.roles.contains(role) {
        return Err(error(
            422,
            "errors.invalidData",
            &format!("Role '{role}' does not exist."),
        ));
    }
    let held = inner.roles.authorizations[&profile]
        .iter()
        .find(|(_, r)| r == role)
        .map(|(a, _)| a.clone());
    let auth = match held {
        Some(_) if !inner.roles.accept_duplicate_grants => {
            return Err(error(
                422,
                "errors.duplicateValue",
                &format!("The profile already holds role '{role}'."),
            ));
        }
        Some(existing) => existing,
        None => inner.roles.add_authorization(&profile, role),
    };
    let location = format!(
        "{}/nevisidm/api/core/v1/{client}/profiles/{profile}/authorizations/{auth}",
        inner.base_url
    );
    Ok(with_location(empty_response(201, None), &location))
}

pub(super) async fn revoke(
    State(state): State<Shared>,
    Path((client, profile, auth)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let mut inner = lock(&state);
    check_client(&inner, &client)?;
    refuse_if_archived(&inner, &profile)?;
    let auths = inner
        .roles
        .authorizations
        .get_mut(&profile)
        .ok_or_else(|| no_profile(&profile))?;
    let before = auths.len();
    auths.retain(|(a, _)| *a != auth);
    if auths.len() == before {
        return Err(error(
            404,
            "errors.noRecord",
            &format!("Authorization '{auth}' does not exist."),
        ));
    }
    Ok(empty_response(204, None))
}

/// The authorization reads' switches and what they saw.
#[derive(Default)]
struct Reads {
    /// Each read waits this long before it is answered.
    delay: std::time::Duration,
    /// User extId -> the status every read of their profiles' authorizations answers.
    refused: BTreeMap<String, u16>,
    in_flight: usize,
    peak: usize,
}

/// One authorization read in progress: counted from arrival until dropped (answered, or the
/// client hung up).
struct Reading {
    state: Shared,
    delay: std::time::Duration,
}

impl Reading {
    fn start(state: &Shared) -> Reading {
        let mut inner = lock(state);
        let reads = &mut inner.roles.reads;
        reads.in_flight += 1;
        reads.peak = reads.peak.max(reads.in_flight);
        Reading {
            state: state.clone(),
            delay: reads.delay,
        }
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        lock(&self.state).roles.reads.in_flight -= 1;
    }
}

impl FakeNevis {
    /// Holds every read of a profile's authorizations back by `delay` (zero: none), so that reads
    /// made at the same time overlap and [`FakeNevis::authorization_reads_peak`] sees them.
    pub fn set_authorization_read_delay(&self, delay: std::time::Duration) {
        self.lock().roles.reads.delay = delay;
    }

    /// The most reads of authorizations in progress at the same time so far.
    pub fn authorization_reads_peak(&self) -> usize {
        self.lock().roles.reads.peak
    }

    /// While `Some(status)`, every read of the authorizations of `user`'s profiles answers that
    /// status (`{"errors":[…]}`), as a nevisIDM failing or refusing for one user does.
    pub fn refuse_authorization_reads(&self, user: &str, status: Option<u16>) {
        let refused = &mut self.lock().roles.reads.refused;
        match status {
            Some(status) => refused.insert(user.to_string(), status),
            None => refused.remove(user),
        };
    }
}
