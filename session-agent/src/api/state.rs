//! What the API's handlers see. The router holds one [`ApiState`], handed
//! out by the wiring; a handler takes only the part it needs: the gateway,
//! the voucher desk, the garden by name or the RADIUS logins (`FromRef`).

use std::{sync::Arc, time::Instant};

use axum::extract::FromRef;

use super::config::ApiOptions;
use crate::{gateway::Gateway, names::NameGarden, radius::Radius, vouchers::VoucherDesk};

/// The gateway and the features the API serves.
pub struct ApiState {
    pub gw: Arc<Gateway>,
    pub vouchers: Arc<VoucherDesk>,
    /// The walled garden by domain name (none without a datapath).
    pub names: Option<Arc<NameGarden>>,
    /// RADIUS logins and accounting, when configured.
    pub radius: Option<Arc<Radius>>,
    pub opts: ApiOptions,
    pub started: Instant,
}

impl ApiState {
    pub fn new(
        gw: Arc<Gateway>,
        vouchers: Arc<VoucherDesk>,
        names: Option<Arc<NameGarden>>,
        radius: Option<Arc<Radius>>,
        opts: ApiOptions,
    ) -> Arc<Self> {
        Arc::new(Self {
            gw,
            vouchers,
            names,
            radius,
            opts,
            started: Instant::now(),
        })
    }
}

/// The voucher handlers' part: the desk (and through it the gateway).
#[derive(Clone)]
pub struct Desk(pub Arc<VoucherDesk>);

impl FromRef<Arc<ApiState>> for Desk {
    fn from_ref(st: &Arc<ApiState>) -> Self {
        Desk(st.vouchers.clone())
    }
}

/// The garden handlers' part: the names, and the gateway whose LANs hold DNS
/// answers for them.
#[derive(Clone)]
pub struct Garden {
    pub names: Option<Arc<NameGarden>>,
    pub gw: Arc<Gateway>,
}

impl FromRef<Arc<ApiState>> for Garden {
    fn from_ref(st: &Arc<ApiState>) -> Self {
        Garden {
            names: st.names.clone(),
            gw: st.gw.clone(),
        }
    }
}

/// The login handlers' part: RADIUS, and the gateway that connects the device.
#[derive(Clone)]
pub struct Logins {
    pub radius: Option<Arc<Radius>>,
    pub gw: Arc<Gateway>,
}

impl FromRef<Arc<ApiState>> for Logins {
    fn from_ref(st: &Arc<ApiState>) -> Self {
        Logins {
            radius: st.radius.clone(),
            gw: st.gw.clone(),
        }
    }
}
