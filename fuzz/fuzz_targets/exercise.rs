// Shared by the fuzz target and `tests/fuzz_corpus.rs` (included with `include!`): a Nexudus
// listing page body through the decoder, every decoded user through the mapper (under each name
// split and loginId source), and every mapped user through the diff against a changed copy of
// itself. Nothing here may panic, whatever the bytes.

fn exercise(body: &[u8]) {
    use nexudus_nevis_sync::config::{LoginIdSource, MappingConfig, NameSplit};
    use nexudus_nevis_sync::diff::{Plan, create_body, diff, disappeared};
    use nexudus_nevis_sync::mapper::map_user;
    use nexudus_nevis_sync::nexudus::wire::decode_page;

    let Ok(page) = decode_page(body) else { return };
    for split in [NameSplit::LastWord, NameSplit::FirstWord] {
        for login in [LoginIdSource::Email, LoginIdSource::ExtId, LoginIdSource::None] {
            let mapping = MappingConfig {
                name_split: split,
                login_id: login,
                ..MappingConfig::default()
            };
            for user in page.records.iter().flatten() {
                let Ok(desired) = map_user(user, &mapping) else { continue };
                let _ = create_body(&desired);
                assert_eq!(diff(&desired, Some(&desired)), Plan::Unchanged);
                let mut changed = desired.clone();
                changed.first_name.push('x');
                let Plan::Update(changes) = diff(&changed, Some(&desired)) else {
                    panic!("a changed name must be an update");
                };
                assert_eq!(changes.apply_to(&desired), changed);
                let _ = changes.to_json();
                let _ = disappeared(&desired);
            }
        }
    }
}
