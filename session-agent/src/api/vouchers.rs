//! `/v1/vouchers` and redemption: batches of codes, their states, revocation,
//! export for print, and `POST /v1/devices/{id}/redeem`.

use std::sync::Arc;

use axum::{
    extract::{Query, State},
    http::header,
    response::{IntoResponse, Response},
    Json,
};
use serde::Deserialize;
use session_model::{NewBatch, Voucher, VoucherState};

use session_api::{
    csv_field,
    requests::{NewVouchers, Redeem},
};

use super::{
    input::{created, ip_path, off_runtime, path, view, Body, DevId, PathArg},
    state::{ApiState, Desk},
    views::{self, RedeemView, VoucherView},
};
use crate::{
    gateway::Gateway,
    neigh,
    vouchers::VoucherDesk,
    web::{
        html::{escape, what_it_buys},
        ApiError,
    },
};

type St = State<Arc<ApiState>>;

fn voucher_view(gw: &Gateway, v: &Voucher) -> VoucherView {
    views::voucher_view(v, gw.sessions().voucher_state(v))
}

pub(super) async fn create(
    State(st): St,
    Body(b): Body<NewVouchers>,
) -> Result<Response, ApiError> {
    let batch = NewBatch::try_from(b)?;
    let made = off_runtime(&st, move |gw| async move {
        gw.sessions().create_vouchers(&batch)
    })
    .await?;
    let views: Vec<VoucherView> = made.iter().map(|v| voucher_view(&st.gw, v)).collect();
    Ok(created(views))
}

/// `?batch=NAME&state=STATE`: only the codes of one batch, in one state.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Filter {
    batch: Option<String>,
    state: Option<String>,
}

impl Filter {
    fn state(&self) -> Result<Option<VoucherState>, ApiError> {
        self.state
            .as_deref()
            .map(|s| {
                s.parse()
                    .map_err(|e: String| ApiError::bad_request("invalid_query", e))
            })
            .transpose()
    }
}

fn filtered(st: &ApiState, f: &Filter) -> Result<Vec<(Voucher, VoucherState)>, ApiError> {
    let want = f.state()?;
    Ok(st
        .gw
        .sessions()
        .vouchers()?
        .into_iter()
        .filter(|(v, s)| {
            f.batch.as_ref().is_none_or(|b| &v.batch == b) && want.is_none_or(|w| w == *s)
        })
        .collect())
}

pub(super) async fn list(
    State(st): St,
    q: Result<Query<Filter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<VoucherView>>, ApiError> {
    let Query(f) = q?;
    Ok(Json(
        filtered(&st, &f)?
            .iter()
            .map(|(v, s)| views::voucher_view(v, *s))
            .collect(),
    ))
}

pub(super) async fn show(State(st): St, code: PathArg) -> Result<Json<VoucherView>, ApiError> {
    let code = path(code)?;
    let v = st.gw.sessions().voucher(&code)?;
    Ok(Json(voucher_view(&st.gw, &v)))
}

pub(super) async fn revoke(State(st): St, code: PathArg) -> Result<Json<VoucherView>, ApiError> {
    let code = path(code)?;
    let v = off_runtime(
        &st,
        move |gw| async move { gw.sessions().revoke_voucher(&code) },
    )
    .await?;
    Ok(Json(voucher_view(&st.gw, &v)))
}

/// `?batch=NAME&state=STATE&format=csv|html`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ExportQuery {
    batch: Option<String>,
    state: Option<String>,
    format: Option<String>,
}

pub(super) async fn export(
    State(st): St,
    q: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q?;
    let f = Filter {
        batch: q.batch,
        state: q.state,
    };
    let rows = filtered(&st, &f)?;
    match q.format.as_deref().unwrap_or("csv") {
        "csv" => Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"vouchers.csv\"",
                ),
            ],
            csv(&rows),
        )
            .into_response()),
        "html" => Ok((
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            sheet(&rows, f.batch.as_deref()),
        )
            .into_response()),
        other => Err(ApiError::bad_request(
            "invalid_query",
            format!("format must be csv or html, not {other:?}"),
        )),
    }
}

fn csv(rows: &[(Voucher, VoucherState)]) -> String {
    let mut out = String::from(
        "code,display_code,batch,price,state,type,time_secs,data_mb,exp_days,down_mbits,up_mbits,use_global_speed,valid_until,max_devices,redemptions\r\n",
    );
    for (v, s) in rows {
        let t = &v.template;
        let cells = [
            v.code.clone(),
            v.display_code(),
            v.batch.clone(),
            v.price.clone().unwrap_or_default(),
            s.name().to_string(),
            (t.session_type as u8).to_string(),
            t.time_secs.to_string(),
            session_model::bytes_to_mb(t.data_bytes).to_string(),
            t.exp_days.map(|d| d.to_string()).unwrap_or_default(),
            t.down_mbits.to_string(),
            t.up_mbits.to_string(),
            t.use_global_speed.to_string(),
            v.valid_until.map(|d| d.to_string()).unwrap_or_default(),
            v.max_devices.to_string(),
            v.redemptions.len().to_string(),
        ];
        let line: Vec<String> = cells.iter().map(|c| csv_field(c)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

/// A printable sheet of slips: code, what it buys, price.
fn sheet(rows: &[(Voucher, VoucherState)], batch: Option<&str>) -> String {
    let title = match batch {
        Some(b) => format!("Vouchers: {}", escape(b)),
        None => "Vouchers".to_string(),
    };
    let mut out = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title><style>\
         body{{font-family:sans-serif;margin:8mm}}\
         .sheet{{display:grid;grid-template-columns:repeat(auto-fill,minmax(62mm,1fr));gap:4mm}}\
         .slip{{border:1px dashed #444;padding:3mm;break-inside:avoid}}\
         .code{{font:bold 16pt monospace;letter-spacing:1px}}\
         .buys{{margin:1mm 0}} .meta{{color:#555;font-size:9pt}}\
         </style></head><body><h1>{title}</h1><div class=\"sheet\">"
    );
    for (v, _) in rows {
        out.push_str(&format!(
            "<div class=\"slip\"><div class=\"code\">{}</div><div class=\"buys\">{}</div><div class=\"meta\">{}{}</div></div>",
            escape(&v.display_code()),
            escape(&what_it_buys(&v.template)),
            v.price
                .as_deref()
                .map(|p| format!("{} · ", escape(p)))
                .unwrap_or_default(),
            escape(&v.batch),
        ));
    }
    out.push_str("</div></body></html>\n");
    out
}

async fn redeem_for(
    desk: Arc<VoucherDesk>,
    device_id: i64,
    code: String,
) -> Result<Response, ApiError> {
    let d = desk.clone();
    let r = crate::runtime::off_runtime(move || async move { d.redeem(device_id, &code).await })
        .await??;
    let gw = desk.gateway();
    let v = RedeemView {
        session: view(gw, &r.session)?,
        voucher: voucher_view(gw, &r.voucher),
        queued: r.queued,
        moved_from: r.moved_from.map(|m| m.to_string()),
    };
    Ok(created(v))
}

pub(super) async fn redeem(
    State(Desk(desk)): State<Desk>,
    DevId(id): DevId,
    Body(b): Body<Redeem>,
) -> Result<Response, ApiError> {
    redeem_for(desk, id, b.code).await
}

/// For portals that only know the client's address: the device is found (or
/// made) from the gateway's neighbour table.
pub(super) async fn redeem_by_ip(
    State(Desk(desk)): State<Desk>,
    ip: PathArg,
    Body(b): Body<Redeem>,
) -> Result<Response, ApiError> {
    let device = neigh::device_or_new_for_ip(desk.gateway(), ip_path(ip)?).await?;
    redeem_for(desk, device.id, b.code).await
}
