//! CLI subcommands that talk to the running agent over its API socket. They
//! never open the session database: the daemon owns it.

mod args;
mod devices;
mod fleet;
mod garden;
mod out;
mod sessions;
mod status;
mod vouchers;

pub use args::ApiArgs;
pub use devices::{connect, devices, disconnect, login, DevicesCmd};
pub use garden::{garden, GardenCmd};
pub use out::table;
pub use sessions::{sessions, SessionsCmd};
pub use status::{events, providers, status};
pub use vouchers::{vouchers, VouchersCmd};
