//! Cross-service tests: gateway, processor and reader in one process over one isolated
//! `TestEnv` per test, talking to each other through the real local stack.

mod flow;
mod limits;
mod reflection;
mod security;
mod support;
mod tls;
mod tls_bench;
mod tls_stack;
mod trace;
mod trace_flow;
mod workflows;
