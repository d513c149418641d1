//! `POST /v1/product-sizes/lookup`: a whole order's worth of SKUs in one request.

use std::collections::HashSet;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::body::{self, RequestBody, ValidJson};
use super::parts::AnsweredFrom;
use crate::domain::{Field, FieldErrors, ProductSize, Sku};
use crate::error::AppError;
use crate::middleware::LOOKUP_PATH;
use crate::middleware::route::ReadContext;
use crate::service::SizeDoc;

/// The reads this file serves (the read group).
pub fn reads() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(lookup))
}

pub const MAX_SKUS: usize = 1000;

/// SKUs to look up.
#[derive(utoipa::ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"skus": ["SHOE-42-BLK", "TSHIRT-M-RED"]}))]
pub struct LookupRequest {
    #[schema(schema_with = skus_schema, required = true)]
    skus: Option<Value>,
}

fn skus_schema() -> utoipa::openapi::Array {
    body::one_to::<Sku>(MAX_SKUS)
        .description(Some(format!(
            "1 to {MAX_SKUS} SKUs; duplicates are answered once."
        )))
        .build()
}

impl RequestBody for LookupRequest {
    type Valid = Skus;
}

/// The distinct SKUs of a lookup, in request order.
pub struct Skus(Vec<Sku>);

impl TryFrom<LookupRequest> for Skus {
    type Error = FieldErrors;

    fn try_from(body: LookupRequest) -> Result<Self, FieldErrors> {
        let mut errors = FieldErrors::default();
        let list = match body.skus {
            Some(Value::Array(list)) if (1..=MAX_SKUS).contains(&list.len()) => list,
            _ => {
                errors.push("skus", format!("must be an array of 1 to {MAX_SKUS} SKUs"));
                return Err(errors);
            }
        };
        let mut seen = HashSet::with_capacity(list.len());
        let mut skus = Vec::with_capacity(list.len());
        for (i, value) in list.iter().enumerate() {
            if let Some(sku) = errors.check(&format!("skus[{i}]"), Sku::from_json(value))
                && seen.insert(sku.clone())
            {
                skus.push(sku);
            }
        }
        errors.into_result(Some(Self(skus)))
    }
}

/// The sizes found, and the SKUs that have none.
// Each item is a size's stored JSON document, written out as it is: a cache hit is never
// re-serialised. The schema names what those bytes are.
#[derive(utoipa::ToSchema)]
pub struct LookupResponse {
    /// Sizes found, in request order.
    #[schema(value_type = Vec<ProductSize>)]
    items: Vec<Bytes>,
    /// Requested SKUs with no size, in request order.
    #[schema(value_type = Vec<String>)]
    not_found: Vec<Sku>,
}

impl From<Vec<SizeDoc>> for LookupResponse {
    fn from(docs: Vec<SizeDoc>) -> Self {
        let mut response = Self {
            items: Vec::with_capacity(docs.len()),
            not_found: Vec::new(),
        };
        for doc in docs {
            match doc.body {
                Some(body) => response.items.push(body),
                None => response.not_found.push(doc.sku),
            }
        }
        response
    }
}

impl LookupResponse {
    /// The response's JSON, the items' stored bytes copied in.
    fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let items = self.items.iter().map(|item| item.len() + 1).sum::<usize>();
        let mut out = Vec::with_capacity(items + 32);
        out.extend_from_slice(b"{\"items\":[");
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(item);
        }
        out.extend_from_slice(b"],\"not_found\":");
        let not_found: Vec<&str> = self.not_found.iter().map(Sku::as_str).collect();
        serde_json::to_writer(&mut out, &not_found)?;
        out.push(b'}');
        Ok(out)
    }
}

/// Read the sizes of many products at once
///
/// The sizes of 1 to 1000 SKUs in one request, for the Order system reading a whole order: a
/// read, although it is a POST (the list goes in the body), so a read token will do. Found
/// sizes come in request order in `items`; the SKUs with no size, in request order, in
/// `not_found`. A SKU asked for twice is answered once.
///
/// **Freshness.** Each size is never older than a write the service acknowledged before this
/// read began, whichever instance answers; with a write's `X-Consistency-Token` sent back,
/// every size is at least as new as that write, on any instance.
///
/// **Source.** `X-Read-Source` names the farthest source any SKU needed: `cache` if every
/// one was a cache hit, else `replica` or `primary`.
#[utoipa::path(
    post,
    path = LOOKUP_PATH,
    tag = "sizes",
    params(("X-Consistency-Token" = Option<String>, Header, nullable = false, description = "The `X-Consistency-Token` of an earlier write: every answer is at least that new",
            pattern = "^[0-9A-Fa-f]{16}$")),
    request_body(
        content = LookupRequest,
        content_type = "application/json",
        examples(
            ("order" = (summary = "The SKUs of one order",
                        value = json!({"skus": ["SHOE-42-BLK", "TSHIRT-M-RED", "MUG-350ML"]}))),
        ),
    ),
    responses(
        (status = 200, description = "Sizes found and SKUs not found", body = LookupResponse,
         headers(("X-Read-Source" = String, description = "The farthest source used: `cache`, `replica` or `primary`"))),
        (status = 400, description = "Malformed JSON or consistency token"),
        (status = 422, description = "Not 1 to 1000 SKUs, or invalid SKUs, each named"),
    )
)]
pub async fn lookup(
    State(state): State<AppState>,
    ReadContext { route, token }: ReadContext,
    ValidJson(Skus(skus)): ValidJson<LookupRequest>,
) -> Result<Response, AppError> {
    let read = state.reader.read(&skus, route, token).await?;
    let body = LookupResponse::from(read.docs)
        .to_json()
        .map_err(|e| AppError::Internal(e.into()))?;
    Ok((
        AnsweredFrom(read.source),
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_response_copies_the_stored_documents_in_request_order() {
        let doc = |sku: &str, body: Option<&'static str>| SizeDoc {
            sku: Sku::parse(sku).unwrap(),
            version: 1,
            body: body.map(Bytes::from),
        };
        let docs = vec![
            doc("A-1", Some(r#"{"sku":"A-1"}"#)),
            doc("B-2", None),
            doc("C-3", Some(r#"{"sku":"C-3"}"#)),
        ];
        let json = LookupResponse::from(docs).to_json().unwrap();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            r#"{"items":[{"sku":"A-1"},{"sku":"C-3"}],"not_found":["B-2"]}"#
        );
    }
}
