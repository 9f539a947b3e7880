//! What the gateway announces besides session events.

use serde::Serialize;
use session_model::DeviceId;

/// What the datapath and the gateway announce besides session events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum GatewayEvent {
    /// A MAC address was seen on a LAN for the first time.
    ClientSeen {
        lan: String,
        mac: String,
        device_id: Option<DeviceId>,
    },
    /// The kernel cut a device off because its data budget reached zero.
    QuotaCutoff {
        lan: String,
        mac: String,
        device_id: Option<DeviceId>,
    },
    /// A device was paused after `idle_timeout` without traffic.
    IdleTimeout { device_id: DeviceId },
    /// A MAC claimed a second IPv4 address while it still used another: two
    /// devices may share it (a cloned MAC).
    MacConflict {
        lan: String,
        mac: String,
        address: String,
        device_id: Option<DeviceId>,
    },
    /// The client table was over its high-water mark: clients that had not
    /// paid and were least recently active were forgotten to make room.
    TablePressure {
        /// Clients in the table after the run, and of how many slots.
        clients: u32,
        capacity: u32,
        /// Clients forgotten for room.
        reclaimed: u32,
    },
}
