//! `/v1/garden/domains`: the walled garden by domain name, changed at run time.

use std::sync::Arc;

use axum::{extract::State, http::StatusCode, response::Response, Json};
use serde::Serialize;

use session_api::requests::NewDomain;

use super::{
    input::{created, path, Body, PathArg},
    state::Garden,
};
use crate::{
    names::{DomainRule, LearntView, NameGarden},
    web::ApiError,
};

type St = State<Garden>;

/// `GET /v1/garden/domains`.
#[derive(Serialize)]
pub(super) struct DomainsView {
    domains: Vec<DomainRule>,
    learnt: Vec<LearntView>,
}

/// What an add or a remove did.
#[derive(Serialize)]
pub(super) struct DomainChange {
    domain: DomainRule,
    changed: bool,
}

fn names(st: &Garden) -> Result<&Arc<NameGarden>, ApiError> {
    st.names.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "garden_by_name_unavailable",
            "this agent runs no datapath, so no garden by name",
        )
    })
}

/// A change of the names, which writes the file that keeps them: on a
/// blocking thread. Its failure is the garden's (503), never the request's.
async fn change(
    n: &Arc<NameGarden>,
    op: impl FnOnce(&NameGarden) -> crate::error::Result<bool> + Send + 'static,
) -> Result<bool, ApiError> {
    let n = n.clone();
    let done = crate::runtime::off_runtime(move || async move { op(&n) }).await?;
    done.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "garden_by_name_unavailable",
            e.to_string(),
        )
    })
}

fn rule(s: &str) -> Result<DomainRule, ApiError> {
    s.parse().map_err(|e: crate::error::AgentError| {
        ApiError::bad_request("invalid_domain", e.to_string())
    })
}

pub(super) async fn list(State(st): St) -> Result<Json<DomainsView>, ApiError> {
    let n = names(&st)?;
    Ok(Json(DomainsView {
        domains: n.rules(),
        learnt: n.learnt(),
    }))
}

/// Adds a garden name: 201 when new, 200 when it was there already.
pub(super) async fn add(State(st): St, Body(b): Body<NewDomain>) -> Result<Response, ApiError> {
    let n = names(&st)?;
    let domain = rule(&b.domain)?;
    let d = domain.clone();
    let changed = change(n, move |n| n.add_kept(d)).await?;
    n.update_dns_snoop(st.gw.lans());
    let v = DomainChange { domain, changed };
    Ok(if changed {
        tracing::info!(domain = %v.domain, "garden name added");
        created(v)
    } else {
        axum::response::IntoResponse::into_response(Json(v))
    })
}

/// Removes a garden name and the addresses learnt only for it.
pub(super) async fn remove(State(st): St, p: PathArg) -> Result<Json<DomainChange>, ApiError> {
    let n = names(&st)?;
    let domain = rule(&path(p)?)?;
    let d = domain.clone();
    let removed = change(n, move |n| n.remove_kept(&d)).await?;
    if !removed {
        return Err(ApiError::not_found(
            "no_such_domain",
            format!("{domain} is not a garden name; GET /v1/garden/domains lists them"),
        ));
    }
    n.update_dns_snoop(st.gw.lans());
    tracing::info!(%domain, "garden name removed");
    Ok(Json(DomainChange {
        domain,
        changed: true,
    }))
}
