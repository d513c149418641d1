//! `/openapi.json` (byte-identical to the committed `openapi/openapi.json`) and `/docs`, a
//! Swagger UI page served from assets compiled into the binary: it works with no internet.
//!
//! **Why not `utoipa_swagger_ui::SwaggerUi`.** Its router serves the document it is given
//! re-serialised (not the committed bytes `/openapi.json` promises and
//! `tests/openapi_snapshot.rs` checks) and redirects `/docs` to `/docs/`. The assets still
//! come from the library (`utoipa_swagger_ui::serve`); only the twenty-line page is ours.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use utoipa_swagger_ui::Config;

/// The page. Every URL in it is relative, so that it works behind a path prefix (an ingress
/// serving the API under `/sizes/` loads `/sizes/docs/...` and `/sizes/openapi.json`), and it
/// has no inline script, so that [`CSP`] can forbid them.
const DOCS_PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>product-size-service API</title>
  <link rel="stylesheet" href="docs/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/swagger-ui-bundle.js"></script>
  <script src="docs/swagger-ui-standalone-preset.js"></script>
  <script src="docs/start.js"></script>
</body>
</html>
"##;

/// The script that starts Swagger UI on the page, served as `docs/start.js`.
const START_SCRIPT: &str = r##"window.ui = SwaggerUIBundle({
  url: new URL("openapi.json", document.baseURI).href,
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
  layout: "StandaloneLayout"
});
"##;

/// What the page may load and run: its own scripts, styles, images and API, nothing else.
/// Swagger UI sets inline styles, and shows its icons as `data:` images.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; font-src 'self' data:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

pub async fn docs_page() -> Response {
    ([(header::CONTENT_SECURITY_POLICY, CSP)], Html(DOCS_PAGE)).into_response()
}

/// The Swagger UI assets the page loads.
pub async fn docs_asset(Path(file): Path<String>) -> Response {
    if file == "start.js" {
        return (
            [
                (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            START_SCRIPT,
        )
            .into_response();
    }
    let config = Arc::new(Config::from("openapi.json"));
    match utoipa_swagger_ui::serve(&file, config) {
        Ok(Some(asset)) => {
            let mut response = (
                [
                    (header::CONTENT_TYPE, asset.content_type),
                    (header::CACHE_CONTROL, "public, max-age=3600".to_owned()),
                ],
                asset.bytes.into_owned(),
            )
                .into_response();
            if asset.gzpipped {
                response.headers_mut().insert(
                    header::CONTENT_ENCODING,
                    header::HeaderValue::from_static("gzip"),
                );
            }
            response
        }
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(error) => {
            tracing::error!(%error, "could not serve a docs asset");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
