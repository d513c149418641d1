//! `POST /v1/product-sizes/lookup`: a whole order's worth of SKUs in one request.

use std::collections::HashSet;

use axum::extract::{Extension, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::extract::{ConsistencyToken, JsonObject};
use super::{AppState, X_READ_SOURCE};
use crate::db::DbRoute;
use crate::domain::{FieldErrors, ProductSize, Sku};
use crate::error::{AppError, Problem};
use crate::middleware::LOOKUP_PATH;

pub const MAX_SKUS: usize = 1000;

/// SKUs to look up.
#[derive(utoipa::ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"skus": ["SHOE-42-BLK", "TSHIRT-M-RED"]}))]
#[allow(dead_code)] // Documents the body; see `parse_skus`.
pub struct LookupRequest {
    /// 1 to 1000 SKUs; duplicates are answered once.
    #[schema(min_items = 1, max_items = 1000, value_type = Vec<Sku>)]
    skus: Vec<String>,
}

/// The sizes found, and the SKUs that have none.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Documents the response, which is assembled from cached JSON bytes.
pub struct LookupResponse {
    /// Sizes found, in request order.
    items: Vec<ProductSize>,
    /// Requested SKUs with no size, in request order.
    not_found: Vec<String>,
}

#[utoipa::path(
    post,
    path = LOOKUP_PATH,
    tag = "sizes",
    params(("X-Consistency-Token" = Option<String>, Header, nullable = false, description = "Token from an earlier write: answers are at least that new",
            pattern = "^[0-9A-Fa-f]{16}$")),
    request_body(content = LookupRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Sizes found and SKUs not found", body = LookupResponse,
         headers(("X-Read-Source" = String, description = "The farthest source used: cache, replica or primary"))),
        (status = 400, description = "Malformed JSON or token", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No data source is reachable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn lookup(
    State(state): State<AppState>,
    Extension(route): Extension<DbRoute>,
    ConsistencyToken(token): ConsistencyToken,
    JsonObject(body): JsonObject,
) -> Result<Response, AppError> {
    let skus = parse_skus(&body)?;
    let read = state.sizes.read(&skus, route, token).await?;

    // Assembled from the stored JSON bodies: a cache hit is never re-serialised.
    let mut out = Vec::with_capacity(
        read.docs
            .iter()
            .map(|d| d.body.as_ref().map_or(0, |b| b.len() + 1))
            .sum::<usize>()
            + 32,
    );
    out.extend_from_slice(b"{\"items\":[");
    let mut not_found = Vec::new();
    let mut first = true;
    for doc in &read.docs {
        match &doc.body {
            Some(body) => {
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(body);
            }
            None => not_found.push(doc.sku.as_str()),
        }
    }
    out.extend_from_slice(b"],\"not_found\":");
    serde_json::to_writer(&mut out, &not_found).map_err(|e| AppError::Internal(e.into()))?;
    out.push(b'}');
    Ok((
        [
            (X_READ_SOURCE, read.source.as_str()),
            (header::CONTENT_TYPE, "application/json"),
        ],
        out,
    )
        .into_response())
}

/// The distinct SKUs of the body, in order; 422 naming every bad entry.
fn parse_skus(body: &serde_json::Map<String, Value>) -> Result<Vec<Sku>, AppError> {
    let mut errors = FieldErrors::default();
    for key in body.keys().filter(|k| k.as_str() != "skus") {
        errors.push(key.clone(), "is not a known field");
    }
    let list = match body.get("skus") {
        Some(Value::Array(list)) if (1..=MAX_SKUS).contains(&list.len()) => list.as_slice(),
        _ => {
            errors.push("skus", format!("must be an array of 1 to {MAX_SKUS} SKUs"));
            &[]
        }
    };
    let mut seen = HashSet::with_capacity(list.len());
    let mut skus = Vec::with_capacity(list.len());
    for (i, value) in list.iter().enumerate() {
        match value.as_str().map(Sku::parse) {
            Some(Ok(sku)) => {
                if seen.insert(sku.clone()) {
                    skus.push(sku);
                }
            }
            Some(Err(e)) => errors.push(format!("skus[{i}]"), format!("invalid SKU: {e}")),
            None => errors.push(format!("skus[{i}]"), "must be a string"),
        }
    }
    errors.into_result(skus).map_err(AppError::Validation)
}
