//! Nexudus wire format: the paged listing envelope and user records, decoded leniently.
//!
//! One bad record never spoils a page: each record is decoded on its own and either becomes a
//! [`SourceUser`] or an [`InvalidRecord`] naming the field at fault. Unknown fields are ignored.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::mapper::{InvalidReason, SourceUser};

/// A record that could not be decoded, with its Id when one was readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRecord {
    pub id: Option<u64>,
    pub reason: InvalidReason,
    /// `UpdatedOn` of the record, when readable (it keeps the incremental watermark behind it).
    pub updated_on: Option<String>,
}

/// One page of `GET /api/sys/users`.
#[derive(Debug, Clone, Default)]
pub struct SourcePage {
    pub records: Vec<Result<SourceUser, InvalidRecord>>,
    /// `TotalItems`, when the envelope carried it.
    pub total_items: Option<u64>,
    pub has_next_page: bool,
    /// `CurrentPageSize` as reported (the requested size).
    pub page_size: Option<u64>,
}

/// The envelope, with each record kept as raw JSON text borrowed from the body: records are
/// decoded one by one, and no tree of the whole page (70-odd fields per user) is ever built.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "Records", borrow, default)]
    records: Option<Vec<&'a RawValue>>,
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

/// The fields we read, in their documented types. Unknown fields are skipped without allocating.
#[derive(Deserialize)]
struct WireUser {
    #[serde(rename = "Id")]
    id: u64,
    #[serde(rename = "FullName", default)]
    full_name: Option<String>,
    #[serde(rename = "Email", default)]
    email: Option<String>,
    #[serde(rename = "Language", default)]
    language: Option<i64>,
    #[serde(rename = "PreferredLanguageId", default)]
    preferred_language_id: Option<u64>,
    #[serde(rename = "Active", default)]
    active: Option<bool>,
    #[serde(rename = "IsAdmin", default)]
    is_admin: Option<bool>,
    #[serde(rename = "UpdatedOn", default)]
    updated_on: Option<String>,
}

/// Decodes a page body. Fails only when the envelope itself is unusable.
pub fn decode_page(body: &[u8]) -> Result<SourcePage, String> {
    if body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_none_or(|b| *b != b'{')
    {
        return Err("listing is not a JSON object".into());
    }
    let env: Envelope<'_> = serde_json::from_slice(body)
        .map_err(|e| format!("listing is not a usable envelope: {e}"))?;
    let Some(raw_records) = env.records else {
        return Err("listing has no Records array".into());
    };
    let records = raw_records.iter().map(|raw| decode_raw_user(raw)).collect();
    let num = |v: &Option<Value>| v.as_ref().and_then(as_u64);
    let Some(has_next_page) = next_page(&env.has_next_page, &env.current_page, &env.total_pages)
    else {
        return Err("listing says neither HasNextPage nor CurrentPage/TotalPages".into());
    };
    Ok(SourcePage {
        records,
        total_items: num(&env.total_items),
        has_next_page,
        page_size: num(&env.current_page_size).or_else(|| num(&env.page_size)),
    })
}

/// The fast path for a well-formed record; anything unusual goes through [`decode_user`], which
/// names the field at fault.
fn decode_raw_user(raw: &RawValue) -> Result<SourceUser, InvalidRecord> {
    if let Ok(WireUser {
        id,
        full_name,
        email,
        language,
        preferred_language_id,
        active: Some(active),
        is_admin,
        updated_on,
    }) = serde_json::from_str::<WireUser>(raw.get())
    {
        return Ok(SourceUser {
            id,
            full_name,
            email,
            language,
            preferred_language_id,
            preferred_language: None,
            active,
            is_admin: is_admin.unwrap_or(false),
            updated_on,
        });
    }
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(v) => decode_user(&v),
        Err(e) => Err(InvalidRecord {
            id: None,
            reason: InvalidReason::WrongType {
                field: "record",
                detail: e.to_string(),
            },
            updated_on: None,
        }),
    }
}

/// Decodes one user record.
pub fn decode_user(v: &Value) -> Result<SourceUser, InvalidRecord> {
    let id = v.get("Id").and_then(as_u64);
    let updated_on = v.get("UpdatedOn").and_then(Value::as_str).map(String::from);
    let bad = |reason| InvalidRecord {
        id,
        reason,
        updated_on: updated_on.clone(),
    };
    let Some(id) = id else {
        return Err(bad(InvalidReason::NoId));
    };
    let full_name = opt_string(v, "FullName").map_err(bad)?;
    let email = opt_string(v, "Email").map_err(bad)?;
    let language = match v.get("Language") {
        None | Some(Value::Null) => None,
        Some(l) => Some(as_i64(l).ok_or_else(|| {
            bad(InvalidReason::WrongType {
                field: "Language",
                detail: format!("expected an integer, got {}", type_name(l)),
            })
        })?),
    };
    // A real record carries PreferredLanguageId (an id of /api/sys/languages) and may have no
    // Language at all: both are optional.
    let preferred_language_id = match v.get("PreferredLanguageId") {
        None | Some(Value::Null) => None,
        Some(l) => Some(as_u64(l).ok_or_else(|| {
            bad(InvalidReason::WrongType {
                field: "PreferredLanguageId",
                detail: format!("expected an id, got {}", type_name(l)),
            })
        })?),
    };
    let active = match v.get("Active") {
        Some(Value::Bool(b)) => *b,
        None | Some(Value::Null) => return Err(bad(InvalidReason::FieldMissing("Active"))),
        Some(other) => {
            return Err(bad(InvalidReason::WrongType {
                field: "Active",
                detail: format!("expected a boolean, got {}", type_name(other)),
            }));
        }
    };
    // IsAdmin decides the scope under scope.admins = "exclude" | "only": missing or null reads
    // as "not an admin" (older projections omit it), but a value of the wrong type is a bad
    // record, not a guess that could widen the scope.
    let is_admin = match v.get("IsAdmin") {
        Some(Value::Bool(b)) => *b,
        None | Some(Value::Null) => false,
        Some(other) => {
            return Err(bad(InvalidReason::WrongType {
                field: "IsAdmin",
                detail: format!("expected a boolean, got {}", type_name(other)),
            }));
        }
    };
    Ok(SourceUser {
        id,
        full_name,
        email,
        language,
        preferred_language_id,
        preferred_language: None,
        active,
        is_admin,
        updated_on,
    })
}

/// One page of `GET /api/sys/languages`: each record's `Id` and the language subtag of its
/// `Culture` (`de-CH` -> `de`), `None` when the culture is missing or not a two-letter language;
/// and whether more pages follow. Records without a usable Id are skipped.
pub type LanguagePage = (Vec<(u64, Option<String>)>, bool);

pub fn decode_languages(body: &[u8]) -> Result<LanguagePage, String> {
    let env: Envelope<'_> = serde_json::from_slice(body)
        .map_err(|e| format!("languages listing is not a usable envelope: {e}"))?;
    let Some(raw_records) = env.records else {
        return Err("languages listing has no Records array".into());
    };
    let mut languages = Vec::with_capacity(raw_records.len());
    for raw in raw_records {
        let Ok(record) = serde_json::from_str::<Value>(raw.get()) else {
            continue;
        };
        let Some(id) = record.get("Id").and_then(as_u64) else {
            continue;
        };
        let code = record
            .get("Culture")
            .and_then(Value::as_str)
            .and_then(language_of_culture);
        languages.push((id, code));
    }
    let more = next_page(&env.has_next_page, &env.current_page, &env.total_pages).unwrap_or(false);
    Ok((languages, more))
}

/// Whether more pages follow, by the one rule every Nexudus listing is read with (users,
/// languages, UserRoles): `HasNextPage` when it is a boolean, else `CurrentPage < TotalPages`;
/// `None` when the page says neither.
pub(super) fn next_page(
    has_next_page: &Option<Value>,
    current_page: &Option<Value>,
    total_pages: &Option<Value>,
) -> Option<bool> {
    match has_next_page {
        Some(Value::Bool(b)) => Some(*b),
        _ => match (
            current_page.as_ref().and_then(as_u64),
            total_pages.as_ref().and_then(as_u64),
        ) {
            (Some(current), Some(total)) => Some(current < total),
            _ => None,
        },
    }
}

/// The lower-cased language subtag of a culture name (`de-CH`, `fr_FR`, `IT`), when it is a
/// two-letter ISO 639-1 code (the only form nevisIDM takes).
pub fn language_of_culture(culture: &str) -> Option<String> {
    let language = culture.trim().split(['-', '_']).next()?;
    (language.len() == 2 && language.chars().all(|c| c.is_ascii_alphabetic()))
        .then(|| language.to_ascii_lowercase())
}

fn opt_string(v: &Value, field: &'static str) -> Result<Option<String>, InvalidReason> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(InvalidReason::WrongType {
            field,
            detail: format!("expected a string, got {}", type_name(other)),
        }),
    }
}

/// Accepts integers and integer strings (some clients and proxies stringify numbers).
pub(super) fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_envelope_and_records() {
        let body = json!({
            "Records": [
                {"Id": 1, "FullName": "Ann Smith", "Email": "a@x.io", "Language": 2, "Active": true,
                 "UpdatedOn": "2025-01-15T10:30:00Z", "Unknown": {"x": 1}},
                {"Id": 2, "FullName": 17, "Email": "b@x.io", "Active": true},
                {"FullName": "No Id", "Email": "c@x.io", "Active": true},
                {"Id": "4", "FullName": null, "Email": null, "Language": null, "Active": false}
            ],
            "CurrentPage": 1, "CurrentPageSize": 25, "TotalItems": 4, "TotalPages": 1,
            "HasNextPage": false, "HasPreviousPage": false, "CurrentSortDirection": "Ascending"
        });
        let page = decode_page(body.to_string().as_bytes()).unwrap();
        assert_eq!(page.total_items, Some(4));
        assert!(!page.has_next_page);
        let first = page.records[0].as_ref().unwrap();
        assert_eq!((first.id, first.language, first.active), (1, Some(2), true));
        let second = page.records[1].as_ref().unwrap_err();
        assert_eq!(second.id, Some(2));
        assert!(matches!(
            second.reason,
            InvalidReason::WrongType {
                field: "FullName",
                ..
            }
        ));
        assert_eq!(
            page.records[2].as_ref().unwrap_err().reason,
            InvalidReason::NoId
        );
        let fourth = page.records[3].as_ref().unwrap();
        assert_eq!(
            (fourth.id, fourth.full_name.clone(), fourth.active),
            (4, None, false)
        );
    }

    #[test]
    fn unusable_envelopes_are_errors() {
        assert!(decode_page(b"<html>").is_err());
        assert!(decode_page(b"[]").is_err());
        assert!(decode_page(br#"{"Records": null}"#).is_err());
        assert!(
            decode_page(br#"{"Records": []}"#).is_err(),
            "no paging information"
        );
        let p = decode_page(br#"{"Records": [], "CurrentPage": 1, "TotalPages": 3}"#).unwrap();
        assert!(p.has_next_page);
        assert_eq!(p.total_items, None);
    }

    #[test]
    fn is_admin_of_the_wrong_type_is_a_bad_record_and_missing_is_not_an_admin() {
        let body = json!({
            "Records": [
                {"Id": 1, "Active": true, "IsAdmin": "yes"},
                {"Id": 2, "Active": true, "IsAdmin": null},
                {"Id": 3, "Active": true},
                {"Id": 4, "Active": true, "IsAdmin": true},
            ],
            "HasNextPage": false,
        });
        let page = decode_page(body.to_string().as_bytes()).unwrap();
        let bad = page.records[0].as_ref().unwrap_err();
        assert!(
            matches!(
                bad.reason,
                InvalidReason::WrongType {
                    field: "IsAdmin",
                    ..
                }
            ),
            "{:?}",
            bad.reason
        );
        assert_eq!(bad.id, Some(1));
        let admin = |i: usize| page.records[i].as_ref().unwrap().is_admin;
        assert_eq!((admin(1), admin(2), admin(3)), (false, false, true));
    }

    #[test]
    fn preferred_language_id_is_read_and_language_may_be_missing() {
        let body = json!({
            "Records": [
                {"Id": 1234567890u64, "Active": true, "PreferredLanguageId": 3},
                {"Id": 987654321, "Active": true, "PreferredLanguageId": "7", "Language": 2},
                {"Id": 5, "Active": true, "PreferredLanguageId": [1]},
            ],
            "HasNextPage": false,
        });
        let page = decode_page(body.to_string().as_bytes()).unwrap();
        let first = page.records[0].as_ref().unwrap();
        assert_eq!(
            (first.id, first.language, first.preferred_language_id),
            (1234567890, None, Some(3))
        );
        let second = page.records[1].as_ref().unwrap();
        assert_eq!(
            (second.language, second.preferred_language_id),
            (Some(2), Some(7))
        );
        assert!(matches!(
            page.records[2].as_ref().unwrap_err().reason,
            InvalidReason::WrongType {
                field: "PreferredLanguageId",
                ..
            }
        ));
    }

    #[test]
    fn languages_listing_gives_the_language_of_each_culture() {
        let body = json!({
            "Records": [
                {"Id": 1, "Name": "Deutsch (Schweiz)", "Culture": "de-CH"},
                {"Id": 2, "Name": "English", "Culture": "en"},
                {"Id": 3, "Name": "Chinese", "Culture": "zh-Hant-TW"},
                {"Id": 4, "Name": "Odd", "Culture": "deu"},
                {"Id": 5, "Name": "None"},
                {"Name": "No Id", "Culture": "fr-FR"},
            ],
            "CurrentPage": 1, "TotalPages": 2,
        });
        let (languages, more) = decode_languages(body.to_string().as_bytes()).unwrap();
        assert!(more);
        assert_eq!(
            languages,
            vec![
                (1, Some("de".into())),
                (2, Some("en".into())),
                (3, Some("zh".into())),
                (4, None),
                (5, None),
            ]
        );
        assert!(decode_languages(b"<html>").is_err());
    }

    #[test]
    fn missing_active_is_invalid() {
        let r = decode_user(&json!({"Id": 9, "FullName": "A B", "Email": "a@b.c"}));
        assert_eq!(r.unwrap_err().reason, InvalidReason::FieldMissing("Active"));
    }
}
