//! nevisIDM's documented limits, checked before any request (pure): strings at most 4,000
//! characters; `loginId` at most 300 printable ASCII characters without spaces; identifiers
//! (`extId`) 1–129 characters. A user whose mapped values break one is invalid, with a reason
//! naming the field and the limit — reported, never sent to be refused. A leaf: the mapper checks
//! each user with it, the config checks `mapping.ext_id_prefix` against it.

/// Longest string nevisIDM stores.
pub const MAX_STRING_CHARS: usize = 4000;
/// Longest `loginId`.
pub const MAX_LOGIN_ID_CHARS: usize = 300;
/// Longest identifier (`extId`).
pub const MAX_EXT_ID_CHARS: usize = 129;

/// A limit a mapped user breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} breaks nevisIDM's limit ({limit}): {got}")]
pub struct Breach {
    pub field: String,
    pub limit: &'static str,
    /// What the value is instead (its length, or the character that is not allowed).
    pub got: String,
}

/// The first limit a user's values break, if any: its `extId`, its `loginId` (empty: nevisIDM
/// generates one) and every other string, each with the field it goes to.
pub fn check<'a>(
    ext_id_value: &str,
    login_id_value: &str,
    strings: impl IntoIterator<Item = (String, &'a str)>,
) -> Result<(), Breach> {
    ext_id(ext_id_value)?;
    if !login_id_value.is_empty() {
        login_id(login_id_value)?;
    }
    for (field, value) in strings {
        string(&field, value)?;
    }
    Ok(())
}

/// 1–129 characters.
pub fn ext_id(value: &str) -> Result<(), Breach> {
    let n = value.chars().count();
    if (1..=MAX_EXT_ID_CHARS).contains(&n) {
        return Ok(());
    }
    Err(Breach {
        field: "extId".into(),
        limit: "1 to 129 characters",
        got: format!("{n} characters"),
    })
}

/// At most 300 printable ASCII characters, no spaces.
fn login_id(value: &str) -> Result<(), Breach> {
    let limit = "at most 300 printable ASCII characters without spaces";
    let n = value.chars().count();
    if n > MAX_LOGIN_ID_CHARS {
        return Err(Breach {
            field: "loginId".into(),
            limit,
            got: format!("{n} characters"),
        });
    }
    match value.chars().find(|c| !c.is_ascii_graphic()) {
        None => Ok(()),
        Some(c) => Err(Breach {
            field: "loginId".into(),
            limit,
            got: format!("contains {:?} (U+{:04X})", c, u32::from(c)),
        }),
    }
}

fn string(field: &str, value: &str) -> Result<(), Breach> {
    let n = value.chars().count();
    if n <= MAX_STRING_CHARS {
        return Ok(());
    }
    Err(Breach {
        field: field.to_string(),
        limit: "at most 4,000 characters",
        got: format!("{n} characters"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct User {
        ext_id: String,
        login_id: String,
        note: String,
    }

    fn user() -> User {
        User {
            ext_id: "nexudus-1".into(),
            login_id: "anna@example.com".into(),
            note: "García".into(),
        }
    }

    fn judge(u: &User) -> Result<(), Breach> {
        check(
            &u.ext_id,
            &u.login_id,
            [("properties.note".to_string(), u.note.as_str())],
        )
    }

    #[test]
    fn a_user_within_every_limit_passes() {
        assert_eq!(judge(&user()), Ok(()));
        let mut generated = user();
        generated.login_id.clear();
        assert_eq!(
            judge(&generated),
            Ok(()),
            "an empty loginId is nevisIDM's to make"
        );
    }

    #[test]
    fn each_limit_names_its_field() {
        type Edit = fn(&mut User);
        let cases: [(Edit, &str); 6] = [
            (|u| u.ext_id = "x".repeat(130), "extId"),
            (|u| u.ext_id.clear(), "extId"),
            (|u| u.login_id = "a".repeat(301), "loginId"),
            (|u| u.login_id = "anna maria@example.com".into(), "loginId"),
            (|u| u.login_id = "zoë@example.com".into(), "loginId"),
            (|u| u.note = "n".repeat(4001), "properties.note"),
        ];
        for (edit, field) in cases {
            let mut u = user();
            edit(&mut u);
            let breach = judge(&u).unwrap_err();
            assert_eq!(breach.field, field, "{breach}");
        }
        let at_limit = User {
            ext_id: "x".repeat(129),
            login_id: "a".repeat(300),
            note: "n".repeat(4000),
        };
        assert_eq!(judge(&at_limit), Ok(()));
    }
}
