//! `POST /v1/sync/product-sizes`: WMS batches, possibly replayed or out of order.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use super::AppState;
use super::extract::JsonObject;
use super::sizes::token_header;
use crate::domain::size::SourceVersion;
use crate::domain::write::Decision;
use crate::domain::{FieldErrors, SizeUpdate, Sku};
use crate::error::{AppError, Problem};

pub const MAX_UPDATES: usize = 1000;

/// One WMS update: the SKU, its size fields and the WMS's counter (required here).
#[derive(utoipa::ToSchema)]
#[schema(example = json!({"sku": "SHOE-42-BLK", "length_mm": 330, "width_mm": 210, "height_mm": 120,
                          "weight_g": 950, "size_label": "EU 42", "source_version": 1017}))]
#[allow(dead_code)] // Documents the body; each item is parsed by `SizeUpdate::parse`.
pub struct SyncUpdate {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    sku: String,
    #[schema(minimum = 1, maximum = 100000)]
    length_mm: i64,
    #[schema(minimum = 1, maximum = 100000)]
    width_mm: i64,
    #[schema(minimum = 1, maximum = 100000)]
    height_mm: i64,
    #[schema(minimum = 1, maximum = 50000000)]
    weight_g: i64,
    #[schema(
        min_length = 1,
        max_length = 32,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]{1,32}$"
    )]
    size_label: Option<String>,
    /// The WMS's monotonic counter for this SKU: an update older than the stored one is stale.
    #[schema(minimum = 0)]
    source_version: i64,
}

/// A batch of 1 to 1000 updates. Each item should be a `SyncUpdate`; an item that is not is
/// reported as `invalid` in the results and does not fail the batch, so items are not
/// constrained here.
#[derive(utoipa::ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct SyncRequest {
    #[schema(min_items = 1, max_items = 1000, value_type = Vec<Value>)]
    updates: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ItemStatus {
    Applied,
    Unchanged,
    Stale,
    Invalid,
}

/// What happened to one update, in input order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SyncResult {
    /// The SKU as sent (null if the item had none).
    sku: Option<String>,
    status: ItemStatus,
    /// The stored version after this update (absent for invalid items).
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<i64>,
    /// Why the item is invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct SyncResponse {
    applied: usize,
    unchanged: usize,
    stale: usize,
    invalid: usize,
    results: Vec<SyncResult>,
}

#[utoipa::path(
    post,
    path = "/v1/sync/product-sizes",
    tag = "sync",
    request_body(content = SyncRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Per-item results, in input order", body = SyncResponse,
         headers(("X-Consistency-Token" = String, description = "Send on reads to see at least this batch"))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token may only read", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The batch itself is invalid (not 1..=1000 updates)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The primary database is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["write"]))
)]
pub async fn sync_sizes(
    State(state): State<AppState>,
    JsonObject(body): JsonObject,
) -> Result<Response, AppError> {
    let items = parse_batch(&body)?;
    let valid: Vec<(Sku, SizeUpdate)> = items
        .iter()
        .filter_map(|item| item.parsed.clone())
        .collect();
    let outcome = state.sizes.sync(valid).await?;

    let mut decisions = outcome.decisions.into_iter();
    let mut response = SyncResponse::default();
    for item in items {
        let (status, version) = match (&item.parsed, item.error.is_some()) {
            (Some(_), false) => match decisions.next() {
                Some(Decision::Write { row, .. }) => (ItemStatus::Applied, Some(row.version)),
                Some(Decision::Unchanged(row)) => (ItemStatus::Unchanged, Some(row.version)),
                Some(Decision::Stale(row)) => (ItemStatus::Stale, Some(row.version)),
                _ => {
                    return Err(AppError::internal(
                        "a valid sync item has no write decision",
                    ));
                }
            },
            _ => (ItemStatus::Invalid, None),
        };
        match status {
            ItemStatus::Applied => response.applied += 1,
            ItemStatus::Unchanged => response.unchanged += 1,
            ItemStatus::Stale => response.stale += 1,
            ItemStatus::Invalid => response.invalid += 1,
        }
        response.results.push(SyncResult {
            sku: item.sku,
            status,
            version,
            error: item.error,
        });
    }
    Ok(([token_header(outcome.token)], axum::Json(response)).into_response())
}

struct BatchItem {
    sku: Option<String>,
    parsed: Option<(Sku, SizeUpdate)>,
    error: Option<String>,
}

/// Every item, valid or not: one bad item does not reject the batch.
fn parse_batch(body: &serde_json::Map<String, Value>) -> Result<Vec<BatchItem>, AppError> {
    let mut errors = FieldErrors::default();
    for key in body.keys().filter(|k| k.as_str() != "updates") {
        errors.push(key.clone(), "is not a known field");
    }
    let updates = match body.get("updates") {
        Some(Value::Array(list)) if (1..=MAX_UPDATES).contains(&list.len()) => list.as_slice(),
        _ => {
            errors.push(
                "updates",
                format!("must be an array of 1 to {MAX_UPDATES} updates"),
            );
            &[]
        }
    };
    if !errors.is_empty() {
        return Err(AppError::Validation(errors));
    }
    Ok(updates.iter().map(parse_item).collect())
}

fn parse_item(value: &Value) -> BatchItem {
    let Some(object) = value.as_object() else {
        return BatchItem {
            sku: None,
            parsed: None,
            error: Some("must be a JSON object".into()),
        };
    };
    let mut errors = FieldErrors::default();
    let raw_sku = object.get("sku").and_then(Value::as_str).map(str::to_owned);
    let sku = match &raw_sku {
        Some(raw) => Sku::parse(raw)
            .map_err(|e| errors.push("sku", format!("invalid SKU: {e}")))
            .ok(),
        None => {
            errors.push("sku", "is required and must be a string");
            None
        }
    };
    let update = SizeUpdate::parse(object, "", SourceVersion::Required, &["sku"], &mut errors);
    match (sku, update, errors.is_empty()) {
        (Some(sku), Some(update), true) => BatchItem {
            sku: raw_sku,
            parsed: Some((sku, update)),
            error: None,
        },
        _ => BatchItem {
            sku: raw_sku,
            parsed: None,
            error: Some(errors.summary()),
        },
    }
}
