//! The gateway and its features, built once by the daemon and handed out:
//! each front end receives the part it serves, never the whole.

use std::sync::Arc;

use crate::{
    api::{ApiOptions, ApiState},
    gateway::Gateway,
    names::NameGarden,
    radius::Radius,
    vouchers::VoucherDesk,
};

/// What the agent runs: the core and the features over it.
pub struct Services {
    pub gateway: Arc<Gateway>,
    /// Where codes are redeemed (the API and the portal page).
    pub vouchers: Arc<VoucherDesk>,
    /// The walled garden by domain name (none without a datapath).
    pub names: Option<Arc<NameGarden>>,
    /// RADIUS logins and accounting, when configured.
    pub radius: Option<Arc<Radius>>,
}

impl Services {
    /// The gateway with a voucher desk and no other feature.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self {
            vouchers: Arc::new(VoucherDesk::new(gateway.clone())),
            gateway,
            names: None,
            radius: None,
        }
    }

    /// What the operator API serves.
    pub fn api(&self, opts: ApiOptions) -> Arc<ApiState> {
        ApiState::new(
            self.gateway.clone(),
            self.vouchers.clone(),
            self.names.clone(),
            self.radius.clone(),
            opts,
        )
    }

    /// What the portal serves: the desk, and through it the gateway; RADIUS
    /// for codes checked there.
    pub fn portal(&self) -> (Arc<VoucherDesk>, Option<Arc<Radius>>) {
        (self.vouchers.clone(), self.radius.clone())
    }
}
