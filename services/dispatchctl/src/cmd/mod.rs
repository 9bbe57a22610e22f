//! One module per command group.

pub mod migrate;
pub mod topics;
pub mod tasks;
