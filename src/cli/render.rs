//! Text output of `status`, `list`, `plan` and `check`; the JSON is in
//! [`super::json`].

use std::fmt::Write;

use crate::check::{Finding, Verdict};
use crate::config::Settings;
use crate::forward::stats::{bytes, utc, ForwarderStats, LastError};
use crate::gate::{GateState, GateStatus};
use crate::manifest::Manifest;
use crate::plan::GatePlan;
use crate::systemd::ActiveState;
use crate::unit::Property;

/// The report of `check`: verdict, subject and detail, one line each.
pub fn check_table(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        let verdict = match f.verdict {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        let _ = writeln!(out, "{verdict:<5} {:<14} {}", f.subject, f.detail);
    }
    out
}

fn state_word(state: GateState) -> &'static str {
    match state {
        GateState::Running => "running",
        GateState::Broken => "broken",
        GateState::Stopped => "stopped",
    }
}

/// Says on stderr what the user should know before relying on the gate of
/// `manifest` and `plan`: unknown top-level keys that look like gatectl's,
/// and a gate that confines nothing because the agent has no netns.
pub fn warnings(manifest: &Manifest, plan: &GatePlan) {
    for warning in manifest.warnings() {
        eprintln!("gatectl: warning: {warning}");
    }
    if plan.agent_netns.is_none() {
        eprintln!(
            "gatectl: note: gate {} has no agent netns: the agent keeps the host's network; set agent_netns \
             (or own_agent_netns = true) in its manifest to confine it",
            plan.slug
        );
    }
}

fn agent_side(plan: &GatePlan) -> String {
    match &plan.agent_netns {
        Some(ns) => format!(
            "{} {} in {}{}",
            plan.agent_link.name,
            plan.agent_link.address,
            ns.display(),
            if plan.agent_netns_owned {
                " (gatectl's: created at start, deleted at stop)"
            } else {
                ""
            }
        ),
        None => format!(
            "{} {} (host namespace: the gate confines nothing, the agent keeps the host's network)",
            plan.agent_link.name, plan.agent_link.address
        ),
    }
}

fn addresses_and_upstreams(out: &mut String, plan: &GatePlan) {
    let _ = writeln!(out, "  agent:     {}", agent_side(plan));
    let _ = writeln!(
        out,
        "  gate:      {} {} (listens), {} {} via {} {}",
        plan.gate_internal.name,
        plan.gate_internal.address,
        plan.gate_egress.name,
        plan.gate_egress.address,
        plan.host_egress.name,
        plan.host_egress.address
    );
    if let Some(egress6) = plan.egress6 {
        let _ = writeln!(
            out,
            "  gate IPv6: {} {}/{} via {} {}",
            plan.gate_egress.name,
            egress6.gate,
            crate::plan::LINK_PREFIX_LEN6,
            plan.host_egress.name,
            egress6.host
        );
    }
    let _ = writeln!(out, "  upstreams:");
    let _ = writeln!(
        out,
        "    {:<6} {:<20} {:<32} ADDRESSES",
        "PORT", "ALIAS", "UPSTREAM"
    );
    for u in &plan.upstreams {
        let addresses: Vec<String> = u.addresses.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(
            out,
            "    {:<6} {:<20} {:<32} {}",
            u.listen_port,
            u.alias,
            format!("{}:{}", u.host, u.port),
            addresses.join(", ")
        );
    }
}

/// The text of `status` for one gate.
pub fn status_text(s: &GateStatus) -> String {
    let mut out = format!("gate {}: {}\n", s.slug, state_word(s.state));
    for p in &s.problems {
        let _ = writeln!(out, "  problem:   {p}");
    }
    let _ = writeln!(
        out,
        "  unit:      {} ({}/{})",
        s.unit.name, s.unit.active, s.unit.sub
    );
    let idle = if s.unit.is_active() && s.forwarder.active == ActiveState::Inactive {
        ", starts at the first connection"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "  forwarder: {} ({}/{}{idle})",
        s.forwarder.name, s.forwarder.active, s.forwarder.sub
    );
    let _ = writeln!(
        out,
        "  netns:     {}{}",
        s.netns,
        if s.netns_present { "" } else { " (missing)" }
    );
    if let Some(plan) = &s.plan {
        addresses_and_upstreams(&mut out, plan);
    }
    match &s.counters {
        Some(counters) => counters_text(&mut out, counters),
        None if s.forwarder.is_active() => {
            let _ = writeln!(out, "  traffic:   counters unreadable (reading them needs root)");
        }
        None if s.state == GateState::Running => {
            let _ = writeln!(
                out,
                "  traffic:   none yet (the forwarder starts at the next connection)"
            );
        }
        None => {}
    }
    out
}

/// The counters lines of `status`: the gate's sums, its refusals and last
/// error, and one row per entry.
fn counters_text(out: &mut String, c: &ForwarderStats) {
    let _ = writeln!(
        out,
        "  traffic:   {} active, {} total connections, {} up, {} down (of closed connections)",
        c.active,
        c.total,
        bytes(c.bytes_up),
        bytes(c.bytes_down)
    );
    if c.refused.total() > 0 {
        let _ = writeln!(
            out,
            "  refused:   {} ({})",
            c.refused.total(),
            c.refused.summary()
        );
    }
    if let Some(e) = &c.last_error {
        let _ = writeln!(out, "  last error: {}", last_error(e));
    }
    let _ = writeln!(out, "  entries:");
    let _ = writeln!(
        out,
        "    {:<20} {:>6} {:>6} {:>10} {:>10}  LAST ERROR",
        "ALIAS", "ACTIVE", "TOTAL", "UP", "DOWN"
    );
    for e in &c.entries {
        let _ = writeln!(
            out,
            "    {:<20} {:>6} {:>6} {:>10} {:>10}  {}",
            e.alias,
            e.active,
            e.total,
            bytes(e.bytes_up),
            bytes(e.bytes_down),
            e.last_error.as_ref().map_or_else(|| "-".to_string(), last_error)
        );
    }
}

fn last_error(e: &LastError) -> String {
    format!("{} {}", utc(e.at), e.message)
}

/// The table of `list`.
pub fn list_table(statuses: &[GateStatus]) -> String {
    let mut rows = vec![["SLUG", "STATE", "ADDRESS", "PORTS", "UPSTREAMS"].map(String::from)];
    for s in statuses {
        let (address, ports, upstreams) = match &s.plan {
            Some(p) => (
                p.gate_internal.address.to_string(),
                match (p.upstreams.first(), p.upstreams.last()) {
                    (Some(a), Some(b)) if a.listen_port == b.listen_port => a.listen_port.to_string(),
                    (Some(a), Some(b)) => format!("{}-{}", a.listen_port, b.listen_port),
                    _ => "-".into(),
                },
                p.upstreams
                    .iter()
                    .map(|u| u.alias.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        rows.push([
            s.slug.to_string(),
            state_word(s.state).to_string(),
            address,
            ports,
            upstreams,
        ]);
    }
    aligned(&rows)
}

/// `rows` as text, each column as wide as its widest cell (the last one
/// unpadded), two spaces apart.
fn aligned<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < N {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Where `plan` placed a gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// At the index of the gate's record: where it runs (or ran).
    Current,
    /// At the next free index: what a start would take now, unless another
    /// gate starts first.
    Next,
}

/// The text of `plan`: names, addresses, upstreams, and what a start
/// changes on the host and in the gate netns.
pub fn plan_text(plan: &GatePlan, placement: Placement, settings: &Settings) -> String {
    let at = match placement {
        Placement::Current => "the index of its record",
        Placement::Next => "the next free one; a start takes it unless another gate starts first",
    };
    let mut out = format!(
        "plan for gate {} (index {}: {at}):\n  netns:     {}\n  units:     {} (listening), {} (forwarder)\n",
        plan.slug,
        plan.index,
        plan.netns_path().display(),
        plan.socket_unit(),
        plan.unit
    );
    addresses_and_upstreams(&mut out, plan);
    let mut pairs: Vec<String> = plan
        .upstream_pairs()
        .map(|a| format!("{} . {}", a.ip(), a.port()))
        .collect();
    pairs.sort();
    pairs.dedup();
    let _ = writeln!(out, "  host changes:");
    let _ = writeln!(
        out,
        "    IPv4 forwarding: turned on if it is off, then confined to gate traffic by gatectl's routing \
         rules (ip rule, proto 231) and a final forward drop; restored by the last gate to stop"
    );
    let _ = writeln!(
        out,
        "    table inet gatectl: {} may reach {}; {} masqueraded",
        plan.host_egress.name,
        pairs.join(", "),
        settings.egress_pool
    );
    if plan.egress6.is_some() {
        let nat = if settings.nat66 {
            format!("{} masqueraded (NAT66)", settings.egress_pool6)
        } else {
            format!(
                "{} routed, not masqueraded (nat66 = false)",
                settings.egress_pool6
            )
        };
        let _ = writeln!(
            out,
            "    IPv6 forwarding: turned on if it is off, then confined to gate traffic by gatectl's IPv6 \
             routing rules (ip -6 rule, proto 231) and a final forward drop, with accept_ra=2 on links \
             whose default route came by router advertisement; restored by the last gate to stop; {nat}"
        );
    }
    let _ = writeln!(
        out,
        "    table inet gatectl in {}: in from {} on {} only to ports {}; out through {} only to {}",
        plan.netns,
        plan.agent_link.address,
        plan.gate_internal.name,
        plan.listen_ports()
            .map(|port| port.to_string())
            .collect::<Vec<_>>()
            .join(","),
        plan.gate_egress.name,
        pairs.join(", ")
    );
    if let Some(owned) = plan.owned_agent_netns() {
        let _ = writeln!(
            out,
            "    agent netns {owned}: created if missing, deleted at stop"
        );
    }
    out
}

/// The units' properties as `plan --verbose` prints them.
pub fn unit_properties_text(plan: &GatePlan, socket: &[Property], forwarder: &[Property]) -> String {
    let mut out = String::new();
    for (unit, properties) in [(plan.socket_unit(), socket), (plan.unit.clone(), forwarder)] {
        let _ = writeln!(out, "  {unit} properties:");
        for p in properties {
            let value = serde_json::to_string(&p.value).unwrap_or_default();
            let _ = writeln!(out, "    {}={}", p.name, value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_cells() {
        let row = |cells: [&str; 3]| cells.map(String::from);
        let text = aligned(&[
            row(["SLUG", "PORTS", "UPSTREAMS"]),
            row(["a-rather-long-slug-name", "30000", "up"]),
            row(["b", "30000-30012", "x,y"]),
        ]);
        assert_eq!(
            text,
            "SLUG                     PORTS        UPSTREAMS\n\
             a-rather-long-slug-name  30000        up\n\
             b                        30000-30012  x,y\n"
        );
    }
}
