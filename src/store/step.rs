//! One atomic step across the store's trees: a provisioning-log entry with its index keys and
//! its person's "logged once" marks, and the checkpoint of the write it records, all of it or
//! none (one sled transaction). A crash can then neither leave a checkpoint without the entry
//! that explains it, nor an entry that `--history WHO` cannot find.

use sled::Transactional;
use sled::transaction::{ConflictableTransactionResult, TransactionError, TransactionalTree};

use super::audit::{AuditRecord, Mark, Prepared};
use super::{BLOCKED, LINK, OWNER, Store, StoreError, encode, forms_value, op_key};
use crate::forms::Forms;
use crate::mapper::{DesiredUser, UserState};

/// The checkpoint a step writes with its entry.
#[derive(Debug, Clone, Copy)]
pub enum Checkpoint<'a> {
    /// The entry alone (a write refused or failed, a decision against a write).
    Nothing,
    /// What nevisIDM confirmed for a user.
    User(UserCheckpoint<'a>),
    /// A user's role checkpoint (its encoding is [`crate::roles`]'s); `None` removes it.
    Roles {
        nexudus_id: u64,
        holding: Option<&'a [u8]>,
    },
}

/// What nevisIDM confirmed for a user, as [`Store::put_versioned`] keeps it, with what else a
/// confirmed write leaves.
#[derive(Debug, Clone, Copy)]
pub struct UserCheckpoint<'a> {
    pub nexudus_id: u64,
    pub user: &'a DesiredUser,
    /// The fingerprint the checkpoint is filed under (see [`Store::put_as`]).
    pub fingerprint: u64,
    /// nevisIDM's `version` of the user as it reported it (`None`: unknown).
    pub version: Option<i64>,
    /// The user's forms to keep; `None` leaves the stored ones.
    pub forms: Option<&'a Forms>,
    /// An adoption: the extId now linked to the user.
    pub link: Option<&'a str>,
}

/// The trees a step writes, in the order [`Store::trees`] lists them.
type Views = (
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
);

/// A checkpoint's keys and values, computed before the transaction (whose body may run more
/// than once).
enum Staged {
    Nothing,
    User(StagedUser),
    Roles {
        key: [u8; 8],
        holding: Option<Vec<u8>>,
    },
}

/// A user checkpoint's keys and values.
struct StagedUser {
    key: [u8; 8],
    value: Vec<u8>,
    disabled: bool,
    now: [u8; 8],
    /// `None`: leave the forms; `Some(None)`: remove them.
    forms: Option<Option<Vec<u8>>>,
    link: Option<Vec<u8>>,
}

impl Store {
    /// Writes `entry` (unless its [`Mark`] says the decision was logged already) and
    /// `checkpoint` as one atomic step; answers whether the entry was written. The caller
    /// makes it durable ([`Store::flush`]).
    pub fn commit(
        &self,
        entry: Option<(AuditRecord<'_>, Mark<'_>)>,
        checkpoint: &Checkpoint<'_>,
    ) -> Result<bool, StoreError> {
        let entry = entry
            .map(|(record, mark)| self.prepare(record, mark))
            .transpose()?;
        let staged = Staged::of(checkpoint, self.clock.now())?;
        let written = self
            .trees()
            .transaction(|views| {
                let written = stage(views, entry.as_ref(), &staged)?;
                injected_failure()?;
                Ok(written)
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => e.into(),
            })?;
        if written {
            self.audit_added(1);
        }
        Ok(written)
    }

    /// Every tree a step may write.
    #[allow(clippy::type_complexity)]
    fn trees(
        &self,
    ) -> (
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
    ) {
        (
            &self.audit,
            &self.users,
            &self.failures,
            &self.operator,
            &self.disabled_at,
            &self.forms,
            &self.roles,
        )
    }
}

impl Staged {
    fn of(checkpoint: &Checkpoint<'_>, now: u64) -> Result<Staged, StoreError> {
        Ok(match checkpoint {
            Checkpoint::Nothing => Staged::Nothing,
            Checkpoint::User(c) => Staged::User(StagedUser {
                key: c.nexudus_id.to_be_bytes(),
                value: encode(c.user, c.fingerprint, c.version),
                disabled: c.user.state == UserState::Disabled,
                now: now.to_le_bytes(),
                forms: c.forms.map(forms_value).transpose()?,
                link: c.link.map(|l| l.as_bytes().to_vec()),
            }),
            Checkpoint::Roles {
                nexudus_id,
                holding,
            } => Staged::Roles {
                key: nexudus_id.to_be_bytes(),
                holding: holding.map(<[u8]>::to_vec),
            },
        })
    }
}

#[cfg(test)]
thread_local! {
    /// Tests: the next step on this thread fails once everything is staged.
    static FAIL_AFTER_STAGING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A failure after everything is staged, as a storage error would be (tests only; sled runs a
/// transaction's body on the caller's thread).
fn injected_failure() -> ConflictableTransactionResult<(), StoreError> {
    #[cfg(test)]
    if FAIL_AFTER_STAGING.with(|fail| fail.replace(false)) {
        return Err(sled::transaction::ConflictableTransactionError::Abort(
            StoreError::Io("injected failure".into()),
        ));
    }
    Ok(())
}

/// Stages the entry and the checkpoint in the transaction's trees.
fn stage(
    views: &Views,
    entry: Option<&Prepared<'_>>,
    checkpoint: &Staged,
) -> ConflictableTransactionResult<bool, StoreError> {
    let (audit, users, failures, operator, disabled_at, forms, roles) = views;
    let written = match entry {
        Some(entry) => entry.stage(audit)?,
        None => false,
    };
    match checkpoint {
        Staged::Nothing => {}
        Staged::User(user) => user.stage((users, failures, operator, disabled_at, forms))?,
        Staged::Roles { key, holding } => match holding {
            Some(value) => {
                roles.insert(&key[..], value.as_slice())?;
            }
            None => {
                roles.remove(&key[..])?;
            }
        },
    }
    Ok(written)
}

impl StagedUser {
    /// What [`Store::put_versioned`] writes (the checkpoint, its failure and blocked create
    /// cleared, the time it became disabled), with the forms and an adoption's link.
    fn stage(
        &self,
        (users, failures, operator, disabled_at, forms): (
            &TransactionalTree,
            &TransactionalTree,
            &TransactionalTree,
            &TransactionalTree,
            &TransactionalTree,
        ),
    ) -> ConflictableTransactionResult<(), StoreError> {
        let key = &self.key[..];
        users.insert(key, self.value.as_slice())?;
        failures.remove(key)?;
        operator.remove(op_key(BLOCKED, key))?;
        match (self.disabled, disabled_at.get(key)?) {
            (true, None) => {
                disabled_at.insert(key, &self.now[..])?;
            }
            (true, Some(_)) => {}
            (false, _) => {
                disabled_at.remove(key)?;
            }
        }
        match &self.forms {
            None => {}
            Some(None) => {
                forms.remove(key)?;
            }
            Some(Some(json)) => {
                forms.insert(key, json.as_slice())?;
            }
        }
        if let Some(ext_id) = &self.link {
            operator.insert(op_key(LINK, key), ext_id.as_slice())?;
            operator.insert(op_key(OWNER, ext_id), key)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> DesiredUser {
        DesiredUser {
            ext_id: "nexudus-7".into(),
            login_id: "a@b.c".into(),
            first_name: "A".into(),
            family_name: "B".into(),
            email: "a@b.c".into(),
            language_code: "en".into(),
            state: UserState::Disabled,
            properties: Default::default(),
        }
    }

    fn record() -> AuditRecord<'static> {
        AuditRecord {
            at: 100,
            nexudus_id: Some(7),
            ext_id: "nexudus-7",
            body: b"disabled",
        }
    }

    fn forms() -> Forms {
        let mut forms = Forms::default();
        let form = crate::forms::Form {
            sent: "A@B.C".into(),
            held: "a@b.c".into(),
        };
        forms.learned.insert(crate::diff::Field::Email, form);
        forms
    }

    fn checkpoint<'a>(user: &'a DesiredUser, forms: &'a Forms) -> Checkpoint<'a> {
        Checkpoint::User(UserCheckpoint {
            nexudus_id: 7,
            user,
            fingerprint: super::super::fingerprint(user),
            version: Some(3),
            forms: Some(forms),
            link: Some("legacy-7"),
        })
    }

    #[test]
    fn an_entry_lands_with_its_indexes_and_the_whole_checkpoint() {
        let store = Store::temporary().unwrap();
        store.record_failure(7, "422 earlier").unwrap();
        let (user, forms) = (user(), forms());
        let written = store
            .commit(Some((record(), Mark::Keep)), &checkpoint(&user, &forms))
            .unwrap();
        assert!(written);
        assert_eq!(store.audit_of_user(7, 0, None).count(), 1);
        assert_eq!(store.audit_of_ext_id("nexudus-7", 0, None).count(), 1);
        assert_eq!(store.get(7).unwrap(), Some(user.clone()));
        assert_eq!(store.version(7).unwrap(), Some(3));
        assert_eq!(store.failure(7).unwrap(), None);
        assert_eq!(store.forms(7).unwrap(), forms);
        assert_eq!(store.link(7).unwrap().as_deref(), Some("legacy-7"));
        assert_eq!(store.link_owner("legacy-7").unwrap(), Some(7));
        assert_eq!(
            store
                .disabled_longer_than(std::time::Duration::ZERO)
                .unwrap(),
            [7]
        );
    }

    #[test]
    fn a_step_that_fails_leaves_neither_entry_nor_indexes_nor_checkpoint() {
        let store = Store::temporary().unwrap();
        store.record_failure(7, "422 earlier").unwrap();
        let (user, forms) = (user(), forms());
        FAIL_AFTER_STAGING.with(|fail| fail.set(true));
        let failed = store.commit(Some((record(), Mark::Keep)), &checkpoint(&user, &forms));
        assert!(matches!(failed, Err(StoreError::Io(_))), "{failed:?}");
        for tree in [
            &store.audit,
            &store.users,
            &store.operator,
            &store.disabled_at,
            &store.forms,
        ] {
            assert!(tree.is_empty(), "nothing of the step landed");
        }
        assert_eq!(store.failure(7).unwrap().as_deref(), Some("422 earlier"));
        assert_eq!(store.audit_len().unwrap(), 0);
        // The same step again, without the failure: all of it.
        store
            .commit(Some((record(), Mark::Keep)), &checkpoint(&user, &forms))
            .unwrap();
        assert_eq!(store.audit_of_user(7, 0, None).count(), 1);
        assert_eq!(store.get(7).unwrap(), Some(user));
    }

    #[test]
    fn a_role_checkpoint_lands_with_its_entry_and_none_removes_it() {
        let store = Store::temporary().unwrap();
        let roles = Checkpoint::Roles {
            nexudus_id: 7,
            holding: Some(b"{\"granted\":{}}"),
        };
        store.commit(Some((record(), Mark::Keep)), &roles).unwrap();
        assert!(store.role_holding(7).unwrap().is_some());
        assert_eq!(store.audit_len().unwrap(), 1);
        let gone = Checkpoint::Roles {
            nexudus_id: 7,
            holding: None,
        };
        store.commit(Some((record(), Mark::Keep)), &gone).unwrap();
        assert!(store.role_holding(7).unwrap().is_none());
        assert_eq!(store.audit_of_user(7, 0, None).count(), 2);
    }
}
