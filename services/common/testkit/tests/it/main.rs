//! The harness's own integration tests against the local stack, one binary.

mod fence;
mod stack;
