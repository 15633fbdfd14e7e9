//! Pure diffing: the desired nevisIDM user against what we last confirmed (the checkpoint) or what
//! nevisIDM really holds, giving the operation to send: create, update only the changed fields,
//! disable, or nothing.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::mapper::{DesiredUser, UserState};

/// The fields of an update. `None` means "leave as it is"; the PATCH body carries only `Some`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub login_id: Option<String>,
    /// `name` is sent whole (first and family name together) so that a server treating the nested
    /// object as a replacement cannot lose the other half.
    pub name: Option<(String, String)>,
    pub email: Option<String>,
    pub language_code: Option<String>,
    pub state: Option<UserState>,
    /// Custom properties to set (`Some`) or remove (`None`, sent as `null`); only changed ones.
    pub properties: BTreeMap<String, Option<String>>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }

    /// True when this update takes the user to `disabled`.
    pub fn disables(&self) -> bool {
        self.state == Some(UserState::Disabled)
    }

    /// The nevisIDM `PATCH …/users/{extId}` body.
    pub fn to_json(&self) -> Value {
        let mut body = Map::new();
        if let Some(login) = &self.login_id {
            body.insert("loginId".into(), json!(login));
        }
        if let Some((first, family)) = &self.name {
            body.insert(
                "name".into(),
                json!({ "firstName": first, "familyName": family }),
            );
        }
        if let Some(email) = &self.email {
            body.insert("contacts".into(), json!({ "email": email }));
        }
        if let Some(lang) = &self.language_code {
            body.insert("languageCode".into(), json!(lang));
        }
        if let Some(state) = self.state {
            body.insert("userState".into(), json!(state.as_str()));
        }
        if !self.properties.is_empty() {
            body.insert("properties".into(), json!(self.properties));
        }
        Value::Object(body)
    }

    /// Applies the changes to a confirmed user, giving the state after the write.
    pub fn apply_to(&self, user: &DesiredUser) -> DesiredUser {
        let mut after = user.clone();
        if let Some(login) = &self.login_id {
            after.login_id = login.clone();
        }
        if let Some((first, family)) = &self.name {
            after.first_name = first.clone();
            after.family_name = family.clone();
        }
        if let Some(email) = &self.email {
            after.email = email.clone();
        }
        if let Some(lang) = &self.language_code {
            after.language_code = lang.clone();
        }
        if let Some(state) = self.state {
            after.state = state;
        }
        for (name, value) in &self.properties {
            match value {
                Some(v) => after.properties.insert(name.clone(), v.clone()),
                None => after.properties.remove(name),
            };
        }
        after
    }
}

/// The nevisIDM `POST …/users` body for a new user.
pub fn create_body(user: &DesiredUser) -> Value {
    let mut body = json!({
        "extId": user.ext_id,
        "userState": user.state.as_str(),
        "languageCode": user.language_code,
        "name": { "firstName": user.first_name, "familyName": user.family_name },
        "contacts": { "email": user.email },
    });
    // An empty loginId is left to nevisIDM's login-ID generator (`mapping.login_id = "none"`).
    if !user.login_id.is_empty() {
        body["loginId"] = json!(user.login_id);
    }
    if !user.properties.is_empty() {
        body["properties"] = json!(user.properties);
    }
    body
}

/// What to do for one user seen in the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Create,
    Update(Changes),
    Unchanged,
}

/// Compares the desired user with the last confirmed one.
pub fn diff(desired: &DesiredUser, checkpoint: Option<&DesiredUser>) -> Plan {
    let Some(old) = checkpoint else {
        return Plan::Create;
    };
    let changes = changes_between(desired, &Observed::from(old));
    if changes.is_empty() {
        Plan::Unchanged
    } else {
        Plan::Update(changes)
    }
}

/// A user as observed somewhere (checkpoint or nevisIDM); fields may be absent when read remotely.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub login_id: Option<String>,
    pub first_name: Option<String>,
    pub family_name: Option<String>,
    pub email: Option<String>,
    pub language_code: Option<String>,
    pub state: Option<String>,
    pub properties: BTreeMap<String, String>,
    /// True when `properties` is everything the user has (a checkpoint): a property missing
    /// from the desired user is then removed. Read remotely, properties we never set are not ours.
    pub properties_complete: bool,
    /// nevisIDM's `version` of the user, when read from nevisIDM.
    pub version: Option<i64>,
}

impl From<&DesiredUser> for Observed {
    fn from(u: &DesiredUser) -> Self {
        Observed {
            login_id: Some(u.login_id.clone()),
            first_name: Some(u.first_name.clone()),
            family_name: Some(u.family_name.clone()),
            email: Some(u.email.clone()),
            language_code: Some(u.language_code.clone()),
            state: Some(u.state.as_str().to_string()),
            properties: u.properties.clone(),
            properties_complete: true,
            version: None,
        }
    }
}

impl Observed {
    /// Reads the fields we own from a nevisIDM user JSON document.
    pub fn from_nevis_json(v: &Value) -> Observed {
        let s = |ptr: &str| v.pointer(ptr).and_then(Value::as_str).map(String::from);
        Observed {
            login_id: s("/loginId"),
            first_name: s("/name/firstName"),
            family_name: s("/name/familyName"),
            email: s("/contacts/email"),
            language_code: s("/languageCode"),
            state: s("/userState"),
            properties: v
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| {
                    p.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default(),
            properties_complete: false,
            version: v.get("version").and_then(Value::as_i64),
        }
    }
}

/// The fields of `desired` that differ from `seen`. `loginId` compares case-insensitively, since
/// nevisIDM treats login ids that way and a case-only difference is not worth a write; so does
/// `languageCode`, which nevisIDM answers upper or lower case depending on the deployment.
pub fn changes_between(desired: &DesiredUser, seen: &Observed) -> Changes {
    let differs = |want: &str, have: &Option<String>| have.as_deref() != Some(want);
    // An archived user is "more than disabled": a source that says inactive is satisfied by it.
    let state_differs = differs(desired.state.as_str(), &seen.state)
        && !(desired.state == UserState::Disabled && seen.state.as_deref() == Some("archived"));
    // An empty desired loginId means nevisIDM generated it: never ours to change.
    let login_differs = !desired.login_id.is_empty()
        && seen
            .login_id
            .as_deref()
            .is_none_or(|have| !have.eq_ignore_ascii_case(&desired.login_id));
    Changes {
        login_id: login_differs.then(|| desired.login_id.clone()),
        name: (differs(&desired.first_name, &seen.first_name)
            || differs(&desired.family_name, &seen.family_name))
        .then(|| (desired.first_name.clone(), desired.family_name.clone())),
        email: differs(&desired.email, &seen.email).then(|| desired.email.clone()),
        // nevisIDM's on-prem schema answers `EN`, Identity Cloud `en`: the same language.
        language_code: seen
            .language_code
            .as_deref()
            .is_none_or(|have| !have.eq_ignore_ascii_case(&desired.language_code))
            .then(|| desired.language_code.clone()),
        state: state_differs.then_some(desired.state),
        properties: property_changes(desired, seen),
    }
}

fn property_changes(desired: &DesiredUser, seen: &Observed) -> BTreeMap<String, Option<String>> {
    let mut out: BTreeMap<String, Option<String>> = desired
        .properties
        .iter()
        .filter(|(k, v)| seen.properties.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    if seen.properties_complete {
        for k in seen.properties.keys() {
            if !desired.properties.contains_key(k) {
                out.insert(k.clone(), None);
            }
        }
    }
    out
}

/// A user missing from a complete listing is disabled, unless already disabled or archived.
pub fn disappeared(checkpoint: &DesiredUser) -> Option<Changes> {
    (checkpoint.state == UserState::Active).then(|| Changes {
        state: Some(UserState::Disabled),
        ..Changes::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> DesiredUser {
        DesiredUser {
            ext_id: "nexudus-1".into(),
            login_id: "ann@example.com".into(),
            first_name: "Ann".into(),
            family_name: "Smith".into(),
            email: "Ann@example.com".into(),
            language_code: "en".into(),
            state: UserState::Active,
            properties: Default::default(),
        }
    }

    #[test]
    fn new_user_is_created_and_same_user_is_unchanged() {
        assert_eq!(diff(&user(), None), Plan::Create);
        assert_eq!(diff(&user(), Some(&user())), Plan::Unchanged);
    }

    #[test]
    fn update_carries_only_changed_fields() {
        let old = user();
        let mut new = user();
        new.family_name = "Jones".into();
        new.language_code = "es".into();
        let Plan::Update(ch) = diff(&new, Some(&old)) else {
            panic!("expected update")
        };
        assert_eq!(
            ch.to_json(),
            json!({"name": {"firstName": "Ann", "familyName": "Jones"}, "languageCode": "es"})
        );
        assert!(!ch.disables());
        assert_eq!(ch.apply_to(&old), new);
    }

    #[test]
    fn deactivation_is_a_disabling_update() {
        let mut new = user();
        new.state = UserState::Disabled;
        let Plan::Update(ch) = diff(&new, Some(&user())) else {
            panic!("expected update")
        };
        assert!(ch.disables());
        assert_eq!(ch.to_json(), json!({"userState": "disabled"}));
    }

    #[test]
    fn disappearance_disables_only_active_users() {
        let ch = disappeared(&user()).unwrap();
        assert_eq!(ch.to_json(), json!({"userState": "disabled"}));
        let mut gone = user();
        gone.state = UserState::Disabled;
        assert_eq!(disappeared(&gone), None);
    }

    #[test]
    fn archived_satisfies_disabled_and_returns_to_active() {
        let mut archived = user();
        archived.state = UserState::Archived;
        let mut inactive = user();
        inactive.state = UserState::Disabled;
        assert_eq!(diff(&inactive, Some(&archived)), Plan::Unchanged);
        assert_eq!(disappeared(&archived), None);
        let Plan::Update(ch) = diff(&user(), Some(&archived)) else {
            panic!("expected update")
        };
        assert_eq!(ch.to_json(), json!({"userState": "active"}));
    }

    #[test]
    fn language_codes_compare_without_regard_to_case() {
        let remote = json!({
            "extId": "nexudus-1", "loginId": "ann@example.com", "userState": "active",
            "languageCode": "EN", "name": {"firstName": "Ann", "familyName": "Smith"},
            "contacts": {"email": "Ann@example.com"}
        });
        assert!(changes_between(&user(), &Observed::from_nevis_json(&remote)).is_empty());
        let mut checkpoint = user();
        checkpoint.language_code = "EN".into();
        assert_eq!(diff(&user(), Some(&checkpoint)), Plan::Unchanged);
        let mut german = user();
        german.language_code = "de".into();
        assert_eq!(
            changes_between(&german, &Observed::from_nevis_json(&remote)).to_json(),
            json!({"languageCode": "de"})
        );
    }

    #[test]
    fn remote_comparison_reads_nevis_json() {
        let remote = json!({
            "extId": "nexudus-1", "loginId": "ANN@example.com", "userState": "disabled",
            "languageCode": "en", "name": {"firstName": "Ann", "familyName": "Smith"},
            "contacts": {"email": "Ann@example.com", "mobile": "+41"}
        });
        let ch = changes_between(&user(), &Observed::from_nevis_json(&remote));
        assert_eq!(ch.to_json(), json!({"userState": "active"}));
        assert_eq!(
            create_body(&user())["contacts"]["email"],
            json!("Ann@example.com")
        );
    }
}
