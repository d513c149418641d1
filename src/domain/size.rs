use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{FieldErrors, Sku};

pub const DIMENSION_RANGE: (i64, i64) = (1, 100_000);
pub const WEIGHT_RANGE: (i64, i64) = (1, 50_000_000);
pub const LABEL_MAX_CHARS: usize = 32;

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

/// Whether a body must carry `source_version` (the WMS sync) or may leave it out (PUT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceVersion {
    Optional,
    Required,
}

impl SizeUpdate {
    pub const FIELDS: [&'static str; 6] = [
        "length_mm",
        "width_mm",
        "height_mm",
        "weight_g",
        "size_label",
        "source_version",
    ];

    /// Parses the size fields of a JSON object, reporting every bad field under `path`
    /// (`""` for a top-level body, `updates[3].` inside a batch). Keys other than
    /// [`Self::FIELDS`] and `also_allowed` are rejected as unknown.
    pub fn parse(
        object: &Map<String, Value>,
        path: &str,
        source_version: SourceVersion,
        also_allowed: &[&str],
        errors: &mut FieldErrors,
    ) -> Option<Self> {
        let mut fields = FieldReader {
            object,
            path,
            errors,
        };
        let length_mm = fields.integer("length_mm", DIMENSION_RANGE);
        let width_mm = fields.integer("width_mm", DIMENSION_RANGE);
        let height_mm = fields.integer("height_mm", DIMENSION_RANGE);
        let weight_g = fields.integer("weight_g", WEIGHT_RANGE);
        let size_label = fields.label("size_label");
        let source_version = match (object.get("source_version"), source_version) {
            (None | Some(Value::Null), SourceVersion::Optional) => Some(None),
            _ => fields.integer("source_version", (0, i64::MAX)).map(Some),
        };
        fields.reject_unknown(also_allowed);

        Some(Self {
            spec: SizeSpec {
                length_mm: i32::try_from(length_mm?).ok()?,
                width_mm: i32::try_from(width_mm?).ok()?,
                height_mm: i32::try_from(height_mm?).ok()?,
                weight_g: i32::try_from(weight_g?).ok()?,
                size_label: size_label?,
            },
            source_version: source_version?,
        })
    }
}

/// Reads typed fields out of a JSON object, recording what is wrong with each.
struct FieldReader<'a> {
    object: &'a Map<String, Value>,
    path: &'a str,
    errors: &'a mut FieldErrors,
}

impl FieldReader<'_> {
    fn fail(&mut self, name: &str, message: String) {
        self.errors.push(format!("{}{name}", self.path), message);
    }

    /// A JSON Schema integer: `3609.0` is 3609, `1.5` is not an integer.
    fn integer(&mut self, name: &str, (min, max): (i64, i64)) -> Option<i64> {
        let expected = if max == i64::MAX {
            format!("must be an integer of at least {min}")
        } else {
            format!("must be an integer from {min} to {max}")
        };
        let value = match self.object.get(name) {
            None | Some(Value::Null) => {
                self.fail(name, format!("is required; {expected}"));
                return None;
            }
            Some(Value::Number(n)) => n,
            Some(_) => {
                self.fail(name, expected);
                return None;
            }
        };
        let integer = value.as_i64().or_else(|| {
            value
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        });
        match integer {
            Some(i) if (min..=max).contains(&i) => Some(i),
            _ => {
                self.fail(name, expected);
                None
            }
        }
    }

    /// `Some(None)` when absent or null, `None` when invalid.
    fn label(&mut self, name: &str) -> Option<Option<String>> {
        match self.object.get(name) {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(s))
                if (1..=LABEL_MAX_CHARS).contains(&s.chars().count())
                    && !s.chars().any(char::is_control) =>
            {
                Some(Some(s.clone()))
            }
            Some(_) => {
                self.fail(
                    name,
                    format!("must be null or 1 to {LABEL_MAX_CHARS} printable characters"),
                );
                None
            }
        }
    }

    fn reject_unknown(&mut self, also_allowed: &[&str]) {
        let unknown: Vec<String> = self
            .object
            .keys()
            .filter(|k| {
                !SizeUpdate::FIELDS.contains(&k.as_str()) && !also_allowed.contains(&k.as_str())
            })
            .cloned()
            .collect();
        for key in unknown {
            self.fail(&key, "is not a known field".to_owned());
        }
    }
}

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
    /// Stock keeping unit.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", example = "SHOE-42-BLK")]
    pub sku: String,
    /// Length in millimetres.
    #[schema(minimum = 1, maximum = 100000, example = 330)]
    pub length_mm: i32,
    /// Width in millimetres.
    #[schema(minimum = 1, maximum = 100000, example = 210)]
    pub width_mm: i32,
    /// Height in millimetres.
    #[schema(minimum = 1, maximum = 100000, example = 120)]
    pub height_mm: i32,
    /// Weight in grams.
    #[schema(minimum = 1, maximum = 50000000, example = 950)]
    pub weight_g: i32,
    /// Optional size label such as "M" or "EU 42".
    #[schema(
        min_length = 1,
        max_length = 32,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]{1,32}$",
        example = "EU 42"
    )]
    pub size_label: Option<String>,
    /// Server-assigned version: 1 on create, +1 on every effective change. Also the ETag.
    #[schema(minimum = 1, example = 3)]
    pub version: i64,
    /// The WMS's own monotonic counter for this SKU, if it sent one.
    #[schema(minimum = 0, example = 1017)]
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

    fn parse(body: Value, sv: SourceVersion) -> Result<SizeUpdate, Vec<String>> {
        let mut errors = FieldErrors::default();
        let object = body.as_object().unwrap().clone();
        match SizeUpdate::parse(&object, "", sv, &[], &mut errors) {
            Some(update) if errors.is_empty() => Ok(update),
            _ => Err(errors.iter().map(|e| e.field.clone()).collect()),
        }
    }

    #[test]
    fn integral_floats_are_integers() {
        let update = parse(
            json!({"length_mm": 3609.0, "width_mm": 1, "height_mm": 1e2, "weight_g": 50000000}),
            SourceVersion::Optional,
        )
        .unwrap();
        assert_eq!(update.spec.length_mm(), 3609);
        assert_eq!(update.spec.height_mm(), 100);
        assert_eq!(update.source_version, None);
    }

    #[test]
    fn names_every_bad_field() {
        let err = parse(
            json!({"length_mm": 1.5, "width_mm": 0, "height_mm": "3", "weight_g": 50000001,
                   "size_label": "", "colour": "red"}),
            SourceVersion::Optional,
        )
        .unwrap_err();
        assert_eq!(
            err,
            [
                "length_mm",
                "width_mm",
                "height_mm",
                "weight_g",
                "size_label",
                "colour"
            ]
        );
    }

    #[test]
    fn sync_items_need_a_source_version() {
        let body = json!({"length_mm": 1, "width_mm": 1, "height_mm": 1, "weight_g": 1});
        assert_eq!(
            parse(body.clone(), SourceVersion::Required).unwrap_err(),
            ["source_version"]
        );
        assert!(parse(body, SourceVersion::Optional).is_ok());
    }

    #[test]
    fn labels_are_short_and_printable() {
        let base = json!({"length_mm": 1, "width_mm": 1, "height_mm": 1, "weight_g": 1});
        let with = |label: Value| {
            let mut body = base.clone();
            body["size_label"] = label;
            parse(body, SourceVersion::Optional)
        };
        assert!(with(json!("EU 42")).is_ok());
        assert!(with(json!("ä".repeat(32))).is_ok());
        assert!(with(json!("x".repeat(33))).is_err());
        assert!(with(json!("a\tb")).is_err());
        assert!(with(json!(42)).is_err());
        assert_eq!(with(Value::Null).unwrap().spec.size_label(), None);
    }
}
