//! Pure: what state a gate is in, from the facts `Host` gathers (its units,
//! its record, its netns, whether a gatectl holds its lock), and the status
//! `status` and `list` report. No I/O here.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Serialize;

use crate::forward::stats::ForwarderStats;
use crate::plan::{self, GatePlan};
use crate::slug::Slug;
use crate::state::GateRecord;
use crate::systemd::{GateUnits, UnitState};

/// What gatectl's record of a gate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordFact {
    /// No record.
    Absent,
    /// A record; `complete` is false while a start runs, or after one died.
    Present(Box<GateRecord>),
    /// A record that cannot be read; the message says why and what to do.
    Corrupt(String),
}

impl RecordFact {
    /// The plan the record holds, if it can be read.
    pub fn plan(&self) -> Option<&GatePlan> {
        match self {
            RecordFact::Present(record) => Some(&record.plan),
            _ => None,
        }
    }

    /// Whether a start that wrote this record has not finished (still
    /// running, or died).
    pub fn incomplete(&self) -> bool {
        matches!(self, RecordFact::Present(record) if !record.complete)
    }
}

/// Everything gatectl looks at to tell a gate's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateFacts {
    /// Its units, as systemd reports them.
    pub units: GateUnits,
    /// Its record.
    pub record: RecordFact,
    /// Whether its netns is mounted under /run/netns.
    pub netns_present: bool,
    /// Whether a gatectl start or stop of this gate holds its lock now.
    pub busy: bool,
}

/// Whether a gate is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GateState {
    /// Unit running, netns present, record complete.
    Running,
    /// Some part exists but the gate is not whole; `problems` says why.
    Broken,
    /// Nothing of the gate exists.
    Stopped,
}

/// The state of the gate of `slug` and, unless it is running or stopped,
/// what is wrong with it, each problem with its fix.
pub fn assess(slug: &Slug, facts: &GateFacts) -> (GateState, Vec<String>) {
    let units = &facts.units;
    let mut problems = Vec::new();
    match &facts.record {
        RecordFact::Corrupt(why) => problems.push(why.clone()),
        record if record.incomplete() => problems.push(if facts.busy {
            "a gatectl start or stop of this gate is running now".into()
        } else {
            format!("an earlier start was interrupted; run `gatectl stop {slug}` or start it again")
        }),
        _ => {}
    }
    let has_record = facts.record != RecordFact::Absent;
    let anything = units.loaded().next().is_some() || has_record || facts.netns_present;
    match &units.socket {
        Some(u) if !u.is_active() => problems.push(format!("unit {} is {}/{}", u.name, u.active, u.sub)),
        None if anything => problems.push(format!("unit {} is not loaded", plan::socket_unit_name(slug))),
        _ => {}
    }
    if let Some(u) = units.service.as_ref().filter(|u| u.has_failed()) {
        problems.push(format!(
            "the forwarder {} failed ({}); see `journalctl -u {}`",
            u.name, u.sub, u.name
        ));
    }
    if !facts.netns_present && (units.socket.is_some() || has_record) {
        problems.push(format!("network namespace {} is missing", plan::netns_name(slug)));
    }
    let state = if !anything {
        GateState::Stopped
    } else if problems.is_empty() {
        GateState::Running
    } else {
        GateState::Broken
    };
    (state, problems)
}

/// What `status` and `list` report for one gate.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct GateStatus {
    /// The slug.
    pub slug: Slug,
    /// Overall state.
    pub state: GateState,
    /// Why the gate is broken, if it is.
    pub problems: Vec<String>,
    /// The socket unit as systemd reports it: the gate is up while it is
    /// active.
    pub unit: UnitState,
    /// The forwarder unit: inactive until the first connection.
    pub forwarder: UnitState,
    /// The gate netns name.
    pub netns: String,
    /// Its path.
    pub netns_path: PathBuf,
    /// Whether the netns is mounted.
    pub netns_present: bool,
    /// The plan from the gate's record: addresses and upstream table.
    pub plan: Option<GatePlan>,
    /// The forwarder's live counters since it started, per gate and per
    /// entry; `null` while the forwarder is not running (it starts at the
    /// first connection) or when they cannot be read (reading them enters
    /// the gate netns, which needs root).
    pub counters: Option<ForwarderStats>,
}

impl GateStatus {
    /// The status of the gate of `slug`, from its facts.
    pub fn assemble(slug: &Slug, facts: GateFacts) -> GateStatus {
        let (state, problems) = assess(slug, &facts);
        GateStatus {
            slug: slug.clone(),
            state,
            problems,
            unit: facts
                .units
                .socket
                .unwrap_or_else(|| UnitState::not_loaded(plan::socket_unit_name(slug))),
            forwarder: facts
                .units
                .service
                .unwrap_or_else(|| UnitState::not_loaded(plan::unit_name(slug))),
            netns: plan::netns_name(slug),
            netns_path: Path::new(plan::NETNS_DIR).join(plan::netns_name(slug)),
            netns_present: facts.netns_present,
            plan: match facts.record {
                RecordFact::Present(record) => Some(record.plan),
                _ => None,
            },
            counters: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::manifest::{parse, Format};
    use crate::plan::GateSpec;
    use crate::systemd::ActiveState;

    fn slug() -> Slug {
        Slug::parse("alice").unwrap()
    }

    fn unit(name: &str, active: &str, sub: &str) -> Option<UnitState> {
        Some(UnitState {
            name: name.into(),
            active: ActiveState::parse(active),
            sub: sub.into(),
        })
    }

    fn record(complete: bool) -> RecordFact {
        let m = parse("[[ssh]]\nHost = \"up\"\nHostname = \"192.0.2.1\"\n", Format::Toml).unwrap();
        let settings = Settings::default();
        let plan = GateSpec::build(&slug(), &m, &settings, None, |h| Ok(vec![h.parse().unwrap()]))
            .unwrap()
            .place(&settings, 0)
            .unwrap();
        RecordFact::Present(Box::new(GateRecord::new(plan, complete)))
    }

    fn facts(
        socket: Option<UnitState>,
        service: Option<UnitState>,
        record: RecordFact,
        netns: bool,
    ) -> GateFacts {
        GateFacts {
            units: GateUnits { socket, service },
            record,
            netns_present: netns,
            busy: false,
        }
    }

    #[test]
    fn a_gates_state_follows_from_its_units_record_and_netns() {
        let listening = || unit("gate-alice.socket", "active", "listening");
        let idle = || unit("gate-alice.service", "inactive", "dead");
        let failed = || unit("gate-alice.service", "failed", "exit-code");
        // (facts, state, the problems, exactly)
        let cases: Vec<(GateFacts, GateState, Vec<&str>)> = vec![
            (
                facts(None, None, RecordFact::Absent, false),
                GateState::Stopped,
                vec![],
            ),
            (
                facts(listening(), idle(), record(true), true),
                GateState::Running,
                vec![],
            ),
            (
                facts(listening(), unit("gate-alice.service", "active", "running"), record(true), true),
                GateState::Running,
                vec![],
            ),
            (
                facts(listening(), failed(), record(true), true),
                GateState::Broken,
                vec!["the forwarder gate-alice.service failed (exit-code); see `journalctl -u gate-alice.service`"],
            ),
            (
                facts(None, None, record(true), true),
                GateState::Broken,
                vec!["unit gate-alice.socket is not loaded"],
            ),
            (
                facts(None, None, RecordFact::Absent, true),
                GateState::Broken,
                vec!["unit gate-alice.socket is not loaded"],
            ),
            (
                facts(listening(), idle(), record(true), false),
                GateState::Broken,
                vec!["network namespace gate-alice is missing"],
            ),
            (
                facts(unit("gate-alice.socket", "failed", "failed"), None, record(true), true),
                GateState::Broken,
                vec!["unit gate-alice.socket is failed/failed"],
            ),
            (
                facts(None, None, record(false), false),
                GateState::Broken,
                vec![
                    "an earlier start was interrupted; run `gatectl stop alice` or start it again",
                    "unit gate-alice.socket is not loaded",
                    "network namespace gate-alice is missing",
                ],
            ),
            (
                facts(
                    None,
                    None,
                    RecordFact::Corrupt("gate record x is corrupt; run `gatectl stop alice`".into()),
                    true,
                ),
                GateState::Broken,
                vec![
                    "gate record x is corrupt; run `gatectl stop alice`",
                    "unit gate-alice.socket is not loaded",
                ],
            ),
        ];
        for (facts, state, problems) in cases {
            assert_eq!(
                assess(&slug(), &facts),
                (state, problems.iter().map(|p| p.to_string()).collect()),
                "{facts:?}"
            );
        }
    }

    #[test]
    fn an_unfinished_start_is_named_as_running_while_its_lock_is_held() {
        let mut f = facts(None, None, record(false), true);
        f.busy = true;
        let (state, problems) = assess(&slug(), &f);
        assert_eq!(state, GateState::Broken);
        assert_eq!(problems[0], "a gatectl start or stop of this gate is running now");
    }

    #[test]
    fn the_status_carries_the_plan_and_names_units_systemd_has_not_loaded() {
        let status = GateStatus::assemble(&slug(), facts(None, None, record(true), true));
        assert_eq!(status.unit, UnitState::not_loaded("gate-alice.socket".into()));
        assert_eq!(status.forwarder.name, "gate-alice.service");
        assert_eq!(status.netns_path, PathBuf::from("/run/netns/gate-alice"));
        assert_eq!(status.plan.unwrap().host_egress.name, "gte0");
    }
}
