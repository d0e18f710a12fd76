//! Routes and handlers, grouped by resource. Handlers are thin: they authenticate, validate,
//! call the store or [`crate::usage`], and shape the JSON.

pub mod devices;
pub mod health;
pub mod ingest;
pub mod usage;

use crate::auth::UserAuth;
use crate::AppState;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

/// Every route of the server.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(health::metrics))
        .route("/api/v1/openapi.json", get(health::openapi))
        .route("/api/v1/me", get(me))
        .route("/api/v1/devices", post(devices::create).get(devices::list))
        .route("/api/v1/devices/{id}", delete(devices::revoke))
        .route("/api/v1/ingest", post(ingest::ingest))
        .route("/api/v1/usage/summary", get(usage::summary))
        .route("/api/v1/usage/daily", get(usage::daily))
        .route("/api/v1/usage/hourly", get(usage::hourly))
        .route("/api/v1/usage/monthly", get(usage::monthly))
        .route("/api/v1/usage/heatmap", get(usage::heatmap))
        .route("/api/v1/usage/models", get(usage::models))
        .route("/api/v1/usage/sources", get(usage::sources))
        .fallback(not_found)
}

async fn not_found() -> crate::ApiError {
    crate::ApiError::not_found("no such route")
}

/// Formats unix seconds as an RFC 3339 UTC instant.
pub(crate) fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| secs.to_string())
}

/// The user a user token belongs to.
#[derive(Debug, Serialize, ToSchema)]
pub struct MeResponse {
    pub user_id: String,
    pub name: String,
    pub created_at: String,
}

/// Who am I: checks a user token.
#[utoipa::path(get, path = "/api/v1/me", tag = "accounts",
    security(("bearer" = [])),
    responses((status = 200, body = MeResponse), (status = 401, body = crate::error::ErrorBody)))]
pub async fn me(UserAuth(user): UserAuth) -> Json<MeResponse> {
    Json(MeResponse {
        user_id: user.id.to_string(),
        name: user.name,
        created_at: rfc3339(user.created_at),
    })
}
