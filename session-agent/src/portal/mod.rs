//! What clients of the hotspot see: the portal page where a customer redeems
//! a code and sees what is left ([`page`]), the RFC 8908 captive-portal API
//! ([`captive`]), both on the captive listener (`--captive-listen`), and the
//! responder that sends a client that has not paid to the portal
//! ([`redirect`]). Every answer is about the asking client only, found by its
//! address.

pub mod captive;
pub mod page;
pub mod redirect;
pub mod texts;

use std::{net::SocketAddr, sync::Arc};

use axum::{serve::ListenerExt, Router};
use tracing::info;

pub use redirect::{RedirectOptions, RedirectParams};
pub use texts::{PortalTexts, PortalTextsError, DEFAULT_TEXTS};

use crate::{
    error::AgentError,
    radius::Radius,
    vouchers::VoucherDesk,
    web::{bind_tcp, tcp_addr, ApiError, JsonErrors, Watched},
};

/// The captive listener and what it serves.
#[derive(Debug, Clone, Default)]
pub struct PortalOptions {
    /// The RFC 8908 API and the portal page, normally on a LAN address.
    pub listen: Option<SocketAddr>,
    /// `user-portal-url` of the captive-portal API.
    pub portal_url: Option<String>,
    /// Texts and colours of the built-in portal page.
    pub texts: Arc<PortalTexts>,
    /// Where the codes typed on the page are checked.
    pub vouchers: VoucherBackend,
}

/// Where a code typed on the portal page is checked (`[vouchers] backend`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum VoucherBackend {
    /// The agent's own codes, in its store.
    #[default]
    Local,
    /// An Access-Request to the RADIUS servers, with the code as User-Name
    /// and password: one database of codes for every gateway.
    Radius,
}

/// The captive listener, bound by [`bind`] before the agent says it is ready.
pub struct Listener(Option<tokio::net::TcpListener>);

/// Binds the captive listener, if `opts` asks for one; an error names the
/// address and the setting to change.
pub async fn bind(opts: &PortalOptions) -> Result<Listener, AgentError> {
    let Some(addr) = opts.listen else {
        return Ok(Listener(None));
    };
    let l = bind_tcp(
        addr,
        "the captive-portal API and portal page",
        "--captive-listen (captive.listen)",
    )
    .await?;
    info!(%addr, "captive-portal API (RFC 8908) and portal page (/portal) listening");
    Ok(Listener(Some(l)))
}

/// The captive listener's routes: the RFC 8908 API and the portal page,
/// whose codes `radius` checks with `[vouchers] backend = "radius"`.
pub fn router(desk: Arc<VoucherDesk>, radius: Option<Arc<Radius>>, opts: &PortalOptions) -> Router {
    let codes_at = radius.filter(|_| opts.vouchers == VoucherBackend::Radius);
    captive::router(desk.gateway().clone(), opts.portal_url.clone())
        .merge(page::router(desk, codes_at, opts.texts.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// Serves the captive listener (from [`bind`]) until the task is dropped or
/// the listener fails; without one, waits forever.
pub async fn serve(
    desk: Arc<VoucherDesk>,
    radius: Option<Arc<Radius>>,
    opts: PortalOptions,
    listener: Listener,
) -> Result<(), AgentError> {
    let Some(listener) = listener.0 else {
        return std::future::pending().await;
    };
    let app = router(desk, radius, &opts);
    let addr = tcp_addr(&listener);
    let (listener, failed) = Watched::new(listener, "the captive-portal API and portal page", addr);
    // `tap_io` for axum's ConnectInfo, which knows its own listener types only.
    let listener = JsonErrors(listener).tap_io(|_| {});
    tokio::select! {
        r = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        ) => r.map_err(|e| AgentError::from_io("serving the captive-portal API", e)),
        Ok(e) = failed => Err(e),
    }
}

/// An unknown path on the captive listener.
async fn not_found() -> ApiError {
    ApiError::not_found(
        "no_route",
        "no such page here: the portal page is /portal, the RFC 8908 API /captive-portal/api",
    )
}

/// A known path of the captive listener with another method.
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} takes no {method}: pages and the RFC 8908 API are read with GET, forms sent with POST",
            uri.path()
        ),
    )
}
