//! Tower layers: request classification, database routing, authentication and request ids.

pub mod auth;
pub mod metrics;
pub mod request_id;
pub mod route;

use axum::http::Method;

/// The lookup endpoint reads although it is a POST.
pub const LOOKUP_PATH: &str = "/v1/product-sizes/lookup";

/// What a request does, which decides both the token it needs and the database it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health, metrics and documentation: no token, no product data.
    Public,
    Read,
    Write,
}

pub fn classify(method: &Method, path: &str) -> Access {
    if !path.starts_with("/v1/") {
        return Access::Public;
    }
    match *method {
        Method::GET | Method::HEAD | Method::OPTIONS => Access::Read,
        Method::POST if path == LOOKUP_PATH => Access::Read,
        _ => Access::Write,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_method_and_path() {
        assert_eq!(classify(&Method::GET, "/v1/products/A/size"), Access::Read);
        assert_eq!(classify(&Method::POST, LOOKUP_PATH), Access::Read);
        assert_eq!(classify(&Method::PUT, "/v1/products/A/size"), Access::Write);
        assert_eq!(
            classify(&Method::DELETE, "/v1/products/A/size"),
            Access::Write
        );
        assert_eq!(
            classify(&Method::POST, "/v1/sync/product-sizes"),
            Access::Write
        );
        assert_eq!(classify(&Method::GET, "/readyz"), Access::Public);
    }
}
