//! Session model (placeholder).
