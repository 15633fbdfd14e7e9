//! `audit.values`: what an entry keeps of the values it records. Names and emails are personal
//! data; an operator may keep them (`full`), keep only a keyed hash of each (`hashed`: that a
//! field changed, and whether two entries saw the same value, without the value), or keep only
//! which fields changed (`none`).
//!
//! The hash is HMAC-SHA-256 under a random key made for this store and kept in it: an entry
//! copied elsewhere (a SIEM, a ticket) cannot be matched against a list of known emails.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::entry::Change;
use crate::config::AuditValues;
use crate::store::{Store, StoreError};

/// The store's `meta` key of the hashing key (hex).
const KEY_NAME: &str = "audit_hash_key";
/// Hex digits of the hash kept: 64 bits tell values apart and keep entries short.
const KEPT_HEX: usize = 16;

/// Applies `audit.values` to the changes of an entry.
#[derive(Clone)]
pub enum Redact {
    Full,
    Hashed(Vec<u8>),
    None,
}

impl std::fmt::Debug for Redact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret.
        f.write_str(match self {
            Redact::Full => "Full",
            Redact::Hashed(_) => "Hashed",
            Redact::None => "None",
        })
    }
}

impl Redact {
    /// The redaction `values` asks for; `hashed` reads the store's key, making it the first
    /// time.
    pub fn new(values: AuditValues, store: &Store) -> Result<Redact, StoreError> {
        Ok(match values {
            AuditValues::Full => Redact::Full,
            AuditValues::None => Redact::None,
            AuditValues::Hashed => Redact::Hashed(key(store)?),
        })
    }

    pub fn apply(&self, changes: Vec<Change>) -> Vec<Change> {
        match self {
            Redact::Full => changes,
            Redact::None => changes
                .into_iter()
                .map(|c| Change {
                    field: c.field,
                    before: None,
                    after: None,
                })
                .collect(),
            Redact::Hashed(key) => changes
                .into_iter()
                .map(|c| Change {
                    before: c.before.map(|v| hash(key, &v)),
                    after: c.after.map(|v| hash(key, &v)),
                    field: c.field,
                })
                .collect(),
        }
    }

    /// A free text that may quote values (a refusal's message, an invalid record's reason):
    /// under `hashed` and `none`, each of `values` and anything in double quotes is withheld.
    pub fn text(&self, text: String, values: &[&str]) -> String {
        if let Redact::Full = self {
            return text;
        }
        let mut out = text;
        for value in values.iter().filter(|v| v.chars().count() >= 2) {
            out = replace_ignoring_ascii_case(&out, value);
        }
        withhold_quoted(&out)
    }
}

/// `text` with every occurrence of `value`, in any ASCII case, replaced by [`WITHHELD`].
fn replace_ignoring_ascii_case(text: &str, value: &str) -> String {
    let (hay, needle) = (text.as_bytes(), value.as_bytes());
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    let mut copied = 0;
    while at + needle.len() <= hay.len() {
        // Both ends on character boundaries: a match is always whole characters.
        if text.is_char_boundary(at)
            && text.is_char_boundary(at + needle.len())
            && hay[at..at + needle.len()].eq_ignore_ascii_case(needle)
        {
            out.push_str(&text[copied..at]);
            out.push_str(WITHHELD);
            at += needle.len();
            copied = at;
        } else {
            at += 1;
        }
    }
    out.push_str(&text[copied..]);
    out
}

const WITHHELD: &str = "[withheld]";

/// `text` with every double-quoted part replaced by [`WITHHELD`].
fn withhold_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut parts = text.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    let rest: Vec<&str> = parts.collect();
    let mut i = 0;
    while i < rest.len() {
        if i + 1 < rest.len() {
            // An opening quote with its closing one.
            out.push_str(WITHHELD);
            out.push_str(rest[i + 1]);
            i += 2;
        } else {
            // A lone quote: keep it and what follows.
            out.push('"');
            out.push_str(rest[i]);
            i += 1;
        }
    }
    out
}

fn hash(key: &[u8], value: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any size");
    mac.update(value.as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("hmac:{}", &hex[..KEPT_HEX])
}

/// The store's hashing key, made (32 random bytes) the first time.
fn key(store: &Store) -> Result<Vec<u8>, StoreError> {
    if let Some(hex) = store.secret(KEY_NAME)?
        && let Some(key) = from_hex(&hex)
    {
        return Ok(key);
    }
    let mut key = vec![0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| StoreError::Io(format!("no randomness for the log's hashing key: {e}")))?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    store.set_secret(KEY_NAME, &hex)?;
    Ok(key)
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change() -> Vec<Change> {
        vec![Change {
            field: "contacts.email".into(),
            before: Some("ada@example.com".into()),
            after: Some("ada@lovelace.org".into()),
        }]
    }

    #[test]
    fn hashed_values_keep_no_plain_value_and_stay_comparable_in_one_store() {
        let store = Store::temporary().unwrap();
        let redact = Redact::new(AuditValues::Hashed, &store).unwrap();
        let once = redact.apply(change());
        let again = Redact::new(AuditValues::Hashed, &store)
            .unwrap()
            .apply(change());
        assert_eq!(once, again, "the key is kept");
        let text = serde_json::to_string(&once).unwrap();
        assert!(!text.contains("ada@"), "{text}");
        assert!(once[0].before.as_deref().unwrap().starts_with("hmac:"));
        assert_ne!(once[0].before, once[0].after);
        let other = Store::temporary().unwrap();
        let elsewhere = Redact::new(AuditValues::Hashed, &other)
            .unwrap()
            .apply(change());
        assert_ne!(once, elsewhere, "another store has another key");
    }

    #[test]
    fn none_keeps_only_the_field() {
        let store = Store::temporary().unwrap();
        let kept = Redact::new(AuditValues::None, &store)
            .unwrap()
            .apply(change());
        assert_eq!(kept[0].field, "contacts.email");
        assert_eq!(
            (kept[0].before.as_ref(), kept[0].after.as_ref()),
            (None, None)
        );
        let reason = "nevisIDM rejected ada@example.com: email \"ada@example.com\" taken".into();
        assert_eq!(
            Redact::None.text(reason, &["ada@example.com"]),
            "nevisIDM rejected [withheld]: email [withheld] taken"
        );
        assert_eq!(
            withhold_quoted(r#"a "b" c "d" e "f"#),
            r#"a [withheld] c [withheld] e "f"#
        );
        assert_eq!(Redact::Full.text("x \"y\"".into(), &["x"]), "x \"y\"");
    }
}
