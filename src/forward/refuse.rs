//! Refusing a connection the forwarder accepted but cannot serve: which SSH
//! disconnect reason and description each case gets (pure), and writing the
//! refusal (see [`disconnect`](super::disconnect)) without a reset losing it.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::audit::Outcome;
use super::disconnect::{refusal, Reason};
use crate::error::Error;

/// How long a refused client is given to take the refusal and close: its
/// unread identification line would otherwise turn our close into a reset,
/// which can discard the refusal before ssh reads it.
const LINGER: Duration = Duration::from_secs(1);

/// The most bytes read (and dropped) from a refused client while lingering.
const LINGER_BYTES: usize = 64 * 1024;

/// Why a connection was refused, as counted and as exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// No upstream address accepted the connection.
    Upstream,
    /// The connection limit was reached.
    Limit,
    /// A reload removed the entry while the connection waited for its
    /// upstream.
    Revoked,
    /// The forwarder stopped while the connection waited for its upstream.
    Stopping,
}

impl Refusal {
    /// The disconnect reason sent to the client.
    fn reason(self) -> Reason {
        match self {
            Refusal::Upstream => Reason::ConnectionLost,
            Refusal::Limit => Reason::TooManyConnections,
            Refusal::Revoked => Reason::HostNotAllowedToConnect,
            Refusal::Stopping => Reason::ByApplication,
        }
    }
}

/// The refusal owed to a connection that ended with `outcome` before any
/// upstream answered, with its description; `None` for an outcome that is
/// no refusal.
pub fn for_outcome(slug: &str, alias: &str, outcome: &Outcome) -> Option<(Refusal, String)> {
    let why = match outcome {
        Outcome::ConnectFailed(e) => return Some((Refusal::Upstream, upstream_failed(slug, alias, e))),
        Outcome::Revoked => (
            Refusal::Revoked,
            format!("{alias} is no longer declared for this agent (a reload removed it)"),
        ),
        Outcome::Aborted => (Refusal::Stopping, "the gate is stopping".to_string()),
        Outcome::Closed | Outcome::Failed(_) => return None,
    };
    Some((why.0, format!("gatectl gate {slug}: {}", why.1)))
}

/// The description of a connection refused at the limit.
pub fn at_limit(slug: &str, limit: u32) -> String {
    format!("gatectl gate {slug}: too many connections (the limit is {limit}); try again later")
}

/// `gatectl gate alice: upstream github (10.99.2.1:22) refused the
/// connection`, or with several addresses each with its own failure.
fn upstream_failed(slug: &str, alias: &str, error: &Error) -> String {
    let attempts: Vec<(String, String)> = match error {
        Error::List(errors) => errors.iter().map(attempt).collect(),
        one => vec![attempt(one)],
    };
    let text = match attempts.as_slice() {
        [(addr, what)] => format!("upstream {alias} ({addr}) {what}"),
        _ => {
            let each: Vec<String> = attempts
                .iter()
                .map(|(addr, what)| format!("{addr} {what}"))
                .collect();
            format!("upstream {alias}: {}", each.join(", "))
        }
    };
    format!("gatectl gate {slug}: {text}")
}

/// One failed connect attempt as (address, what happened).
fn attempt(error: &Error) -> (String, String) {
    match error {
        Error::Io { context, source } => {
            let addr = context.strip_prefix("upstream ").unwrap_or(context);
            (addr.to_string(), failure(source))
        }
        other => ("(unknown address)".to_string(), format!("failed: {other}")),
    }
}

/// What a failed connect attempt means for the agent.
fn failure(e: &io::Error) -> String {
    match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::ConnectionRefused, _) => "refused the connection".to_string(),
        (io::ErrorKind::TimedOut, _) => format!("did not answer ({e})"),
        (_, Some(libc::EHOSTUNREACH | libc::ENETUNREACH)) => "is unreachable".to_string(),
        (_, Some(libc::EPERM | libc::EACCES)) => "is not allowed by the gate's firewall".to_string(),
        _ => format!("could not be reached ({e})"),
    }
}

/// Writes the refusal of `why` with `description` to `client`, closes its
/// write side, and reads what the client still sends (for at most
/// [`LINGER`]) so that closing sends no reset; then drops the connection.
pub async fn refuse(mut client: TcpStream, why: Refusal, description: &str) {
    let bytes = refusal(why.reason(), description);
    let said = async {
        client.write_all(&bytes).await?;
        client.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut read = 0;
        while read < LINGER_BYTES {
            match client.read(&mut sink).await? {
                0 => break,
                n => read += n,
            }
        }
        Ok::<_, io::Error>(())
    };
    match tokio::time::timeout(LINGER, said).await {
        Ok(Ok(())) | Err(_) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "could not send the refusal"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::IntoContextError;

    fn io_error(addr: &str, e: io::Error) -> Error {
        e.into_error(format!("upstream {addr}"))
    }

    #[test]
    fn names_the_gate_the_alias_the_address_and_the_failure() {
        let refused = io_error("10.99.2.1:22", io::Error::from_raw_os_error(libc::ECONNREFUSED));
        let outcome = Outcome::ConnectFailed(refused);
        assert_eq!(
            for_outcome("alice", "github", &outcome),
            Some((
                Refusal::Upstream,
                "gatectl gate alice: upstream github (10.99.2.1:22) refused the connection".to_string()
            ))
        );
    }

    #[test]
    fn lists_each_address_of_several() {
        let timeout = io::Error::new(io::ErrorKind::TimedOut, "timed out after 10s");
        let list = Error::List(vec![
            io_error("10.99.2.1:22", io::Error::from_raw_os_error(libc::EHOSTUNREACH)),
            io_error("10.99.2.2:22", timeout),
            io_error("10.99.2.3:22", io::Error::from_raw_os_error(libc::EPERM)),
        ]);
        let (_, text) = for_outcome("bob", "gh", &Outcome::ConnectFailed(list)).unwrap();
        assert_eq!(
            text,
            "gatectl gate bob: upstream gh: 10.99.2.1:22 is unreachable, 10.99.2.2:22 did not \
             answer (timed out after 10s), 10.99.2.3:22 is not allowed by the gate's firewall"
        );
    }

    #[test]
    fn revoked_and_stopping_are_refusals_closed_and_failed_are_not() {
        let revoked = for_outcome("alice", "github", &Outcome::Revoked).unwrap();
        assert_eq!(revoked.0, Refusal::Revoked);
        assert_eq!(
            revoked.1,
            "gatectl gate alice: github is no longer declared for this agent (a reload removed it)"
        );
        assert_eq!(
            for_outcome("alice", "github", &Outcome::Aborted).map(|r| r.0),
            Some(Refusal::Stopping)
        );
        assert_eq!(for_outcome("alice", "github", &Outcome::Closed), None);
        let failed = Outcome::Failed(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(for_outcome("alice", "github", &failed), None);
    }

    #[test]
    fn each_refusal_has_its_rfc_reason() {
        let all = [
            Refusal::Upstream,
            Refusal::Limit,
            Refusal::Revoked,
            Refusal::Stopping,
        ];
        assert_eq!(all.map(|r| r.reason().code()), [10, 12, 1, 11]);
        assert_eq!(
            at_limit("alice", 1),
            "gatectl gate alice: too many connections (the limit is 1); try again later"
        );
    }
}
