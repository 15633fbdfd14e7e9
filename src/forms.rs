//! The directory's own form: nevisIDM may keep a value in another form than it was sent (emails
//! lower-cased, names normalized, whitespace trimmed, or a form nobody foresaw). The equivalence
//! rules ([`crate::diff::equivalent`]) cover the forms known in advance; this module learns the
//! others, so that the sync never fights the directory — but only forms that are still the value
//! sent. A held value is a form of the sent one when a [`Normalisation`] (case, Unicode
//! compatibility form, whitespace) makes the two the same; any other difference after a confirmed
//! write means nevisIDM did not take the value (a policy, a read-only attribute): that is a
//! refusal to report ([`not_taken`]), never a form.
//!
//! A difference that survives a confirmed write is the directory's form, not drift:
//! - when nevisIDM answers a PATCH with the user, a field it holds differently from what was sent
//!   is learned at once;
//! - otherwise, when a reconcile writes a value over a different held one, the pair (sent, held)
//!   becomes a *suspect*; the next read that shows the same held value for the same sent value
//!   learns it (a hand edit shows another value, and is drift again), or, when the held value is
//!   no form of the sent one, finds it not taken ([`Reading::not_taken`]).
//!
//! A learned form is kept per user and field beside the checkpoint, as (value sent, value held):
//! a read showing exactly that reads as the value sent — no write, no drift. A real change in
//! Nexudus (another value to send) no longer matches it and is written as always; a read showing
//! the value as sent forgets it. A form kept by an older version that is no normalisation of the
//! value sent is dropped when read ([`Forms::kept`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use unicode_normalization::UnicodeNormalization;

use crate::diff::{Changes, Field, Observed, changes_between, equivalent};
use crate::mapper::DesiredUser;

/// A way a directory may rewrite a value and still hold the same value. Each is named so that a
/// form can be told from a value nevisIDM did not take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalisation {
    /// Leading and trailing whitespace trimmed, inner runs collapsed to one space.
    Whitespace,
    /// Unicode compatibility composition (NFKC): composed accents (NFC) and compatibility
    /// characters (full-width letters, ligatures) in their plain form.
    Unicode,
    /// Letter case (Unicode lower case): "GARCÍA" is "García".
    Case,
}

impl Normalisation {
    pub const ALL: [Normalisation; 3] = [
        Normalisation::Whitespace,
        Normalisation::Unicode,
        Normalisation::Case,
    ];

    /// `value` in this normalisation's one form.
    pub fn apply(self, value: &str) -> String {
        match self {
            Normalisation::Whitespace => value.split_whitespace().collect::<Vec<_>>().join(" "),
            Normalisation::Unicode => value.nfkc().collect(),
            Normalisation::Case => value.to_lowercase(),
        }
    }
}

/// `value` under every rule of `rules`, in order (Unicode again last: lower-casing may leave a
/// character that composes).
fn canonical(value: &str, rules: &[Normalisation]) -> String {
    let once = rules
        .iter()
        .fold(value.to_string(), |v, rule| rule.apply(&v));
    if rules.contains(&Normalisation::Unicode) {
        Normalisation::Unicode.apply(&once)
    } else {
        once
    }
}

/// Whether `held` is `sent` as a directory may keep it: the same once every [`Normalisation`] is
/// applied to both.
pub fn is_form_of(sent: &str, held: &str) -> bool {
    canonical(sent, &Normalisation::ALL) == canonical(held, &Normalisation::ALL)
}

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
    /// Values written over a different held value that this read still shows held as before,
    /// when that is no form of the value sent: nevisIDM did not take them (the changes send
    /// them again).
    pub not_taken: Vec<(Field, Form)>,
    /// The forms to keep with the checkpoint once the changes (if any) are confirmed.
    pub forms: Forms,
}

impl Forms {
    pub fn is_empty(&self) -> bool {
        self.learned.is_empty() && self.suspects.is_empty()
    }

    /// The forms as kept by an older version, without those that are no form of the value sent
    /// (an older version learned any difference that survived a write).
    pub fn kept(mut self) -> Forms {
        self.learned
            .retain(|_, form| is_form_of(&form.sent, &form.held));
        self
    }

    /// Compares `desired` with what nevisIDM holds (`seen`), through the forms.
    pub fn read(&self, desired: &DesiredUser, seen: &Observed) -> Reading {
        let mut through = seen.clone();
        let mut forms = Forms::default();
        let mut learned = Vec::new();
        let mut not_taken = Vec::new();
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
            let suspected = self.suspects.get(&field) == Some(&form);
            if !is_form_of(&form.sent, &form.held) {
                if suspected {
                    not_taken.push((field, form));
                }
                continue;
            }
            if self.learned.get(&field) == Some(&form) {
                forms.learned.insert(field, form);
            } else if suspected {
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
            not_taken,
            forms,
        }
    }

    /// Learns from nevisIDM's answer to a PATCH of `changes` towards `after`: every field sent
    /// that the answer holds in another form. Suspects of the fields sent are settled by it. A
    /// field held as no form of the value sent is not learned ([`not_taken`] finds it).
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
                Some(have) if !equivalent(field, want, have) && !is_form_of(want, have) => {}
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

/// The fields `changes` sent towards `after` that nevisIDM's `answer` (after a confirmed write)
/// holds as neither the value sent nor a form of it: values nevisIDM did not take. A field the
/// answer does not show is taken as written (nothing says otherwise).
pub fn not_taken(after: &DesiredUser, changes: &Changes, answer: &Observed) -> Vec<(Field, Form)> {
    Field::ALL
        .into_iter()
        .filter(|f| sends(changes, *f))
        .filter_map(|field| {
            let (want, have) = (field.of(after), field.seen(answer)?);
            let taken = equivalent(field, want, have) || is_form_of(want, have);
            (!taken).then(|| {
                let form = Form {
                    sent: want.to_string(),
                    held: have.to_string(),
                };
                (field, form)
            })
        })
        .collect()
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
    fn each_normalisation_makes_a_form_and_none_is_redundant() {
        let pairs = [
            (Normalisation::Whitespace, "Anna Maria", " Anna   Maria "),
            (Normalisation::Unicode, "García", "Garci\u{301}a"), // NFD
            (Normalisation::Unicode, "Office", "O\u{fb03}ce"),   // the ligature "ffi"
            (Normalisation::Unicode, "anna", "\u{ff41}nna"),     // a full-width letter
            (Normalisation::Case, "García", "GARCÍA"),
        ];
        for (rule, sent, held) in pairs {
            assert!(is_form_of(sent, held), "{rule:?}: {held:?} is {sent:?}");
            let without: Vec<Normalisation> = Normalisation::ALL
                .into_iter()
                .filter(|r| *r != rule)
                .collect();
            assert_ne!(
                canonical(sent, &without),
                canonical(held, &without),
                "{rule:?} is needed for {held:?}"
            );
        }
        // All at once: trimmed, upper-cased and decomposed is still the name.
        assert!(is_form_of("Zoé García", "  ZOE\u{301}   GARCI\u{301}A"));
        // Another value is never a form, whatever its case or spacing.
        for (sent, held) in [
            ("new@example.com", "old@example.com"),
            ("García", "Garcia"), // an accent dropped changes the name
            ("Anna Maria", "AnnaMaria"),
            ("Lopez", ""),
        ] {
            assert!(!is_form_of(sent, held), "{held:?} is not {sent:?}");
        }
    }

    #[test]
    fn a_value_held_as_no_form_of_the_one_sent_was_not_taken_and_is_never_learned() {
        let changes = Changes {
            email: Some("Anna@Example.com".into()),
            name: Some(("Anna".into(), "García".into())),
            ..Changes::default()
        };
        let answer = held(|s| {
            s.email = Some("old@example.com".into());
            s.family_name = Some("GARCÍA".into());
        });
        let ignored = not_taken(&desired(), &changes, &answer);
        assert_eq!(
            ignored,
            vec![(
                Field::Email,
                Form {
                    sent: "Anna@Example.com".into(),
                    held: "old@example.com".into()
                }
            )]
        );
        let mut forms = Forms::default();
        let learned = forms.learn_from_answer(&desired(), &changes, &answer);
        assert_eq!(learned.len(), 1, "only the family name's form: {learned:?}");
        assert_eq!(learned[0].0, Field::FamilyName);
        // A field not sent, or not shown by the answer, is not judged.
        let only_name = Changes {
            name: changes.name.clone(),
            ..Changes::default()
        };
        assert!(not_taken(&desired(), &only_name, &answer).is_empty());
        let silent = held(|s| s.email = None);
        assert!(not_taken(&desired(), &changes, &silent).is_empty());
    }

    #[test]
    fn a_suspect_held_as_no_form_is_found_not_taken_by_the_next_read_and_sent_again() {
        let seen = held(|s| s.email = Some("old@example.com".into()));
        let first = Forms::default().read(&desired(), &seen);
        assert!(first.changes.email.is_some() && first.not_taken.is_empty());
        let second = first.forms.read(&desired(), &seen);
        assert_eq!(second.not_taken.len(), 1);
        assert!(second.learned.is_empty() && second.forms.learned.is_empty());
        assert!(second.changes.email.is_some(), "sent again, never a form");
    }

    #[test]
    fn forms_kept_by_an_older_version_that_are_no_form_are_dropped() {
        let mut old = Forms::default();
        let bad = Form {
            sent: "new@example.com".into(),
            held: "old@example.com".into(),
        };
        let good = Form {
            sent: "García".into(),
            held: "GARCÍA".into(),
        };
        old.learned.insert(Field::Email, bad);
        old.learned.insert(Field::FamilyName, good.clone());
        let kept = old.kept();
        assert_eq!(
            kept.learned.into_iter().collect::<Vec<_>>(),
            vec![(Field::FamilyName, good)]
        );
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
