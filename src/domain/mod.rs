//! Validated domain types. Nothing here does I/O: once you hold one of these values, it is valid.

pub mod field_errors;
pub mod lsn;
pub mod size;
pub mod sku;
pub mod warm;
pub mod write;

pub use field_errors::{Field, FieldError, FieldErrors};
pub use lsn::Lsn;
pub use size::{
    Grams, Millimetres, ProductSize, SizeLabel, SizeSpec, SizeUpdate, SourceVersion, StoredSize,
};
pub use sku::Sku;
pub use warm::WarmProgress;
