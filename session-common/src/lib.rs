//! Types and names shared by the session-agent eBPF programs and userspace.
//!
//! Every map value is `#[repr(C)]`, has no implicit padding and no `bool`, so the
//! kernel and userspace agree byte for byte. The `user` feature adds `aya::Pod`
//! implementations and parsing/formatting helpers for userspace.
#![no_std]

pub mod index;
pub mod mac;
pub mod maps;
pub mod slots;

#[cfg(feature = "user")]
mod user;

pub use index::*;
pub use mac::{MacAddr, ParseMacError};
pub use maps::*;
pub use slots::*;
