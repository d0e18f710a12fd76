//! Devices: a user registers machines, lists them with their last-seen times, revokes them.

use super::rfc3339;
use crate::auth::{UserAuth, DEVICE_TOKEN_PREFIX};
use crate::{ApiError, AppState};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tokenledger_store::{generate_token, hash_token, Device};
use utoipa::ToSchema;

const MAX_NAME_LEN: usize = 200;

/// A device to register.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewDeviceRequest {
    /// A name for the machine, e.g. its host name.
    pub name: String,
    /// e.g. `linux`, `macos`, `windows`.
    #[serde(default)]
    pub platform: String,
}

/// The new device and its token, shown only this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewDeviceResponse {
    pub device_id: String,
    pub device_token: String,
}

/// A registered device.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceInfo {
    pub device_id: String,
    pub name: String,
    pub platform: String,
    pub created_at: String,
    /// Time of the last accepted ingest, if any.
    pub last_seen: Option<String>,
    pub revoked: bool,
    pub revoked_at: Option<String>,
}

/// The user's devices.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceList {
    pub devices: Vec<DeviceInfo>,
}

impl From<Device> for DeviceInfo {
    fn from(d: Device) -> Self {
        DeviceInfo {
            device_id: d.id.to_string(),
            name: d.name,
            platform: d.platform,
            created_at: rfc3339(d.created_at),
            last_seen: d.last_seen_at.map(rfc3339),
            revoked: d.revoked_at.is_some(),
            revoked_at: d.revoked_at.map(rfc3339),
        }
    }
}

fn clean(field: &str, v: &str, required: bool) -> Result<String, ApiError> {
    let v = v.trim();
    if required && v.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("{field} must not be empty"),
        ));
    }
    if v.chars().count() > MAX_NAME_LEN || v.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("{field} must be at most {MAX_NAME_LEN} printable characters"),
        ));
    }
    Ok(v.to_string())
}

/// Registers a device of the authenticated user and returns its token once.
#[utoipa::path(post, path = "/api/v1/devices", tag = "accounts",
    security(("bearer" = [])),
    request_body = NewDeviceRequest,
    responses((status = 201, body = NewDeviceResponse),
        (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    user: Result<UserAuth, ApiError>,
    headers: axum::http::HeaderMap,
    body: Result<Json<NewDeviceRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<NewDeviceResponse>), ApiError> {
    let user = match user {
        Ok(UserAuth(user)) => user,
        Err(e) => link_code_user(&state, &headers).await?.ok_or(e)?,
    };
    let Json(req) = body.map_err(|e| ApiError::bad_request("invalid_body", e.body_text()))?;
    let name = clean("name", &req.name, true)?;
    let platform = clean("platform", &req.platform, false)?;
    let token = generate_token(DEVICE_TOKEN_PREFIX);
    let device = state
        .store()
        .create_device(user.id, &name, &platform, &hash_token(&token))
        .await?;
    tracing::info!(
        user_id = user.id,
        device_id = device.id,
        "device registered"
    );
    Ok((
        StatusCode::CREATED,
        Json(NewDeviceResponse {
            device_id: device.id.to_string(),
            device_token: token,
        }),
    ))
}

/// The user of a one-time login code sent as the bearer token (`tokenledger login --code`
/// registers a machine with a code printed by `tokenledger admin login-link` or the first run).
async fn link_code_user(
    state: &AppState,
    headers: &axum::http::HeaderMap,
) -> Result<Option<tokenledger_store::User>, ApiError> {
    let Ok(code) = crate::auth::bearer(headers) else {
        return Ok(None);
    };
    Ok(crate::dashboard::redeem_login_code(state.store(), code).await?)
}

/// Lists the authenticated user's devices, revoked ones included.
#[utoipa::path(get, path = "/api/v1/devices", tag = "accounts",
    security(("bearer" = [])),
    responses((status = 200, body = DeviceList), (status = 401, body = crate::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    UserAuth(user): UserAuth,
) -> Result<Json<DeviceList>, ApiError> {
    let devices = state.store().list_devices(user.id).await?;
    Ok(Json(DeviceList {
        devices: devices.into_iter().map(DeviceInfo::from).collect(),
    }))
}

/// Revokes one of the authenticated user's devices; its token stops working at once.
#[utoipa::path(delete, path = "/api/v1/devices/{id}", tag = "accounts",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "device id")),
    responses((status = 204, description = "revoked"),
        (status = 401, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    user: Result<UserAuth, ApiError>,
    device: Result<crate::auth::DeviceAuth, ApiError>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let Ok(device_id) = id.parse::<i64>() else {
        return Err(ApiError::not_found("no such device"));
    };
    // The owner may revoke any of their devices; a device may revoke itself (logout).
    let user_id = match (user, device) {
        (Ok(UserAuth(user)), _) => user.id,
        (Err(_), Ok(crate::auth::DeviceAuth(d))) if d.id == device_id => d.user_id,
        (Err(_), Ok(_)) => return Err(ApiError::not_found("no such active device")),
        (Err(e), Err(_)) => return Err(e),
    };
    if state.store().revoke_device(user_id, device_id).await? {
        tracing::info!(user_id, device_id, "device revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such active device"))
    }
}
