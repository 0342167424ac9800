//! akwatch: real-time access-key anomaly detection over AWS CloudTrail, Alibaba Cloud
//! ActionTrail and Tencent Cloud CloudAudit logs.
//!
//! Data flow: [`source`] reads records, [`provider`] decodes them into one [`event::Event`]
//! type, [`report`] parses the clouds' credential reports, [`sink`] writes results. See
//! `ARCHITECTURE.md` for the map.

#![forbid(unsafe_code)]

pub mod alarm;
pub mod api;
pub mod bundled;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod console;
pub mod engine;
pub mod enrich;
pub mod event;
pub mod inventory;
pub mod isolate;
pub mod kafka;
pub mod notify;
pub mod ocsf;
pub mod permissions;
pub mod pipeline;
pub mod policy;
pub mod policy_store;
pub mod provider;
pub mod replay;
pub mod report;
pub mod risk;
pub mod rule;
pub mod simulate;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod term;

pub use event::{Cloud, Event};
pub use provider::{Decoder, Reject, RejectKind};
