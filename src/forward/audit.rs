//! The audit trail: one structured log event per connection, when it closes.
//!
//! With the journald layer (see `crate::logging`) each field becomes a
//! journal field (`GATE_SLUG`, `GATE_ALIAS`, `GATE_PEER`, ...), and the
//! message is a one-line summary for plain `journalctl -u gate-<slug>`.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use super::relay::ByteCounts;
use crate::error::Error;

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

    /// Logs the connection's audit event with its `outcome`.
    pub fn finish(self, outcome: Outcome) {
        let duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let reason = outcome.reason();
        tracing::info!(
            slug = self.slug,
            alias = self.alias,
            peer = %self.peer,
            upstream = %self.upstream_text(),
            bytes_to_upstream = self.bytes.to_upstream,
            bytes_from_upstream = self.bytes.from_upstream,
            duration_ms,
            outcome = outcome.keyword(),
            error = reason.as_deref(),
            "{}",
            self.summary(&outcome, reason.as_deref(), duration_ms),
        );
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
        log().finish(failed);
    }
}
