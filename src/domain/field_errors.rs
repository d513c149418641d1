//! Checking a request body field by field, so that a client learns every mistake at once.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// One invalid field of a request body, named by its JSON path (`weight_g`, `skus[3]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON path of the field, e.g. `length_mm` or `updates[2].sku`.
    #[schema(example = "length_mm")]
    pub field: String,
    /// What is wrong with it.
    #[schema(example = "must be an integer from 1 to 100000")]
    pub message: String,
}

/// A value a body field may hold. Its rules live with the type, which also documents them
/// (its `utoipa` schema), so what is checked and what is published cannot drift apart.
pub trait Field: Sized {
    /// What a valid value is, as a field error says it.
    fn expected() -> String;

    /// The field's value, or why it is not one (by default, [`Self::expected`]).
    fn from_json(value: &Value) -> Result<Self, String>;

    /// What a field error says when the field is absent or null.
    fn missing() -> String {
        format!("is required; {}", Self::expected())
    }
}

/// Every invalid field of a body, so a client can fix them all at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldErrors(Vec<FieldError>);

impl FieldErrors {
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// A required field as `T`, or `None` with the reason recorded under `name`. Null counts as
    /// absent.
    pub fn required<T: Field>(&mut self, name: &str, value: Option<&Value>) -> Option<T> {
        match value {
            None | Some(Value::Null) => {
                self.push(name, T::missing());
                None
            }
            Some(value) => self.check(name, T::from_json(value)),
        }
    }

    /// An optional field as `T` (`Some(None)` when absent or null), or `None` with the reason
    /// recorded under `name`.
    pub fn optional<T: Field>(&mut self, name: &str, value: Option<&Value>) -> Option<Option<T>> {
        match value {
            None | Some(Value::Null) => Some(None),
            Some(value) => self.check(name, T::from_json(value)).map(Some),
        }
    }

    /// `result`'s value, or `None` with its error recorded under `name`.
    pub fn check<T>(&mut self, name: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|message| self.push(name, message)).ok()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn extend(&mut self, other: FieldErrors) {
        self.0.extend(other.0);
    }

    pub fn into_vec(self) -> Vec<FieldError> {
        self.0
    }

    pub fn iter(&self) -> impl Iterator<Item = &FieldError> {
        self.0.iter()
    }

    /// `Ok(value)` when nothing was pushed and there is a value.
    pub fn into_result<T>(self, value: Option<T>) -> Result<T, FieldErrors> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            _ => Err(self),
        }
    }

    /// One line naming every field, for per-item results in a batch.
    pub fn summary(&self) -> String {
        self.0
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ")
    }
}
