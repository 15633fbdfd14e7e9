//! The causes of writes, in words, as the log records them: one place for each phrase, so the
//! same reason always reads the same (and can be searched for).

use crate::diff::Changes;
use crate::mapper::UserState;

/// A Nexudus user nevisIDM does not have yet.
pub const NEW_IN_NEXUDUS: &str = "new in Nexudus";
/// The user's checkpoint says it exists, nevisIDM says it does not (removed by hand).
pub const MISSING_IN_NEVIS: &str = "missing from nevisIDM (removed by hand?); created again";
/// A reconcile found nevisIDM differing from Nexudus in a field the sync owns.
pub const HAND_EDIT_SET_BACK: &str = "hand edit set back by reconcile";
/// A reconcile re-enables a user disabled by hand while active in Nexudus.
pub const HAND_DISABLE_UNDONE: &str = "disabled by hand in nevisIDM while active in Nexudus; \
     enabled again by reconcile (sync.reenable_on_reconcile)";
/// A reconcile leaves a user disabled by hand while active in Nexudus.
pub const HAND_DISABLE_KEPT: &str = "disabled by hand in nevisIDM while active in Nexudus";
/// The deletion rule, after Nexudus answered the look-up with 404.
pub const GONE_CONFIRMED: &str = "gone from Nexudus, confirmed by look-up";
/// Not listed any more; not looked up (the deletion safety held the batch first).
pub const NOT_LISTED: &str = "no longer listed by Nexudus (not looked up: the batch was held)";
/// Listed by Nexudus, but outside `[scope]` now.
pub const LEFT_SCOPE: &str = "listed by Nexudus outside [scope]";
/// `sync.adopt = "email"` found one pre-existing user.
pub const ADOPTED: &str =
    "a nevisIDM user with the same loginId or email existed (sync.adopt = \"email\")";
/// The record cannot be mapped.
pub const INVALID_RECORD: &str = "the Nexudus record cannot be mapped";
/// A grant found the role already on the profile (granted by hand, or by an earlier grant whose
/// answer was lost or came after a stop): nothing was granted, the role is the sync's from now on.
pub const ROLE_ALREADY_HELD: &str = "already held; now owned (granted by hand, or by an earlier \
     grant whose answer was lost)";
/// A write still unanswered when the shutdown grace ran out.
pub const ABANDONED_AT_SHUTDOWN: &str = "abandoned at shutdown: not confirmed within \
     sync.shutdown_grace; the next run finds out whether nevisIDM made it";

/// An ordinary run's update: which Nexudus fields changed, or that `Active` flipped.
pub fn update(changes: &Changes) -> String {
    let mut causes = Vec::new();
    match changes.state {
        Some(UserState::Active) => causes.push("Active set to true in Nexudus".to_string()),
        Some(UserState::Disabled | UserState::Archived) => {
            causes.push("Active set to false in Nexudus".to_string())
        }
        None => {}
    }
    let mut fields = Vec::new();
    if changes.name.is_some() {
        fields.push("FullName");
    }
    if changes.email.is_some() {
        fields.push("Email");
    }
    if changes.language_code.is_some() {
        fields.push("Language");
    }
    if !fields.is_empty() {
        causes.push(format!("{} changed in Nexudus", fields.join(", ")));
    }
    if changes.login_id.is_some() {
        causes.push("the loginId the mapping derives changed (mapping.login_id)".into());
    }
    if !changes.properties.is_empty() {
        causes.push("mapping.properties changed".into());
    }
    causes.join("; ")
}

/// A create: new, or created again.
pub fn create(known_before: bool) -> &'static str {
    if known_before {
        MISSING_IN_NEVIS
    } else {
        NEW_IN_NEXUDUS
    }
}

/// A reconcile's update.
pub fn reconcile(changes: &Changes) -> &'static str {
    if changes.state == Some(UserState::Active) {
        HAND_DISABLE_UNDONE
    } else {
        HAND_EDIT_SET_BACK
    }
}

/// An archive after `sync.archive_after`.
pub fn archive(after: std::time::Duration) -> String {
    format!(
        "disabled longer than sync.archive_after ({})",
        humantime::format_duration(after)
    )
}

/// A disable of a user who vanished: listed outside the scope, or gone.
pub fn vanished(listed: bool) -> &'static str {
    if listed { LEFT_SCOPE } else { GONE_CONFIRMED }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_names_what_changed_in_nexudus() {
        let off = Changes {
            state: Some(UserState::Disabled),
            ..Changes::default()
        };
        assert_eq!(update(&off), "Active set to false in Nexudus");
        let renamed = Changes {
            name: Some(("A".into(), "B".into())),
            email: Some("a@b.c".into()),
            ..Changes::default()
        };
        assert_eq!(update(&renamed), "FullName, Email changed in Nexudus");
    }
}
