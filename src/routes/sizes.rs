//! `/v1/products/{sku}/size`: read, create or replace, delete one product's size.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::body::{RequestBody, ValidJson};
use super::extract::{IfNoneMatch, SkuPath, WritePreconditions, etag};
use super::parts::{AnsweredFrom, token_header};
use crate::domain::write::Decision;
use crate::domain::{
    FieldErrors, Grams, Millimetres, ProductSize, SizeLabel, SizeSpec, SizeUpdate, Sku,
    SourceVersion,
};
use crate::error::AppError;
use crate::middleware::route::ReadContext;

/// The reads this file serves; `routes::api` gives them the read group's token and database.
pub fn reads() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_size))
}

/// The writes this file serves (the write group).
pub fn writes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(put_size, delete_size))
}

/// Declares a documented request body with the five size fields, each kept as sent and
/// documented as its domain type, where the body marks `..SizeFields` (the document lists
/// fields in declaration order), and gives the body `size_fields`, which moves them out for
/// [`SizeFields::check`]. So the PUT body and a sync item describe the size fields once;
/// `#[serde(flatten)]` would turn the document's schema into an `allOf` and hide the fields
/// from `body::read`'s unknown-key check.
macro_rules! size_body {
    (
        $(#[$($attr:tt)*])*
        pub struct $name:ident {
            $($(#[$($leading_attr:tt)*])* $leading:ident: $leading_ty:ty,)*
            ..SizeFields,
            $($(#[$($trailing_attr:tt)*])* $trailing:ident: $trailing_ty:ty,)*
        }
    ) => {
        $(#[$($attr)*])*
        pub struct $name {
            $($(#[$($leading_attr)*])* $leading: $leading_ty,)*
            /// Length in millimetres.
            #[schema(value_type = crate::domain::Millimetres)]
            length_mm: Option<Value>,
            /// Width in millimetres.
            #[schema(value_type = crate::domain::Millimetres)]
            width_mm: Option<Value>,
            /// Height in millimetres.
            #[schema(value_type = crate::domain::Millimetres)]
            height_mm: Option<Value>,
            /// Weight in grams.
            #[schema(value_type = crate::domain::Grams)]
            weight_g: Option<Value>,
            /// Optional size label.
            #[schema(value_type = Option<crate::domain::SizeLabel>)]
            size_label: Option<Value>,
            $($(#[$($trailing_attr)*])* $trailing: $trailing_ty,)*
        }

        impl $name {
            /// The size fields, taken out for checking.
            fn size_fields(&mut self) -> $crate::routes::sizes::SizeFields {
                $crate::routes::sizes::SizeFields {
                    length_mm: self.length_mm.take(),
                    width_mm: self.width_mm.take(),
                    height_mm: self.height_mm.take(),
                    weight_g: self.weight_g.take(),
                    size_label: self.size_label.take(),
                }
            }
        }
    };
}

pub(super) use size_body;

size_body! {
    /// The body of a PUT: the size fields and, optionally, the WMS's counter.
    #[derive(utoipa::ToSchema, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[schema(example = json!({"length_mm": 330, "width_mm": 210, "height_mm": 120, "weight_g": 950,
                              "size_label": "EU 42", "source_version": 1017}))]
    pub struct SizeRequest {
        ..SizeFields,
        /// The WMS's monotonic counter for this SKU. An update older than the stored one never
        /// applies (409).
        #[schema(value_type = Option<SourceVersion>)]
        source_version: Option<Value>,
    }
}

impl RequestBody for SizeRequest {
    type Valid = SizeUpdate;
}

impl TryFrom<SizeRequest> for SizeUpdate {
    type Error = FieldErrors;

    fn try_from(mut body: SizeRequest) -> Result<Self, FieldErrors> {
        let mut errors = FieldErrors::default();
        let spec = body.size_fields().check(&mut errors);
        let source_version =
            errors.optional::<SourceVersion>("source_version", body.source_version.as_ref());
        let update = spec
            .zip(source_version)
            .map(|(spec, source_version)| SizeUpdate {
                spec,
                source_version: source_version.map(SourceVersion::get),
            });
        errors.into_result(update)
    }
}

/// The size fields of a body, as sent.
pub struct SizeFields {
    pub length_mm: Option<Value>,
    pub width_mm: Option<Value>,
    pub height_mm: Option<Value>,
    pub weight_g: Option<Value>,
    pub size_label: Option<Value>,
}

impl SizeFields {
    /// The size these fields describe, or `None` with every bad field recorded.
    pub fn check(self, errors: &mut FieldErrors) -> Option<SizeSpec> {
        let length = errors.required::<Millimetres>("length_mm", self.length_mm.as_ref());
        let width = errors.required::<Millimetres>("width_mm", self.width_mm.as_ref());
        let height = errors.required::<Millimetres>("height_mm", self.height_mm.as_ref());
        let weight = errors.required::<Grams>("weight_g", self.weight_g.as_ref());
        let label = errors.optional::<SizeLabel>("size_label", self.size_label.as_ref());
        Some(SizeSpec::new(length?, width?, height?, weight?, label?))
    }
}

/// A size's media type, as a header value made once.
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Read one product's size
///
/// One SKU's dimensions, weight and size label, for the Order system. For the SKUs of a whole
/// order, `POST /v1/product-sizes/lookup` answers them in one request.
///
/// **Freshness.** The answer is never older than a write the service acknowledged before this
/// read began, whichever instance answers. A read that sends back a write's
/// `X-Consistency-Token` (its own, or one passed on by the service that wrote) gets at least
/// that write's version on every path, cache hits included, on any instance of any deployment
/// sharing the database.
///
/// **Source.** `X-Read-Source` says where the answer came from: `cache` (Redis), `replica`
/// (the read replica, used only when provably fresh enough) or `primary`.
///
/// **Revalidation.** `ETag` is the version, quoted. Sent back in `If-None-Match`, it gets a
/// 304 without a body while the version is unchanged.
#[utoipa::path(
    get,
    path = "/v1/products/{sku}/size",
    tag = "sizes",
    params(
        ("sku" = Sku, Path, description = "Stock keeping unit"),
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "ETag(s) the client holds, e.g. `\"3\"`: 304 if one is current"),
        ("X-Consistency-Token" = Option<String>, Header, nullable = false, description = "The `X-Consistency-Token` of an earlier write: the answer is at least that new",
         pattern = "^[0-9A-Fa-f]{16}$"),
    ),
    responses(
        (status = 200, description = "The product's size", body = ProductSize,
         headers(("ETag" = String, description = "The version, quoted"),
                 ("X-Read-Source" = String, description = "Where the answer came from: `cache`, `replica` or `primary`"))),
        (status = 304, description = "The client's ETag is current: no body",
         headers(("ETag" = String, description = "The version, quoted"),
                 ("X-Read-Source" = String, description = "Where the answer came from: `cache`, `replica` or `primary`"))),
        (status = 400, description = "Invalid SKU or consistency token"),
        (status = 404, description = "No size is stored for this SKU (never written, or deleted)"),
    )
)]
pub async fn get_size(
    State(state): State<AppState>,
    SkuPath(sku): SkuPath,
    ReadContext { route, token }: ReadContext,
    if_none_match: IfNoneMatch,
) -> Result<Response, AppError> {
    let read = state
        .reader
        .read(std::slice::from_ref(&sku), route, token)
        .await?;
    let source = AnsweredFrom(read.source);
    let Some(doc) = read.docs.into_iter().next() else {
        return Err(AppError::internal("a read of one SKU returned no document"));
    };
    let Some(body) = doc.body else {
        return Ok((source, AppError::NotFound(sku.to_string())).into_response());
    };
    let tag = etag(doc.version);
    if if_none_match.hits(doc.version) {
        return Ok((StatusCode::NOT_MODIFIED, source, [(header::ETAG, tag)]).into_response());
    }
    Ok((
        source,
        [(header::ETAG, tag)],
        [(header::CONTENT_TYPE, JSON)],
        body,
    )
        .into_response())
}

/// Create or replace one product's size
///
/// Stores the size fields for the SKU: 201 when it creates the product (or re-creates a
/// deleted one, whose version continues), 200 when it replaces it. The answer is committed on
/// the primary database before it is sent.
///
/// **Idempotent.** A body equal to what is stored (the same fields, the same
/// `source_version`) changes nothing: 200 with the same version and `ETag`. So a PUT that
/// timed out, or was answered 503, is safe to send again.
///
/// **WMS order.** `source_version` is the WMS's own counter for the SKU. An update with a
/// counter lower than the stored one (or equal to it, with other content) never applies: 409,
/// nothing changed. A PUT without one keeps the stored counter.
///
/// **Conditional.** `If-Match: "3"` applies the write only to version 3 (412 otherwise: a lost
/// update prevented); `If-None-Match: *` only creates (412 if the product exists).
///
/// **Freshness.** `X-Consistency-Token` names this write: a read that sends it back, on any
/// instance, gets at least this version. Pass it on to a service that reads after you.
#[utoipa::path(
    put,
    path = "/v1/products/{sku}/size",
    tag = "sizes",
    params(
        ("sku" = Sku, Path, description = "Stock keeping unit"),
        ("If-Match" = Option<String>, Header, nullable = false, description = "Apply only to this version, e.g. `\"3\"` (412 otherwise)",
         pattern = r#"^(\*|(W/)?("[0-9]+"|[0-9]+)( *, *(W/)?("[0-9]+"|[0-9]+))*)$"#),
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "`*`: create only (412 if it exists); or versions it must not have",
         pattern = r#"^(\*|(W/)?("[0-9]+"|[0-9]+)( *, *(W/)?("[0-9]+"|[0-9]+))*)$"#),
    ),
    request_body(
        content = SizeRequest,
        content_type = "application/json",
        examples(
            ("by_hand" = (summary = "A size entered by hand (no WMS counter)",
                          value = json!({"length_mm": 330, "width_mm": 210, "height_mm": 120,
                                         "weight_g": 950, "size_label": "EU 42"}))),
            ("from_the_wms" = (summary = "An update from the WMS, with its counter for this SKU",
                               value = json!({"length_mm": 330, "width_mm": 210, "height_mm": 120,
                                              "weight_g": 950, "size_label": "EU 42",
                                              "source_version": 1017}))),
            ("no_label" = (summary = "A product without a size label",
                           value = json!({"length_mm": 240, "width_mm": 170, "height_mm": 260,
                                          "weight_g": 1150, "size_label": null}))),
        ),
    ),
    responses(
        (status = 201, description = "Created", body = ProductSize,
         headers(("ETag" = String, description = "The new version, quoted"),
                 ("X-Consistency-Token" = String, description = "Send it on reads to get at least this write")),
         links(
             ("GetSize" = (operation_id = "get_size", parameters(("sku" = "$request.path.sku")))),
             ("DeleteSize" = (operation_id = "delete_size", parameters(("sku" = "$request.path.sku")))),
         )),
        (status = 200, description = "Replaced, or unchanged (same content: version kept)", body = ProductSize,
         headers(("ETag" = String, description = "The stored version, quoted"),
                 ("X-Consistency-Token" = String, description = "Send it on reads to get at least this write")),
         links(
             ("GetSize" = (operation_id = "get_size", parameters(("sku" = "$request.path.sku")))),
             ("DeleteSize" = (operation_id = "delete_size", parameters(("sku" = "$request.path.sku")))),
         )),
        (status = 400, description = "Malformed JSON, invalid SKU or header"),
        (status = 409, description = "`source_version` older than the stored one (or equal, with other content): nothing changed",
         body = crate::error::Problem, content_type = "application/problem+json",
         headers(("X-Consistency-Token" = String, description = "Send it on reads to get at least the stored, newer version"))),
        (status = 412, description = "`If-Match` or `If-None-Match` does not hold: nothing changed"),
        (status = 422, description = "Invalid or unknown fields, each named"),
    )
)]
pub async fn put_size(
    State(state): State<AppState>,
    SkuPath(sku): SkuPath,
    WritePreconditions(preconditions): WritePreconditions,
    ValidJson(update): ValidJson<SizeRequest>,
) -> Result<Response, AppError> {
    let outcome = state
        .writer
        .put(sku.clone(), update, &preconditions)
        .await?;
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

/// Delete one product's size
///
/// Removes the SKU's size: reads answer 404 from then on. The version is kept, so a later
/// create continues it and an `ETag` never names two contents; a WMS update older than the
/// deleted row's `source_version` stays stale and does not bring it back.
///
/// Deleting again answers 404: a retry after a lost answer is harmless. `If-Match: "3"`
/// deletes only version 3 (412 otherwise). `X-Consistency-Token` names the delete: a read that
/// sends it back, on any instance, gets 404 or a later version.
#[utoipa::path(
    delete,
    path = "/v1/products/{sku}/size",
    tag = "sizes",
    params(
        ("sku" = Sku, Path, description = "Stock keeping unit"),
        ("If-Match" = Option<String>, Header, nullable = false, description = "Delete only this version, e.g. `\"3\"` (412 otherwise)",
         pattern = r#"^(\*|(W/)?("[0-9]+"|[0-9]+)( *, *(W/)?("[0-9]+"|[0-9]+))*)$"#),
    ),
    responses(
        (status = 204, description = "Deleted",
         headers(("X-Consistency-Token" = String, description = "Send it on reads to see at least this delete"))),
        (status = 400, description = "Invalid SKU or header"),
        (status = 404, description = "No size is stored for this SKU (never written, or already deleted)"),
        (status = 412, description = "`If-Match` does not hold: nothing changed"),
    )
)]
pub async fn delete_size(
    State(state): State<AppState>,
    SkuPath(sku): SkuPath,
    WritePreconditions(preconditions): WritePreconditions,
) -> Result<Response, AppError> {
    let outcome = state.writer.delete(sku.clone(), &preconditions).await?;
    match outcome.decision {
        Decision::Write { .. } => {
            Ok((StatusCode::NO_CONTENT, [token_header(outcome.token)]).into_response())
        }
        Decision::PreconditionFailed => Err(AppError::PreconditionFailed),
        _ => Err(AppError::NotFound(sku.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::routes::body;

    fn fields(body: Value) -> Result<SizeUpdate, Vec<String>> {
        let Value::Object(object) = body else {
            panic!("a test body is an object")
        };
        body::read::<SizeRequest>(object)
            .map_err(|errors| errors.iter().map(|e| e.field.clone()).collect())
    }

    #[test]
    fn names_every_bad_field_then_every_unknown_key() {
        let err = fields(json!({"length_mm": 1.5, "width_mm": 0, "height_mm": "3",
                                "weight_g": 50000001, "size_label": "", "colour": "red",
                                "source_version": -1}))
        .unwrap_err();
        assert_eq!(
            err,
            [
                "length_mm",
                "width_mm",
                "height_mm",
                "weight_g",
                "size_label",
                "source_version",
                "colour"
            ]
        );
    }

    #[test]
    fn a_valid_body_is_an_update_even_with_nulls() {
        let update = fields(json!({"length_mm": 3609.0, "width_mm": 1, "height_mm": 1e2,
                                   "weight_g": 50000000, "size_label": null,
                                   "source_version": null}))
        .unwrap();
        assert_eq!(update.spec.length_mm(), 3609);
        assert_eq!(update.spec.height_mm(), 100);
        assert_eq!(update.spec.size_label(), None);
        assert_eq!(update.source_version, None);
    }

    #[test]
    fn an_unknown_key_alone_fails_a_valid_body() {
        let err = fields(
            json!({"length_mm": 1, "width_mm": 1, "height_mm": 1, "weight_g": 1,
                                "sku": "A"}),
        )
        .unwrap_err();
        assert_eq!(err, ["sku"]);
    }
}
