//! The kernel datapath: attaching it, and reading and steering its pinned maps.
//!
//! [`Maps`] opens one LAN's pins and the client table every LAN shares; its
//! methods live by concept:
//!
//! - [`attach`]: loading, attaching and detaching; the pin layout and its checks.
//! - `table`: the index by MAC, slot claiming, a client's flags, meter and
//!   data budget (the protocols the datapath shares are in `session_common`:
//!   `index`, `slots`).
//! - `rates`: speed limits, as token buckets or HTB classes ([`shape`]).
//! - `forget`: forgetting idle clients and handing their slots on.
//! - `bindings`: address bindings (anti-spoofing).
//! - `rows`: what operators and the poll read: rows, the enforced state, drop counters.
//! - [`mmap`]: the one place shared memory is turned into atomics.

pub mod attach;
mod bindings;
pub mod bpffs;
mod forget;
mod maps;
pub mod mmap;
pub mod pins;
mod rates;
mod rows;
pub mod shape;
mod table;
pub mod testrun;

pub use bindings::BindingSweep;
pub use forget::{Forgotten, IdleTracker, Pressure, LOST_SLOT_GRACE};
pub use maps::{
    addr_key, addr_of, coarse_ns, ktime_ns, set_gateway_addrs, write_garden, Maps,
    DEFAULT_BURST_MS, DEFAULT_PIN_ROOT, MIN_BURST_BYTES,
};
pub use rates::RateLimit;
pub use rows::{ClientRow, Enforced};
