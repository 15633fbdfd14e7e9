//! Nexudus UserRoles (`GET /api/security/userroles`, paged like the users listing, and
//! `GET /api/security/userroles/{id}`): what the admin panel calls a role. Only the single-record
//! read carries `Users`, the members; the listing is for names, Ids and `UpdatedOn`.

use std::time::Instant;

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::wire::{as_u64, next_page};
use super::{NexudusClient, SourceError, transport};

/// One UserRole as read. `users` is `None` when the record carried no usable `Users` (always so
/// in the listing): a membership read without it is incomplete, and never revokes anything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserRole {
    pub id: u64,
    pub name: String,
    pub business_id: Option<u64>,
    pub business_name: Option<String>,
    pub updated_on: Option<String>,
    pub users: Option<Vec<u64>>,
}

/// Size asked for each page of the UserRole listing (the largest Nexudus documents): accounts
/// hold few UserRoles, so one page is the rule.
pub const USERROLE_PAGE_SIZE: u64 = 1000;

/// One page of the UserRole listing, with what it says of the listing's end: read as the users'
/// listing is (`wire::next_page`; whether it was complete is the reader's to judge).
#[derive(Debug, Clone, Default)]
pub struct UserRolePage {
    pub records: Vec<UserRole>,
    /// `HasNextPage`, else `CurrentPage < TotalPages`; `None` when the page said neither.
    pub has_next_page: Option<bool>,
    /// `TotalItems`, when the envelope carried it.
    pub total_items: Option<u64>,
    /// The size the page was served with: `CurrentPageSize`, else the size asked for.
    pub page_size: u64,
}

impl UserRolePage {
    /// The one page of a source that holds no UserRoles: empty, last, and complete.
    pub fn none() -> UserRolePage {
        UserRolePage {
            records: Vec::new(),
            has_next_page: Some(false),
            total_items: Some(0),
            page_size: USERROLE_PAGE_SIZE,
        }
    }
}

#[derive(Deserialize)]
struct WireRole {
    #[serde(rename = "Id")]
    id: u64,
    #[serde(rename = "Name", default)]
    name: Option<String>,
    #[serde(rename = "BusinessId", default)]
    business_id: Option<u64>,
    #[serde(rename = "BusinessName", default)]
    business_name: Option<String>,
    #[serde(rename = "UpdatedOn", default)]
    updated_on: Option<String>,
    #[serde(rename = "Users", default)]
    users: Option<Value>,
}

impl WireRole {
    fn decode(self) -> UserRole {
        // Ids as numbers; a list holding anything else is no membership list we can trust.
        let users = match self.users {
            Some(Value::Array(items)) => items.iter().map(Value::as_u64).collect(),
            _ => None,
        };
        UserRole {
            id: self.id,
            name: self.name.unwrap_or_default(),
            business_id: self.business_id,
            business_name: self.business_name,
            updated_on: self.updated_on,
            users,
        }
    }
}

/// The envelope's paging fields as the users' listing reads them (numbers or strings).
#[derive(Deserialize)]
struct WirePage {
    #[serde(rename = "Records")]
    records: Vec<WireRole>,
    #[serde(rename = "HasNextPage", default)]
    has_next_page: Option<Value>,
    #[serde(rename = "CurrentPage", default)]
    current_page: Option<Value>,
    #[serde(rename = "TotalPages", default)]
    total_pages: Option<Value>,
    #[serde(rename = "TotalItems", default)]
    total_items: Option<Value>,
    #[serde(rename = "CurrentPageSize", default)]
    current_page_size: Option<Value>,
    #[serde(rename = "PageSize", default)]
    page_size: Option<Value>,
}

/// A page asked for with `asked` records a page.
pub(super) fn decode_page(body: &[u8], asked: u64) -> Result<UserRolePage, String> {
    let page: WirePage =
        serde_json::from_slice(body).map_err(|e| format!("not a UserRole listing: {e}"))?;
    let num = |v: &Option<Value>| v.as_ref().and_then(as_u64);
    Ok(UserRolePage {
        has_next_page: next_page(&page.has_next_page, &page.current_page, &page.total_pages),
        total_items: num(&page.total_items),
        page_size: num(&page.current_page_size)
            .or_else(|| num(&page.page_size))
            .filter(|&s| s > 0)
            .unwrap_or(asked),
        records: page.records.into_iter().map(WireRole::decode).collect(),
    })
}

pub(super) fn decode_role(body: &[u8]) -> Result<UserRole, String> {
    serde_json::from_slice::<WireRole>(body)
        .map(WireRole::decode)
        .map_err(|e| format!("not a UserRole: {e}"))
}

impl NexudusClient {
    /// One page of the UserRole listing (1000 a page), only those changed since `since`
    /// (`YYYY-MM-DDTHH:mm`, inclusive) when given.
    pub(super) async fn userroles_once(
        &self,
        page: u32,
        since: Option<&str>,
    ) -> Result<UserRolePage, SourceError> {
        let started = Instant::now();
        let mut query = vec![
            ("page", page.to_string()),
            ("size", USERROLE_PAGE_SIZE.to_string()),
            ("orderBy", "Id".to_string()),
        ];
        if let Some(since) = since {
            query.push(("from_UserRole_UpdatedOn", since.to_string()));
        }
        let request = self.http.get(self.userroles_url.clone()).query(&query);
        let response = self.send(request).await?;
        let answer = self.body_of(response, started).await?;
        decode_page(&answer.body, USERROLE_PAGE_SIZE).map_err(|why| answer.unavailable(why))
    }

    /// One UserRole with its `Users`; `None` when Nexudus answers 404 (it was deleted).
    pub(super) async fn userrole_once(&self, id: u64) -> Result<Option<UserRole>, SourceError> {
        let started = Instant::now();
        let mut url = self.userroles_url.clone();
        url.path_segments_mut()
            .expect("the UserRoles URL is a base URL")
            .push(&id.to_string());
        let response = self.send(self.http.get(url)).await?;
        if response.status() == StatusCode::NOT_FOUND {
            let body = response.bytes().await.map_err(transport)?;
            tracing::debug!(id, len = body.len(), "UserRole answered 404");
            return Ok(None);
        }
        let answer = self.body_of(response, started).await?;
        decode_role(&answer.body)
            .map(Some)
            .map_err(|why| answer.unavailable(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_only_from_a_clean_users_list() {
        let role = decode_role(br#"{"Id":7,"Name":"R","Users":[1,2],"BusinessId":3}"#).unwrap();
        assert_eq!(role.users, Some(vec![1, 2]));
        let listed = decode_role(br#"{"Id":7,"Name":"R"}"#).unwrap();
        assert_eq!(
            listed.users, None,
            "a record without Users is no membership read"
        );
        let odd = decode_role(br#"{"Id":7,"Name":"R","Users":[1,"x"]}"#).unwrap();
        assert_eq!(odd.users, None);
        let page = decode_page(
            br#"{"Records":[{"Id":1,"Name":"A"}],"HasNextPage":true}"#,
            9,
        )
        .unwrap();
        assert!(page.has_next_page == Some(true) && page.records[0].name == "A");
    }

    #[test]
    fn the_end_of_the_listing_is_read_as_the_users_listing_reads_it() {
        let page = |body: &str| decode_page(body.as_bytes(), 1000).unwrap();
        // Without HasNextPage: CurrentPage/TotalPages say it, as strings too.
        let p = page(r#"{"Records":[],"CurrentPage":1,"TotalPages":"2","TotalItems":1001}"#);
        assert_eq!((p.has_next_page, p.total_items), (Some(true), Some(1001)));
        let p = page(r#"{"Records":[],"CurrentPage":2,"TotalPages":2,"CurrentPageSize":500}"#);
        assert_eq!((p.has_next_page, p.page_size), (Some(false), 500));
        // Neither: not the end, unknown (never read as "no more pages").
        let p = page(r#"{"Records":[{"Id":1,"Name":"A"}]}"#);
        assert_eq!(
            (p.has_next_page, p.total_items, p.page_size),
            (None, None, 1000)
        );
    }
}
