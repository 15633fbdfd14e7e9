//! The fake's UserRoles as the sync reads them: `GET /api/security/userroles` (paged, without
//! `Users` or `Roles`, filters `UserRole_Name`, `UserRole_Business`, `from_UserRole_UpdatedOn`)
//! and `GET /api/security/userroles/{id}` (with them). A switch says whether a membership change
//! moves the UserRole's `UpdatedOn` ([`FakeNexudus::set_role_updates_move_updated_on`]): Nexudus
//! does not document it. Two more imitate listings that cannot be known complete, as the users'
//! listing's switches do: an envelope without `HasNextPage`
//! ([`FakeNexudus::set_role_listing_without_has_next_page`]) and pages short of what `TotalItems`
//! announces ([`FakeNexudus::set_role_listing_short_pages`]).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use chrono::NaiveDateTime;
use serde_json::{Value, json};

use super::{
    FILTER_FORMAT, FakeNexudus, Shared, bad_request, fake_uuid, json_response, lock,
    status_response, updated_minute,
};

impl FakeNexudus {
    /// Adds a UserRole of business `business_id` (`business_name`) with `users` as members;
    /// answers its Id.
    pub fn add_user_role(
        &self,
        business_id: u64,
        business_name: &str,
        name: &str,
        users: &[u64],
    ) -> u64 {
        let mut inner = self.lock();
        let id = inner.next_role_id;
        inner.next_role_id += 1;
        let now = inner.stamp();
        let role = json!({
            "Id": id,
            "BusinessId": business_id,
            "BusinessName": business_name,
            "Name": name,
            "Roles": [],
            "Users": users,
            "UniqueId": fake_uuid(id),
            "CreatedOn": now,
            "UpdatedOn": now,
            "UpdatedBy": inner.cfg.username,
            "IsNew": false,
            "SystemId": null,
        });
        inner.user_roles.insert(id, role);
        id
    }

    /// Replaces the members of UserRole `id`; its `UpdatedOn` moves only while
    /// [`FakeNexudus::set_role_updates_move_updated_on`] is on (the default).
    pub fn set_role_members(&self, id: u64, users: &[u64]) -> bool {
        let mut inner = self.lock();
        let now = inner.stamp();
        let moves = inner.role_updates_move_updated_on;
        let Some(role) = inner.user_roles.get_mut(&id).and_then(Value::as_object_mut) else {
            return false;
        };
        role.insert("Users".into(), json!(users));
        if moves {
            role.insert("UpdatedOn".into(), json!(now));
        }
        true
    }

    pub fn remove_user_role(&self, id: u64) -> bool {
        self.lock().user_roles.remove(&id).is_some()
    }

    /// Whether a membership change moves the UserRole's `UpdatedOn` (default on).
    pub fn set_role_updates_move_updated_on(&self, on: bool) {
        self.lock().role_updates_move_updated_on = on;
    }

    /// When true, the UserRole listing's envelope has no `HasNextPage`; `CurrentPage` and
    /// `TotalPages` still say where it ends.
    pub fn set_role_listing_without_has_next_page(&self, on: bool) {
        self.lock().role_listing_without_has_next_page = on;
    }

    /// When true, each non-empty page of the UserRole listing leaves out its last record while
    /// `TotalItems` and `HasNextPage` still describe the full listing.
    pub fn set_role_listing_short_pages(&self, on: bool) {
        self.lock().role_listing_short_pages = on;
    }
}

fn listed(role: &Value) -> Value {
    let mut role = role.clone();
    if let Some(fields) = role.as_object_mut() {
        fields.remove("Users");
        fields.remove("Roles");
    }
    role
}

fn matches(role: &Value, query: &HashMap<String, String>, since: Option<NaiveDateTime>) -> bool {
    let text = |k: &str| role.get(k).and_then(Value::as_str).unwrap_or_default();
    let name_ok = query
        .get("UserRole_Name")
        .is_none_or(|n| text("Name").eq_ignore_ascii_case(n));
    let business_ok = query.get("UserRole_Business").is_none_or(|b| {
        role.get("BusinessId")
            .and_then(Value::as_u64)
            .is_some_and(|id| id.to_string() == *b)
    });
    let since_ok = since.is_none_or(|since| {
        role.get("UpdatedOn")
            .and_then(Value::as_str)
            .and_then(updated_minute)
            .is_some_and(|at| at >= since)
    });
    name_ok && business_ok && since_ok
}

pub(super) async fn list_user_roles(
    State(state): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let number = |k: &str, default: u64| query.get(k).map_or(Ok(default), |v| v.parse::<u64>());
    let (Ok(page), Ok(size)) = (number("page", 1), number("size", 25)) else {
        return bad_request("page and size must be numbers");
    };
    let (page, size) = (page.max(1), size.clamp(1, 1000));
    let since = match query.get("from_UserRole_UpdatedOn") {
        None => None,
        Some(v) => match updated_minute(v)
            .or_else(|| NaiveDateTime::parse_from_str(v, FILTER_FORMAT).ok())
        {
            Some(at) => Some(at),
            None => return bad_request("from_UserRole_UpdatedOn is not a date"),
        },
    };
    let inner = lock(&state);
    let matching: Vec<Value> = inner
        .user_roles
        .values()
        .filter(|r| matches(r, &query, since))
        .map(listed)
        .collect();
    let (without_has_next_page, short_pages) = (
        inner.role_listing_without_has_next_page,
        inner.role_listing_short_pages,
    );
    drop(inner);
    let total = matching.len() as u64;
    let pages = total.div_ceil(size);
    let mut records: Vec<Value> = matching
        .into_iter()
        .skip(usize::try_from((page - 1) * size).unwrap_or(usize::MAX))
        .take(usize::try_from(size).unwrap_or(usize::MAX))
        .collect();
    if short_pages {
        records.pop();
    }
    let mut body = json!({
        "Records": records,
        "CurrentPage": page,
        "CurrentPageSize": size,
        "TotalItems": total,
        "TotalPages": pages,
        "HasNextPage": page < pages,
        "HasPreviousPage": page > 1,
    });
    if without_has_next_page && let Some(fields) = body.as_object_mut() {
        fields.remove("HasNextPage");
    }
    json_response(200, &body, None)
}

pub(super) async fn get_user_role(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let inner = lock(&state);
    match id
        .parse::<u64>()
        .ok()
        .and_then(|id| inner.user_roles.get(&id))
    {
        Some(role) => json_response(200, role, None),
        None => status_response(404, None),
    }
}
