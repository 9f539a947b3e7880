//! Many gateways, one operator: what session-agent writes into the AAA
//! server's database so that a code sold anywhere works at every gateway.
//!
//! * [`vouchers`]: a batch of codes as rows of FreeRADIUS's SQL schema
//!   (`radcheck`, `radreply`, `radusergroup`), inserted into PostgreSQL in one
//!   transaction with bound parameters, or written as a `COPY` file for
//!   `psql -f`, each code with its batch and price.
//! * [`sales`]: what was sold where: each code's first login at any gateway
//!   (from FreeRADIUS's `radacct`) with its price.

pub mod sales;
pub mod vouchers;

pub use sales::{cents_text, Price, Sale};
pub use vouchers::{batch_rows, write_copy, Batch, Database, FleetError, Plan, Row, Table};
