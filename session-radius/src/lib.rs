//! RADIUS as the agent speaks it on the wire, apart from the agent:
//!
//! - [`codec`]: messages, with the Message-Authenticator, vendor attributes,
//!   a strict walk of the attributes, and checks of each attribute the agent
//!   reads that name the one that is malformed;
//! - [`client`]: requests over UDP to a list of servers, with retries and
//!   failover, taking only answers that authenticate;
//! - [`acct`]: the accounting book, the open sessions and the requests not
//!   yet answered, kept in a redb file so that an outage or a crash loses none.

pub mod acct;
pub mod client;
pub mod codec;
mod index;
mod row;
