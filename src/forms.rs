//! The directory's own form: nevisIDM may keep a value in another form than it was sent (emails
//! lower-cased, names normalized, whitespace trimmed, or a form nobody foresaw). The equivalence
//! rules ([`crate::diff::equivalent`]) cover the forms known in advance; this module learns the
//! others, so that the sync never fights the directory.
//!
//! A difference that survives a confirmed write is the directory's form, not drift:
//! - when nevisIDM answers a PATCH with the user, a field it holds differently from what was sent
//!   is learned at once;
//! - otherwise, when a reconcile writes a value over a different held one, the pair (sent, held)
//!   becomes a *suspect*; the next read that shows the same held value for the same sent value
//!   learns it (a hand edit shows another value, and is drift again).
//!
//! A learned form is kept per user and field beside the checkpoint, as (value sent, value held):
//! a read showing exactly that reads as the value sent — no write, no drift. A real change in
//! Nexudus (another value to send) no longer matches it and is written as always; a read showing
//! the value as sent forgets it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::diff::{Changes, Field, Observed, changes_between, equivalent};
use crate::mapper::DesiredUser;

/// What nevisIDM holds for a value sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Form {
    pub sent: String,
    pub held: String,
}

/// The forms of one user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forms {
    /// nevisIDM keeps these values in its own form.
    #[serde(default)]
    pub learned: BTreeMap<Field, Form>,
    /// Values written over a different held value, not read back since.
    #[serde(default)]
    pub suspects: BTreeMap<Field, Form>,
}

/// A user as a reconcile reads it through the forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// What to send: the differences neither the rules nor a form explain.
    pub changes: Changes,
    /// Forms learned by this read (suspects confirmed).
    pub learned: Vec<(Field, Form)>,
    /// The forms to keep with the checkpoint once the changes (if any) are confirmed.
    pub forms: Forms,
}

impl Forms {
    pub fn is_empty(&self) -> bool {
        self.learned.is_empty() && self.suspects.is_empty()
    }

    /// Compares `desired` with what nevisIDM holds (`seen`), through the forms.
    pub fn read(&self, desired: &DesiredUser, seen: &Observed) -> Reading {
        let mut through = seen.clone();
        let mut forms = Forms::default();
        let mut learned = Vec::new();
        for field in Field::ALL {
            let (want, Some(have)) = (field.of(desired), field.seen(seen)) else {
                continue;
            };
            if equivalent(field, want, have) {
                continue; // held as sent: nothing to remember
            }
            let form = Form {
                sent: want.to_string(),
                held: have.to_string(),
            };
            if self.learned.get(&field) == Some(&form) {
                forms.learned.insert(field, form);
            } else if self.suspects.get(&field) == Some(&form) {
                learned.push((field, form.clone()));
                forms.learned.insert(field, form);
            } else {
                continue;
            }
            field.set_seen(&mut through, want);
        }
        let changes = changes_between(desired, &through);
        for field in Field::ALL {
            let (want, Some(have)) = (field.of(desired), field.seen(&through)) else {
                continue;
            };
            if !equivalent(field, want, have) && sends(&changes, field) {
                let form = Form {
                    sent: want.to_string(),
                    held: have.to_string(),
                };
                forms.suspects.insert(field, form);
            }
        }
        Reading {
            changes,
            learned,
            forms,
        }
    }

    /// Learns from nevisIDM's answer to a PATCH of `changes` towards `after`: every field sent
    /// that the answer holds in another form. Suspects of the fields sent are settled by it.
    pub fn learn_from_answer(
        &mut self,
        after: &DesiredUser,
        changes: &Changes,
        answer: &Observed,
    ) -> Vec<(Field, Form)> {
        let mut learned = Vec::new();
        for field in Field::ALL.into_iter().filter(|f| sends(changes, *f)) {
            self.suspects.remove(&field);
            let want = field.of(after);
            match field.seen(answer) {
                Some(have) if !equivalent(field, want, have) => {
                    let form = Form {
                        sent: want.to_string(),
                        held: have.to_string(),
                    };
                    if self.learned.insert(field, form.clone()).as_ref() != Some(&form) {
                        learned.push((field, form));
                    }
                }
                _ => {
                    self.learned.remove(&field);
                }
            }
        }
        learned
    }
}

/// Whether `changes` sends `field`.
fn sends(changes: &Changes, field: Field) -> bool {
    match field {
        Field::LoginId => changes.login_id.is_some(),
        Field::FirstName | Field::FamilyName => changes.name.is_some(),
        Field::Email => changes.email.is_some(),
        Field::LanguageCode => changes.language_code.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapper::UserState;

    fn desired() -> DesiredUser {
        DesiredUser {
            ext_id: "nexudus-1".into(),
            login_id: "anna@example.com".into(),
            first_name: "Anna".into(),
            family_name: "García".into(),
            email: "Anna@Example.com".into(),
            language_code: "en".into(),
            state: UserState::Active,
            properties: Default::default(),
        }
    }

    fn held(edit: impl FnOnce(&mut Observed)) -> Observed {
        let mut seen = Observed::from(&desired());
        seen.properties_complete = false;
        edit(&mut seen);
        seen
    }

    #[test]
    fn forms_the_rules_cover_are_no_change_and_nothing_to_learn() {
        let seen = held(|s| {
            s.email = Some("anna@example.com".into());
            s.family_name = Some("Garci\u{301}a".into()); // decomposed
            s.first_name = Some(" Anna ".into());
        });
        let reading = Forms::default().read(&desired(), &seen);
        assert!(reading.changes.is_empty(), "{:?}", reading.changes);
        assert!(reading.forms.is_empty() && reading.learned.is_empty());
    }

    #[test]
    fn a_difference_that_survives_a_write_is_learned_on_the_next_read() {
        let seen = held(|s| s.family_name = Some("GARCÍA".into()));
        // First read: a difference, written, and remembered as a suspect.
        let first = Forms::default().read(&desired(), &seen);
        assert!(first.changes.name.is_some());
        assert!(first.learned.is_empty());
        assert_eq!(first.forms.suspects[&Field::FamilyName].held, "GARCÍA");
        // Second read after the write: the same held value is the directory's form.
        let second = first.forms.read(&desired(), &seen);
        assert!(second.changes.is_empty());
        assert_eq!(second.learned.len(), 1);
        assert!(second.forms.suspects.is_empty());
        // Third read: known, nothing learned again.
        let third = second.forms.read(&desired(), &seen);
        assert!(third.changes.is_empty() && third.learned.is_empty());
        assert_eq!(third.forms, second.forms);
    }

    #[test]
    fn a_hand_edit_after_a_write_is_drift_and_a_real_change_is_written() {
        let seen = held(|s| s.family_name = Some("GARCÍA".into()));
        let first = Forms::default().read(&desired(), &seen);
        let edited = held(|s| s.family_name = Some("Somebody".into()));
        let again = first.forms.read(&desired(), &edited);
        assert!(again.changes.name.is_some() && again.learned.is_empty());
        // Learned, then Nexudus changes the name: written.
        let learned = first.forms.read(&desired(), &seen).forms;
        let mut renamed = desired();
        renamed.family_name = "Lopez".into();
        let reading = learned.read(&renamed, &seen);
        assert!(reading.changes.name.is_some());
        assert!(
            reading.forms.learned.is_empty(),
            "a stale form is forgotten"
        );
    }

    #[test]
    fn a_patch_answer_teaches_at_once() {
        let mut forms = Forms::default();
        let changes = Changes {
            email: Some("Anna@Example.com".into()),
            name: Some(("Anna".into(), "García".into())),
            ..Changes::default()
        };
        let answer = held(|s| {
            s.email = Some("anna@example.com".into()); // the rules cover it
            s.family_name = Some("GARCÍA".into());
        });
        let learned = forms.learn_from_answer(&desired(), &changes, &answer);
        assert_eq!(learned.len(), 1);
        assert_eq!(learned[0].0, Field::FamilyName);
        assert!(forms.read(&desired(), &answer).changes.is_empty());
        // The same answer again teaches nothing new.
        assert!(
            forms
                .learn_from_answer(&desired(), &changes, &answer)
                .is_empty()
        );
    }
}
