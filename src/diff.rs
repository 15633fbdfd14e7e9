//! Pure diffing: the desired nevisIDM user against what we last confirmed (the checkpoint) or what
//! nevisIDM really holds, giving the operation to send: create, update only the changed fields,
//! disable, or nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use unicode_normalization::UnicodeNormalization;

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

/// A field this tool owns, as the equivalence rules and the directory's forms
/// ([`crate::forms`]) name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Field {
    LoginId,
    FirstName,
    FamilyName,
    Email,
    LanguageCode,
}

impl Field {
    pub const ALL: [Field; 5] = [
        Field::LoginId,
        Field::FirstName,
        Field::FamilyName,
        Field::Email,
        Field::LanguageCode,
    ];

    /// The field as nevisIDM's documents name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::LoginId => "loginId",
            Field::FirstName => "name.firstName",
            Field::FamilyName => "name.familyName",
            Field::Email => "contacts.email",
            Field::LanguageCode => "languageCode",
        }
    }

    /// The value `user` wants for this field.
    pub fn of(self, user: &DesiredUser) -> &str {
        match self {
            Field::LoginId => &user.login_id,
            Field::FirstName => &user.first_name,
            Field::FamilyName => &user.family_name,
            Field::Email => &user.email,
            Field::LanguageCode => &user.language_code,
        }
    }

    /// Sets this field of `user` to `value`.
    pub fn set(self, user: &mut DesiredUser, value: &str) {
        let slot = match self {
            Field::LoginId => &mut user.login_id,
            Field::FirstName => &mut user.first_name,
            Field::FamilyName => &mut user.family_name,
            Field::Email => &mut user.email,
            Field::LanguageCode => &mut user.language_code,
        };
        *slot = value.to_string();
    }

    /// The value nevisIDM was seen holding, if it holds one.
    pub fn seen(self, seen: &Observed) -> Option<&str> {
        match self {
            Field::LoginId => seen.login_id.as_deref(),
            Field::FirstName => seen.first_name.as_deref(),
            Field::FamilyName => seen.family_name.as_deref(),
            Field::Email => seen.email.as_deref(),
            Field::LanguageCode => seen.language_code.as_deref(),
        }
    }

    /// Reads `seen` as holding `value` for this field.
    pub fn set_seen(self, seen: &mut Observed, value: &str) {
        let slot = match self {
            Field::LoginId => &mut seen.login_id,
            Field::FirstName => &mut seen.first_name,
            Field::FamilyName => &mut seen.family_name,
            Field::Email => &mut seen.email,
            Field::LanguageCode => &mut seen.language_code,
        };
        *slot = Some(value.to_string());
    }
}

/// Whether nevisIDM holding `held` in `field` is the `wanted` value, compared the way a directory
/// compares — the one home of these rules, used wherever a desired value meets a held one:
/// - `loginId` and `languageCode` without regard to (ASCII) case: nevisIDM treats login ids so,
///   and answers `EN` (on-prem schema) or `en` (Identity Cloud) for the same language;
/// - emails without regard to case, after trimming;
/// - names after collapsing whitespace (as the mapper does) and Unicode NFC normalization.
pub fn equivalent(field: Field, wanted: &str, held: &str) -> bool {
    match field {
        Field::LoginId | Field::LanguageCode => held.eq_ignore_ascii_case(wanted),
        Field::Email => held.trim().to_lowercase() == wanted.trim().to_lowercase(),
        Field::FirstName | Field::FamilyName => normal_name(held) == normal_name(wanted),
    }
}

/// A name in the one form the mapper sends: whitespace collapsed, Unicode NFC.
pub fn normal_name(name: &str) -> String {
    name.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .nfc()
        .collect()
}

/// The fields of `desired` that differ from `seen`, under the equivalence rules ([`equivalent`]).
pub fn changes_between(desired: &DesiredUser, seen: &Observed) -> Changes {
    let differs = |field: Field| {
        Field::seen(field, seen).is_none_or(|have| !equivalent(field, field.of(desired), have))
    };
    // An archived user is "more than disabled": a source that says inactive is satisfied by it.
    let state_differs = seen.state.as_deref() != Some(desired.state.as_str())
        && !(desired.state == UserState::Disabled && seen.state.as_deref() == Some("archived"));
    // An empty desired loginId means nevisIDM generated it: never ours to change.
    let login_differs = !desired.login_id.is_empty() && differs(Field::LoginId);
    Changes {
        login_id: login_differs.then(|| desired.login_id.clone()),
        name: (differs(Field::FirstName) || differs(Field::FamilyName))
            .then(|| (desired.first_name.clone(), desired.family_name.clone())),
        email: differs(Field::Email).then(|| desired.email.clone()),
        language_code: differs(Field::LanguageCode).then(|| desired.language_code.clone()),
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
