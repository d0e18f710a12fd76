//! The web dashboard: embedded assets, login (user token or one-time link), cookie sessions
//! with CSRF protection, and the per-device usage the devices page shows.
//!
//! A browser session is an opaque random token in an `HttpOnly; SameSite=Lax` cookie; only its
//! SHA-256 is stored. [`session_layer`] resolves the cookie of requests that carry no
//! `Authorization` header and hands the user to the API's extractors
//! ([`crate::auth::UserAuth`], [`crate::auth::ReaderAuth`]) as a [`SessionUser`]; a
//! state-changing request made with the cookie must echo the session's CSRF token in
//! `X-CSRF-Token`, or it gets 403. Bearer-token clients are unaffected.

use crate::auth::{ReaderAuth, USER_TOKEN_PREFIX};
use crate::{ApiError, AppState};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokenledger_core::TokenCounts;
use tokenledger_store::{generate_token, hash_token, now_unix, Store, StoreError, User, UserId};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "tl_session";
/// Header carrying the session's CSRF token on state-changing requests.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a login link stays valid.
pub const LOGIN_CODE_TTL_SECS: i64 = 10 * 60;
/// How long a browser session lasts.
pub const SESSION_TTL_SECS: i64 = 30 * 86_400;
/// Prefix of login codes.
pub const LOGIN_CODE_PREFIX: &str = "tll_";

const INDEX_HTML: &str = include_str!("../assets/index.html");
const LOGIN_HTML: &str = include_str!("../assets/login.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// Security headers of every page: only our own scripts; inline style attributes are allowed
/// because the charts set widths and colours through them.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// The user of a request authenticated by its session cookie (set by [`session_layer`]).
#[derive(Debug, Clone)]
pub struct SessionUser(pub User);

/// The session of the current request, for the pages (CSRF token to embed).
#[derive(Debug, Clone)]
struct SessionInfo {
    token_hash: String,
    csrf_token: String,
}

/// Creates a one-time login code for `user_id`, valid for [`LOGIN_CODE_TTL_SECS`]; returns the
/// code (only its hash is stored).
pub async fn create_login_code(store: &dyn Store, user_id: UserId) -> Result<String, StoreError> {
    let code = generate_token(LOGIN_CODE_PREFIX);
    store
        .create_login_code(
            user_id,
            &hash_token(&code),
            now_unix() + LOGIN_CODE_TTL_SECS,
        )
        .await?;
    Ok(code)
}

/// The full login URL of a code on a server reachable at `base_url` (e.g. `http://127.0.0.1:7680`).
pub fn login_url(base_url: &str, code: &str) -> String {
    format!("{}/login/{code}", base_url.trim_end_matches('/'))
}

/// The dashboard's routes: pages, assets, login, logout, usage by device.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(app_js))
        .route("/assets/app.css", get(app_css))
        .route("/login", get(login_page).post(login_with_token))
        .route("/login/{code}", get(login_with_code))
        .route("/logout", post(logout))
        .route("/api/v1/usage/devices", get(device_usage))
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn forbidden(message: &str) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, "csrf", message).into_response()
}

/// Resolves the session cookie of requests without an `Authorization` header and enforces
/// CSRF on their state-changing methods.
pub async fn session_layer(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    if req.headers().contains_key(header::AUTHORIZATION) {
        return next.run(req).await;
    }
    let Some(token) = cookie_value(req.headers(), SESSION_COOKIE).map(str::to_string) else {
        return next.run(req).await;
    };
    let token_hash = hash_token(&token);
    let session = match state.store().web_session(&token_hash, now_unix()).await {
        Ok(s) => s,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let Some(session) = session else {
        return next.run(req).await;
    };
    // Logging in again needs no token of the old session.
    if !is_safe(req.method()) && req.uri().path() != "/login" {
        let sent = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let ok: bool = sent.as_bytes().ct_eq(session.csrf_token.as_bytes()).into();
        if sent.is_empty() || !ok {
            tracing::warn!(user_id = session.user.id, path = %req.uri().path(), "CSRF token missing or wrong");
            return forbidden("missing or wrong X-CSRF-Token for this session");
        }
    }
    req.extensions_mut().insert(SessionInfo {
        token_hash,
        csrf_token: session.csrf_token,
    });
    req.extensions_mut()
        .insert(tokenledger_provider::http::SessionUser(session.user.id));
    req.extensions_mut().insert(SessionUser(session.user));
    next.run(req).await
}

fn page_headers(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

async fn index(req: Request) -> Response {
    let (Some(SessionUser(user)), Some(info)) = (
        req.extensions().get::<SessionUser>(),
        req.extensions().get::<SessionInfo>(),
    ) else {
        return Redirect::to("/login").into_response();
    };
    let html = INDEX_HTML
        .replace("{{CSRF_TOKEN}}", &escape_html(&info.csrf_token))
        .replace("{{USER_NAME}}", &escape_html(&user.name));
    let mut resp = Html(html).into_response();
    page_headers(&mut resp);
    resp
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

async fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

async fn app_css() -> Response {
    asset(APP_CSS, "text/css; charset=utf-8")
}

fn login_html(status: StatusCode, error: Option<&str>) -> Response {
    let err = error
        .map(|e| format!("<p class=\"err\" role=\"alert\">{}</p>", escape_html(e)))
        .unwrap_or_default();
    let mut resp = (status, Html(LOGIN_HTML.replace("{{ERROR}}", &err))).into_response();
    page_headers(&mut resp);
    resp
}

async fn login_page(req: Request) -> Response {
    if req.extensions().get::<SessionUser>().is_some() {
        return Redirect::to("/").into_response();
    }
    login_html(StatusCode::OK, None)
}

fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// Starts a session for `user` and redirects to the overview.
async fn start_session(state: &AppState, user: &User, headers: &HeaderMap) -> Response {
    let token = generate_token("tls_");
    let csrf = generate_token("");
    if let Err(e) = state
        .store()
        .create_web_session(
            user.id,
            &hash_token(&token),
            &csrf,
            now_unix() + SESSION_TTL_SECS,
        )
        .await
    {
        return ApiError::from(e).into_response();
    }
    tracing::info!(user_id = user.id, "dashboard session started");
    let secure = if is_https(headers) { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={SESSION_TTL_SECS}{secure}"
    );
    let mut resp = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The login form's body.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    pub token: String,
}

async fn login_with_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return login_html(StatusCode::BAD_REQUEST, Some("Paste your user token."));
    };
    let token = form.token.trim();
    if !token.starts_with(USER_TOKEN_PREFIX) {
        return login_html(
            StatusCode::UNAUTHORIZED,
            Some("That is not a user token (they start with tlu_)."),
        );
    }
    match state.store().user_by_token_hash(&hash_token(token)).await {
        Ok(Some(user)) => start_session(&state, &user, &headers).await,
        Ok(None) => login_html(StatusCode::UNAUTHORIZED, Some("Unknown user token.")),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The user of a one-time login code (`tll_...`), which is used up; `None` for a malformed,
/// unknown, expired or already used code.
pub(crate) async fn redeem_login_code(
    store: &dyn Store,
    code: &str,
) -> Result<Option<User>, StoreError> {
    if !code.starts_with(LOGIN_CODE_PREFIX) || code.len() > 200 {
        return Ok(None);
    }
    store.redeem_login_code(&hash_token(code), now_unix()).await
}

async fn login_with_code(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> Response {
    let refused = || {
        login_html(
            StatusCode::UNAUTHORIZED,
            Some("This login link is invalid, expired or already used. Ask for a new one."),
        )
    };
    match redeem_login_code(state.store(), &code).await {
        Ok(Some(user)) => start_session(&state, &user, &headers).await,
        Ok(None) => refused(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn logout(State(state): State<AppState>, req: Request) -> Response {
    if let Some(info) = req.extensions().get::<SessionInfo>() {
        if let Err(e) = state.store().delete_web_session(&info.token_hash).await {
            return ApiError::from(e).into_response();
        }
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("tl_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"),
    );
    resp
}

/// Query of `GET /api/v1/usage/devices`.
#[derive(Debug, Deserialize)]
pub struct DeviceUsageParams {
    pub from: Option<String>,
    pub to: Option<String>,
    pub tz: Option<String>,
}

/// One device's usage.
#[derive(Debug, Serialize)]
pub struct DeviceUsageRow {
    pub device_id: String,
    #[serde(flatten)]
    pub tokens: crate::http::usage::TokenTotals,
    /// Share of the range's total tokens, percent with two decimals.
    pub share_percent: String,
}

/// `GET /api/v1/usage/devices`: usage by device over a range, shares computed by the server.
#[derive(Debug, Serialize)]
pub struct DeviceUsageResponse {
    pub from: String,
    pub to: String,
    pub tz: String,
    pub data: Vec<DeviceUsageRow>,
    pub summary: DeviceUsageSummary,
}

/// Totals of [`DeviceUsageResponse`].
#[derive(Debug, Serialize)]
pub struct DeviceUsageSummary {
    pub totals: crate::http::usage::TokenTotals,
}

fn day_param(name: &str, v: Option<&str>) -> Result<Date, ApiError> {
    let v = v.filter(|s| !s.is_empty()).ok_or_else(|| {
        ApiError::bad_request(
            "missing_parameter",
            format!("{name} is required (YYYY-MM-DD)"),
        )
    })?;
    if v.len() != 10 {
        return Err(ApiError::bad_request(
            "invalid_date",
            format!("{name} must be a date YYYY-MM-DD"),
        ));
    }
    v.parse::<Date>().map_err(|_| {
        ApiError::bad_request("invalid_date", format!("{name} must be a date YYYY-MM-DD"))
    })
}

async fn device_usage(
    State(state): State<AppState>,
    ReaderAuth(user_id): ReaderAuth,
    params: Result<Query<DeviceUsageParams>, QueryRejection>,
) -> Result<Json<DeviceUsageResponse>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request("invalid_parameter", e.body_text()))?;
    let from = day_param("from", p.from.as_deref())?;
    let to = day_param("to", p.to.as_deref())?;
    if from > to {
        return Err(ApiError::bad_request("invalid_range", "from is after to"));
    }
    let tz_name =
        p.tz.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or("UTC")
            .to_string();
    let tz = TimeZone::get(&tz_name).map_err(|_| {
        ApiError::bad_request("invalid_timezone", format!("unknown time zone {tz_name:?}"))
    })?;
    let bad = || ApiError::bad_request("invalid_date", "date out of the supported range");
    let start = from
        .to_zoned(tz.clone())
        .map_err(|_| bad())?
        .timestamp()
        .as_second();
    let end = to
        .tomorrow()
        .and_then(|d| d.to_zoned(tz.clone()))
        .map_err(|_| bad())?
        .timestamp()
        .as_second();
    let rows = state.store().device_usage(user_id, start, end).await?;
    let mut total = TokenCounts::default();
    for r in &rows {
        total += r.tokens;
    }
    let data = rows
        .iter()
        .map(|r| {
            let share = if total.total_tokens == 0 {
                0.0
            } else {
                r.tokens.total_tokens as f64 * 100.0 / total.total_tokens as f64
            };
            DeviceUsageRow {
                device_id: r.device_id.to_string(),
                tokens: (&r.tokens).into(),
                share_percent: format!("{share:.2}"),
            }
        })
        .collect();
    Ok(Json(DeviceUsageResponse {
        from: from.to_string(),
        to: to.to_string(),
        tz: tz_name,
        data,
        summary: DeviceUsageSummary {
            totals: (&total).into(),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; tl_session=abc ; b=2"),
        );
        assert_eq!(cookie_value(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie_value(&h, "c"), None);
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape_html("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
    }

    #[test]
    fn login_urls() {
        assert_eq!(login_url("http://h:1/", "tll_x"), "http://h:1/login/tll_x");
    }
}
