//! Encoding of cache values. Values are short ASCII headers in front of the JSON body, so a
//! cache hit is served as the stored bytes without re-serialising.

use std::time::Duration;

use bytes::Bytes;

use crate::domain::Lsn;

/// Names one Redis data set. Stamped on entries and fences; a value with another epoch than
/// the current one is ignored, because the data set it was judged against is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch(String);

impl Epoch {
    pub fn random() -> Self {
        Self(format!("{:016x}", fastrand::u64(..)))
    }

    /// For writes made while no epoch is known: matches no real epoch, so what they install
    /// is never served until a read re-stamps it.
    pub fn unknown() -> Self {
        Self("-".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn parse(raw: &[u8]) -> Option<Self> {
        let valid = !raw.is_empty() && raw.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-');
        valid.then(|| Self(String::from_utf8_lossy(raw).into_owned()))
    }
}

/// A cached version of one SKU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub version: i64,
    pub epoch: Epoch,
    /// Every write whose consistency token is at or below this position is included in
    /// `version` (zero: no proof, as in entries written before stamps existed).
    pub verified: Lsn,
    /// The JSON body; `None` for a tombstone or a remembered "not found" (version 0).
    pub body: Option<Bytes>,
}

/// Width of the `verified` field: a padded WAL position and its separator.
const STAMP: usize = 21;

impl Entry {
    /// `<version>|<epoch>|<verified, 20 digits>|<body>`.
    pub fn encode(version: i64, epoch: &Epoch, verified: Lsn, body: Option<&Bytes>) -> Bytes {
        let header = format!("{version}|{}|{}|", epoch.as_str(), pad_lsn(verified));
        let mut value = Vec::with_capacity(header.len() + body.map_or(0, |b| b.len()));
        value.extend_from_slice(header.as_bytes());
        if let Some(body) = body {
            value.extend_from_slice(body);
        }
        Bytes::from(value)
    }

    /// Decodes a value; the body is a zero-copy slice of it. `None` for anything malformed.
    pub fn decode(value: Bytes) -> Option<Self> {
        let first = value.iter().position(|b| *b == b'|')?;
        let second = first + 1 + value[first + 1..].iter().position(|b| *b == b'|')?;
        let version = std::str::from_utf8(&value[..first]).ok()?.parse().ok()?;
        let epoch = Epoch::parse(&value[first + 1..second])?;
        // Entries written before stamps existed go straight on to the body (JSON or empty).
        let rest = &value[second + 1..];
        let stamped = rest.len() >= STAMP
            && rest[STAMP - 1] == b'|'
            && rest[..STAMP - 1].iter().all(u8::is_ascii_digit);
        let (verified, body_start) = if stamped {
            let digits = std::str::from_utf8(&rest[..STAMP - 1]).ok()?;
            (Lsn::new(digits.parse().ok()?), second + 1 + STAMP)
        } else {
            (Lsn::ZERO, second + 1)
        };
        let body = value.slice(body_start..);
        Some(Self {
            version,
            epoch,
            verified,
            body: (!body.is_empty()).then_some(body),
        })
    }
}

/// The newest version a write acknowledged for one SKU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub version: i64,
    pub epoch: Epoch,
}

impl Fence {
    pub fn decode(value: &[u8]) -> Option<Self> {
        let (version, epoch) = split_pair(value)?;
        Some(Self {
            version: version.parse().ok()?,
            epoch: Epoch::parse(epoch.as_bytes())?,
        })
    }
}

/// The current epoch and the high-water mark of acknowledged writes (zero: not known yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub epoch: Epoch,
    pub hwm: Lsn,
}

impl Meta {
    pub fn encode(&self) -> String {
        format!("{}|{}", self.epoch.as_str(), pad_lsn(self.hwm))
    }

    pub fn decode(value: &[u8]) -> Option<Self> {
        let (epoch, hwm) = split_pair(value)?;
        Some(Self {
            epoch: Epoch::parse(epoch.as_bytes())?,
            hwm: Lsn::new(hwm.parse().ok()?),
        })
    }

    /// Whether the high-water mark has been set since the epoch began.
    pub fn is_complete(&self) -> bool {
        self.hwm > Lsn::ZERO
    }
}

fn split_pair(value: &[u8]) -> Option<(&str, &str)> {
    std::str::from_utf8(value).ok()?.split_once('|')
}

/// A WAL position as 20 decimal digits: string order equals numeric order in Lua.
pub fn pad_lsn(lsn: Lsn) -> String {
    format!("{:020}", lsn.as_u64())
}

/// Spreads expiry over ±10% so entries filled together do not expire together.
pub fn jittered(ttl: Duration) -> Duration {
    let millis = ttl.as_millis() as u64;
    let spread = millis / 10;
    Duration::from_millis(millis - spread + fastrand::u64(0..=spread * 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_bodies_may_contain_the_separator() {
        let epoch = Epoch::random();
        let body = Bytes::from_static(br#"{"size_label":"EU|42"}"#);
        let decoded =
            Entry::decode(Entry::encode(7, &epoch, Lsn::new(u64::MAX), Some(&body))).unwrap();
        assert_eq!(
            decoded,
            Entry {
                version: 7,
                epoch: epoch.clone(),
                verified: Lsn::new(u64::MAX),
                body: Some(body)
            }
        );
        let tombstone = Entry::decode(Entry::encode(8, &epoch, Lsn::new(5), None)).unwrap();
        assert_eq!((tombstone.verified, tombstone.body), (Lsn::new(5), None));
    }

    #[test]
    fn entries_from_before_stamps_have_no_proof() {
        let old = Entry::decode(Bytes::from_static(br#"7|e1|{"length_mm":1}"#)).unwrap();
        assert_eq!(old.verified, Lsn::ZERO);
        assert_eq!(old.body.as_deref(), Some(&br#"{"length_mm":1}"#[..]));
        let tombstone = Entry::decode(Bytes::from_static(b"8|e1|")).unwrap();
        assert_eq!((tombstone.verified, tombstone.body), (Lsn::ZERO, None));
    }

    #[test]
    fn malformed_values_are_misses() {
        for bad in ["", "7", "7|", "x|e|{}", "7||{}"] {
            assert_eq!(Entry::decode(Bytes::from(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn meta_round_trips_with_padded_positions() {
        let meta = Meta {
            epoch: Epoch::random(),
            hwm: Lsn::new(u64::MAX),
        };
        assert_eq!(Meta::decode(meta.encode().as_bytes()), Some(meta));
        assert_eq!(pad_lsn(Lsn::new(42)), "00000000000000000042");
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let ttl = jittered(Duration::from_secs(100)).as_secs_f64();
            assert!((90.0..=110.0).contains(&ttl), "{ttl}");
        }
    }
}
