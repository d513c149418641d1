//! `/v1/products/{sku}/size`: read, create or replace, delete one product's size.

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::extract::{
    ConsistencyToken, JsonObject, SkuPath, WritePreconditions, etag, if_none_match_hits,
};
use super::{AppState, X_CONSISTENCY_TOKEN, X_READ_SOURCE};
use crate::db::DbRoute;
use crate::domain::size::SourceVersion;
use crate::domain::write::Decision;
use crate::domain::{FieldErrors, Lsn, ProductSize, SizeUpdate};
use crate::error::{AppError, Problem};

/// The body of a PUT: the size fields and, optionally, the WMS's counter.
#[derive(utoipa::ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"length_mm": 330, "width_mm": 210, "height_mm": 120, "weight_g": 950,
                          "size_label": "EU 42", "source_version": 1017}))]
#[allow(dead_code)] // Documents the body; parsing reports every bad field, see `SizeUpdate::parse`.
pub struct SizeRequest {
    /// Length in millimetres.
    #[schema(minimum = 1, maximum = 100000)]
    length_mm: i64,
    /// Width in millimetres.
    #[schema(minimum = 1, maximum = 100000)]
    width_mm: i64,
    /// Height in millimetres.
    #[schema(minimum = 1, maximum = 100000)]
    height_mm: i64,
    /// Weight in grams.
    #[schema(minimum = 1, maximum = 50000000)]
    weight_g: i64,
    /// Optional size label, 1 to 32 printable characters.
    #[schema(
        min_length = 1,
        max_length = 32,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]{1,32}$"
    )]
    size_label: Option<String>,
    /// The WMS's monotonic counter for this SKU. An update older than the stored one never
    /// applies (409).
    #[schema(minimum = 0)]
    source_version: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/v1/products/{sku}/size",
    tag = "sizes",
    params(
        ("sku" = String, Path, description = "Stock keeping unit", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"),
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "ETag(s) the client holds: 304 if current"),
        ("X-Consistency-Token" = Option<String>, Header, nullable = false, description = "Token from an earlier write: the answer is at least that new",
         pattern = "^[0-9A-Fa-f]{16}$"),
    ),
    responses(
        (status = 200, description = "The product's size", body = ProductSize,
         headers(("ETag" = String, description = "The version, quoted"),
                 ("X-Read-Source" = String, description = "cache, replica or primary"))),
        (status = 304, description = "The client's ETag is current"),
        (status = 400, description = "Invalid SKU or token", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown SKU", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No data source is reachable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn get_size(
    State(state): State<AppState>,
    Extension(route): Extension<DbRoute>,
    SkuPath(sku): SkuPath,
    ConsistencyToken(token): ConsistencyToken,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let read = state
        .sizes
        .read(std::slice::from_ref(&sku), route, token)
        .await?;
    let source = [(X_READ_SOURCE, read.source.as_str())];
    let Some(doc) = read.docs.into_iter().next() else {
        return Err(AppError::internal("a read of one SKU returned no document"));
    };
    let Some(body) = doc.body else {
        return Ok((source, AppError::NotFound(sku.to_string())).into_response());
    };
    let tag = etag(doc.version);
    if if_none_match_hits(&headers, doc.version) {
        return Ok((StatusCode::NOT_MODIFIED, source, [(header::ETAG, tag)]).into_response());
    }
    Ok((
        source,
        [
            (header::ETAG, tag),
            (header::CONTENT_TYPE, "application/json".to_owned()),
        ],
        body,
    )
        .into_response())
}

#[utoipa::path(
    put,
    path = "/v1/products/{sku}/size",
    tag = "sizes",
    params(
        ("sku" = String, Path, description = "Stock keeping unit", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"),
        ("If-Match" = Option<String>, Header, nullable = false, description = "Apply only to this version, e.g. `\"3\"` (412 otherwise)",
         pattern = r#"^(\*|(W/)?("[0-9]+"|[0-9]+)( *, *(W/)?("[0-9]+"|[0-9]+))*)$"#),
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "`*`: create only (412 if it exists); or versions it must not have",
         pattern = r#"^(\*|(W/)?("[0-9]+"|[0-9]+)( *, *(W/)?("[0-9]+"|[0-9]+))*)$"#),
    ),
    request_body(content = SizeRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = ProductSize,
         headers(("ETag" = String), ("X-Consistency-Token" = String, description = "Send on reads to see at least this write")),
         links(
             ("GetSize" = (operation_id = "get_size", parameters(("sku" = "$request.path.sku")))),
             ("DeleteSize" = (operation_id = "delete_size", parameters(("sku" = "$request.path.sku")))),
         )),
        (status = 200, description = "Replaced, or unchanged (same content: version kept)", body = ProductSize,
         headers(("ETag" = String), ("X-Consistency-Token" = String)),
         links(
             ("GetSize" = (operation_id = "get_size", parameters(("sku" = "$request.path.sku")))),
             ("DeleteSize" = (operation_id = "delete_size", parameters(("sku" = "$request.path.sku")))),
         )),
        (status = 400, description = "Malformed JSON, invalid SKU or header", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token may only read", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "source_version older than the stored one", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match / If-None-Match failed", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The primary database is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["write"]))
)]
pub async fn put_size(
    State(state): State<AppState>,
    SkuPath(sku): SkuPath,
    WritePreconditions(preconditions): WritePreconditions,
    JsonObject(body): JsonObject,
) -> Result<Response, AppError> {
    let mut errors = FieldErrors::default();
    let update = SizeUpdate::parse(&body, "", SourceVersion::Optional, &[], &mut errors);
    let update = errors
        .into_result(update)
        .map_err(AppError::Validation)?
        .ok_or_else(|| AppError::internal("a valid body parsed to no update"))?;
    let outcome = state.sizes.put(sku.clone(), update, &preconditions).await?;
    let token = token_header(outcome.token);
    let (status, row) = match outcome.decision {
        Decision::Write { row, created: true } => (StatusCode::CREATED, row),
        Decision::Write {
            row,
            created: false,
        }
        | Decision::Unchanged(row) => (StatusCode::OK, row),
        Decision::Stale(row) => {
            return Ok((
                [token],
                AppError::Conflict(format!(
                    "source_version is older than the stored {} (version {})",
                    row.source_version.unwrap_or_default(),
                    row.version
                )),
            )
                .into_response());
        }
        Decision::PreconditionFailed => return Err(AppError::PreconditionFailed),
        Decision::NotFound => return Err(AppError::NotFound(sku.to_string())),
    };
    let product = row
        .to_product()
        .ok_or_else(|| AppError::internal("a written row has no product size"))?;
    Ok((
        status,
        [
            token,
            (
                header::ETAG,
                HeaderValue::from_str(&etag(row.version))
                    .map_err(|e| AppError::Internal(e.into()))?,
            ),
        ],
        axum::Json(product),
    )
        .into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/products/{sku}/size",
    tag = "sizes",
    params(
        ("sku" = String, Path, description = "Stock keeping unit", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"),
        ("If-Match" = Option<String>, Header, nullable = false, description = "Delete only this version, e.g. `\"3\"` (412 otherwise)",
         pattern = r#"^(\*|(W/)?("[0-9]+"|[0-9]+)( *, *(W/)?("[0-9]+"|[0-9]+))*)$"#),
    ),
    responses(
        (status = 204, description = "Deleted", headers(("X-Consistency-Token" = String))),
        (status = 400, description = "Invalid SKU or header", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token may only read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown SKU", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match failed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The primary database is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["write"]))
)]
pub async fn delete_size(
    State(state): State<AppState>,
    SkuPath(sku): SkuPath,
    WritePreconditions(preconditions): WritePreconditions,
) -> Result<Response, AppError> {
    let outcome = state.sizes.delete(sku.clone(), &preconditions).await?;
    match outcome.decision {
        Decision::Write { .. } => {
            Ok((StatusCode::NO_CONTENT, [token_header(outcome.token)]).into_response())
        }
        Decision::PreconditionFailed => Err(AppError::PreconditionFailed),
        _ => Err(AppError::NotFound(sku.to_string())),
    }
}

pub fn token_header(token: Lsn) -> (HeaderName, HeaderValue) {
    // Hexadecimal digits only: always a valid header value.
    let value = HeaderValue::from_str(&token.to_token())
        .unwrap_or(HeaderValue::from_static("0000000000000000"));
    (X_CONSISTENCY_TOKEN, value)
}
