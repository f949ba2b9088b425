//! End-to-end tests of threadline: a real nats-server with JetStream, a real PostgreSQL and
//! the `threadline` binary run as a user runs it, driven only through HTTP, websocket and
//! NATS. Each test starts its own servers on free ports (see `harness`).
//!
//! Run with `cargo test --test e2e`; `E2E_RUST_LOG` sets the services' `RUST_LOG`.

mod harness;

mod all_in_one;
mod api_documents;
mod behind_nginx;
mod browser;
mod cluster;
mod connection_limits;
mod consistency;
mod degraded;
mod deploy_settings;
mod duplicates;
mod erase;
mod errors;
mod existence;
mod faults;
mod gap_repair;
mod gateway_limits;
mod guards;
mod health;
mod hot_threads;
mod idempotency;
mod js_client;
mod leader_load;
mod long_reads;
mod long_threads;
mod lookups;
mod message_identity;
mod messages;
mod metrics;
mod nats_permissions;
mod operations;
mod outside_publisher;
mod projector_crash;
mod projector_progress;
mod projector_restart;
mod rebuild_switch;
mod replay_stall;
mod replicas;
mod resume;
mod secrets;
mod secure_connections;
mod shipped_roles;
mod shutdown;
mod slow_client;
mod startup;
mod threads;
mod websocket;
