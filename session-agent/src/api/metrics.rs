//! Prometheus text metrics (`GET /metrics`, also `GET /v1/metrics`).
//!
//! Per-client series are labelled by `lan` and `mac` and limited to the
//! `metrics_top_clients` busiest clients (up + down bytes) of each LAN, so a
//! busy hotspot cannot blow up the scrape; `session_agent_clients_unlisted`
//! counts the clients left out.

use std::{fmt::Write, sync::atomic::Ordering::Relaxed, sync::Arc};

use axum::{extract::State, http::header, response::IntoResponse};
use session_model::ModelError;

use super::state::ApiState;
use crate::dataplane::ClientRow;
use crate::web::ApiError;
use session_common::{
    STAT_ADMISSION_LIMITED, STAT_DROP_REASONS, STAT_EVENTS_LOST, STAT_TABLE_FULL,
};

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

/// A summary family of durations kept as a sum of microseconds and a count.
fn summary(out: &mut String, name: &str, help: &str, sum_us: u64, count: u64) {
    head(out, name, "summary", help);
    let _ = writeln!(out, "{name}_sum {}", secs(sum_us));
    let _ = writeln!(out, "{name}_count {count}");
}

/// A family of one sample without labels.
fn single(out: &mut String, (name, kind): (&str, &str), help: &str, value: impl std::fmt::Display) {
    head(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// One per-client metric family: a sample per client and per `(label value, value)`
/// pair (`label` empty: no extra label).
fn client_family(
    out: &mut String,
    tables: &[(String, usize, Vec<ClientRow>)],
    (name, kind): (&str, &str),
    help: &str,
    label: &str,
    values: impl Fn(&ClientRow) -> Vec<(&'static str, u64)>,
) {
    head(out, name, kind, help);
    for (lan, _, rows) in tables {
        for r in rows {
            for (value, v) in values(r) {
                let extra = if label.is_empty() {
                    String::new()
                } else {
                    format!(",{label}=\"{value}\"")
                };
                let _ = writeln!(
                    out,
                    "{name}{{lan=\"{}\",mac=\"{}\"{extra}}} {v}",
                    escape(lan),
                    escape(&r.mac)
                );
            }
        }
    }
}

pub async fn handler(State(st): State<Arc<ApiState>>) -> Result<impl IntoResponse, ApiError> {
    let text = render(&st)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}

pub fn render(st: &ApiState) -> Result<String, ApiError> {
    let mut out = String::with_capacity(16 * 1024);
    let top = st.gw.metrics_top_clients();

    // One client table serves every LAN: its clients are listed once, under
    // the names of the LANs it serves ("lan0,lan1").
    let mut tables = Vec::new();
    let mut datapath_stats = Vec::new();
    for (i, lan) in st.gw.lans().iter().enumerate() {
        let Ok(m) = lan.maps.lock() else { continue };
        datapath_stats.push((lan.name.clone(), m.stats()?));
        if i == 0 {
            let mut rows = m.snapshot()?;
            rows.sort_by_key(|r| std::cmp::Reverse(r.up_bytes.saturating_add(r.down_bytes)));
            let total = rows.len();
            rows.truncate(top);
            tables.push((st.gw.table_name(), total, rows));
        }
    }

    head(
        &mut out,
        "session_agent_clients",
        "gauge",
        "Client MACs in the datapath's client table (one, shared by the LANs named).",
    );
    for (lan, total, _) in &tables {
        let _ = writeln!(
            out,
            "session_agent_clients{{lan=\"{}\"}} {total}",
            escape(lan)
        );
    }
    head(
        &mut out,
        "session_agent_clients_unlisted",
        "gauge",
        "Clients without per-client series (beyond the metrics_top_clients busiest).",
    );
    for (lan, total, rows) in &tables {
        let _ = writeln!(
            out,
            "session_agent_clients_unlisted{{lan=\"{}\"}} {}",
            escape(lan),
            total - rows.len()
        );
    }

    client_family(
        &mut out,
        &tables,
        ("session_agent_client_bytes_total", "counter"),
        "IP-layer bytes of a client: up (sent), down (received), garden (walled garden), blocked.",
        "direction",
        |r| {
            vec![
                ("up", r.up_bytes),
                ("down", r.down_bytes),
                ("garden", r.garden_bytes),
                ("blocked", r.blocked_bytes),
            ]
        },
    );
    client_family(
        &mut out,
        &tables,
        ("session_agent_client_packets_total", "counter"),
        "Packets of a client counted as usage: up (sent), down (received).",
        "direction",
        |r| vec![("up", r.up_packets), ("down", r.down_packets)],
    );
    client_family(
        &mut out,
        &tables,
        ("session_agent_client_drops_total", "counter"),
        "Packets of a client dropped by the datapath, by reason.",
        "reason",
        |r| {
            vec![
                ("blocked", r.blocked_packets),
                ("ratelimit", r.ratelimit_packets),
                ("quota", r.quota_packets),
                ("malformed", r.malformed_packets),
                ("spoof", r.spoof_packets),
                ("unknown", r.unknown_packets),
                ("ratelimit_garden", r.garden_ratelimit_packets),
            ]
        },
    );
    client_family(
        &mut out,
        &tables,
        ("session_agent_client_addresses", "gauge"),
        "Addresses bound to a client now (anti-spoofing).",
        "",
        |r| vec![("", r.bound_addrs)],
    );
    head(
        &mut out,
        "session_agent_datapath_drops_total",
        "counter",
        "Frames the datapath dropped on a LAN, by reason (all clients, and frames of no client).",
    );
    for (lan, stats) in &datapath_stats {
        for (i, reason) in STAT_DROP_REASONS {
            let _ = writeln!(
                out,
                "session_agent_datapath_drops_total{{lan=\"{}\",reason=\"{reason}\"}} {}",
                escape(lan),
                stats[i as usize]
            );
        }
    }
    for (name, help, stat) in [
        (
            "session_agent_datapath_table_full_total",
            "Packets of a new MAC that found the client table full.",
            STAT_TABLE_FULL,
        ),
        (
            "session_agent_datapath_admission_limited_total",
            "Packets of a new MAC that found no slot because new clients came faster than --new-clients-per-sec.",
            STAT_ADMISSION_LIMITED,
        ),
        (
            "session_agent_datapath_events_lost_total",
            "Datapath events (new clients, data cut-offs, address bindings) lost because the agent did not read the ring in time.",
            STAT_EVENTS_LOST,
        ),
    ] {
        head(&mut out, name, "counter", help);
        for (lan, stats) in &datapath_stats {
            let _ = writeln!(
                out,
                "{name}{{lan=\"{}\"}} {}",
                escape(lan),
                stats[stat as usize]
            );
        }
    }
    client_family(
        &mut out,
        &tables,
        ("session_agent_client_allowed", "gauge"),
        "1 when the datapath lets the client through.",
        "",
        |r| vec![("", u64::from(r.allowed))],
    );

    // Sessions.
    let mgr = st.gw.sessions();
    let now = mgr.clock().now_secs();
    let connected = mgr.connected()?;
    let devices = mgr.store().device_count().map_err(ModelError::from)?;
    let (mut paused, mut unstarted, mut ended) = (0u64, 0u64, 0u64);
    let running: std::collections::HashSet<u64> = connected.iter().map(|(_, s)| *s).collect();
    // Counted in place: a scrape copies no session.
    mgr.store()
        .for_each_session(&mut |s| {
            if running.contains(&s.id) {
            } else if !s.data.is_available(now) {
                ended += 1;
            } else if s.data.started_at.is_some() {
                paused += 1;
            } else {
                unstarted += 1;
            }
        })
        .map_err(ModelError::from)?;
    head(
        &mut out,
        "session_agent_devices",
        "gauge",
        "Devices known to the session store.",
    );
    let _ = writeln!(out, "session_agent_devices {devices}");
    head(
        &mut out,
        "session_agent_connected_devices",
        "gauge",
        "Devices connected (with a running session).",
    );
    let _ = writeln!(out, "session_agent_connected_devices {}", connected.len());
    head(
        &mut out,
        "session_agent_sessions",
        "gauge",
        "Sessions by state: running, paused, unstarted (these three are active) and ended.",
    );
    for (state, v) in [
        ("running", connected.len() as u64),
        ("paused", paused),
        ("unstarted", unstarted),
        ("ended", ended),
    ] {
        let _ = writeln!(out, "session_agent_sessions{{state=\"{state}\"}} {v}");
    }

    // The gateway's own work.
    let s = st.gw.stats();
    let n = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
    summary(
        &mut out,
        "session_agent_poll_duration_seconds",
        "Time of one counter poll (charge usage, advance time, end sessions).",
        n(&s.poll_us_sum),
        n(&s.polls),
    );
    single(
        &mut out,
        ("session_agent_last_poll_duration_seconds", "gauge"),
        "Time of the last counter poll.",
        secs(n(&s.poll_us_last)),
    );
    single(
        &mut out,
        ("session_agent_poll_errors_total", "counter"),
        "Counter polls that failed.",
        n(&s.poll_errors),
    );
    head(
        &mut out,
        "session_agent_ring_events_total",
        "counter",
        "Datapath ring-buffer events handled, by kind.",
    );
    let _ = writeln!(
        out,
        "session_agent_ring_events_total{{kind=\"new_client\"}} {}",
        n(&s.ring_new_client)
    );
    let _ = writeln!(
        out,
        "session_agent_ring_events_total{{kind=\"quota_exhausted\"}} {}",
        n(&s.ring_quota_exhausted)
    );
    summary(
        &mut out,
        "session_agent_checkpoint_duration_seconds",
        "Time of one store checkpoint.",
        n(&s.checkpoint_us_sum),
        n(&s.checkpoints),
    );
    single(
        &mut out,
        ("session_agent_last_checkpoint_duration_seconds", "gauge"),
        "Time of the last store checkpoint.",
        secs(n(&s.checkpoint_us_last)),
    );
    single(
        &mut out,
        ("session_agent_checkpoint_errors_total", "counter"),
        "Store checkpoints that failed.",
        n(&s.checkpoint_errors),
    );
    for (name, help, count) in [
        (
            "session_agent_clients_forgotten_total",
            "Idle clients that were not allowed, forgotten to free their slots.",
            &s.clients_forgotten,
        ),
        (
            "session_agent_forget_errors_total",
            "Runs of forgetting idle clients that failed.",
            &s.forget_errors,
        ),
        (
            "session_agent_clients_reclaimed_under_pressure_total",
            "Clients that had not paid, forgotten (least recently active first) because the client table was over its high-water mark.",
            &s.clients_pressed,
        ),
        (
            "session_agent_table_pressure_total",
            "Runs that found the client table over its high-water mark and forgot clients to make room.",
            &s.pressure_runs,
        ),
        (
            "session_agent_slots_reclaimed_total",
            "Client slots that a lost race for a table entry had left unused, taken back.",
            &s.slots_reclaimed,
        ),
        (
            "session_agent_addresses_bound_total",
            "Client addresses bound to a MAC by the datapath (first claim).",
            &s.addrs_bound,
        ),
        (
            "session_agent_address_bindings_expired_total",
            "Address bindings unused for --bind-ttl-secs that the sweep removed from the tables (the datapath treats them as free before).",
            &s.bindings_expired,
        ),
        (
            "session_agent_binding_sweep_errors_total",
            "Sweeps of the address bindings that failed.",
            &s.binding_sweep_errors,
        ),
        (
            "session_agent_mac_conflicts_total",
            "A MAC claimed a second IPv4 address while using another: two devices on one MAC.",
            &s.mac_conflicts,
        ),
    ] {
        single(&mut out, (name, "counter"), help, n(count));
    }
    head(
        &mut out,
        "session_agent_reconciled_total",
        "counter",
        "Clients whose datapath state differed from their sessions, corrected by the poll (a healthy gateway shows zero).",
    );
    for m in crate::gateway::Mismatch::ALL {
        let _ = writeln!(
            out,
            "session_agent_reconciled_total{{what=\"{}\"}} {}",
            m.name(),
            n(&s.reconciled[m as usize])
        );
    }
    single(
        &mut out,
        ("session_agent_address_bindings", "gauge"),
        "Address bindings in the datapath's tables at the last sweep.",
        n(&s.bindings_live),
    );
    summary(
        &mut out,
        "session_agent_commit_duration_seconds",
        "Time of one commit of charged usage to the store.",
        n(&s.commit_us_sum),
        n(&s.commits),
    );
    single(
        &mut out,
        ("session_agent_commit_errors_total", "counter"),
        "Commits of charged usage that failed.",
        n(&s.commit_errors),
    );
    head(
        &mut out,
        "session_agent_portal_redirects_total",
        "counter",
        "Connections of clients that have not paid answered by the portal redirect (--portal-redirect), by outcome.",
    );
    for (outcome, v) in [
        ("redirected", &s.redirects),
        ("bad_request", &s.redirect_bad_requests),
        ("dropped", &s.redirect_dropped),
    ] {
        let _ = writeln!(
            out,
            "session_agent_portal_redirects_total{{outcome=\"{outcome}\"}} {}",
            n(v)
        );
    }
    if let Some(names) = &st.names {
        let ns = &names.stats;
        single(
            &mut out,
            ("session_agent_garden_learnt_addresses", "gauge"),
            "Addresses learnt for garden names (--walled-garden-domain), every LAN's.",
            names.learnt_count() as u64,
        );
        head(
            &mut out,
            "session_agent_garden_dns_answers_total",
            "counter",
            "DNS answers to clients that have not paid, held until their garden addresses were learnt, by outcome.",
        );
        for (outcome, v) in [
            ("learnt", &ns.learnt),
            ("no_garden_name", &ns.no_garden_name),
            ("malformed", &ns.malformed),
            ("stale", &ns.stale),
            ("send_failed", &ns.send_failed),
        ] {
            let _ = writeln!(
                out,
                "session_agent_garden_dns_answers_total{{outcome=\"{outcome}\"}} {}",
                n(v)
            );
        }
        single(
            &mut out,
            ("session_agent_garden_learnt_refused_total", "counter"),
            "Addresses of garden names not learnt because --garden-domain-limit was reached.",
            n(&ns.refused_full),
        );
        single(
            &mut out,
            ("session_agent_garden_learnt_expired_total", "counter"),
            "Learnt garden addresses removed after their TTL, unused.",
            n(&ns.expired),
        );
    }
    if let Some(r) = &st.radius {
        let rs = &r.stats;
        let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        for (name, help, v) in [
            ("session_agent_radius_accepts_total", "RADIUS logins accepted.", n(&rs.accepts)),
            ("session_agent_radius_rejects_total", "RADIUS logins refused by the server.", n(&rs.rejects)),
            ("session_agent_radius_auth_unavailable_total", "RADIUS logins no server answered (validly).", n(&rs.auth_unavailable)),
            ("session_agent_radius_acct_answered_total", "Accounting requests a server answered.", n(&rs.acct_answered)),
            ("session_agent_radius_acct_retries_total", "Accounting sends that found no server answering (each request waits and is sent again).", n(&rs.acct_retries)),
            ("session_agent_radius_acct_dropped_total", "Interim updates not kept because the accounting queue was full.", n(&rs.acct_dropped_full)),
            ("session_agent_radius_coa_acks_total", "Disconnect and CoA requests done (ACK).", n(&rs.coa_acks)),
            ("session_agent_radius_coa_naks_total", "Disconnect and CoA requests refused with an Error-Cause (NAK).", n(&rs.coa_naks)),
            ("session_agent_radius_coa_dropped_total", "Disconnect and CoA requests dropped unanswered: from an address that is no CoA client, or not checking out with the secret.", n(&rs.coa_refused)),
        ] {
            single(&mut out, (name, "counter"), help, v);
        }
        single(
            &mut out,
            ("session_agent_radius_acct_queued", "gauge"),
            "Accounting requests waiting for a server's answer (kept on disk).",
            r.queued(),
        );
        single(
            &mut out,
            ("session_agent_radius_sessions_open", "gauge"),
            "RADIUS sessions open at the accounting server.",
            r.open_count() as u64,
        );
    }
    let desk = st.vouchers.counts();
    single(
        &mut out,
        ("session_agent_voucher_redemptions_total", "counter"),
        "Voucher codes redeemed (each a session created and its device connected).",
        desk.redeemed,
    );
    head(
        &mut out,
        "session_agent_voucher_refusals_total",
        "counter",
        "Voucher codes refused, by the API's error code.",
    );
    for (code, v) in &desk.refused {
        let _ = writeln!(
            out,
            "session_agent_voucher_refusals_total{{reason=\"{code}\"}} {v}"
        );
    }
    single(
        &mut out,
        ("session_agent_voucher_tries_limited_total", "counter"),
        "Redemptions answered 429 because the client had too many wrong codes in a minute.",
        desk.limited,
    );
    single(
        &mut out,
        ("session_agent_voucher_moves_total", "counter"),
        "Voucher codes whose session moved to a new MAC with its device (typed again from a phone that changed its Wi-Fi address).",
        desk.moved,
    );
    Ok(out)
}
