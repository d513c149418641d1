use std::fmt;
use std::str::FromStr;

/// A PostgreSQL WAL position (`pg_lsn`), ordered as the server orders them.
///
/// sqlx has no `pg_lsn` type: queries select `lsn::text` and bind `$1::pg_lsn`, and this type
/// converts between that text form (`16/B374D848`) and a comparable integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a WAL position (expected two hexadecimal numbers separated by '/')")]
pub struct LsnError;

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    pub fn new(raw: u64) -> Self {
        Self(raw)
    }

    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// The `X-Consistency-Token` form: 16 hexadecimal digits (opaque to clients).
    pub fn to_token(self) -> String {
        format!("{:016X}", self.0)
    }

    pub fn from_token(token: &str) -> Result<Self, LsnError> {
        let token = token.trim();
        if token.len() != 16 {
            return Err(LsnError);
        }
        u64::from_str_radix(token, 16)
            .map(Self)
            .map_err(|_| LsnError)
    }
}

impl FromStr for Lsn {
    type Err = LsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s.split_once('/').ok_or(LsnError)?;
        let valid = |part: &str| !part.is_empty() && part.len() <= 8;
        if !valid(hi) || !valid(lo) {
            return Err(LsnError);
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| LsnError)?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| LsnError)?;
        Ok(Self((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_server_text_form() {
        for text in ["0/0", "0/16B3748", "16/B374D848", "FFFFFFFF/FFFFFFFF"] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.to_string(), text);
        }
    }

    #[test]
    fn tokens_round_trip() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.to_token(), "00000016B374D848");
        assert_eq!(Lsn::from_token(&lsn.to_token()), Ok(lsn));
        for bad in [
            "",
            "0",
            "16/B374D848",
            "00000016B374D84G",
            "000000016B374D848",
        ] {
            assert_eq!(Lsn::from_token(bad), Err(LsnError), "{bad:?}");
        }
    }

    #[test]
    fn orders_by_position() {
        let a: Lsn = "0/FFFFFFFF".parse().unwrap();
        let b: Lsn = "1/0".parse().unwrap();
        assert!(a < b);
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in ["", "0", "/1", "1/", "g/1", "1/2/3", "123456789/0", "-1/0"] {
            assert_eq!(bad.parse::<Lsn>(), Err(LsnError), "{bad:?}");
        }
    }
}
