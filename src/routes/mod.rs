//! HTTP only: extract, call the service, map the answer.

pub mod admin;
pub mod body;
pub mod docs;
pub mod extract;
pub mod health;
pub mod lookup;
pub mod parts;
pub mod sizes;
pub mod sync;

use std::sync::Arc;

use axum::http::Method;
use utoipa::openapi::header::Header;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, ContentBuilder, Ref, RefOr};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::middleware::{Access, Policies};
use crate::service::{Background, Reader, SizeService, Writer};

#[derive(Clone)]
pub struct AppState {
    pub reader: Arc<Reader>,
    pub writer: Arc<Writer>,
    /// What the reader, the writer and the workers share: readiness, metrics, cache jobs.
    pub sizes: Arc<SizeService>,
    /// Where the jobs a request starts run, so that shutdown stops and awaits them.
    pub background: Background,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "product-size-service",
        description = "Product sizes (dimensions, weight, size label per SKU) for the Order system, \
                       updated by the WMS. Reads are cache-first and never older than an acknowledged write.\n\n\
                       Served over HTTP/1.1 and over HTTP/2 in cleartext with prior knowledge (as a mesh \
                       sidecar speaks it). Responses of 2 KiB and more are gzip-compressed for \
                       `Accept-Encoding: gzip`. A W3C `traceparent` header is continued by the service's \
                       traces. Any request still unanswered after the server's request timeout \
                       (`HTTP_REQUEST_TIMEOUT_MS`), and a miss or write while the database is saturated, \
                       is answered 503 with `Retry-After`.\n\n\
                       **Freshness.** Every write answers with `X-Consistency-Token`: a read that sends it \
                       back, to any instance, gets data at least that new. Pass it on to the services that \
                       read after the write.\n\n\
                       **Errors** are `application/problem+json` (RFC 9457). Their `type` names the kind of \
                       problem with a stable URI (the `Problem` schema lists them), and `request_id` is the \
                       request's `X-Request-Id`: echoed if the request sent one, made up otherwise, and in \
                       the service's logs.\n\n\
                       **Versions.** Every product path starts with `/v1`. Within it, changes are additive: \
                       new operations, optional request fields and headers, response fields and headers, \
                       problem types. Clients ignore what they do not know; a change that would break one \
                       comes under a new prefix.",
        license(name = "MIT", identifier = "MIT"),
    ),
    // Referred to by name: a batch's items (see `sync::SyncRequest`) and every error response
    // (see `document_group`).
    components(schemas(sync::SyncUpdate, crate::error::Problem)),
    modifiers(&BearerAuth),
    tags(
        (name = "sizes", description = "Read and write product sizes"),
        (name = "sync", description = "WMS batch updates"),
        (name = "operations", description = "Health and readiness"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Bearer token. Scope `read` (GET, lookup): a read or a write token. \
                         Scope `write` (PUT, DELETE, sync): a write token. \
                         Scope `admin` (`/v1/admin/`): an admin token (`API_ADMIN_TOKENS`).",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every documented route, and the access each needs. A route's access (its token scope and
/// its database) is decided by the group it is registered in here, nowhere else; the OpenAPI
/// document is generated from the same registrations.
pub fn api() -> (OpenApiRouter<AppState>, Policies) {
    let mut policies = Policies::default();
    let mut group = |access, mut router: OpenApiRouter<AppState>| {
        document_group(router.get_openapi_mut(), access);
        record(&mut policies, access, router.get_openapi());
        router
    };
    let read = group(Access::Read, sizes::reads().merge(lookup::reads()));
    let write = group(Access::Write, sizes::writes().merge(sync::writes()));
    let admin = group(Access::Admin, admin::routes());
    let public = group(Access::Public, health::routes());
    let router = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(read)
        .merge(write)
        .merge(admin)
        .merge(public);
    (router, policies)
}

/// Documents what the group an operation is registered in means for it: the token scope it
/// needs, the 401 and 403 the authorization layer answers, and the 503 of the database the
/// group routes to. Every operation that takes a body may also meet the body's 413 and 415;
/// every error response a route documents by status and description alone is a problem
/// (RFC 9457), as `AppError` renders it, and one documented with a `Problem` body is filed
/// under the problem's media type; every 503 names `Retry-After`.
fn document_group(group: &mut utoipa::openapi::OpenApi, access: Access) {
    let terms = GroupTerms::of(access);
    for item in group.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            document_errors_as_problems(operation);
            terms.document(operation);
            // Every 503 the service sends says when to try again.
            if let Some(RefOr::T(unavailable)) = operation.responses.responses.get_mut("503") {
                unavailable
                    .headers
                    .entry("Retry-After".to_owned())
                    .or_insert_with(|| retry_after().into());
            }
        }
    }
}

/// What a router group means for the operations registered in it, as documented.
struct GroupTerms {
    /// The token scope it needs; `None` for public routes.
    scope: Option<&'static str>,
    /// When a known token is still refused (403).
    forbidden: Option<&'static str>,
    /// When the group's database cannot answer (503).
    unavailable: Option<&'static str>,
}

impl GroupTerms {
    fn of(access: Access) -> Self {
        let (scope, forbidden, unavailable) = match access {
            Access::Read => (
                Some("read"),
                None,
                Some(
                    "No source of the data can answer (the cache cannot serve it and the \
                     database is down or saturated), or the request outlived the server's \
                     request timeout. Retry after `Retry-After` seconds",
                ),
            ),
            Access::Write => (
                Some("write"),
                Some("The token may only read"),
                Some(
                    "Not acknowledged; retrying it is safe. The primary database is down or \
                     saturated (nothing was written); or the write is committed, but its cache \
                     update failed and not every instance could learn of it in time; or the \
                     request outlived the server's request timeout (it may have committed)",
                ),
            ),
            Access::Admin => (Some("admin"), Some("Not an admin token"), None),
            Access::Public | Access::NotAllowed => (None, None, None),
        };
        Self {
            scope,
            forbidden,
            unavailable,
        }
    }

    /// Adds the group's security requirement to `operation`, and the problems the layers in
    /// front of its handler may answer instead (401, 403, 503; 413 and 415 with a body).
    fn document(&self, operation: &mut Operation) {
        let mut problems = Vec::new();
        if let Some(scope) = self.scope {
            operation.security = Some(vec![SecurityRequirement::new("bearer", [scope])]);
            problems.push(("401", "No bearer token, or an unknown one"));
        }
        problems.extend(self.forbidden.map(|d| ("403", d)));
        problems.extend(self.unavailable.map(|d| ("503", d)));
        let too_large = format!("Body larger than {} KiB", extract::BODY_LIMIT / 1024);
        if operation.request_body.is_some() {
            problems.extend([
                ("413", too_large.as_str()),
                (
                    "415",
                    "Body not declared JSON (`Content-Type: application/json`)",
                ),
            ]);
        }
        for (status, description) in problems {
            (operation.responses.responses).insert(status.to_owned(), problem(description).into());
        }
    }
}

/// Makes every error response `operation` documents a problem (RFC 9457) under the problem's
/// media type: one documented by status and description alone gets the `Problem` body.
fn document_errors_as_problems(operation: &mut Operation) {
    for (status, response) in operation.responses.responses.iter_mut() {
        if let RefOr::T(response) = response
            && status.parse::<u16>().is_ok_and(|status| status >= 400)
        {
            if response.content.is_empty() {
                *response = problem(&response.description);
            } else {
                serve_problems_as_problem_json(response);
            }
        }
    }
}

/// A documented problem response (RFC 9457 body).
pub fn problem(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            crate::error::PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(
                    <crate::error::Problem as utoipa::ToSchema>::name(),
                )))
                .build(),
        )
        .build()
}

/// Files a `Problem` body a route documents (`body = Problem`, by default `application/json`)
/// under the media type `AppError` sends it with.
fn serve_problems_as_problem_json(response: &mut utoipa::openapi::Response) {
    let problem = Ref::from_schema_name(<crate::error::Problem as utoipa::ToSchema>::name());
    let is_problem = |content: &RefOr<Content>| match content {
        RefOr::T(content) => content.schema == Some(RefOr::Ref(problem.clone())),
        RefOr::Ref(_) => false,
    };
    if response
        .content
        .get("application/json")
        .is_some_and(is_problem)
        && let Some(content) = response.content.shift_remove("application/json")
    {
        (response.content).insert(crate::error::PROBLEM_JSON.to_owned(), content);
    }
}

/// The `Retry-After` header of a 503.
fn retry_after() -> Header {
    let seconds = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
        .minimum(Some(0));
    let mut header = Header::new(seconds);
    header.description = Some("Seconds to wait before trying again".to_owned());
    header
}

/// Records `access` for every operation `group` documents.
fn record(policies: &mut Policies, access: Access, group: &utoipa::openapi::OpenApi) {
    for (path, item) in &group.paths.paths {
        let operations = [
            (Method::GET, &item.get),
            (Method::PUT, &item.put),
            (Method::POST, &item.post),
            (Method::DELETE, &item.delete),
            (Method::PATCH, &item.patch),
        ];
        for (method, operation) in operations {
            if operation.is_some() {
                policies.insert(method, path, access);
            }
        }
    }
}

/// The OpenAPI document, as committed in `openapi/openapi.json`.
pub fn openapi_json() -> String {
    let (_, mut openapi) = api().0.split_for_parts();
    openapi.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let mut json = openapi.to_pretty_json().unwrap_or_default();
    json.push('\n');
    json
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn every_operation_says_what_it_does_with_examples_and_when_to_retry() {
        let document: Value = serde_json::from_str(&openapi_json()).unwrap();
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let said = |field: &str| operation[field].as_str().is_some_and(|t| !t.is_empty());
                assert!(said("summary"), "{method} {path} has a summary");
                assert!(said("description"), "{method} {path} has a description");
                if let Some(bodies) = operation["requestBody"]["content"].as_object() {
                    for body in bodies.values() {
                        assert!(body["examples"].is_object(), "{method} {path}: examples");
                    }
                }
                for (status, response) in operation["responses"].as_object().unwrap() {
                    let problem = &response["content"]["application/json"]["schema"]["$ref"];
                    assert_ne!(
                        problem, "#/components/schemas/Problem",
                        "{method} {path}: {status} is a problem+json"
                    );
                }
                if let Some(unavailable) = operation["responses"].get("503") {
                    assert!(
                        unavailable["headers"]["Retry-After"].is_object(),
                        "{method} {path}: a 503 names Retry-After"
                    );
                }
            }
        }
    }
}
