//! Many gateways, one operator: what session-agent writes into the AAA
//! server's database so that a code sold anywhere works at every gateway.
//!
//! * [`vouchers`]: a batch of codes as rows of FreeRADIUS's SQL schema
//!   (`radcheck`, `radreply`, `radusergroup`), inserted into PostgreSQL in one
//!   transaction with bound parameters, or written as a `COPY` file for
//!   `psql -f`.

pub mod vouchers;

pub use vouchers::{batch_rows, write_copy, Database, FleetError, Plan, Row, Table};
