//! Extractors that turn HTTP input into domain values, rejecting bad input with a clear 4xx.

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::domain::Sku;
use crate::domain::write::{Preconditions, Tags};
use crate::error::AppError;
use crate::middleware::route::{MalformedToken, ReadContext, ReadRequest};

/// The largest request body accepted (a full WMS batch of 1,000 items fits many times over).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// The `{sku}` path segment; 400 if it is not a valid SKU.
pub struct SkuPath(pub Sku);

impl<S: Send + Sync> FromRequestParts<S> for SkuPath {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| AppError::BadRequest("the path must name one SKU".into()))?;
        Sku::parse(&raw)
            .map(SkuPath)
            .map_err(|e| AppError::BadRequest(format!("invalid SKU in path: {e}")))
    }
}

/// A JSON object body. 415 unless the content type is JSON, 413 past [`BODY_LIMIT`], 400 for
/// malformed JSON, 422 for JSON that is not an object.
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers()) {
            return Err(AppError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    AppError::PayloadTooLarge { limit: BODY_LIMIT }
                } else {
                    AppError::BadRequest("could not read the request body".into())
                }
            })?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(object)) => Ok(Self(object)),
            Ok(_) => Err(AppError::invalid_field("body", "must be a JSON object")),
            Err(error) => Err(AppError::BadRequest(format!("malformed JSON: {error}"))),
        }
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A read's database and `X-Consistency-Token`, as the routing layer found them
/// ([`crate::middleware::route`]); 400 if the token is malformed.
impl<S: Send + Sync> FromRequestParts<S> for ReadContext {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<ReadRequest>() {
            Some(Ok(context)) => Ok(*context),
            Some(Err(MalformedToken)) => {
                Err(AppError::BadRequest("malformed X-Consistency-Token".into()))
            }
            None => Err(AppError::internal(
                "a read handler serves a route outside the read group",
            )),
        }
    }
}

/// `If-Match` and `If-None-Match` of a write.
pub struct WritePreconditions(pub Preconditions);

impl<S: Send + Sync> FromRequestParts<S> for WritePreconditions {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let header_text = |name: HeaderName| -> Result<Option<&str>, AppError> {
            parts
                .headers
                .get(&name)
                .map(|v| {
                    v.to_str()
                        .map_err(|_| AppError::BadRequest(format!("malformed {name} header")))
                })
                .transpose()
        };
        let if_match = header_text(header::IF_MATCH)?
            .map(|v| tags("If-Match", v))
            .transpose()?;
        let if_none_match = header_text(header::IF_NONE_MATCH)?
            .map(|v| tags("If-None-Match", v))
            .transpose()?;
        Ok(Self(Preconditions {
            if_match,
            if_none_match,
        }))
    }
}

/// `*` or a list of entity tags. Write preconditions use strong comparison, so weak tags
/// never match. An unquoted number is taken as that version, as many clients send it.
fn tags(name: &str, value: &str) -> Result<Tags, AppError> {
    if value.trim() == "*" {
        return Ok(Tags::Any);
    }
    let tags: Vec<EntityTag> = entity_tags(value).collect();
    if tags.is_empty() || tags.iter().any(|t| !t.well_formed) {
        return Err(AppError::BadRequest(format!(
            "{name} must be `*` or entity tags such as \"3\""
        )));
    }
    Ok(Tags::Versions(
        tags.iter()
            .filter(|t| !t.weak)
            .filter_map(|t| t.version)
            .collect(),
    ))
}

/// `If-None-Match` of a read, as sent (the only header a read's handler needs: taking it alone
/// spares a copy of every header per request).
pub struct IfNoneMatch(Option<HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for IfNoneMatch {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.headers.get(header::IF_NONE_MATCH).cloned()))
    }
}

impl IfNoneMatch {
    /// Whether the client already holds `version` (weak comparison, as RFC 9110 asks): 304.
    pub fn hits(&self, version: i64) -> bool {
        let Some(value) = self.0.as_ref().and_then(|v| v.to_str().ok()) else {
            return false;
        };
        value.trim() == "*" || entity_tags(value).any(|t| t.version == Some(version))
    }
}

pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

struct EntityTag {
    weak: bool,
    /// Quoted, as RFC 9110 requires, or a bare version number.
    well_formed: bool,
    /// The tag as one of our versions, if it is one.
    version: Option<i64>,
}

fn entity_tags(list: &str) -> impl Iterator<Item = EntityTag> + '_ {
    list.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|tag| {
            let (weak, tag) = match tag.strip_prefix("W/") {
                Some(rest) => (true, rest),
                None => (false, tag),
            };
            let quoted = tag.strip_prefix('"').and_then(|t| t.strip_suffix('"'));
            let bare_number = tag.bytes().all(|b| b.is_ascii_digit());
            let opaque = quoted.or(bare_number.then_some(tag));
            EntityTag {
                weak,
                well_formed: opaque.is_some_and(|t| !t.contains('"')),
                version: opaque.and_then(|t| t.parse().ok()),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let held = IfNoneMatch(Some(HeaderValue::from_static("\"2\", W/\"3\"")));
        assert!(held.hits(3));
        assert!(held.hits(2));
        assert!(!held.hits(4));
        assert!(!IfNoneMatch(None).hits(2));
    }
}
