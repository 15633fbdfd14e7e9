//! Pure mapping: one decoded Nexudus user -> the nevisIDM user we want, or why it cannot be sent.
//!
//! Nothing here does I/O. The defaults (documented in the README) are: `extId = nexudus-{Id}`,
//! `loginId` = email trimmed and lower-cased, `FullName` split on its last word, `Language` through
//! the configured table, `Active` -> `userState`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use unicode_normalization::UnicodeNormalization;

use crate::config::{LoginIdSource, MappingConfig, NameSplit};

/// Prefix of every `extId` this tool creates (the default of `mapping.ext_id_prefix`, which is
/// config's to own).
pub use crate::config::EXT_ID_PREFIX;

/// The fields of a Nexudus user record that the sync reads, decoded leniently.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceUser {
    pub id: u64,
    pub full_name: Option<String>,
    pub email: Option<String>,
    pub language: Option<i64>,
    /// `PreferredLanguageId`: an id of `GET /api/sys/languages`.
    pub preferred_language_id: Option<u64>,
    /// The language that id names (its culture's language subtag), filled in by the source
    /// client when the languages listing holds the id.
    pub preferred_language: Option<String>,
    pub active: bool,
    pub is_admin: bool,
    pub updated_on: Option<String>,
}

/// nevisIDM `userState` values this tool sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserState {
    Active,
    Disabled,
    /// Set only by this tool's archiving (`sync.archive_after`), never by the mapping. Keep new
    /// variants at the end: checkpoints store the variant's position.
    Archived,
}

impl UserState {
    pub fn as_str(self) -> &'static str {
        match self {
            UserState::Active => "active",
            UserState::Disabled => "disabled",
            UserState::Archived => "archived",
        }
    }
}

/// The nevisIDM user a Nexudus user should become: exactly the fields this tool owns.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DesiredUser {
    pub ext_id: String,
    pub login_id: String,
    pub first_name: String,
    pub family_name: String,
    pub email: String,
    pub language_code: String,
    pub state: UserState,
    /// Static custom properties (`mapping.properties`); empty unless configured.
    pub properties: BTreeMap<String, String>,
}

/// Why a Nexudus record cannot be mapped. Reported with the record's Id; never sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidReason {
    #[error("email is missing or blank")]
    EmailMissing,
    #[error("email {} has no single '@' between a local part and a domain", shown(.0))]
    EmailMalformed(String),
    #[error("email {} contains whitespace, control or invisible formatting characters", shown(.0))]
    EmailWhitespace(String),
    #[error("email is {0} characters long; at most {MAX_EMAIL_CHARS} are accepted")]
    EmailTooLong(usize),
    #[error("full name is missing or blank")]
    NameMissing,
    #[error("full name contains control or bidirectional-override characters")]
    NameControlCharacters,
    #[error(
        "a part of the full name is {0} characters long; at most {MAX_NAME_CHARS} are accepted"
    )]
    NameTooLong(usize),
    #[error("field {field} has the wrong type: {detail}")]
    WrongType { field: &'static str, detail: String },
    #[error("field {0} is missing or null")]
    FieldMissing(&'static str),
    #[error("record has no usable Id")]
    NoId,
    #[error(transparent)]
    Limit(#[from] crate::limits::Breach),
}

impl InvalidReason {
    /// The rule the record breaks, as a stable name: the provisioning log tells two invalid
    /// records apart by it, never by the reason's words.
    pub fn rule(&self) -> &'static str {
        match self {
            InvalidReason::EmailMissing => "email_missing",
            InvalidReason::EmailMalformed(_) => "email_malformed",
            InvalidReason::EmailWhitespace(_) => "email_whitespace",
            InvalidReason::EmailTooLong(_) => "email_too_long",
            InvalidReason::NameMissing => "name_missing",
            InvalidReason::NameControlCharacters => "name_control_characters",
            InvalidReason::NameTooLong(_) => "name_too_long",
            InvalidReason::WrongType { .. } => "wrong_type",
            InvalidReason::FieldMissing(_) => "field_missing",
            InvalidReason::NoId => "no_id",
            InvalidReason::Limit(_) => "limit",
        }
    }
}

/// The default `extId` of a Nexudus user (with the built-in prefix).
pub fn ext_id(nexudus_id: u64) -> String {
    ext_id_with(EXT_ID_PREFIX, nexudus_id)
}

pub fn ext_id_with(prefix: &str, nexudus_id: u64) -> String {
    format!("{prefix}{nexudus_id}")
}

/// The Nexudus Id an extId made by [`ext_id_with`] names, if it is one.
pub fn nexudus_id_of(prefix: &str, ext_id: &str) -> Option<u64> {
    ext_id.strip_prefix(prefix)?.parse().ok()
}

/// Maps one source user. Deterministic: the same input and config always give the same output.
pub fn map_user(user: &SourceUser, mapping: &MappingConfig) -> Result<DesiredUser, InvalidReason> {
    let email = normalise_email(user.email.as_deref())?;
    let (first_name, family_name) = split_name(user.full_name.as_deref(), mapping.name_split)?;
    let ext_id = ext_id_with(&mapping.ext_id_prefix, user.id);
    // An empty loginId means "not ours to set" (see `LoginIdSource::None`).
    let login_id = match mapping.login_id {
        LoginIdSource::Email => email.to_lowercase(),
        LoginIdSource::ExtId => ext_id.clone(),
        LoginIdSource::None => String::new(),
    };
    let language_code = language_of(user, mapping).to_string();
    let desired = DesiredUser {
        ext_id,
        login_id,
        first_name,
        family_name,
        email,
        language_code,
        state: if user.active {
            UserState::Active
        } else {
            UserState::Disabled
        },
        properties: mapping.properties.clone(),
    };
    within_limits(&desired)?;
    Ok(desired)
}

/// nevisIDM's documented limits ([`crate::limits`]) on every value of `user`.
fn within_limits(user: &DesiredUser) -> Result<(), crate::limits::Breach> {
    let strings = [
        ("name.firstName", &user.first_name),
        ("name.familyName", &user.family_name),
        ("contacts.email", &user.email),
        ("languageCode", &user.language_code),
    ]
    .into_iter()
    .map(|(field, value)| (field.to_string(), value.as_str()))
    .chain(
        user.properties
            .iter()
            .map(|(name, value)| (format!("properties.{name}"), value.as_str())),
    );
    crate::limits::check(&user.ext_id, &user.login_id, strings)
}

/// The user's nevisIDM language: the language of `PreferredLanguageId` when the languages listing
/// named it, else `Language` through `mapping.languages`, else `mapping.default_language`; a code
/// outside `mapping.allowed_languages` (nevisIDM would refuse it) becomes the default.
pub fn language_of<'a>(user: &'a SourceUser, mapping: &'a MappingConfig) -> &'a str {
    user.preferred_language
        .as_ref()
        .or_else(|| user.language.and_then(|l| mapping.languages.get(&l)))
        .filter(|code| mapping.allowed_languages.contains(code.as_str()))
        .unwrap_or(&mapping.default_language)
}

/// Longest first or family name sent (characters). nevisIDM's limits are not documented; names
/// longer than a database column commonly holds are reported instead of sent to be refused.
pub const MAX_NAME_CHARS: usize = 255;
/// Longest email accepted (RFC 5321 allows 254 in a path).
pub const MAX_EMAIL_CHARS: usize = 254;

/// A value as shown in a report: at most 80 characters, escaped (control and formatting
/// characters, such as a right-to-left override, print as `\u{…}` and cannot reorder the line).
pub fn shown(value: &str) -> String {
    const MAX: usize = 80;
    let mut out: String = value
        .chars()
        .take(MAX)
        .collect::<String>()
        .escape_debug()
        .collect();
    if value.chars().nth(MAX).is_some() {
        out.push('…');
    }
    format!("\"{out}\"")
}

/// Invisible formatting characters (Unicode Cf) that have no place in an email address:
/// zero-width spaces and joiners, direction marks, embeddings, overrides and isolates, BOM.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}')
}

/// Bidirectional embeddings, overrides and isolates: they can make a name display as something
/// else (spoofing), so a name carrying them is reported, not synced. Plain direction marks
/// (U+200E, U+200F), which right-to-left names may legitimately carry, are kept.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Trims the email and checks it is usable as a login: one `@`, both sides non-empty, no
/// whitespace, control or invisible characters inside. Case is kept (it is the contact address).
fn normalise_email(raw: Option<&str>) -> Result<String, InvalidReason> {
    let email = raw.map(str::trim).unwrap_or_default();
    if email.is_empty() {
        return Err(InvalidReason::EmailMissing);
    }
    let length = email.chars().count();
    if length > MAX_EMAIL_CHARS {
        return Err(InvalidReason::EmailTooLong(length));
    }
    if email
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || is_invisible_format(c))
    {
        return Err(InvalidReason::EmailWhitespace(email.to_string()));
    }
    match email.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@') =>
        {
            Ok(email.to_string())
        }
        _ => Err(InvalidReason::EmailMalformed(email.to_string())),
    }
}

/// Splits a full name on its last (or first) word after trimming and collapsing whitespace.
/// A one-word name fills both parts, because nevisIDM makes both mandatory by default.
fn split_name(raw: Option<&str>, split: NameSplit) -> Result<(String, String), InvalidReason> {
    let raw = raw.unwrap_or_default();
    if raw
        .chars()
        .any(|c| (c.is_control() && !c.is_whitespace()) || is_bidi_control(c))
    {
        return Err(InvalidReason::NameControlCharacters);
    }
    // One canonical Unicode form (NFC), whatever form Nexudus stored: nevisIDM receives one.
    let composed: String = raw.nfc().collect();
    let words: Vec<&str> = composed.split_whitespace().collect();
    let parts = match split {
        NameSplit::LastWord => words.split_last(),
        NameSplit::FirstWord => words.split_first(),
    };
    let (first, family) = match parts {
        None => return Err(InvalidReason::NameMissing),
        Some((one, [])) => (one.to_string(), one.to_string()),
        Some((family, rest)) => (rest.join(" "), family.to_string()),
    };
    let longest = first.chars().count().max(family.chars().count());
    if longest > MAX_NAME_CHARS {
        return Err(InvalidReason::NameTooLong(longest));
    }
    Ok((first, family))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: Option<&str>, email: Option<&str>) -> SourceUser {
        SourceUser {
            id: 42,
            full_name: name.map(String::from),
            email: email.map(String::from),
            language: Some(1),
            active: true,
            ..SourceUser::default()
        }
    }

    fn map(u: &SourceUser) -> Result<DesiredUser, InvalidReason> {
        map_user(u, &MappingConfig::default())
    }

    #[test]
    fn maps_the_documented_defaults() {
        let d = map(&user(
            Some("  Ada   King  Lovelace "),
            Some("  Ada.Lovelace@Example.COM "),
        ))
        .unwrap();
        assert_eq!(d.ext_id, "nexudus-42");
        assert_eq!(d.login_id, "ada.lovelace@example.com");
        assert_eq!(d.email, "Ada.Lovelace@Example.COM");
        assert_eq!(d.first_name, "Ada King");
        assert_eq!(d.family_name, "Lovelace");
        assert_eq!(d.language_code, "en");
        assert_eq!(d.state, UserState::Active);
    }

    #[test]
    fn one_word_name_fills_both_parts() {
        let d = map(&user(Some("Cher"), Some("cher@example.com"))).unwrap();
        assert_eq!(
            (d.first_name.as_str(), d.family_name.as_str()),
            ("Cher", "Cher")
        );
    }

    #[test]
    fn languages_follow_the_table_and_default() {
        let mut u = user(Some("José Müller"), Some("j@example.com"));
        for (lang, code) in [
            (Some(1), "en"),
            // Spanish is outside nevisIDM's default policy (mapping.allowed_languages).
            (Some(2), "en"),
            (Some(3), "en"),
            (Some(7), "en"),
            (None, "en"),
        ] {
            u.language = lang;
            assert_eq!(map(&u).unwrap().language_code, code, "{lang:?}");
        }
        let mut m = MappingConfig::default();
        m.languages.insert(2, "fr".into());
        m.default_language = "de".into();
        u.language = Some(2);
        assert_eq!(map_user(&u, &m).unwrap().language_code, "fr");
        u.language = Some(9);
        assert_eq!(map_user(&u, &m).unwrap().language_code, "de");
        m.allowed_languages.insert("es".into());
        m.languages.insert(2, "es".into());
        u.language = Some(2);
        assert_eq!(map_user(&u, &m).unwrap().language_code, "es", "allowed now");
    }

    #[test]
    fn the_preferred_language_comes_first_and_must_be_allowed() {
        let mut u = user(Some("Anna Muster"), Some("a@example.com"));
        u.language = Some(2);
        u.preferred_language_id = Some(77);
        u.preferred_language = Some("de".into());
        assert_eq!(map(&u).unwrap().language_code, "de");
        u.preferred_language = Some("ja".into());
        assert_eq!(
            map(&u).unwrap().language_code,
            "en",
            "not allowed: the default"
        );
        // An id the languages listing did not hold: Language, then the default.
        u.preferred_language = None;
        let mut m = MappingConfig::default();
        m.languages.insert(2, "fr".into());
        assert_eq!(map_user(&u, &m).unwrap().language_code, "fr");
        u.language = None;
        assert_eq!(map_user(&u, &m).unwrap().language_code, "en");
    }

    #[test]
    fn mapping_options_change_split_login_and_prefix() {
        let m = crate::config::testing::config(&[r#"
            [mapping]
            name_split = "first_word"
            login_id = "ext_id"
            ext_id_prefix = "nx-"
            "#])
        .mapping;
        let d = map_user(&user(Some("Smith Anna Maria"), Some("a@b.c")), &m).unwrap();
        assert_eq!(
            (d.first_name.as_str(), d.family_name.as_str()),
            ("Anna Maria", "Smith")
        );
        assert_eq!((d.ext_id.as_str(), d.login_id.as_str()), ("nx-42", "nx-42"));
        let none = MappingConfig {
            login_id: LoginIdSource::None,
            ..MappingConfig::default()
        };
        assert_eq!(
            map_user(&user(Some("A B"), Some("a@b.c")), &none)
                .unwrap()
                .login_id,
            ""
        );
    }

    #[test]
    fn inactive_maps_to_disabled() {
        let mut u = user(Some("A B"), Some("a@b.c"));
        u.active = false;
        assert_eq!(map(&u).unwrap().state, UserState::Disabled);
    }

    #[test]
    fn unusable_emails_and_names_are_invalid() {
        let cases = [
            (user(Some("A B"), None), InvalidReason::EmailMissing),
            (user(Some("A B"), Some("   ")), InvalidReason::EmailMissing),
            (
                user(Some("A B"), Some("ab.example.com")),
                InvalidReason::EmailMalformed("ab.example.com".into()),
            ),
            (
                user(Some("A B"), Some("a@")),
                InvalidReason::EmailMalformed("a@".into()),
            ),
            (
                user(Some("A B"), Some("a@b@c")),
                InvalidReason::EmailMalformed("a@b@c".into()),
            ),
            (
                user(Some("A B"), Some("a b@c.d")),
                InvalidReason::EmailWhitespace("a b@c.d".into()),
            ),
            (user(None, Some("a@b.c")), InvalidReason::NameMissing),
            (
                user(Some(" \t "), Some("a@b.c")),
                InvalidReason::NameMissing,
            ),
            (
                user(Some("A\u{0}B"), Some("a@b.c")),
                InvalidReason::NameControlCharacters,
            ),
        ];
        for (u, want) in cases {
            assert_eq!(map(&u).unwrap_err(), want, "{u:?}");
        }
    }

    #[test]
    fn hostile_names_and_emails_are_reported_with_a_bounded_escaped_value() {
        // 100,000 characters: reported, never sent.
        let long = "x".repeat(100_000);
        let r = map(&user(Some(&format!("Ann {long}")), Some("a@example.com")));
        assert_eq!(r.unwrap_err(), InvalidReason::NameTooLong(100_000));
        let ok = "y".repeat(MAX_NAME_CHARS);
        assert!(map(&user(Some(&format!("Ann {ok}")), Some("a@example.com"))).is_ok());
        let r = map(&user(
            Some("Ann Long"),
            Some(&format!("{long}@example.com")),
        ));
        assert_eq!(r.unwrap_err(), InvalidReason::EmailTooLong(100_012));
        // A right-to-left override could make the name display as something else.
        let r = map(&user(Some("Ann \u{202E}nimda"), Some("a@example.com")));
        assert_eq!(r.unwrap_err(), InvalidReason::NameControlCharacters);
        // Direction marks alone are legitimate in right-to-left names.
        let d = map(&user(Some("\u{200F}שרה כהן"), Some("s@example.com"))).unwrap();
        assert_eq!(d.family_name, "כהן");
        // Invisible characters in an email are refused, and the report line escapes them.
        let err = map(&user(Some("Ann"), Some("ann\u{200B}@example.com"))).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\\u{200b}"), "{text}");
        let err = map(&user(Some("Ann"), Some(&format!("{long}\u{202E}@x")))).unwrap_err();
        assert!(err.to_string().chars().count() < 200, "bounded: {err}");
        let err = map(&user(Some("Ann"), Some(&format!("{}@@x", "a".repeat(100))))).unwrap_err();
        assert!(err.to_string().contains('…'), "{err}");
    }
}
