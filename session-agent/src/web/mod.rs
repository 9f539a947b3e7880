//! What both front ends (the operator API and the portal) stand on: the JSON
//! error every answer carries (`{code, message}` with a stable code), the
//! listeners that hand a failed socket to their owner, HTTPS for the
//! listeners reached over a network, and the text of pages.

mod error;
pub mod html;
mod listener;
pub mod secret;
pub mod tls;

pub use error::ApiError;
pub use listener::{bind_tcp, tcp_addr, JsonErrors, Watched};
