//! One module per command group.

pub mod migrate;
pub mod tasks;
pub mod topics;
