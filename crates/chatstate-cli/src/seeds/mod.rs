//! The seed systems' memory, written as each app would use `chatstate` (only the
//! facade crate). The `examples/` of this crate include these files as they are,
//! and `chatstate demo` times their methods: one copy of each workload, so what the
//! demo measures is what the examples show.

pub mod lia;
pub mod luni;
pub mod saas;
pub mod streaming;
pub mod whatsapp;
