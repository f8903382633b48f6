//! One module per section of the API.

mod alerts;
mod flags;
mod incidents;
mod infra;
mod pipelines;
mod rollouts;
mod tokens;
