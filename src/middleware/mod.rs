//! Tower layers: request classification, database routing, authentication and request ids.

pub mod access_log;
pub mod auth;
pub mod layer;
pub mod metrics;
pub mod request_id;
pub mod route;
pub mod timeout;

use std::collections::HashMap;

use axum::extract::MatchedPath;
use axum::http::{Method, Request};

/// The lookup endpoint reads although it is a POST.
pub const LOOKUP_PATH: &str = "/v1/product-sizes/lookup";

/// What a request does, which decides both the token it needs and the database it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health, metrics and documentation: no token, no product data.
    Public,
    /// A read token (or a write token); reads may use the replica.
    Read,
    /// A write token; the primary.
    Write,
    /// An admin token (operator endpoints); the primary.
    Admin,
    /// A method the matched route has no handler for: answered 405 before anything else, so
    /// no handler can run without a recorded policy.
    NotAllowed,
}

/// Each route's [`Access`], by method and route template, recorded from the router group the
/// route was registered in (see [`crate::routes::api`]), never inferred from its path.
#[derive(Debug, Default)]
pub struct Policies {
    /// Route template → each method's access (looked up without allocating on every request).
    routes: HashMap<String, Vec<(Method, Access)>>,
}

impl Policies {
    /// Records that `method` on `path` (a route template) needs `access`.
    pub fn insert(&mut self, method: Method, path: &str, access: Access) {
        self.routes
            .entry(path.to_owned())
            .or_default()
            .push((method, access));
    }

    /// Merges the policies of another router group.
    pub fn extend(&mut self, other: Policies) {
        for (path, methods) in other.routes {
            self.routes.entry(path).or_default().extend(methods);
        }
    }

    /// The access `request` needs. A request that matched no route is public (it gets the
    /// 404); a matched route without a recorded policy is refused as if it were an operator
    /// endpoint, so a route registered outside every group fails closed; a method the route
    /// records nothing for gets the 405.
    pub fn of<B>(&self, request: &Request<B>) -> Access {
        let Some(path) = request.extensions().get::<MatchedPath>() else {
            return Access::Public;
        };
        // Axum answers HEAD with the GET route.
        let method = match request.method() {
            &Method::HEAD => &Method::GET,
            method => method,
        };
        let Some(methods) = self.routes.get(path.as_str()) else {
            return Access::Admin;
        };
        methods
            .iter()
            .find(|(m, _)| m == method)
            .map_or(Access::NotAllowed, |(_, access)| *access)
    }

    /// The methods the route `request` matched takes, for a 405's `Allow` (`HEAD` with `GET`).
    pub fn allowed<B>(&self, request: &Request<B>) -> String {
        let methods = request
            .extensions()
            .get::<MatchedPath>()
            .and_then(|path| self.routes.get(path.as_str()));
        let mut allowed: Vec<&str> = Vec::new();
        for (method, _) in methods.into_iter().flatten() {
            allowed.push(method.as_str());
            if method == Method::GET {
                allowed.push(Method::HEAD.as_str());
            }
        }
        allowed.dedup();
        allowed.join(", ")
    }
}

impl Access {
    /// The token scope this access needs, as a 403 names it.
    pub fn scope(self) -> &'static str {
        match self {
            Access::Public | Access::Read => "read",
            Access::Write => "write",
            Access::Admin | Access::NotAllowed => "admin",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    /// The access `policies` give a request, as the layers see it: after routing.
    async fn access(policies: &Arc<Policies>, method: Method, uri: &str) -> String {
        let seen = policies.clone();
        let router = Router::new()
            .route(
                "/v1/products/{sku}/size",
                get(|| async {}).put(|| async {}).post(|| async {}),
            )
            .route("/v1/unrecorded", get(|| async {}))
            .layer(axum::middleware::from_fn(
                move |request: Request<Body>, _next: axum::middleware::Next| {
                    let access = seen.of(&request);
                    async move { [("x-access", format!("{access:?}"))] }
                },
            ));
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        response.headers()["x-access"].to_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn access_comes_from_the_recorded_group_and_fails_closed() {
        let mut policies = Policies::default();
        policies.insert(Method::GET, "/v1/products/{sku}/size", Access::Read);
        policies.insert(Method::PUT, "/v1/products/{sku}/size", Access::Write);
        let policies = Arc::new(policies);
        let size = "/v1/products/A1/size";
        assert_eq!(access(&policies, Method::GET, size).await, "Read");
        assert_eq!(access(&policies, Method::HEAD, size).await, "Read");
        assert_eq!(access(&policies, Method::PUT, size).await, "Write");
        // A method the route records nothing for is refused with 405, whatever the router
        // holds; a route nobody recorded a policy for needs the narrowest scope there is.
        assert_eq!(access(&policies, Method::POST, size).await, "NotAllowed");
        assert_eq!(access(&policies, Method::TRACE, size).await, "NotAllowed");
        assert_eq!(
            access(&policies, Method::GET, "/v1/unrecorded").await,
            "Admin"
        );
    }
}
