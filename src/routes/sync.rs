//! `POST /v1/sync/product-sizes`: WMS batches, possibly replayed or out of order.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::body::{self, RequestBody, ValidJson};
use super::parts::token_header;
use super::sizes::size_body;
use crate::domain::write::Decision;
use crate::domain::{FieldErrors, SizeUpdate, Sku, SourceVersion};
use crate::error::AppError;

/// The writes this file serves (the write group).
pub fn writes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(sync_sizes))
}

pub const MAX_UPDATES: usize = 1000;

size_body! {
    /// One WMS update: the SKU, its size fields and the WMS's counter (required here).
    #[derive(utoipa::ToSchema, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[schema(example = json!({"sku": "SHOE-42-BLK", "length_mm": 330, "width_mm": 210, "height_mm": 120,
                              "weight_g": 950, "size_label": "EU 42", "source_version": 1017}))]
    pub struct SyncUpdate {
        #[schema(value_type = Sku)]
        sku: Option<Value>,
        ..SizeFields,
        /// The WMS's monotonic counter for this SKU: an update older than the stored one is stale.
        #[schema(value_type = SourceVersion)]
        source_version: Option<Value>,
    }
}

impl RequestBody for SyncUpdate {
    type Valid = (Sku, SizeUpdate);
}

impl TryFrom<SyncUpdate> for (Sku, SizeUpdate) {
    type Error = FieldErrors;

    fn try_from(mut item: SyncUpdate) -> Result<Self, FieldErrors> {
        let mut errors = FieldErrors::default();
        let sku = errors.required::<Sku>("sku", item.sku.as_ref());
        let spec = item.size_fields().check(&mut errors);
        let source_version =
            errors.required::<SourceVersion>("source_version", item.source_version.as_ref());
        let update = sku
            .zip(spec)
            .zip(source_version)
            .map(|((sku, spec), source_version)| {
                let update = SizeUpdate {
                    spec,
                    source_version: Some(source_version.get()),
                };
                (sku, update)
            });
        errors.into_result(update)
    }
}

/// A batch of 1 to 1000 updates. An item that is not a valid `SyncUpdate` is reported as
/// `invalid` in the results and does not fail the batch.
#[derive(utoipa::ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    #[schema(schema_with = updates_schema, required = true)]
    updates: Option<Value>,
}

fn updates_schema() -> utoipa::openapi::Array {
    body::one_to::<SyncUpdate>(MAX_UPDATES).build()
}

impl RequestBody for SyncRequest {
    type Valid = Vec<BatchItem>;
}

/// Every item, valid or not: one bad item does not reject the batch.
impl TryFrom<SyncRequest> for Vec<BatchItem> {
    type Error = FieldErrors;

    fn try_from(body: SyncRequest) -> Result<Self, FieldErrors> {
        match body.updates {
            Some(Value::Array(items)) if (1..=MAX_UPDATES).contains(&items.len()) => {
                Ok(items.into_iter().map(BatchItem::from).collect())
            }
            _ => {
                let mut errors = FieldErrors::default();
                errors.push(
                    "updates",
                    format!("must be an array of 1 to {MAX_UPDATES} updates"),
                );
                Err(errors)
            }
        }
    }
}

/// One item of a batch: the SKU as sent, and the update it makes or why it makes none.
pub struct BatchItem {
    sku: Option<String>,
    update: Result<(Sku, SizeUpdate), String>,
}

impl From<Value> for BatchItem {
    fn from(item: Value) -> Self {
        let Value::Object(object) = item else {
            return Self {
                sku: None,
                update: Err("must be a JSON object".into()),
            };
        };
        Self {
            sku: object.get("sku").and_then(Value::as_str).map(str::to_owned),
            update: body::read::<SyncUpdate>(object).map_err(|errors| errors.summary()),
        }
    }
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

/// Apply a batch of WMS updates
///
/// For the WMS: 1 to 1000 updates, each a SKU's size fields and the WMS's own counter for it
/// (`source_version`), applied in one transaction on the primary database before the answer is
/// sent. Each item is answered on its own, in input order: `applied` (a new version),
/// `unchanged` (the same content and counter as stored), `stale` (a counter lower than the
/// stored one, or equal with other content: never applied) or `invalid` (with the reason; the
/// other items still apply). A SKU may appear several times: its updates apply in order.
///
/// **Idempotent.** Replaying a batch, or sending it again after a timeout or a 503, changes
/// nothing a second time: its items come back `unchanged` or `stale`. Batches that arrive out
/// of order cannot move a SKU back to an older counter.
///
/// **Freshness.** `X-Consistency-Token` names the whole batch: a read that sends it back, on
/// any instance, gets at least every version it applied. Pass it on with the news of the
/// update, to the services that will read it.
#[utoipa::path(
    post,
    path = "/v1/sync/product-sizes",
    tag = "sync",
    request_body(
        content = SyncRequest,
        content_type = "application/json",
        examples(
            ("batch" = (summary = "Two SKUs' updates, each with the WMS's counter",
                        value = json!({"updates": [
                            {"sku": "SHOE-42-BLK", "length_mm": 330, "width_mm": 210,
                             "height_mm": 120, "weight_g": 950, "size_label": "EU 42",
                             "source_version": 1017},
                            {"sku": "TSHIRT-M-RED", "length_mm": 310, "width_mm": 230,
                             "height_mm": 20, "weight_g": 175, "size_label": "M",
                             "source_version": 88},
                        ]}))),
        ),
    ),
    responses(
        (status = 200, description = "Per-item results, in input order", body = SyncResponse,
         headers(("X-Consistency-Token" = String, description = "Send it on reads to get at least every version this batch applied"))),
        (status = 400, description = "Malformed JSON"),
        (status = 422, description = "The batch itself is invalid: not 1 to 1000 updates, or an unknown top-level field"),
    )
)]
pub async fn sync_sizes(
    State(state): State<AppState>,
    ValidJson(items): ValidJson<SyncRequest>,
) -> Result<Response, AppError> {
    let valid: Vec<(Sku, SizeUpdate)> = items
        .iter()
        .filter_map(|item| item.update.as_ref().ok().cloned())
        .collect();
    let outcome = state.writer.sync(valid).await?;

    let mut decisions = outcome.decisions.into_iter();
    let mut response = SyncResponse::default();
    for item in items {
        let (status, version, error) = match item.update {
            Ok(_) => match decisions.next() {
                Some(Decision::Write { row, .. }) => (ItemStatus::Applied, Some(row.version), None),
                Some(Decision::Unchanged(row)) => (ItemStatus::Unchanged, Some(row.version), None),
                Some(Decision::Stale(row)) => (ItemStatus::Stale, Some(row.version), None),
                _ => {
                    return Err(AppError::internal(
                        "a valid sync item has no write decision",
                    ));
                }
            },
            Err(error) => (ItemStatus::Invalid, None, Some(error)),
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
            error,
        });
    }
    Ok(([token_header(outcome.token)], axum::Json(response)).into_response())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn items_need_a_sku_and_a_source_version() {
        let item = BatchItem::from(json!({"length_mm": 1, "width_mm": 1, "height_mm": 1,
                                          "weight_g": 1, "sku": 7}));
        assert_eq!(item.sku, None);
        assert_eq!(
            item.update.unwrap_err(),
            "sku: must be a string; source_version: is required; must be an integer of at least 0"
        );
        let item = BatchItem::from(json!({"length_mm": 1, "width_mm": 1, "height_mm": 1,
                                          "weight_g": 1, "sku": "A-1", "source_version": 4}));
        let (sku, update) = item.update.unwrap();
        assert_eq!((sku.as_str(), update.source_version), ("A-1", Some(4)));
    }

    #[test]
    fn a_bad_item_is_invalid_and_the_batch_is_not() {
        let Value::Object(body) = json!({"updates": [[], {"sku": "B"}]}) else {
            unreachable!()
        };
        let items = body::read::<SyncRequest>(body).unwrap();
        assert_eq!(
            items[0].update.as_ref().unwrap_err(),
            "must be a JSON object"
        );
        assert_eq!(items[1].sku.as_deref(), Some("B"));
        assert!(items[1].update.is_err());
        let Value::Object(empty) = json!({"updates": [], "extra": 1}) else {
            unreachable!()
        };
        let fields: Vec<String> = body::read::<SyncRequest>(empty)
            .err()
            .unwrap()
            .iter()
            .map(|e| e.field.clone())
            .collect();
        assert_eq!(fields, ["updates", "extra"]);
    }
}
