//! How the fake nevisIDM keeps values, each behind a switch of [`super::FakeNevis`]: the forms a
//! real directory may keep a value in (emails lower-cased, names in Unicode NFC, whitespace
//! trimmed, and one no equivalence rule foresees: family names upper-cased), values a PATCH is
//! answered for but does not change (a policy or a read-only attribute keeping the old one), and
//! its documented limits enforced with `422 errors.invalidData`, one error item per value that
//! breaks one.

use serde_json::{Map, Value, json};
use unicode_normalization::UnicodeNormalization;

/// The forms the fake keeps values in (all off: as sent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredForms {
    pub lower_case_emails: bool,
    pub nfc_names: bool,
    pub trimmed: bool,
    /// A form the sync's rules do not know: it must learn it.
    pub upper_case_family_names: bool,
    /// Names in Unicode NFKC (compatibility characters such as full-width letters or ligatures
    /// in their plain form): another form the rules do not know, learned too.
    pub nfkc_names: bool,
}

impl StoredForms {
    /// Rewrites the values of `user` into the forms switched on.
    pub fn keep(&self, user: &mut Map<String, Value>) {
        let mut edit = |path: [&str; 2], f: &dyn Fn(&str) -> String| {
            let slot = match path {
                [top, ""] => user.get_mut(top),
                [top, nested] => user.get_mut(top).and_then(|v| v.get_mut(nested)),
            };
            if let Some(value) = slot
                && let Some(text) = value.as_str()
            {
                *value = json!(f(text));
            }
        };
        if self.trimmed {
            for path in [
                ["name", "firstName"],
                ["name", "familyName"],
                ["contacts", "email"],
            ] {
                edit(path, &|s| s.trim().to_string());
            }
        }
        if self.lower_case_emails {
            edit(["contacts", "email"], &|s| s.to_lowercase());
        }
        if self.nfc_names {
            for path in [["name", "firstName"], ["name", "familyName"]] {
                edit(path, &|s| s.nfc().collect());
            }
        }
        if self.upper_case_family_names {
            edit(["name", "familyName"], &|s| s.to_uppercase());
        }
        if self.nfkc_names {
            for path in [["name", "firstName"], ["name", "familyName"]] {
                edit(path, &|s| s.nfkc().collect());
            }
        }
    }
}

/// The fields a PATCH leaves as they were although it is answered `200` with the user: each of
/// `paths` (`contacts.email`, `name.familyName`, `languageCode`) gets its value in `before` back.
pub fn keep_old(before: &Map<String, Value>, user: &mut Map<String, Value>, paths: &[String]) {
    for path in paths {
        let (top, nested) = path.split_once('.').unwrap_or((path, ""));
        let old = match nested {
            "" => before.get(top),
            nested => before.get(top).and_then(|v| v.get(nested)),
        };
        let Some(old) = old.cloned() else { continue };
        match nested {
            "" => {
                user.insert(top.to_string(), old);
            }
            nested => {
                if let Some(Value::Object(inner)) = user.get_mut(top) {
                    inner.insert(nested.to_string(), old);
                }
            }
        }
    }
}

/// nevisIDM's documented limits: `(field, message)` for every value of `user` that breaks one
/// (strings at most 4,000 characters, `loginId` at most 300 printable ASCII characters without
/// spaces, `extId` 1–129 characters).
pub fn breaches(user: &Map<String, Value>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(ext_id) = text(user, &["extId"]) {
        let n = ext_id.chars().count();
        if !(1..=129).contains(&n) {
            let message = format!("The extId must have 1 to 129 characters, not {n}.");
            out.push(("extId".to_string(), message));
        }
    }
    if let Some(login) = text(user, &["loginId"])
        && (login.chars().count() > 300 || !login.chars().all(|c| c.is_ascii_graphic()))
    {
        out.push((
            "loginId".into(),
            "The loginId must be at most 300 printable ASCII characters without spaces.".into(),
        ));
    }
    for path in [
        &["name", "firstName"][..],
        &["name", "familyName"],
        &["contacts", "email"],
        &["languageCode"],
    ] {
        if text(user, path).is_some_and(|v| v.chars().count() > 4000) {
            let field = path.join(".");
            let message = format!("The field '{field}' is longer than 4000 characters.");
            out.push((field, message));
        }
    }
    out
}

/// The text at `path` in `user`, if there is one.
fn text<'a>(user: &'a Map<String, Value>, path: &[&str]) -> Option<&'a str> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(user.get(*first)?, |v, k| v.get(*k))?
        .as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> Map<String, Value> {
        let v = json!({
            "extId": "nexudus-1",
            "loginId": "anna@example.com",
            "name": {"firstName": " Anna ", "familyName": "Garci\u{301}a"},
            "contacts": {"email": "Anna@Example.com"},
            "languageCode": "en",
        });
        v.as_object().unwrap().clone()
    }

    #[test]
    fn each_switch_keeps_its_form() {
        let mut u = user();
        StoredForms {
            lower_case_emails: true,
            nfc_names: true,
            trimmed: true,
            ..StoredForms::default()
        }
        .keep(&mut u);
        assert_eq!(u["contacts"]["email"], "anna@example.com");
        assert_eq!(u["name"]["firstName"], "Anna");
        assert_eq!(u["name"]["familyName"], "García");
        let mut u = user();
        StoredForms {
            upper_case_family_names: true,
            ..StoredForms::default()
        }
        .keep(&mut u);
        assert_eq!(u["name"]["familyName"], "GARCI\u{301}A");
        let mut u = user();
        u["name"]["familyName"] = json!("\u{ff27}arci\u{301}a"); // a full-width G
        StoredForms {
            nfkc_names: true,
            ..StoredForms::default()
        }
        .keep(&mut u);
        assert_eq!(u["name"]["familyName"], "García");
    }

    #[test]
    fn a_kept_field_keeps_its_old_value_and_the_others_change() {
        let before = user();
        let mut after = user();
        after["contacts"]["email"] = json!("new@example.com");
        after["name"]["familyName"] = json!("Lopez");
        after.insert("languageCode".into(), json!("de"));
        let paths = ["contacts.email".to_string(), "languageCode".to_string()];
        keep_old(&before, &mut after, &paths);
        assert_eq!(after["contacts"]["email"], "Anna@Example.com");
        assert_eq!(after["languageCode"], "en");
        assert_eq!(after["name"]["familyName"], "Lopez");
    }

    #[test]
    fn every_breach_is_an_item() {
        assert!(breaches(&user()).is_empty());
        let mut u = user();
        u.insert("extId".into(), json!("x".repeat(130)));
        u.insert("loginId".into(), json!("anna maria"));
        u["name"]["firstName"] = json!("n".repeat(4001));
        let fields: Vec<String> = breaches(&u).into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["extId", "loginId", "name.firstName"]);
    }
}
