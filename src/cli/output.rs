//! The bodies of the JSON outputs that are not a library type as they are:
//! lists under a named field, the plan with its units' properties, and the
//! error object. Their doc comments are the descriptions in the published
//! schemas.

use schemars::JsonSchema;
use serde::Serialize;

use crate::check::Finding;
use crate::error::{Error, ErrorCode};
use crate::gate::GateStatus;
use crate::journal::LogEvent;
use crate::plan::GatePlan;
use crate::prune::Leftover;
use crate::unit::Property;

/// The gates' records from the journal, oldest first.
#[derive(Serialize, JsonSchema)]
pub struct Events<'a> {
    /// One entry per record: a connection, or denied attempts.
    pub events: &'a [LogEvent],
}

/// Every gate on this host: those with a record, a unit or a netns.
#[derive(Serialize, JsonSchema)]
pub struct Gates<'a> {
    /// One entry per gate, by slug.
    pub gates: &'a [GateStatus],
}

/// What `start` would create: the gate's plan, and the properties of its
/// two transient units as gatectl hands them to systemd.
#[derive(Serialize, JsonSchema)]
pub struct Plan<'a> {
    /// The plan: names, addresses and upstream table.
    #[serde(flatten)]
    pub plan: &'a GatePlan,
    /// The properties of the socket unit `gate-SLUG.socket`.
    pub socket_properties: &'a [Property],
    /// The properties of the forwarder unit `gate-SLUG.service`.
    pub unit_properties: &'a [Property],
}

/// The host's checks, one finding each; the command exits 1 if any failed.
#[derive(Serialize, JsonSchema)]
pub struct Findings<'a> {
    /// One entry per check, in the order they ran.
    pub findings: &'a [Finding],
}

/// What `prune` removed, or with `--dry-run` would remove.
#[derive(Serialize, JsonSchema)]
pub struct Leftovers<'a> {
    /// One entry per leftover; empty when there was nothing to prune.
    pub leftovers: &'a [Leftover],
}

/// A command that failed. The exit status is the same as without `--json`.
#[derive(Debug, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ErrorOutput {
    /// What kind of failure it was.
    pub code: ErrorCode,
    /// What failed and why: the line gatectl prints on stderr without
    /// `--json`, fix included.
    pub message: String,
    /// What to do about it, when gatectl knows: the message's last clause.
    pub fix: Option<String>,
}

impl ErrorOutput {
    /// The error object of `error`.
    pub fn of(error: &Error) -> ErrorOutput {
        ErrorOutput {
            code: error.code(),
            message: error.to_string(),
            fix: error.fix(),
        }
    }
}
