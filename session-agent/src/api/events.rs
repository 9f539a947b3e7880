//! `GET /v1/events`: server-sent events merging session events and gateway
//! (datapath) events, optionally for one device.
//!
//! Each event is `event: NAME` and `data: JSON`, where the JSON carries the same
//! `event` name, `device_id` where there is one, and the event's fields.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    response::sse::{Event, KeepAlive, Sse},
};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use session_model::{DeviceId, SessionEvent};
use tokio::sync::broadcast::{self, error::RecvError};

use super::state::ApiState;
use crate::gateway::GatewayEvent;
use crate::web::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Only events of this device.
    device: Option<DeviceId>,
}

struct Sources {
    session: broadcast::Receiver<SessionEvent>,
    gateway: broadcast::Receiver<GatewayEvent>,
    device: Option<DeviceId>,
}

/// The device an event is about, if any.
fn device_of(v: &Value) -> Option<DeviceId> {
    v.get("device_id").and_then(Value::as_i64)
}

fn lagged(n: u64) -> Event {
    Event::default()
        .event("lagged")
        .data(format!("{{\"event\":\"lagged\",\"missed\":{n}}}"))
}

pub async fn stream(
    State(st): State<Arc<ApiState>>,
    q: Result<Query<Filter>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(f) = q?;
    if let Some(d) = f.device {
        st.gw.sessions().device(d)?;
    }
    let sources = Sources {
        session: st.gw.session_events(),
        gateway: st.gw.subscribe(),
        device: f.device,
    };
    let s = stream::unfold(sources, |mut src| async move {
        loop {
            let value = tokio::select! {
                r = src.session.recv() => match r {
                    Ok(e) => serde_json::to_value(&e).ok(),
                    Err(RecvError::Lagged(n)) => return Some((Ok(lagged(n)), src)),
                    Err(RecvError::Closed) => return None,
                },
                r = src.gateway.recv() => match r {
                    Ok(e) => serde_json::to_value(&e).ok(),
                    Err(RecvError::Lagged(n)) => return Some((Ok(lagged(n)), src)),
                    Err(RecvError::Closed) => return None,
                },
            };
            let Some(v) = value else { continue };
            if src.device.is_some() && device_of(&v) != src.device {
                continue;
            }
            let name = v
                .get("event")
                .and_then(Value::as_str)
                .unwrap_or("event")
                .to_string();
            let ev = Event::default().event(name).data(v.to_string());
            return Some((Ok(ev), src));
        }
    });
    // A first event tells the subscriber that it is subscribed.
    let ready = Event::default()
        .event("ready")
        .data("{\"event\":\"ready\"}");
    let s = stream::once(async move { Ok(ready) }).chain(s);
    Ok(Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
