//! gatectl's records in the journal, as `gatectl log` reads them: each
//! connection's audit record (written by the forwarder when the connection
//! closes, see `forward::audit`) and each record of denied attempts (see
//! `denied`). Read through `journalctl -o json` (an argument vector, no
//! shell), matched on gatectl's own fields, never by scraping text.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Context, Error, Result};
use crate::forward::stats::utc;
use crate::slug::Slug;

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// One connection the gate accepted, when it closed: served, or
    /// refused with an SSH disconnect message.
    Connection,
    /// Attempts the gate netns's firewall dropped or refused since the
    /// previous record of them.
    Denied,
}

/// One record of `gatectl log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct LogEvent {
    /// When it was written, UTC (RFC 3339, whole seconds).
    pub time: String,
    /// When it was written, in microseconds since the Unix epoch.
    pub time_usec: u64,
    /// The gate's slug.
    pub slug: String,
    /// What the record is about.
    pub kind: EventKind,
    /// The entry's alias (`Host`), for a connection.
    pub alias: Option<String>,
    /// The agent's address and port, for a connection.
    pub peer: Option<String>,
    /// The upstream address and port connected to, for a connection that
    /// reached one.
    pub upstream: Option<String>,
    /// Bytes from the agent to the upstream, for a connection.
    pub bytes_up: Option<u64>,
    /// Bytes from the upstream to the agent, for a connection.
    pub bytes_down: Option<u64>,
    /// How long the connection lasted, in milliseconds.
    pub duration_ms: Option<u64>,
    /// How a connection ended: `closed`, `connect_failed`, `error`,
    /// `aborted` or `revoked`; for denied attempts, `denied`.
    pub outcome: Option<String>,
    /// Why a connection failed or was refused, if it was.
    pub error: Option<String>,
    /// Denied attempts of the agent on gate ports that are not listeners,
    /// for a denied record.
    pub denied_agent: Option<u64>,
    /// Denied attempts from inside the gate netns to an undeclared address
    /// or port, for a denied record.
    pub denied_egress: Option<u64>,
    /// The gate ports denied to the agent's side (no listener, or a
    /// listener from another source address) within the hour before a
    /// denied record (TCP, at most 64).
    pub denied_agent_ports: Option<Vec<u16>>,
    /// The undeclared `address:port` pairs tried from inside the gate netns
    /// within the hour before a denied record (TCP, at most 64 of each
    /// family).
    pub denied_egress_to: Option<Vec<String>>,
    /// The record's one-line text, as `journalctl` shows it.
    pub message: String,
}

impl LogEvent {
    /// The event in one journal entry of `journalctl -o json`, or `None`
    /// when the entry is none of gatectl's connection or denied records.
    pub fn from_entry(entry: &Value) -> Option<LogEvent> {
        let text = |name: &str| entry.get(name).and_then(Value::as_str).map(str::to_string);
        let number = |name: &str| text(name).and_then(|v| v.parse::<u64>().ok());
        let outcome = text("GATE_OUTCOME")?;
        let kind = match outcome.as_str() {
            "denied" => EventKind::Denied,
            _ => EventKind::Connection,
        };
        let time_usec = number("__REALTIME_TIMESTAMP")?;
        Some(LogEvent {
            time: utc(time_usec / 1_000_000),
            time_usec,
            slug: text("GATE_SLUG")?,
            kind,
            alias: text("GATE_ALIAS"),
            peer: text("GATE_PEER"),
            upstream: text("GATE_UPSTREAM").filter(|u| u != "none"),
            bytes_up: number("GATE_BYTES_TO_UPSTREAM"),
            bytes_down: number("GATE_BYTES_FROM_UPSTREAM"),
            duration_ms: number("GATE_DURATION_MS"),
            outcome: Some(outcome),
            error: text("GATE_ERROR"),
            denied_agent: number("GATE_DENIED_AGENT"),
            denied_egress: number("GATE_DENIED_EGRESS"),
            denied_agent_ports: (kind == EventKind::Denied).then(|| {
                words(text("GATE_DENIED_AGENT_PORTS"))
                    .iter()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            }),
            denied_egress_to: (kind == EventKind::Denied).then(|| words(text("GATE_DENIED_EGRESS_TO"))),
            message: text("MESSAGE").unwrap_or_default(),
        })
    }

    /// The event as one line of `gatectl log`.
    pub fn line(&self) -> String {
        format!("{} {} {}", self.time, self.slug, self.message)
    }
}

/// The space-separated words of an optional journal field.
fn words(field: Option<String>) -> Vec<String> {
    field
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Which records to read.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// One gate's, or every gate's.
    pub slug: Option<Slug>,
    /// From this time on, as journalctl's `--since` takes it.
    pub since: Option<String>,
    /// Go on with new records as they are written.
    pub follow: bool,
}

impl Query {
    /// journalctl's arguments for this query: JSON, gatectl's entries, the
    /// gate's slug if given.
    pub fn argv(&self) -> Vec<String> {
        let mut argv = vec![
            "journalctl".to_string(),
            "--output=json".to_string(),
            "--no-pager".to_string(),
            "--quiet".to_string(),
            "SYSLOG_IDENTIFIER=gatectl".to_string(),
        ];
        if let Some(slug) = &self.slug {
            argv.push(format!("GATE_SLUG={slug}"));
        }
        if let Some(since) = &self.since {
            argv.push(format!("--since={since}"));
        }
        if self.follow {
            argv.push("--follow".to_string());
        }
        argv
    }
}

/// Runs journalctl for `query` and calls `each` with every gatectl event,
/// in the journal's order, as journalctl prints them (with `follow`, until
/// journalctl ends or `each` fails).
pub fn read(query: &Query, mut each: impl FnMut(LogEvent) -> Result<()>) -> Result<()> {
    let argv = query.argv();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run journalctl; install systemd's journalctl")?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut failed = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading journalctl's output")?;
        let Ok(entry) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(event) = LogEvent::from_entry(&entry) {
            if let Err(e) = each(event) {
                failed = Some(e);
                break;
            }
        }
    }
    if let Some(e) = failed {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    let out = child.wait_with_output().context("waiting for journalctl")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(Error::failed(format!(
            "journalctl failed ({}): {}; run gatectl log as root or as a member of the \
             systemd-journal group",
            out.status,
            stderr.trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_a_connection_record() {
        let entry = json!({
            "__REALTIME_TIMESTAMP": "1796622601123456",
            "SYSLOG_IDENTIFIER": "gatectl",
            "GATE_SLUG": "alice",
            "GATE_ALIAS": "github",
            "GATE_PEER": "10.231.0.0:40000",
            "GATE_UPSTREAM": "192.0.2.1:22",
            "GATE_BYTES_TO_UPSTREAM": "10",
            "GATE_BYTES_FROM_UPSTREAM": "20",
            "GATE_DURATION_MS": "1500",
            "GATE_OUTCOME": "closed",
            "MESSAGE": "github: 10.231.0.0:40000 -> 192.0.2.1:22 closed after 1500 ms, 10 bytes up, 20 bytes down",
        });
        let event = LogEvent::from_entry(&entry).unwrap();
        assert_eq!(event.time, "2026-12-07T05:50:01Z");
        assert_eq!(event.time_usec, 1_796_622_601_123_456);
        assert_eq!(event.kind, EventKind::Connection);
        assert_eq!(
            (event.bytes_up, event.bytes_down, event.duration_ms),
            (Some(10), Some(20), Some(1500))
        );
        assert_eq!(event.upstream.as_deref(), Some("192.0.2.1:22"));
        assert_eq!(event.error, None);
        assert_eq!(
            event.line(),
            "2026-12-07T05:50:01Z alice github: 10.231.0.0:40000 -> 192.0.2.1:22 closed after 1500 ms, \
             10 bytes up, 20 bytes down"
        );
    }

    #[test]
    fn a_refusal_has_no_upstream_and_a_denied_record_its_counts() {
        let refused = json!({
            "__REALTIME_TIMESTAMP": "0",
            "GATE_SLUG": "alice",
            "GATE_UPSTREAM": "none",
            "GATE_OUTCOME": "connect_failed",
            "GATE_ERROR": "upstream 192.0.2.1:22: refused",
        });
        let event = LogEvent::from_entry(&refused).unwrap();
        assert_eq!(
            (event.upstream, event.error.as_deref()),
            (None, Some("upstream 192.0.2.1:22: refused"))
        );
        let denied = json!({
            "__REALTIME_TIMESTAMP": "0",
            "GATE_SLUG": "alice",
            "GATE_OUTCOME": "denied",
            "GATE_DENIED_AGENT": "3",
            "GATE_DENIED_EGRESS": "0",
        });
        let event = LogEvent::from_entry(&denied).unwrap();
        assert_eq!(event.kind, EventKind::Denied);
        assert_eq!((event.denied_agent, event.denied_egress), (Some(3), Some(0)));
        // A record of an older gatectl names no destination: empty lists.
        assert_eq!(
            (event.denied_agent_ports, event.denied_egress_to),
            (Some(vec![]), Some(vec![]))
        );
        let mut named = denied.clone();
        named["GATE_DENIED_AGENT_PORTS"] = json!("22 31000");
        named["GATE_DENIED_EGRESS_TO"] = json!("192.0.2.7:443 [2001:db8::1]:22");
        let event = LogEvent::from_entry(&named).unwrap();
        assert_eq!(event.denied_agent_ports, Some(vec![22, 31000]));
        assert_eq!(
            event.denied_egress_to,
            Some(vec!["192.0.2.7:443".to_string(), "[2001:db8::1]:22".to_string()])
        );
        // A connection record has neither.
        assert_eq!(refused_event_lists(), (None, None));
    }

    /// The destination lists of a connection record.
    fn refused_event_lists() -> (Option<Vec<u16>>, Option<Vec<String>>) {
        let entry = json!({"__REALTIME_TIMESTAMP": "0", "GATE_SLUG": "alice", "GATE_OUTCOME": "closed"});
        let event = LogEvent::from_entry(&entry).unwrap();
        (event.denied_agent_ports, event.denied_egress_to)
    }

    #[test]
    fn other_entries_are_not_events() {
        let ready = json!({"__REALTIME_TIMESTAMP": "0", "GATE_SLUG": "alice", "MESSAGE": "forwarder ready"});
        assert_eq!(LogEvent::from_entry(&ready), None);
        let no_slug = json!({"__REALTIME_TIMESTAMP": "0", "GATE_OUTCOME": "closed"});
        assert_eq!(LogEvent::from_entry(&no_slug), None);
    }

    #[test]
    fn the_query_is_an_argument_vector_matching_gatectls_fields() {
        let query = Query {
            slug: Some(Slug::parse("alice").unwrap()),
            since: Some("-1h; rm -rf /".to_string()),
            follow: true,
        };
        assert_eq!(
            query.argv(),
            [
                "journalctl",
                "--output=json",
                "--no-pager",
                "--quiet",
                "SYSLOG_IDENTIFIER=gatectl",
                "GATE_SLUG=alice",
                "--since=-1h; rm -rf /",
                "--follow",
            ]
        );
    }
}
