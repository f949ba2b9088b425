//! The end-to-end harness: real servers on free ports, real clients, bounded waits.

pub mod app;
pub mod client;
pub mod deployment;
pub mod gateway;
pub mod ids;
pub mod load;
pub mod metrics;
pub mod nats;
pub mod nginx;
pub mod operator;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod seed;
pub mod wait;
pub mod ws;

pub use app::{options, spawn_all, spawn_app, App};
pub use client::{header, publish_event, Client, HttpResponse, PROJECTION_TIMEOUT};
pub use gateway::{resident_bytes_of_listener, PeakResident};
pub use ids::{
    agent_reply, assert_same_json, assert_timestamp, assert_uuid1, keys, message_ids, new_id,
    now_timestamp,
};
pub use wait::{eventually, within};
