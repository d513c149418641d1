//! The rules that decide what a write does to the stored row, kept free of I/O so each rule is
//! a unit test. The database layer locks the current row, asks [`decide`], and stores the answer.

use chrono::{DateTime, Utc};

use super::{SizeUpdate, Sku, StoredSize};

/// The conditional headers of a write (RFC 9110).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preconditions {
    /// `If-Match`: the write applies only if the product exists (`*`) or its current
    /// version is one of these.
    pub if_match: Option<Tags>,
    /// `If-None-Match`: the write applies only if the product does not exist (`*`, "create
    /// only") or its current version is none of these.
    pub if_none_match: Option<Tags>,
}

/// The entity tags of a conditional header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tags {
    /// `*`: any current version.
    Any,
    /// `"3", "4"`: these versions.
    Versions(Vec<i64>),
}

impl Tags {
    /// Whether the current row (`None`: absent or deleted) matches.
    fn matches(&self, live: Option<&StoredSize>) -> bool {
        match self {
            Self::Any => live.is_some(),
            Self::Versions(versions) => live.is_some_and(|row| versions.contains(&row.version)),
        }
    }
}

/// What a client asks to happen to one SKU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(SizeUpdate),
    Delete,
}

/// What happens to one SKU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Store `row` (a new version, or a tombstone for a delete).
    Write {
        row: StoredSize,
        created: bool,
    },
    /// The content equals what is stored: nothing to write.
    Unchanged(StoredSize),
    /// The WMS sent a `source_version` older than (or equal to, with other content) the stored one.
    Stale(StoredSize),
    PreconditionFailed,
    NotFound,
}

/// Decides what `change` does to `current` (a tombstone counts as absent, but keeps its
/// version and `source_version` so that neither can go backwards after a delete).
pub fn decide(
    sku: &Sku,
    current: Option<&StoredSize>,
    change: &Change,
    preconditions: &Preconditions,
    now: DateTime<Utc>,
) -> Decision {
    let live = current.filter(|row| !row.deleted);
    if !preconditions.hold(live) {
        return Decision::PreconditionFailed;
    }
    match change {
        Change::Delete => delete(live, now),
        Change::Put(update) => put(sku, current, live, update, now),
    }
}

impl Preconditions {
    /// Whether `If-Match` and `If-None-Match` both hold for the live row.
    fn hold(&self, live: Option<&StoredSize>) -> bool {
        let if_match_fails = self
            .if_match
            .as_ref()
            .is_some_and(|tags| !tags.matches(live));
        let if_none_match_fails = self
            .if_none_match
            .as_ref()
            .is_some_and(|tags| tags.matches(live));
        !(if_match_fails || if_none_match_fails)
    }
}

/// A delete writes a tombstone at the next version; there is nothing to delete without a
/// live row.
fn delete(live: Option<&StoredSize>, now: DateTime<Utc>) -> Decision {
    match live {
        None => Decision::NotFound,
        Some(row) => Decision::Write {
            row: StoredSize {
                version: row.version + 1,
                deleted: true,
                updated_at: now,
                ..row.clone()
            },
            created: false,
        },
    }
}

/// A put: refused as stale when the WMS's counter went backwards, else written unless its
/// content and counter are what is stored.
fn put(
    sku: &Sku,
    current: Option<&StoredSize>,
    live: Option<&StoredSize>,
    update: &SizeUpdate,
    now: DateTime<Utc>,
) -> Decision {
    let stored_source = current.and_then(|row| row.source_version);
    if let (Some(incoming), Some(row)) = (update.source_version, current) {
        let same_content = live.is_some_and(|live| live.spec() == update.spec);
        match row.source_version {
            Some(stored) if incoming < stored || (incoming == stored && !same_content) => {
                return Decision::Stale(row.clone());
            }
            _ => {}
        }
    }
    // A manual PUT without a counter keeps the WMS's, so later WMS updates are still ordered.
    let source_version = update.source_version.or(stored_source);
    match live {
        Some(row) if row.spec() == update.spec && row.source_version == source_version => {
            Decision::Unchanged(row.clone())
        }
        Some(row) => Decision::Write {
            row: StoredSize::replaced(sku, update, row.version + 1, source_version, now),
            created: false,
        },
        // Re-creating after a delete continues from the tombstone's version, so an ETag
        // never names two different contents.
        None => Decision::Write {
            row: StoredSize::replaced(
                sku,
                update,
                current.map_or(1, |row| row.version + 1),
                source_version,
                now,
            ),
            created: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Field, Grams, Millimetres, SizeSpec};
    use serde_json::json;

    fn sku() -> Sku {
        Sku::parse("SKU-1").unwrap()
    }

    fn update(length: i64, source_version: Option<i64>) -> SizeUpdate {
        let field = |value: i64| Millimetres::from_json(&json!(value)).unwrap();
        SizeUpdate {
            spec: SizeSpec::new(
                field(length),
                field(2),
                field(3),
                Grams::from_json(&json!(4)).unwrap(),
                None,
            ),
            source_version,
        }
    }

    fn stored(length: i64, version: i64, source_version: Option<i64>) -> StoredSize {
        StoredSize::replaced(
            &sku(),
            &update(length, None),
            version,
            source_version,
            Utc::now(),
        )
    }

    fn put_if(current: Option<&StoredSize>, change: SizeUpdate, pre: Preconditions) -> Decision {
        decide(&sku(), current, &Change::Put(change), &pre, Utc::now())
    }

    /// A put without preconditions.
    fn put(current: Option<&StoredSize>, change: SizeUpdate) -> Decision {
        put_if(current, change, Preconditions::default())
    }

    /// A delete without preconditions.
    fn delete(current: Option<&StoredSize>) -> Decision {
        decide(
            &sku(),
            current,
            &Change::Delete,
            &Preconditions::default(),
            Utc::now(),
        )
    }

    fn written(decision: Decision) -> (i64, bool, Option<i64>) {
        match decision {
            Decision::Write { row, created } => (row.version, created, row.source_version),
            other => panic!("expected a write, got {other:?}"),
        }
    }

    #[test]
    fn create_is_version_one_and_change_bumps_it() {
        assert_eq!(written(put(None, update(1, None))), (1, true, None));
        let row = stored(1, 1, None);
        assert_eq!(written(put(Some(&row), update(2, None))), (2, false, None));
    }

    #[test]
    fn equal_content_is_a_no_op() {
        let row = stored(1, 4, Some(9));
        let unchanged = Decision::Unchanged(row.clone());
        assert_eq!(put(Some(&row), update(1, None)), unchanged);
        assert_eq!(put(Some(&row), update(1, Some(9))), unchanged);
    }

    #[test]
    fn older_or_conflicting_source_versions_never_apply() {
        let row = stored(1, 4, Some(9));
        let stale = Decision::Stale(row.clone());
        assert_eq!(put(Some(&row), update(2, Some(8))), stale);
        assert_eq!(put(Some(&row), update(2, Some(9))), stale);
        assert_eq!(
            written(put(Some(&row), update(2, Some(10)))),
            (5, false, Some(10))
        );
    }

    #[test]
    fn a_put_without_source_version_keeps_the_stored_one() {
        let row = stored(1, 4, Some(9));
        assert_eq!(
            written(put(Some(&row), update(2, None))),
            (5, false, Some(9))
        );
    }

    #[test]
    fn if_match_and_if_none_match() {
        let row = stored(1, 4, None);
        let versions = |v| Some(Tags::Versions(vec![v]));
        let any = || Some(Tags::Any);
        // The stored row, `If-Match`, `If-None-Match`, and the version and creation written
        // (`None`: 412).
        let cases = [
            (Some(&row), versions(3), None, None),
            (Some(&row), versions(4), None, Some((5, false))),
            (None, versions(4), None, None),
            (Some(&row), None, versions(4), None),
            (Some(&row), None, versions(3), Some((5, false))),
            (Some(&row), None, any(), None),
            (None, None, any(), Some((1, true))),
        ];
        for (current, if_match, if_none_match, expected) in cases {
            let preconditions = Preconditions {
                if_match,
                if_none_match,
            };
            let decision = put_if(current, update(2, None), preconditions.clone());
            let outcome = match decision {
                Decision::PreconditionFailed => None,
                written_row => {
                    let (version, created, _) = written(written_row);
                    Some((version, created))
                }
            };
            assert_eq!(outcome, expected, "{preconditions:?} on {current:?}");
        }
    }

    #[test]
    fn delete_leaves_a_tombstone_that_keeps_counting() {
        let row = stored(1, 4, Some(9));
        let tombstone = match delete(Some(&row)) {
            Decision::Write {
                row,
                created: false,
            } => row,
            other => panic!("{other:?}"),
        };
        assert!(tombstone.deleted);
        assert_eq!(tombstone.version, 5);
        assert_eq!(delete(Some(&tombstone)), Decision::NotFound);
        // A replayed WMS update does not resurrect it; a newer one re-creates it at version 6.
        assert_eq!(
            put(Some(&tombstone), update(1, Some(9))),
            Decision::Stale(tombstone.clone())
        );
        assert_eq!(
            written(put(Some(&tombstone), update(1, Some(10)))),
            (6, true, Some(10))
        );
    }
}
