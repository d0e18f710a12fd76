//! Health, Prometheus metrics and the OpenAPI document.

use crate::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

/// Health of the server and its database.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `degraded`.
    pub status: &'static str,
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
}

/// Liveness and database reachability.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let backend = state.store().backend();
    match state.store().ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(Health {
                status: "ok",
                backend,
            }),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health {
                    status: "degraded",
                    backend,
                }),
            )
        }
    }
}

/// Prometheus text exposition of the server's metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics().render(),
    )
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API")))]
pub async fn openapi() -> impl IntoResponse {
    Json(crate::openapi::ApiDoc::openapi())
}
