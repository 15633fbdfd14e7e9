//! The role side of nevisIDM (issue 21): roles by extId, the caller's permissions, a user's
//! profiles and a profile's authorizations. Classified like every other call ([`super::classify`]):
//! a grant answered 422 `errors.duplicate…` (or 409) is [`TargetError::Duplicate`], which the
//! role sync counts as granted; a revoke is accepted as 200 or 204.
//!
//! Listings of profiles and authorizations are read as one page (`items`): a user holds a few
//! profiles and a profile a few authorizations; a `continuationToken` in the answer is an error
//! rather than a silently short read.

use reqwest::Method;
use serde_json::{Value, json};
use url::Url;

use super::{Authorization, BoxFuture, Call, NevisClient, Profile, RoleTarget, TargetError};

impl NevisClient {
    /// `…/nevisidm/api/` + `segments`, each escaped.
    fn api(&self, segments: &[&str]) -> Url {
        let mut url = self.api_url.clone();
        {
            let mut path = url
                .path_segments_mut()
                .expect("http(s) URLs have path segments");
            path.pop_if_empty();
            path.extend(segments);
        }
        url
    }

    fn profiles_url(&self, user: &str) -> Url {
        self.api(&["core", "v1", &self.client_ext_id, "users", user, "profiles"])
    }

    fn authorizations_url(&self, profile: &str) -> Url {
        let client = self.client_ext_id.as_str();
        self.api(&["core", "v1", client, "profiles", profile, "authorizations"])
    }

    async fn items(&self, url: Url, what: &str) -> Result<Vec<Value>, TargetError> {
        let doc = self.send(Call::Get, Method::GET, url, None, what).await?;
        let doc = doc.unwrap_or(Value::Null);
        let more = doc
            .pointer("/_pagination/continuationToken")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty());
        match doc.get("items") {
            Some(Value::Array(items)) if !more => Ok(items.clone()),
            Some(Value::Array(_)) => Err(TargetError::Protocol {
                status: 200,
                detail: format!("{what}: more than one page"),
            }),
            _ => Err(TargetError::Protocol {
                status: 200,
                detail: format!("{what}: no items array"),
            }),
        }
    }
}

/// The last path segment of a `Location`: the extId of what was created.
fn created_ext_id(location: Option<Value>) -> Option<String> {
    let location = location?;
    let text = location.as_str()?.trim_end_matches('/');
    let last = text.rsplit('/').next()?;
    let last = last.split(['?', '#']).next()?;
    (!last.is_empty()).then(|| last.to_string())
}

fn text(item: &Value, key: &str) -> Option<String> {
    item.get(key).and_then(Value::as_str).map(String::from)
}

impl RoleTarget for NevisClient {
    fn role_exists<'a>(&'a self, role: &'a str) -> BoxFuture<'a, Result<bool, TargetError>> {
        Box::pin(async move {
            let url = self.api(&["core", "v1", "roles", role]);
            let what = format!("read role {role}");
            match self.send(Call::Get, Method::GET, url, None, &what).await {
                Ok(_) => Ok(true),
                Err(TargetError::NotFound) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    fn permissions(&self) -> BoxFuture<'_, Result<Option<Vec<String>>, TargetError>> {
        Box::pin(async move {
            let url = self.api(&["principal", "v1", "permissions"]);
            let doc = match self
                .send(Call::Get, Method::GET, url, None, "read permissions")
                .await
            {
                Err(TargetError::NotFound) => return Ok(None),
                other => other?.unwrap_or(Value::Null),
            };
            match doc.get("elementaryPermissions").and_then(Value::as_array) {
                Some(list) => Ok(Some(
                    list.iter()
                        .filter_map(Value::as_str)
                        .map(String::from)
                        .collect(),
                )),
                None => Err(TargetError::Protocol {
                    status: 200,
                    detail: "the permissions answer has no elementaryPermissions".into(),
                }),
            }
        })
    }

    fn profiles<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<Profile>, TargetError>> {
        Box::pin(async move {
            let what = format!("read profiles of {user}");
            let items = self.items(self.profiles_url(user), &what).await?;
            Ok(items
                .iter()
                .filter_map(|item| {
                    Some(Profile {
                        ext_id: text(item, "extId")?,
                        is_default: item
                            .get("isDefaultProfile")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                        active: text(item, "profileState")
                            .is_none_or(|s| s.eq_ignore_ascii_case("active")),
                    })
                })
                .collect())
        })
    }

    fn create_profile<'a>(
        &'a self,
        user: &'a str,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, TargetError>> {
        Box::pin(async move {
            let what = format!("create a profile for {user}");
            let body = json!({ "unitExtId": unit });
            let url = self.profiles_url(user);
            let location = self
                .send(Call::Add, Method::POST, url, Some(&body), &what)
                .await?;
            Ok(created_ext_id(location))
        })
    }

    fn authorizations<'a>(
        &'a self,
        profile: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Authorization>, TargetError>> {
        Box::pin(async move {
            let what = format!("read authorizations of profile {profile}");
            let items = self.items(self.authorizations_url(profile), &what).await?;
            Ok(items
                .iter()
                .filter_map(|item| {
                    Some(Authorization {
                        ext_id: text(item, "extId")?,
                        role_ext_id: text(item, "roleExtId")?,
                    })
                })
                .collect())
        })
    }

    fn grant<'a>(
        &'a self,
        profile: &'a str,
        role: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, TargetError>> {
        Box::pin(async move {
            let what = format!("grant {role} on profile {profile}");
            let body = json!({ "roleExtId": role });
            let url = self.authorizations_url(profile);
            let location = self
                .send(Call::Add, Method::POST, url, Some(&body), &what)
                .await?;
            Ok(created_ext_id(location))
        })
    }

    fn revoke<'a>(
        &'a self,
        profile: &'a str,
        authorization: &'a str,
    ) -> BoxFuture<'a, Result<(), TargetError>> {
        Box::pin(async move {
            let what = format!("revoke authorization {authorization} of profile {profile}");
            let mut url = self.authorizations_url(profile);
            url.path_segments_mut()
                .expect("http(s) URLs have path segments")
                .push(authorization);
            self.send(Call::Remove, Method::DELETE, url, None, &what)
                .await
                .map(drop)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_location_names_what_was_created() {
        let at = |s: &str| Some(Value::String(s.into()));
        assert_eq!(
            created_ext_id(at("https://idm/x/profiles/p1/authorizations/a-9")),
            Some("a-9".into())
        );
        assert_eq!(created_ext_id(at("/a/b/")), Some("b".into()));
        assert_eq!(created_ext_id(None), None);
    }
}
