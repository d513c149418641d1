//! Response parts more than one handler sends.

use std::convert::Infallible;

use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponseParts, ResponseParts};

use crate::domain::Lsn;
use crate::headers::{X_CONSISTENCY_TOKEN, X_READ_SOURCE};
use crate::service::ReadSource;

/// Where a read's answer came from: `X-Read-Source` for the client, and the typed
/// [`ReadSource`] in the response's extensions for the layers outside the handler (the access
/// log samples cache hits by it), which so never parse the header back.
#[derive(Debug, Clone, Copy)]
pub struct AnsweredFrom(pub ReadSource);

impl IntoResponseParts for AnsweredFrom {
    type Error = Infallible;

    fn into_response_parts(self, mut parts: ResponseParts) -> Result<ResponseParts, Infallible> {
        let Self(source) = self;
        (parts.headers_mut()).insert(X_READ_SOURCE, HeaderValue::from_static(source.as_str()));
        parts.extensions_mut().insert(source);
        Ok(parts)
    }
}

/// The `X-Consistency-Token` header naming a write's position.
pub fn token_header(token: Lsn) -> (HeaderName, HeaderValue) {
    // Hexadecimal digits only: always a valid header value.
    let value = HeaderValue::from_str(&token.to_token())
        .unwrap_or(HeaderValue::from_static("0000000000000000"));
    (X_CONSISTENCY_TOKEN, value)
}

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse;

    use super::*;

    #[test]
    fn the_read_source_is_a_header_for_the_client_and_typed_for_the_layers() {
        let response = (AnsweredFrom(ReadSource::Replica), "a size").into_response();
        assert_eq!(response.headers()[X_READ_SOURCE], "replica");
        let source = response.extensions().get::<ReadSource>();
        assert_eq!(source, Some(&ReadSource::Replica));
    }
}
