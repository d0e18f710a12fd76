//! Bearer-token authentication: user tokens (`tlu_...`) for accounts and reading usage, device
//! tokens (`tld_...`) for ingest. Only SHA-256 hashes of tokens are stored. A dashboard session
//! cookie (resolved by [`crate::dashboard::session_layer`]) stands for its user's token.

use crate::{ApiError, AppState};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use tokenledger_store::{hash_token, Device, User, UserId};

/// Prefix of user tokens.
pub const USER_TOKEN_PREFIX: &str = "tlu_";
/// Prefix of device tokens.
pub const DEVICE_TOKEN_PREFIX: &str = "tld_";

/// The token of an `Authorization: Bearer <token>` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <token>"))?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(ApiError::unauthorized(
            "expected Authorization: Bearer <token>",
        ));
    }
    Ok(token)
}

/// A request made with a user token.
pub struct UserAuth(pub User);

impl FromRequestParts<AppState> for UserAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(crate::dashboard::SessionUser(user)) = parts.extensions.get() {
            return Ok(UserAuth(user.clone()));
        }
        let token = bearer(&parts.headers)?;
        match state.store().user_by_token_hash(&hash_token(token)).await? {
            Some(user) => Ok(UserAuth(user)),
            None => Err(ApiError::unauthorized("unknown user token")),
        }
    }
}

/// A request made with the token of a device that is not revoked.
pub struct DeviceAuth(pub Device);

impl FromRequestParts<AppState> for DeviceAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers)?;
        match state
            .store()
            .device_by_token_hash(&hash_token(token))
            .await?
        {
            Some(device) => Ok(DeviceAuth(device)),
            None => Err(ApiError::unauthorized("unknown or revoked device token")),
        }
    }
}

/// A request allowed to read a user's usage: the user's token or one of their active devices'.
pub struct ReaderAuth(pub UserId);

impl FromRequestParts<AppState> for ReaderAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(crate::dashboard::SessionUser(user)) = parts.extensions.get() {
            return Ok(ReaderAuth(user.id));
        }
        let token = bearer(&parts.headers)?;
        let hash = hash_token(token);
        if !token.starts_with(DEVICE_TOKEN_PREFIX) {
            if let Some(user) = state.store().user_by_token_hash(&hash).await? {
                return Ok(ReaderAuth(user.id));
            }
        }
        if let Some(device) = state.store().device_by_token_hash(&hash).await? {
            return Ok(ReaderAuth(device.user_id));
        }
        Err(ApiError::unauthorized("unknown or revoked token"))
    }
}
