//! The service's own HTTP header names, in one place for every layer, handler and error.

use axum::http::HeaderName;

/// The request's id: echoed if the client sent one, made up otherwise; in every log line and
/// problem body of the request.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Where a read's answer came from (`cache`, `replica` or `primary`). Output only: the layers
/// read the typed [`crate::service::ReadSource`] from the response's extensions instead.
pub const X_READ_SOURCE: HeaderName = HeaderName::from_static("x-read-source");

/// The position a write's answer names, and a read sends back to get data at least that new.
pub const X_CONSISTENCY_TOKEN: HeaderName = HeaderName::from_static("x-consistency-token");
