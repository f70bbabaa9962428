//! The audit trail: one structured record per connection, when it closes.
//!
//! In the journal each field is a journal field (`GATE_SLUG`, `GATE_ALIAS`,
//! `GATE_PEER`, ...), and the message is a one-line summary for plain
//! `journalctl -u gate-<slug>`. A forwarder that logs to the journal (see
//! `crate::logging`) writes its records there itself, in batches (see
//! [`journal_batch`](super::journal_batch)); otherwise each record is a
//! `tracing` event with the same fields, on stderr.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use super::journal_batch::{Entry, JournalBatch};
use super::relay::ByteCounts;
use crate::error::Error;
use crate::logging::SYSLOG_IDENTIFIER;
use crate::unit::JOURNAL_SOCKET;

/// The journal's `PRIORITY` of a record: info, as a `tracing::info!` event.
const PRIORITY_INFO: u8 = 6;

/// Where a forwarder's audit records go.
#[derive(Debug)]
pub enum AuditLog {
    /// As `tracing` events, like the forwarder's other messages.
    Events,
    /// Straight to the journal, in batches.
    Journal(JournalBatch),
}

impl AuditLog {
    /// The journal, in batches, when this process logs to the journal;
    /// `tracing` events otherwise (or if no socket can be made). Starts the
    /// batch's writer task in the current tokio runtime.
    pub fn for_this_process() -> AuditLog {
        if !crate::logging::to_journal() {
            return AuditLog::Events;
        }
        match JournalBatch::open(Path::new(JOURNAL_SOCKET)) {
            Ok(batch) => AuditLog::Journal(batch),
            Err(e) => {
                tracing::warn!(error = %e, "cannot write audit records to the journal in batches: {e}");
                AuditLog::Events
            }
        }
    }

    /// Writes out the records not written yet; none is written after.
    pub async fn close(&self) {
        if let AuditLog::Journal(batch) = self {
            batch.close().await;
        }
    }
}

/// How a connection ended.
#[derive(Debug)]
pub enum Outcome {
    /// Both directions reached end of file.
    Closed,
    /// No upstream address accepted the connection; the client was closed.
    ConnectFailed(Error),
    /// Relaying failed (for example a reset by either side).
    Failed(io::Error),
    /// The forwarder stopped while the connection was open.
    Aborted,
    /// A reload removed the connection's route while it was open.
    Revoked,
}

impl Outcome {
    /// A short keyword, stable for log queries.
    fn keyword(&self) -> &'static str {
        match self {
            Outcome::Closed => "closed",
            Outcome::ConnectFailed(_) => "connect_failed",
            Outcome::Failed(_) => "error",
            Outcome::Aborted => "aborted",
            Outcome::Revoked => "revoked",
        }
    }

    /// Why the connection failed, if it did.
    fn reason(&self) -> Option<String> {
        match self {
            Outcome::Closed => None,
            Outcome::ConnectFailed(e) => Some(e.to_string()),
            Outcome::Failed(e) => Some(e.to_string()),
            Outcome::Aborted => Some("the forwarder is stopping".to_string()),
            Outcome::Revoked => Some("a reload removed its entry from the manifest".to_string()),
        }
    }
}

/// What is known about one connection while it is open; [`finish`] logs it.
///
/// [`finish`]: ConnectionLog::finish
#[derive(Debug)]
pub struct ConnectionLog<'a> {
    slug: &'a str,
    alias: &'a str,
    peer: SocketAddr,
    started: Instant,
    /// The upstream address actually connected to, once there is one.
    pub upstream: Option<SocketAddr>,
    /// Bytes relayed so far.
    pub bytes: ByteCounts,
}

impl<'a> ConnectionLog<'a> {
    /// Starts the record of a connection from `peer` to the route `alias`.
    pub fn new(slug: &'a str, alias: &'a str, peer: SocketAddr) -> Self {
        ConnectionLog {
            slug,
            alias,
            peer,
            started: Instant::now(),
            upstream: None,
            bytes: ByteCounts::default(),
        }
    }

    /// Writes the connection's audit record, with its `outcome`, to `log`:
    /// unless the log level (`RUST_LOG`) leaves out gatectl's info events.
    pub fn finish(self, outcome: Outcome, log: &AuditLog) {
        if !tracing::enabled!(tracing::Level::INFO) {
            return;
        }
        let duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let reason = outcome.reason();
        match log {
            AuditLog::Events => self.event(&outcome, reason.as_deref(), duration_ms),
            AuditLog::Journal(batch) => batch.send(self.entry(&outcome, reason.as_deref(), duration_ms)),
        }
    }

    /// The record as a `tracing` event: with the journald layer its fields
    /// become the journal fields that [`entry`](Self::entry) writes.
    fn event(&self, outcome: &Outcome, reason: Option<&str>, duration_ms: u64) {
        tracing::info!(
            slug = self.slug,
            alias = self.alias,
            peer = %self.peer,
            upstream = %self.upstream_text(),
            bytes_to_upstream = self.bytes.to_upstream,
            bytes_from_upstream = self.bytes.from_upstream,
            duration_ms,
            outcome = outcome.keyword(),
            error = reason,
            "{}",
            self.summary(outcome, reason, duration_ms),
        );
    }

    /// The record as a journal entry, with the fields that the journald
    /// layer makes of [`event`](Self::event)'s (see `crate::logging`).
    fn entry(&self, outcome: &Outcome, reason: Option<&str>, duration_ms: u64) -> Entry {
        let mut entry = Entry::new();
        entry
            .field("PRIORITY", PRIORITY_INFO)
            .field("SYSLOG_IDENTIFIER", SYSLOG_IDENTIFIER)
            .field("GATE_SLUG", self.slug)
            .field("GATE_ALIAS", self.alias)
            .field("GATE_PEER", self.peer)
            .field("GATE_UPSTREAM", self.upstream_text())
            .field("GATE_BYTES_TO_UPSTREAM", self.bytes.to_upstream)
            .field("GATE_BYTES_FROM_UPSTREAM", self.bytes.from_upstream)
            .field("GATE_DURATION_MS", duration_ms)
            .field("GATE_OUTCOME", outcome.keyword());
        if let Some(reason) = reason {
            entry.field("GATE_ERROR", reason);
        }
        entry.field("MESSAGE", self.summary(outcome, reason, duration_ms));
        entry
    }

    fn upstream_text(&self) -> String {
        self.upstream
            .map_or_else(|| "none".to_string(), |addr| addr.to_string())
    }

    /// The human-readable line of the event, e.g. `github: 10.231.0.0:40000
    /// -> 192.0.2.1:22 closed after 1500 ms, 10 bytes up, 20 bytes down`.
    fn summary(&self, outcome: &Outcome, reason: Option<&str>, duration_ms: u64) -> String {
        let what = match (outcome, reason) {
            (Outcome::ConnectFailed(_), Some(reason)) => format!("connect failed ({reason})"),
            (_, Some(reason)) => format!("{} ({reason})", outcome.keyword()),
            (_, None) => outcome.keyword().to_string(),
        };
        format!(
            "{}: {} -> {} {what} after {duration_ms} ms, {} bytes up, {} bytes down",
            self.alias,
            self.peer,
            self.upstream_text(),
            self.bytes.to_upstream,
            self.bytes.from_upstream,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> ConnectionLog<'static> {
        ConnectionLog::new("alice", "github", "10.231.0.0:40000".parse().unwrap())
    }

    #[test]
    fn summarises_a_closed_connection() {
        let mut log = log();
        log.upstream = Some("192.0.2.1:22".parse().unwrap());
        log.bytes = ByteCounts {
            to_upstream: 10,
            from_upstream: 20,
        };
        assert_eq!(
            log.summary(&Outcome::Closed, None, 1500),
            "github: 10.231.0.0:40000 -> 192.0.2.1:22 closed after 1500 ms, 10 bytes up, 20 bytes down"
        );
    }

    #[test]
    fn summarises_a_connect_failure_with_its_reason() {
        let outcome = Outcome::ConnectFailed(Error::failed("upstream 192.0.2.1:22: refused"));
        let reason = outcome.reason();
        assert_eq!(reason.as_deref(), Some("upstream 192.0.2.1:22: refused"));
        assert_eq!(
            log().summary(&outcome, reason.as_deref(), 3),
            "github: 10.231.0.0:40000 -> none connect failed (upstream 192.0.2.1:22: refused) \
             after 3 ms, 0 bytes up, 0 bytes down"
        );
    }

    #[test]
    fn keywords_are_stable() {
        let failed = Outcome::Failed(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(failed.keyword(), "error");
        assert_eq!(Outcome::Aborted.keyword(), "aborted");
        assert_eq!(Outcome::Revoked.keyword(), "revoked");
        assert_eq!(
            Outcome::Revoked.reason().as_deref(),
            Some("a reload removed its entry from the manifest")
        );
        assert_eq!(
            Outcome::Aborted.reason().as_deref(),
            Some("the forwarder is stopping")
        );
        log().finish(failed, &AuditLog::Events);
    }

    #[test]
    fn the_journal_entry_reads_back_as_gatectl_log_reads_it() {
        let mut log = log();
        log.upstream = Some("192.0.2.1:22".parse().unwrap());
        log.bytes = ByteCounts {
            to_upstream: 10,
            from_upstream: 20,
        };
        let outcome = Outcome::Failed(io::Error::from(io::ErrorKind::ConnectionReset));
        let reason = outcome.reason();
        let entry = log.entry(&outcome, reason.as_deref(), 1500);
        let mut fields: serde_json::Map<String, serde_json::Value> =
            crate::forward::journal_batch::tests::parse(entry.bytes())
                .into_iter()
                .map(|(name, value)| (name, value.into()))
                .collect();
        assert_eq!(fields["PRIORITY"], "6");
        assert_eq!(fields["SYSLOG_IDENTIFIER"], "gatectl");
        fields.insert("__REALTIME_TIMESTAMP".into(), "0".into());
        let event = crate::journal::LogEvent::from_entry(&serde_json::Value::Object(fields)).unwrap();
        assert_eq!(
            (
                event.slug.as_str(),
                event.alias.as_deref(),
                event.peer.as_deref(),
                event.upstream.as_deref(),
                event.bytes_up,
                event.bytes_down,
                event.duration_ms,
                event.outcome.as_deref(),
                event.error.as_deref(),
            ),
            (
                "alice",
                Some("github"),
                Some("10.231.0.0:40000"),
                Some("192.0.2.1:22"),
                Some(10),
                Some(20),
                Some(1500),
                Some("error"),
                reason.as_deref(),
            )
        );
        assert_eq!(event.message, log.summary(&outcome, reason.as_deref(), 1500));
    }
}
