use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};
use serde_json::Value;
use utoipa::ToSchema;

use utoipa::Number;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

use super::{Field, Sku};

/// The size fields a client sends: dimensions in millimetres, weight in grams, an optional label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeSpec {
    length_mm: i32,
    width_mm: i32,
    height_mm: i32,
    weight_g: i32,
    size_label: Option<String>,
}

impl SizeSpec {
    pub fn new(
        length: Millimetres,
        width: Millimetres,
        height: Millimetres,
        weight: Grams,
        label: Option<SizeLabel>,
    ) -> Self {
        Self {
            length_mm: length.get(),
            width_mm: width.get(),
            height_mm: height.get(),
            weight_g: weight.get(),
            size_label: label.map(|l| l.0),
        }
    }

    pub fn length_mm(&self) -> i32 {
        self.length_mm
    }
    pub fn width_mm(&self) -> i32 {
        self.width_mm
    }
    pub fn height_mm(&self) -> i32 {
        self.height_mm
    }
    pub fn weight_g(&self) -> i32 {
        self.weight_g
    }
    pub fn size_label(&self) -> Option<&str> {
        self.size_label.as_deref()
    }
}

/// A validated create-or-replace: the size fields plus the WMS's own counter, if it sent one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeUpdate {
    pub spec: SizeSpec,
    pub source_version: Option<i64>,
}

/// Declares an integer field type: its bounds, its check and its schema, in one place.
macro_rules! bounded_integer {
    ($(#[doc = $doc:literal])+ $name:ident($repr:ty): $min:literal..=$max:expr) => {
        $(#[doc = $doc])+
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name($repr);

        impl $name {
            pub const MIN: $repr = $min;
            pub const MAX: $repr = $max;

            pub fn get(self) -> $repr {
                self.0
            }
        }

        impl Field for $name {
            fn expected() -> String {
                integer_expected(Self::MIN.into(), Self::MAX.into())
            }

            fn from_json(value: &Value) -> Result<Self, String> {
                json_integer(value)
                    .and_then(|i| <$repr>::try_from(i).ok())
                    .filter(|i| (Self::MIN..=Self::MAX).contains(i))
                    .map(Self)
                    .ok_or_else(Self::expected)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                integer_schema(
                    concat!($($doc),+).trim(),
                    Self::MIN.into(),
                    Self::MAX.into(),
                    <$repr as utoipa::PartialSchema>::schema(),
                )
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

bounded_integer! {
    /// A length, width or height in millimetres.
    Millimetres(i32): 1..=100_000
}

bounded_integer! {
    /// A weight in grams.
    Grams(i32): 1..=50_000_000
}

bounded_integer! {
    /// The WMS's own monotonic counter for a SKU: an update older than the stored one never
    /// applies.
    SourceVersion(i64): 0..=i64::MAX
}

fn integer_expected(min: i64, max: i64) -> String {
    if max == i64::MAX {
        format!("must be an integer of at least {min}")
    } else {
        format!("must be an integer from {min} to {max}")
    }
}

/// A JSON Schema integer: `3609.0` is 3609, `1.5` is not an integer.
fn json_integer(value: &Value) -> Option<i64> {
    let Value::Number(n) = value else {
        return None;
    };
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| f as i64)
    })
}

/// The integer schema of `repr` (its type and format) with a description and bounds.
fn integer_schema(description: &str, min: i64, max: i64, repr: RefOr<Schema>) -> RefOr<Schema> {
    let RefOr::T(Schema::Object(mut object)) = repr else {
        return repr;
    };
    object.description = Some(description.to_owned());
    object.minimum = Some(Number::from(min));
    object.maximum = (max != i64::MAX).then(|| Number::from(max));
    RefOr::T(Schema::Object(object))
}

/// A size label such as "M" or "EU 42": 1 to [`SizeLabel::MAX_CHARS`] printable characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeLabel(String);

impl SizeLabel {
    pub const MAX_CHARS: usize = 32;
}

impl Field for SizeLabel {
    fn expected() -> String {
        format!(
            "must be null or 1 to {} printable characters",
            Self::MAX_CHARS
        )
    }

    fn from_json(value: &Value) -> Result<Self, String> {
        match value {
            Value::String(s)
                if (1..=Self::MAX_CHARS).contains(&s.chars().count())
                    && !s.chars().any(char::is_control) =>
            {
                Ok(Self(s.clone()))
            }
            _ => Err(Self::expected()),
        }
    }
}

impl utoipa::PartialSchema for SizeLabel {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(format!(
                "A size label such as \"M\" or \"EU 42\": 1 to {} printable characters.",
                Self::MAX_CHARS
            )))
            .min_length(Some(1))
            .max_length(Some(Self::MAX_CHARS))
            // `char::is_control`: the C0 and C1 control characters and DEL.
            .pattern(Some(format!(
                "^[^\\x00-\\x1F\\x7F-\\x9F]{{1,{}}}$",
                Self::MAX_CHARS
            )))
            .examples(["EU 42"])
            .into()
    }
}

impl utoipa::ToSchema for SizeLabel {}

/// A row of `product_sizes`, including tombstones left by deletes.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredSize {
    pub sku: String,
    pub length_mm: i32,
    pub width_mm: i32,
    pub height_mm: i32,
    pub weight_g: i32,
    pub size_label: Option<String>,
    pub version: i64,
    pub source_version: Option<i64>,
    pub deleted: bool,
    pub updated_at: DateTime<Utc>,
}

impl StoredSize {
    /// The stored row with `update` applied as version `version`.
    pub fn replaced(
        sku: &Sku,
        update: &SizeUpdate,
        version: i64,
        source_version: Option<i64>,
        now: DateTime<Utc>,
    ) -> Self {
        let spec = &update.spec;
        Self {
            sku: sku.as_str().to_owned(),
            length_mm: spec.length_mm,
            width_mm: spec.width_mm,
            height_mm: spec.height_mm,
            weight_g: spec.weight_g,
            size_label: spec.size_label.clone(),
            version,
            source_version,
            deleted: false,
            updated_at: now,
        }
    }

    pub fn spec(&self) -> SizeSpec {
        SizeSpec {
            length_mm: self.length_mm,
            width_mm: self.width_mm,
            height_mm: self.height_mm,
            weight_g: self.weight_g,
            size_label: self.size_label.clone(),
        }
    }

    /// What clients see, or `None` for a tombstone.
    pub fn to_product(&self) -> Option<ProductSize> {
        (!self.deleted).then(|| ProductSize {
            sku: self.sku.clone(),
            length_mm: self.length_mm,
            width_mm: self.width_mm,
            height_mm: self.height_mm,
            weight_g: self.weight_g,
            size_label: self.size_label.clone(),
            version: self.version,
            source_version: self.source_version,
            updated_at: self.updated_at,
        })
    }

    /// The JSON body served for this row, or `None` for a tombstone.
    pub fn to_body(&self) -> Option<Bytes> {
        self.to_product().map(|p| p.to_body())
    }
}

/// One product's size as served to clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[schema(example = json!({
    "sku": "SHOE-42-BLK", "length_mm": 330, "width_mm": 210, "height_mm": 120,
    "weight_g": 950, "size_label": "EU 42", "version": 3, "source_version": 1017,
    "updated_at": "2026-11-23T14:35:51.123456Z"
}))]
pub struct ProductSize {
    #[schema(value_type = Sku)]
    pub sku: String,
    /// Length in millimetres.
    #[schema(value_type = Millimetres)]
    pub length_mm: i32,
    /// Width in millimetres.
    #[schema(value_type = Millimetres)]
    pub width_mm: i32,
    /// Height in millimetres.
    #[schema(value_type = Millimetres)]
    pub height_mm: i32,
    /// Weight in grams.
    #[schema(value_type = Grams)]
    pub weight_g: i32,
    /// Optional size label such as "M" or "EU 42".
    #[schema(value_type = Option<SizeLabel>)]
    pub size_label: Option<String>,
    /// Server-assigned version: 1 on create, +1 on every effective change. Also the ETag.
    #[schema(minimum = 1, example = 3)]
    pub version: i64,
    /// The WMS's own monotonic counter for this SKU, if it sent one.
    #[schema(value_type = Option<SourceVersion>)]
    pub source_version: Option<i64>,
    /// When the current version was written (RFC 3339, UTC).
    #[serde(serialize_with = "rfc3339_utc")]
    pub updated_at: DateTime<Utc>,
}

impl ProductSize {
    pub fn to_body(&self) -> Bytes {
        // Serializing a struct of numbers and strings cannot fail.
        Bytes::from(serde_json::to_vec(self).expect("ProductSize serializes"))
    }
}

fn rfc3339_utc<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Micros, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integral_floats_are_integers() {
        assert_eq!(
            Millimetres::from_json(&json!(3609.0)),
            Ok(Millimetres(3609))
        );
        assert_eq!(Millimetres::from_json(&json!(1e2)), Ok(Millimetres(100)));
        assert_eq!(Grams::from_json(&json!(50000000)), Ok(Grams(50_000_000)));
        assert!(Millimetres::from_json(&json!(1.5)).is_err());
    }

    #[test]
    fn bounds_are_inclusive_and_named_in_the_error() {
        assert_eq!(
            Millimetres::from_json(&json!(0)),
            Err("must be an integer from 1 to 100000".to_owned())
        );
        assert!(Millimetres::from_json(&json!(100_000)).is_ok());
        assert!(Grams::from_json(&json!(50_000_001)).is_err());
        assert!(Millimetres::from_json(&json!("3")).is_err());
        assert_eq!(SourceVersion::from_json(&json!(0)), Ok(SourceVersion(0)));
        assert_eq!(
            SourceVersion::from_json(&json!(-1)),
            Err("must be an integer of at least 0".to_owned())
        );
    }

    #[test]
    fn labels_are_short_and_printable() {
        let label = |value: Value| SizeLabel::from_json(&value);
        assert!(label(json!("EU 42")).is_ok());
        assert!(label(json!("ä".repeat(32))).is_ok());
        assert!(label(json!("x".repeat(33))).is_err());
        assert!(label(json!("")).is_err());
        assert!(label(json!("a\tb")).is_err());
        assert!(label(json!(42)).is_err());
    }

    #[test]
    fn schemas_publish_the_checked_bounds() {
        let schema = |s: RefOr<Schema>| serde_json::to_value(s).unwrap();
        let mm = schema(<Millimetres as utoipa::PartialSchema>::schema());
        assert_eq!(
            (mm["minimum"].clone(), mm["maximum"].clone()),
            (json!(1), json!(100000))
        );
        let version = schema(<SourceVersion as utoipa::PartialSchema>::schema());
        assert_eq!(version["minimum"], 0);
        assert!(version.get("maximum").is_none());
        let label = schema(<SizeLabel as utoipa::PartialSchema>::schema());
        assert_eq!(label["maxLength"], 32);
    }
}
