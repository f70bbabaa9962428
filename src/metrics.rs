//! `gatectl metrics`' output: every gate's state, connections, bytes,
//! refusals by reason and denied packets in the Prometheus text format
//! (version 0.0.4, which node_exporter's textfile collector reads). Pure:
//! the caller gathers the facts.

use std::fmt::Write;

use crate::forward::stats::ForwarderStats;
use crate::gate::{GateState, GateStatus};
use crate::net::firewall::gate::Denied;

/// What is known of one gate for the metrics.
#[derive(Debug, Clone)]
pub struct GateMetrics<'a> {
    /// Its status, with the forwarder's counters when they could be read.
    pub status: &'a GateStatus,
    /// What its gate netns's table denied, when it could be read.
    pub denied: Option<Denied>,
    /// When its upstream names were last resolved, in seconds since the
    /// Unix epoch, if known.
    pub resolved_at: Option<u64>,
}

/// One metric family: its name, type, help and samples (labels, value).
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, u64)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: Vec<(&'static str, String)>, value: u64) {
        self.samples.push((labels, value));
    }
}

/// The metrics of `gates`, one family after another; a family without a
/// sample is left out.
pub fn render(gates: &[GateMetrics<'_>]) -> String {
    let mut up = Family::new(
        "gatectl_gate_up",
        "gauge",
        "Whether the gate is running (1) or not (0).",
    );
    let mut state = Family::new(
        "gatectl_gate_state",
        "gauge",
        "The gate's state as gatectl status reports it (running, broken or stopped): 1 for the current one.",
    );
    let mut forwarder = Family::new(
        "gatectl_forwarder_up",
        "gauge",
        "Whether the gate's forwarder runs and its counters were read (it exits when idle; the next connection starts it, counting from zero).",
    );
    let mut active = Family::new(
        "gatectl_connections_active",
        "gauge",
        "Connections open now, per entry.",
    );
    let mut total = Family::new(
        "gatectl_connections_total",
        "counter",
        "Connections accepted and served since the forwarder started, per entry.",
    );
    let mut bytes = Family::new(
        "gatectl_transferred_bytes_total",
        "counter",
        "Bytes relayed by closed connections since the forwarder started, per entry and direction \
         (up: agent to upstream).",
    );
    let mut refused = Family::new(
        "gatectl_refusals_total",
        "counter",
        "Connections refused with an SSH disconnect message since the forwarder started, by reason.",
    );
    let mut last_error = Family::new(
        "gatectl_last_error_timestamp_seconds",
        "gauge",
        "When a connection to the entry last failed or was refused, in seconds since the Unix epoch.",
    );
    let mut denied = Family::new(
        "gatectl_denied_packets_total",
        "counter",
        "Packets the gate netns's firewall denied since the gate started: from the agent's side to no \
         listener (agent), from inside the gate to anything undeclared (egress).",
    );
    let mut resolved = Family::new(
        "gatectl_dns_resolved_timestamp_seconds",
        "gauge",
        "When the gate's upstream names were last resolved (start, reload or the DNS refresh), in seconds \
         since the Unix epoch.",
    );
    for gate in gates {
        let slug = || ("slug", gate.status.slug.to_string());
        let running = gate.status.state == GateState::Running;
        up.add(vec![slug()], u64::from(running));
        state.add(
            vec![slug(), ("state", state_word(gate.status.state).to_string())],
            1,
        );
        forwarder.add(vec![slug()], u64::from(gate.status.counters.is_some()));
        if let Some(counters) = &gate.status.counters {
            counted(
                counters,
                &slug,
                [&mut active, &mut total, &mut bytes, &mut last_error],
            );
            for (why, n) in counters.refused.by_reason() {
                refused.add(vec![slug(), ("reason", why.to_string())], n);
            }
        }
        if let Some(at) = gate.resolved_at {
            resolved.add(vec![slug()], at);
        }
        if let Some(d) = gate.denied {
            denied.add(vec![slug(), ("direction", "agent".to_string())], d.agent);
            denied.add(vec![slug(), ("direction", "egress".to_string())], d.egress);
        }
    }
    let mut out = String::new();
    for family in [
        up, state, forwarder, active, total, bytes, refused, last_error, denied, resolved,
    ] {
        if family.samples.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
        for (labels, value) in &family.samples {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = writeln!(out, "{}{{{}}} {value}", family.name, labels.join(","));
        }
    }
    out
}

/// The per-entry samples of one gate's `counters`.
fn counted(
    counters: &ForwarderStats,
    slug: &dyn Fn() -> (&'static str, String),
    [active, total, bytes, last_error]: [&mut Family; 4],
) {
    for e in &counters.entries {
        let entry = || vec![slug(), ("alias", e.alias.clone())];
        active.add(entry(), e.active);
        total.add(entry(), e.total);
        for (direction, n) in [("up", e.bytes_up), ("down", e.bytes_down)] {
            let mut labels = entry();
            labels.push(("direction", direction.to_string()));
            bytes.add(labels, n);
        }
        if let Some(error) = &e.last_error {
            last_error.add(entry(), error.at);
        }
    }
}

fn state_word(state: GateState) -> &'static str {
    match state {
        GateState::Running => "running",
        GateState::Broken => "broken",
        GateState::Stopped => "stopped",
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::stats::{EntryStats, LastError};
    use crate::gate::GateFacts;
    use crate::gate::RecordFact;
    use crate::slug::Slug;
    use crate::systemd::GateUnits;

    fn status(slug: &str, counters: Option<ForwarderStats>) -> GateStatus {
        let facts = GateFacts {
            units: GateUnits {
                socket: None,
                service: None,
            },
            record: RecordFact::Absent,
            netns_present: false,
            busy: false,
        };
        let mut status = GateStatus::assemble(&Slug::parse(slug).unwrap(), facts);
        status.counters = counters;
        status
    }

    #[test]
    fn renders_every_family_with_its_help_type_and_labels() {
        let mut counters = ForwarderStats::default();
        counters.refused.upstream = 2;
        counters.entries.push(EntryStats {
            alias: "github".to_string(),
            active: 1,
            total: 5,
            bytes_up: 10,
            bytes_down: 20,
            last_error: Some(LastError {
                at: 1_796_622_601,
                message: "refused".to_string(),
            }),
        });
        let (alice, bob) = (status("alice", Some(counters)), status("bob", None));
        let gates = [
            GateMetrics {
                status: &alice,
                denied: Some(Denied { agent: 3, egress: 1 }),
                resolved_at: Some(1_796_622_000),
            },
            GateMetrics {
                status: &bob,
                denied: None,
                resolved_at: None,
            },
        ];
        let text = render(&gates);
        for line in [
            "# TYPE gatectl_gate_up gauge",
            "gatectl_gate_up{slug=\"alice\"} 0",
            "gatectl_gate_state{slug=\"bob\",state=\"stopped\"} 1",
            "gatectl_forwarder_up{slug=\"alice\"} 1",
            "gatectl_forwarder_up{slug=\"bob\"} 0",
            "gatectl_connections_active{slug=\"alice\",alias=\"github\"} 1",
            "# TYPE gatectl_connections_total counter",
            "gatectl_connections_total{slug=\"alice\",alias=\"github\"} 5",
            "gatectl_transferred_bytes_total{slug=\"alice\",alias=\"github\",direction=\"up\"} 10",
            "gatectl_transferred_bytes_total{slug=\"alice\",alias=\"github\",direction=\"down\"} 20",
            "gatectl_refusals_total{slug=\"alice\",reason=\"upstream\"} 2",
            "gatectl_refusals_total{slug=\"alice\",reason=\"limit\"} 0",
            "gatectl_last_error_timestamp_seconds{slug=\"alice\",alias=\"github\"} 1796622601",
            "gatectl_denied_packets_total{slug=\"alice\",direction=\"agent\"} 3",
            "gatectl_denied_packets_total{slug=\"alice\",direction=\"egress\"} 1",
            "gatectl_dns_resolved_timestamp_seconds{slug=\"alice\"} 1796622000",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
        }
        // Every sample follows its family's HELP and TYPE.
        let mut family = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap();
            } else if !line.starts_with('#') {
                assert!(
                    line.starts_with(&format!("{family}{{")),
                    "{line} outside its family"
                );
            }
        }
    }

    #[test]
    fn no_gates_no_samples_and_label_values_are_escaped() {
        assert_eq!(render(&[]), "");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
