//! gatectl: a per-agent SSH egress gate for bare-metal Linux hosts.
//!
//! Each agent gets a network namespace holding a small forwarder, started as a
//! transient systemd unit, that listens on one port per declared SSH host and
//! forwards to that host only. See the README, and `docs/architecture.md`
//! for the topology, the module map (which module owns which host resource),
//! the data flow of each command and the invariants with their tests.

pub mod alias;
pub mod atomic_file;
pub mod check;
pub mod cli;
pub mod config;
pub mod denied;
pub mod error;
pub mod forward;
pub mod gate;
pub mod host;
pub mod journal;
pub mod lock;
pub mod logging;
pub mod manifest;
pub mod metrics;
pub mod net;
pub mod plan;
pub mod policy;
pub mod prune;
pub mod resolve;
pub mod slug;
pub mod ssh_config;
pub mod ssh_include;
pub mod state;
pub mod systemd;
pub mod timings;
pub mod unit;

pub use error::{Error, Result};
