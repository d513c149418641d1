//! Request bodies: read into the documented request type, converted with `TryFrom` into
//! domain values, every bad field named.
//!
//! A documented request struct keeps each field as sent (`Option<Value>`) and declares the
//! field's type for the OpenAPI document (`#[schema(value_type = ..)]`); the conversion checks
//! each field with that same type's [`Field`](crate::domain::Field) rules. Strict field types
//! would stop serde at the first bad field, and a client should learn every mistake at once.

use axum::extract::{FromRequest, Request};
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde_json::{Map, Value};

use super::extract::JsonObject;
use crate::domain::FieldErrors;
use crate::error::AppError;

/// A documented request body and what it means once every field is checked.
pub trait RequestBody: DeserializeOwned {
    type Valid: TryFrom<Self, Error = FieldErrors>;
}

/// `object` read as `R` and converted: every declared field's error, then every key `R` does
/// not declare (serde's `deny_unknown_fields` would name only the first).
pub fn read<R: RequestBody>(mut object: Map<String, Value>) -> Result<R::Valid, FieldErrors> {
    let declared = declared_fields::<R>();
    let unknown: Vec<String> = object
        .keys()
        .filter(|key| !declared.contains(&key.as_str()))
        .cloned()
        .collect();
    let mut errors = FieldErrors::default();
    for key in unknown {
        object.remove(&key);
        errors.push(key, "is not a known field");
    }
    // Every declared field is an `Option<Value>`: with the unknown keys gone this cannot fail.
    let request = R::deserialize(Value::Object(object)).map_err(|e| {
        let mut errors = FieldErrors::default();
        errors.push("body", e.to_string());
        errors
    })?;
    match R::Valid::try_from(request) {
        Ok(valid) if errors.is_empty() => Ok(valid),
        Ok(_) => Err(errors),
        Err(mut field_errors) => {
            field_errors.extend(errors);
            Err(field_errors)
        }
    }
}

/// A JSON object body read as `R` (see [`read`]): 415, 413 and 400 as for [`JsonObject`], 422
/// naming every bad field.
pub struct ValidJson<R: RequestBody>(pub R::Valid);

impl<S: Send + Sync, R: RequestBody> FromRequest<S> for ValidJson<R> {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let JsonObject(object) = JsonObject::from_request(request, state).await?;
        read::<R>(object).map(Self).map_err(AppError::Validation)
    }
}

/// The schema of a body field holding 1 to `max` items of `T` (the bound the conversion
/// checks, so that the two cannot differ).
pub fn one_to<T: utoipa::ToSchema>(max: usize) -> utoipa::openapi::schema::ArrayBuilder {
    utoipa::openapi::ArrayBuilder::new()
        .items(utoipa::openapi::Ref::from_schema_name(T::name()))
        .min_items(Some(1))
        .max_items(Some(max))
}

/// The field names serde's derive declares for `R`, read by asking `R` to deserialize itself
/// from a deserializer that only records what it is asked for.
fn declared_fields<R: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = R::deserialize(FieldNames(&mut fields));
    fields
}

struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("only the field names were wanted"))
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("a request body is a struct"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Example {
        first: Option<Value>,
        #[serde(rename = "second_name")]
        second: Option<Value>,
    }

    #[test]
    fn declared_fields_are_the_names_serde_reads() {
        assert_eq!(declared_fields::<Example>(), ["first", "second_name"]);
        let example: Example =
            serde_json::from_value(serde_json::json!({"first": 1, "second_name": 2})).unwrap();
        assert_eq!(
            (example.first, example.second),
            (Some(1.into()), Some(2.into()))
        );
    }
}
