//! What every role process does, whatever its work: read the settings all roles share, start
//! (bind the listener, answer the probes while NATS and PostgreSQL are not there yet, connect
//! to them), serve HTTP with request ids, CORS, connection limits and a shutdown bound, answer `/healthz` and
//! `/readyz`, and record and render the metrics. [`Role`] wires these around a role's own
//! routes and work.

pub mod client;
pub mod connection;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod retry;
pub mod role;
pub mod secret;
pub mod server;
pub mod settings;
pub mod startup;

pub use health::health_router;
pub use role::Role;
pub use server::serve;
pub use settings::{ConnectionSettings, HttpSettings, LogSettings};
