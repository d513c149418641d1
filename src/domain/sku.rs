use std::fmt;

/// A product's stock keeping unit: `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`.
///
/// The character set is also what makes a SKU safe inside a Redis key and a log line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sku(String);

/// Why a string is not a SKU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkuError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most 64 characters")]
    TooLong,
    #[error("must start with a letter or digit")]
    BadStart,
    #[error("may contain only letters, digits, '.', '_' and '-'")]
    BadCharacter,
}

impl Sku {
    pub const MAX_LEN: usize = 64;
    pub const PATTERN: &'static str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";

    pub fn parse(raw: &str) -> Result<Self, SkuError> {
        let bytes = raw.as_bytes();
        let Some(first) = bytes.first() else {
            return Err(SkuError::Empty);
        };
        if bytes.len() > Self::MAX_LEN {
            return Err(SkuError::TooLong);
        }
        if !first.is_ascii_alphanumeric() {
            return Err(SkuError::BadStart);
        }
        let allowed = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
        if !bytes[1..].iter().all(allowed) {
            return Err(SkuError::BadCharacter);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Documented as a string with the SKU pattern, wherever a SKU appears in a body.
impl utoipa::PartialSchema for Sku {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("Stock keeping unit"))
            .pattern(Some(Sku::PATTERN))
            .min_length(Some(1))
            .max_length(Some(Sku::MAX_LEN))
            .examples(["SHOE-42-BLK"])
            .into()
    }
}

impl utoipa::ToSchema for Sku {}

/// A SKU in a body: a string, checked as [`Sku::parse`] checks it.
impl super::Field for Sku {
    fn expected() -> String {
        "must be a string".to_owned()
    }

    fn missing() -> String {
        "is required and must be a string".to_owned()
    }

    fn from_json(value: &serde_json::Value) -> Result<Self, String> {
        let raw = value.as_str().ok_or_else(Self::expected)?;
        Sku::parse(raw).map_err(|e| format!("invalid SKU: {e}"))
    }
}

impl AsRef<str> for Sku {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_spec_alphabet() {
        for ok in ["A", "0", "abc-DEF_1.2", &"x".repeat(64)] {
            assert!(Sku::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        assert_eq!(Sku::parse(""), Err(SkuError::Empty));
        assert_eq!(Sku::parse(&"x".repeat(65)), Err(SkuError::TooLong));
        assert_eq!(Sku::parse("-a"), Err(SkuError::BadStart));
        assert_eq!(Sku::parse(".a"), Err(SkuError::BadStart));
        for bad in ["a b", "a/b", "a{b}", "a|b", "aé", "a\n"] {
            assert_eq!(Sku::parse(bad), Err(SkuError::BadCharacter), "{bad:?}");
        }
    }
}
