//! The OpenAPI document of the whole API, generated from the handlers' annotations and served
//! at `GET /api/v1/openapi.json`.

use crate::http;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The API document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "tokenledger",
        description = "Ingest of half-hour token-usage buckets from many machines, and the usage API of one ledger per user. Tokens are decimal strings; errors are {\"error\":{\"code\",\"message\"}}."
    ),
    paths(
        http::health::healthz,
        http::health::metrics,
        http::health::openapi,
        http::me,
        http::devices::create,
        http::devices::list,
        http::devices::revoke,
        http::ingest::ingest,
        http::usage::summary,
        http::usage::daily,
        http::usage::hourly,
        http::usage::monthly,
        http::usage::heatmap,
        http::usage::models,
        http::usage::sources,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "accounts", description = "Users and their devices"),
        (name = "ingest", description = "Uploading buckets"),
        (name = "usage", description = "Reading usage and cost"),
        (name = "operations", description = "Health, metrics, this document"),
    )
)]
pub struct ApiDoc;
