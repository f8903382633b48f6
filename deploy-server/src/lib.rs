//! deploykit's control plane (being built in this session; see ../shared/ARCHITECTURE.md).

mod auth;
mod error;
mod metrics;
mod openapi;
mod routes;
mod sse;
mod state;
