//! The owed disables: people a run decided to disable for vanishing whose disable nevisIDM has not
//! confirmed yet — held back by the deletion safety, refused, or cut short by a stop.
//!
//! The roster forgets a vanished person (so that the deletion probe agrees with Nexudus's count
//! again), but the access they hold is still there: forgetting them outright would let the next
//! incremental run say "nothing to do", clear the alert and `/status`, and leave them active until
//! the next full listing happened to hold them again. So they are kept here, in the store, until
//! their checkpoint says they are no longer active (the disable was confirmed, by this run or a
//! crashed one) or a listing shows them in scope again. Every run, incremental or full, decides
//! about them again: disables them when the deletion safety lets it or `--allow-mass-disable`
//! approves, and otherwise holds them again and reports them.
//!
//! Each is kept with what is known of them, which says who may send the disable:
//! - *gone*: Nexudus answered 404 for them (the deletion search's or the settlement's look-up):
//!   any run may;
//! - *out of scope*: a listing showed them outside `[scope]`: any run may, unless a listing shows
//!   them in scope again first;
//! - *unconfirmed*: a complete full listing did not hold them, but the deletion safety held its
//!   batch before anyone was looked up: only a full listing sends these, after its look-up of each
//!   (an incremental run that would send them lists everyone instead).
//!
//! Stored under its own meta key (a version byte, then three sorted Id lists as varint deltas), so
//! the roster's own format stays as it was and an idle tick rewrites neither.

use std::collections::BTreeMap;

use super::roster::{put_ids, take_ids};
use crate::diff::disappeared;
use crate::store::{Store, StoreError};

/// Meta key of the encoded owed disables.
const OWED_KEY: &str = "owed_disables";
/// Encoding version, first byte of the value.
const FORMAT: u8 = 1;

/// What is known of a person whose disable is owed (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    Gone,
    OutOfScope,
    Unconfirmed,
}

/// The owed disables, by Nexudus Id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owed(BTreeMap<u64, Known>);

impl Owed {
    /// Nothing owed.
    #[cfg(test)]
    pub const EMPTY: Owed = Owed(BTreeMap::new());

    /// Every owed Id with what is known of it, in Id order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Known)> + '_ {
        self.0.iter().map(|(&id, &known)| (id, known))
    }

    pub fn known(&self, id: u64) -> Option<Known> {
        self.0.get(&id).copied()
    }

    /// Notes `id` as owed; what was known of it before is replaced, except that a 404 seen once
    /// stays known (Nexudus does not give a deleted Id back).
    pub fn insert(&mut self, id: u64, known: Known) {
        let entry = self.0.entry(id).or_insert(known);
        if *entry != Known::Gone {
            *entry = known;
        }
    }

    /// Those whose checkpoint still says active once the run's writes are over: the disable of
    /// the others was confirmed (or they were never synced), so nothing is owed for them.
    pub fn still_owed(self, store: &Store) -> Result<Owed, StoreError> {
        let mut kept = BTreeMap::new();
        for (id, known) in self.0 {
            let active = match store.get(id) {
                Ok(checkpoint) => checkpoint.as_ref().and_then(disappeared).is_some(),
                // An unreadable checkpoint cannot be disabled from; a full listing skips it too.
                Err(StoreError::Corrupt(_)) => false,
                Err(e) => return Err(e),
            };
            if active {
                kept.insert(id, known);
            }
        }
        Ok(Owed(kept))
    }

    /// The stored owed disables; none before any was recorded (or when they cannot be read,
    /// which the next complete full listing repairs: it finds every active user it did not list).
    pub fn load(store: &Store) -> Result<Owed, StoreError> {
        let Some(bytes) = store.meta_bytes(OWED_KEY)? else {
            return Ok(Owed::default());
        };
        Ok(decode(&bytes).unwrap_or_else(|| {
            tracing::warn!(
                "the stored owed disables cannot be read; the next full listing finds them again"
            );
            Owed::default()
        }))
    }

    pub fn save(&self, store: &Store) -> Result<(), StoreError> {
        store.set_meta_bytes(OWED_KEY, &self.encode())
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT];
        for kind in [Known::Gone, Known::OutOfScope, Known::Unconfirmed] {
            let ids: Vec<u64> = self
                .iter()
                .filter(|&(_, k)| k == kind)
                .map(|(id, _)| id)
                .collect();
            put_ids(&mut out, &ids);
        }
        out
    }
}

fn decode(bytes: &[u8]) -> Option<Owed> {
    let (&format, mut rest) = bytes.split_first()?;
    if format != FORMAT {
        return None;
    }
    let mut owed = BTreeMap::new();
    for kind in [Known::Gone, Known::OutOfScope, Known::Unconfirmed] {
        for id in take_ids(&mut rest)? {
            owed.insert(id, kind);
        }
    }
    rest.is_empty().then_some(Owed(owed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapper::{DesiredUser, UserState};

    fn owed(entries: &[(u64, Known)]) -> Owed {
        let mut owed = Owed::default();
        for &(id, known) in entries {
            owed.insert(id, known);
        }
        owed
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let o = owed(&[
            (7, Known::Gone),
            (1_000_000_003, Known::Unconfirmed),
            (12, Known::OutOfScope),
            (9, Known::Unconfirmed),
        ]);
        let bytes = o.encode();
        assert_eq!(decode(&bytes), Some(o));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[9, 0, 0, 0]), None);
        assert_eq!(decode(&[FORMAT, 0, 0, 0]), Some(Owed::default()));
    }

    #[test]
    fn a_404_seen_once_stays_known() {
        let mut o = owed(&[(1, Known::Gone), (2, Known::Unconfirmed)]);
        o.insert(1, Known::Unconfirmed);
        o.insert(2, Known::OutOfScope);
        assert_eq!(o.known(1), Some(Known::Gone));
        assert_eq!(o.known(2), Some(Known::OutOfScope));
    }

    #[test]
    fn only_those_still_active_stay_owed_and_they_outlive_the_process() {
        let store = Store::temporary().unwrap();
        let user = |id: u64, state| DesiredUser {
            ext_id: format!("nexudus-{id}"),
            login_id: format!("u{id}@example.com"),
            first_name: "A".into(),
            family_name: "B".into(),
            email: format!("u{id}@example.com"),
            language_code: "en".into(),
            state,
            properties: Default::default(),
        };
        store.put(1, &user(1, UserState::Active)).unwrap();
        store.put(2, &user(2, UserState::Disabled)).unwrap();
        // 3 was never synced.
        let o = owed(&[(1, Known::Gone), (2, Known::Gone), (3, Known::Unconfirmed)]);
        let still = o.still_owed(&store).unwrap();
        assert_eq!(still, owed(&[(1, Known::Gone)]));
        still.save(&store).unwrap();
        assert_eq!(Owed::load(&store).unwrap(), still);
    }
}
