//! The tokenledger server: many machines' half-hour buckets become one ledger per user.
//!
//! [`router`] builds the axum application over any [`Store`]; [`serve`] runs it on an injected
//! listener until an injected shutdown future resolves, so tests start the real server on port 0.
//! Handlers live in [`http`], grouped by resource; the usage arithmetic (rollup for full UTC
//! days, buckets for the edges, time-zone grouping, cost) lives in [`usage`].

pub mod auth;
pub mod dashboard;
pub mod error;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod usage;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokenledger_core::PriceTable;
use tokenledger_store::Store;
use tower_http::trace::TraceLayer;

pub use error::ApiError;

/// Settings of a running server, with the defaults of `tokenledger serve`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The price table used for every cost.
    pub prices: PriceTable,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Largest number of buckets in one ingest request.
    pub max_buckets: usize,
    /// Ingest requests allowed to run at once; more wait up to `ingest_queue_wait`, then 429.
    pub ingest_concurrency: usize,
    pub ingest_queue_wait: Duration,
    /// Longest range of a usage query, in days.
    pub max_range_days: i64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            prices: PriceTable::embedded(),
            max_body_bytes: 2 * 1024 * 1024,
            max_buckets: 500,
            ingest_concurrency: 32,
            ingest_queue_wait: Duration::from_secs(5),
            max_range_days: 800,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    config: ServerConfig,
    metrics: metrics::Metrics,
    ingest_permits: tokio::sync::Semaphore,
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, config: ServerConfig) -> Self {
        AppState {
            inner: Arc::new(Inner {
                store,
                ingest_permits: tokio::sync::Semaphore::new(config.ingest_concurrency),
                config,
                metrics: metrics::Metrics::new(),
            }),
        }
    }

    pub fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    pub fn metrics(&self) -> &metrics::Metrics {
        &self.inner.metrics
    }

    pub(crate) fn ingest_permits(&self) -> &tokio::sync::Semaphore {
        &self.inner.ingest_permits
    }
}

/// The whole application: API routes, health, metrics and the OpenAPI document.
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// [`router`] plus `extra` routes (state already applied, e.g. the provider usage routes of
/// `tokenledger_provider::http::router`), all behind the same sessions, limits, metrics and logs.
pub fn router_with(state: AppState, extra: Router) -> Router {
    let max_body = state.config().max_body_bytes;
    http::routes()
        .merge(dashboard::routes())
        .with_state(state.clone())
        .merge(extra)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            dashboard::session_layer,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(TraceLayer::new_for_http())
}

/// Serves [`router`] on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, backend = state.store().backend(), "tokenledger server listening");
    }
    serve_app(listener, router(state), shutdown).await
}

/// Serves an application built with [`router_with`], with each peer's address available to
/// handlers (rejected cron calls are logged with it).
pub async fn serve_app(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "tokenledger server listening");
    }
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
