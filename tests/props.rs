//! Property tests of the pure core (`proptest`): any Nexudus record either maps to a valid
//! nevisIDM user or is reported invalid, never a panic; mapping is deterministic; a record that
//! round-trips through the checkpoint unchanged yields no operation; an update applied to the
//! checkpoint it was computed from gives the desired user; any page body decodes or is refused
//! without a panic, each record on its own.

use nexudus_nevis_sync::config::{LoginIdSource, MappingConfig, NameSplit};
use nexudus_nevis_sync::diff::{Plan, create_body, diff, disappeared};
use nexudus_nevis_sync::mapper::{
    MAX_EMAIL_CHARS, MAX_NAME_CHARS, SourceUser, UserState, map_user,
};
use nexudus_nevis_sync::nexudus::wire::decode_page;
use nexudus_nevis_sync::store::{Lookup, Store, fingerprint};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Text as hostile as Nexudus data gets: letters, spaces, punctuation, unicode, control
/// characters, direction marks and overrides, zero-width characters, sometimes very long.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z .'-]{0,40}",
        2 => "\\PC{0,30}",
        2 => proptest::collection::vec(
            prop_oneof![
                Just('\u{0}'), Just('\u{7}'), Just('\t'), Just('\n'), Just('\u{200B}'),
                Just('\u{200E}'), Just('\u{200F}'), Just('\u{202E}'), Just('\u{2066}'),
                Just('\u{FEFF}'), Just('@'), Just(' '), Just('é'), Just('ß'), Just('漢'),
                Just('a'), Just('Z'),
            ],
            0..20,
        ).prop_map(|chars| chars.into_iter().collect()),
        1 => (1usize..400).prop_map(|n| format!("Ann {}", "x".repeat(n))),
    ]
}

fn email() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        3 => "[A-Za-z0-9._+-]{1,20}@[a-z0-9-]{1,12}\\.[a-z]{2,4}".prop_map(Some),
        2 => hostile_text().prop_map(Some),
        1 => Just(None),
    ]
}

fn source_user() -> impl Strategy<Value = SourceUser> {
    (
        any::<u64>(),
        proptest::option::of(hostile_text()),
        email(),
        proptest::option::of(any::<i64>()),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(id, full_name, email, language, active, is_admin)| SourceUser {
                id,
                full_name,
                email,
                language,
                active,
                is_admin,
                ..SourceUser::default()
            },
        )
}

fn mapping() -> impl Strategy<Value = MappingConfig> {
    (
        prop_oneof![Just(NameSplit::LastWord), Just(NameSplit::FirstWord)],
        prop_oneof![
            Just(LoginIdSource::Email),
            Just(LoginIdSource::ExtId),
            Just(LoginIdSource::None)
        ],
    )
        .prop_map(|(name_split, login_id)| MappingConfig {
            name_split,
            login_id,
            ..MappingConfig::default()
        })
}

fn clean(s: &str) -> bool {
    !s.is_empty()
        && s.trim() == s
        && !s.chars().any(|c| {
            c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_record_maps_to_a_valid_user_or_a_reason(user in source_user(), mapping in mapping()) {
        match map_user(&user, &mapping) {
            Ok(d) => {
                prop_assert!(clean(&d.first_name) && clean(&d.family_name), "{d:?}");
                prop_assert!(d.first_name.chars().count() <= MAX_NAME_CHARS);
                prop_assert!(d.family_name.chars().count() <= MAX_NAME_CHARS);
                prop_assert!(d.email.chars().count() <= MAX_EMAIL_CHARS);
                prop_assert_eq!(d.email.matches('@').count(), 1);
                prop_assert!(!d.email.chars().any(|c| c.is_whitespace() || c.is_control()));
                prop_assert_eq!(&d.ext_id, &format!("nexudus-{}", user.id));
                match mapping.login_id {
                    LoginIdSource::Email => prop_assert_eq!(&d.login_id, &d.email.to_lowercase()),
                    LoginIdSource::ExtId => prop_assert_eq!(&d.login_id, &d.ext_id),
                    LoginIdSource::None => prop_assert!(d.login_id.is_empty()),
                }
                prop_assert!(d.language_code.len() == 2
                    && d.language_code.chars().all(|c| c.is_ascii_lowercase()));
                let want = if user.active { UserState::Active } else { UserState::Disabled };
                prop_assert_eq!(d.state, want);
                // What would be sent is well-formed.
                let body = create_body(&d);
                prop_assert_eq!(&body["extId"], &json!(d.ext_id));
            }
            Err(reason) => {
                // Every reason reads as one bounded, printable line.
                let text = reason.to_string();
                prop_assert!(!text.is_empty() && text.chars().count() < 400, "{text}");
                prop_assert!(!text.chars().any(|c| c.is_control() || c == '\u{202E}'), "{text:?}");
            }
        }
    }

    #[test]
    fn mapping_is_deterministic(user in source_user(), mapping in mapping()) {
        prop_assert_eq!(map_user(&user, &mapping), map_user(&user, &mapping));
        prop_assert_eq!(map_user(&user, &mapping), map_user(&user.clone(), &mapping.clone()));
    }

    #[test]
    fn an_unchanged_record_through_the_checkpoint_yields_no_operation(
        user in source_user(),
        mapping in mapping(),
    ) {
        let Ok(desired) = map_user(&user, &mapping) else { return Ok(()) };
        let store = Store::temporary().unwrap();
        store.put(user.id, &desired).unwrap();
        prop_assert!(matches!(store.lookup(user.id, fingerprint(&desired)).unwrap(), Lookup::Same));
        let checkpoint = store.get(user.id).unwrap().unwrap();
        prop_assert_eq!(&checkpoint, &desired);
        prop_assert_eq!(diff(&desired, Some(&checkpoint)), Plan::Unchanged);
    }

    #[test]
    fn an_update_applied_to_its_checkpoint_gives_the_desired_user(
        before in source_user(),
        after in source_user(),
    ) {
        let mapping = MappingConfig::default();
        let (Ok(old), Ok(mut new)) = (map_user(&before, &mapping), map_user(&after, &mapping))
        else { return Ok(()) };
        new.ext_id = old.ext_id.clone();
        if new.login_id.eq_ignore_ascii_case(&old.login_id) {
            new.login_id = old.login_id.clone();
        }
        match diff(&new, Some(&old)) {
            Plan::Unchanged => prop_assert_eq!(&new, &old),
            Plan::Update(changes) => {
                prop_assert!(!changes.is_empty());
                let applied = changes.apply_to(&old);
                prop_assert_eq!(&applied, &new);
                prop_assert_eq!(diff(&new, Some(&applied)), Plan::Unchanged);
                // Only the changed fields travel.
                let body = changes.to_json();
                if old.language_code == new.language_code {
                    prop_assert!(body.get("languageCode").is_none());
                }
                if old.email == new.email {
                    prop_assert!(body.get("contacts").is_none());
                }
            }
            Plan::Create => prop_assert!(false, "a checkpoint exists"),
        }
        prop_assert_eq!(disappeared(&old).is_some(), old.state == UserState::Active);
    }

    #[test]
    fn any_bytes_decode_or_are_refused_without_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_page(&body);
    }

    #[test]
    fn any_records_decode_one_by_one(records in proptest::collection::vec(record(), 0..12)) {
        let page = json!({"Records": records, "HasNextPage": false, "TotalItems": records.len()});
        let decoded = decode_page(page.to_string().as_bytes()).unwrap();
        prop_assert_eq!(decoded.records.len(), records.len());
        for (raw, result) in records.iter().zip(&decoded.records) {
            let id = raw.get("Id").and_then(Value::as_u64);
            match result {
                Ok(user) => prop_assert_eq!(Some(user.id), id),
                Err(bad) => {
                    if bad.id.is_some() {
                        prop_assert_eq!(bad.id, id, "a readable Id is kept");
                    }
                }
            }
        }
    }
}

/// A Nexudus record whose fields are each sometimes right, null, missing or of the wrong type.
fn record() -> impl Strategy<Value = Value> {
    let field = |good: BoxedStrategy<Value>| {
        prop_oneof![
            4 => good,
            1 => Just(Value::Null),
            1 => Just(json!(42)),
            1 => Just(json!("text")),
            1 => Just(json!([1, 2])),
            1 => Just(json!({"nested": true})),
        ]
    };
    (
        field(any::<u32>().prop_map(|n| json!(n)).boxed()),
        field(hostile_text().prop_map(Value::from).boxed()),
        field(email().prop_map(|e| json!(e)).boxed()),
        field(any::<bool>().prop_map(Value::from).boxed()),
        field((1i64..4).prop_map(Value::from).boxed()),
        any::<[bool; 5]>(),
    )
        .prop_map(|(id, name, email, active, language, present)| {
            let mut record = serde_json::Map::new();
            for (key, value, keep) in [
                ("Id", id, present[0]),
                ("FullName", name, present[1]),
                ("Email", email, present[2]),
                ("Active", active, present[3]),
                ("Language", language, present[4]),
            ] {
                if keep {
                    record.insert(key.into(), value);
                }
            }
            Value::Object(record)
        })
}
