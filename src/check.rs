//! `gatectl check`: whether this host can run gates, and the state of what
//! gatectl changes on it: settings, the forwarder binary, systemd over
//! D-Bus, the running gates, the nftables table, IPv4 forwarding and the
//! address pools. It only reads; it changes nothing.

use futures::stream::{self, StreamExt};
use schemars::JsonSchema;
use serde::Serialize;

use crate::config::Settings;
use crate::gate::start::overlap;
use crate::gate::{GateState, GateStatus, Host};
use crate::net::firewall::gate::{GateTable, TableState};
use crate::net::firewall::{Firewall, Survey, TABLE};
use crate::net::link::Netlink;
use crate::net::netns;
use crate::plan::{GatePlan, AGENT_LINK_GROUP, HOST_EGRESS_GROUP};
use crate::state::Records;
use crate::systemd::{Systemd, UnitState};
use crate::unit;

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// As it should be.
    Ok,
    /// Works, but deserves a look (a broken gate, a leftover).
    Warn,
    /// Gates cannot start or work until it is fixed; the detail says how.
    Fail,
}

/// One line of the report: what was checked and what was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Finding {
    /// The verdict.
    pub verdict: Verdict,
    /// What was checked: `settings`, `systemd`, `ip_forward`, …
    pub subject: String,
    /// What was found, and the fix when it is not ok.
    pub detail: String,
}

impl Finding {
    fn new(verdict: Verdict, subject: &str, detail: impl Into<String>) -> Finding {
        Finding {
            verdict,
            subject: subject.into(),
            detail: detail.into(),
        }
    }

    /// A failed check of `subject`: the error says what and the fix.
    fn failed(subject: &str, error: &crate::Error) -> Finding {
        Finding::new(Verdict::Fail, subject, error.to_string())
    }
}

/// Runs every check, in the order a fix should follow.
pub async fn check_host() -> Vec<Finding> {
    let host = match Host::load() {
        Ok(host) => host,
        Err(e) => return vec![Finding::failed("settings", &e)],
    };
    let settings = &host.settings;
    let mut findings = vec![settings_finding(settings)];
    findings.push(match settings.check_forwarder_binary() {
        Ok(()) => Finding::new(
            Verdict::Ok,
            "forwarder",
            format!("{} is executable", settings.forwarder_binary.display()),
        ),
        Err(e) => Finding::failed("forwarder", &e),
    });
    let gates = match gates_from_systemd(&host).await {
        Ok((systemd, version, gates)) => {
            findings.push(Finding::new(
                Verdict::Ok,
                "systemd",
                format!("systemd {version}, reachable over D-Bus"),
            ));
            findings.extend(gate_findings(&gates));
            findings.push(match systemd.manager_units().await {
                Ok(units) => {
                    let running: Vec<&str> = gates
                        .iter()
                        .filter(|g| g.state == GateState::Running)
                        .map(|g| g.slug.as_str())
                        .collect();
                    manager_unit_finding(&units, &running)
                }
                Err(e) => Finding::failed("gatectl@", &e),
            });
            findings.extend(sandbox_findings(&systemd, &gates).await);
            gates
        }
        Err(e) => {
            findings.push(Finding::failed("systemd", &e));
            Vec::new()
        }
    };
    // The gates whose rules `reconcile` would apply: the socket unit is
    // active and the record names the egress link. A broken gate can be one.
    let active: Vec<&GatePlan> = gates
        .iter()
        .filter(|g| g.unit.is_active())
        .filter_map(|g| g.plan.as_ref())
        .collect();
    let active_egress: Vec<String> = active.iter().map(|p| p.host_egress.name.clone()).collect();
    let forwarding = match host.host_wide.forwarding().await {
        Ok(forwarding) => forwarding,
        Err(e) => {
            findings.push(Finding::failed("ip_forward", &e));
            return findings;
        }
    };
    let forwarding6 = match host.host_wide.forwarding6().await {
        Ok(forwarding6) => forwarding6,
        Err(e) => {
            findings.push(Finding::failed("ipv6_forward", &e));
            return findings;
        }
    };
    let firewall = Firewall::of(
        settings,
        forwarding.set_by_gatectl(),
        forwarding6.set_by_gatectl(),
    );
    let table_intact = match firewall.survey() {
        Ok(survey) => {
            findings.push(firewall_finding(&survey, &active_egress));
            survey.present && survey.short_chains.is_empty()
        }
        Err(e) => {
            findings.push(Finding::failed("nftables", &e));
            // Unknown: the failure above is the finding; do not report it twice.
            true
        }
    };
    findings.push(
        ForwardingCheck {
            set_by_gatectl: forwarding.set_by_gatectl(),
            table_intact,
            rules_complete: forwarding.rules.complete,
            active_gates: active.len(),
        }
        .finding(forwarding.on),
    );
    findings.push(
        ForwardingCheck {
            set_by_gatectl: forwarding6.set_by_gatectl(),
            table_intact,
            rules_complete: forwarding6.rules.complete,
            active_gates: active.iter().filter(|p| p.egress6.is_some()).count(),
        }
        .finding_of(Family::V6, forwarding6.on),
    );
    findings.push(match host.host_wide.slaac_at_risk().await {
        Ok(links) => slaac_finding(&links, forwarding6.on),
        Err(e) => Finding::failed("accept_ra", &e),
    });
    findings.extend(gate_table_findings(&host.records, &active));
    findings.extend(pool_findings(settings).await);
    findings
}

/// Whether each `gatectl@<slug>.service` is in step with its gate: not
/// failed, running when enabled, and active only while its gate runs.
/// `units` pairs each unit with its unit file state; `running_gates` are
/// the slugs whose gates run.
pub fn manager_unit_finding(units: &[(UnitState, String)], running_gates: &[&str]) -> Finding {
    let mut failed = Vec::new();
    let mut stale = Vec::new();
    let mut not_started = Vec::new();
    for (unit, file_state) in units {
        let gate_runs = crate::plan::slug_of_manager_unit(&unit.name)
            .is_some_and(|slug| running_gates.contains(&slug.as_str()));
        if unit.has_failed() {
            failed.push(unit.name.as_str());
        } else if unit.is_active() && !gate_runs {
            stale.push(unit.name.as_str());
        } else if !unit.is_up() && file_state == "enabled" && !gate_runs {
            not_started.push(unit.name.as_str());
        }
    }
    let mut problems = Vec::new();
    if !failed.is_empty() {
        problems.push(format!(
            "{} failed: see `journalctl -u {}`, fix the cause, then `systemctl restart` it",
            failed.join(", "),
            failed.join(" -u ")
        ));
    }
    if !stale.is_empty() {
        problems.push(format!(
            "{} active, but its gate is not running: run `systemctl restart {}`",
            stale.join(", "),
            stale.join(" ")
        ));
    }
    if !not_started.is_empty() {
        problems.push(format!(
            "{} enabled, but neither it nor its gate runs: run `systemctl start {}`",
            not_started.join(", "),
            not_started.join(" ")
        ));
    }
    if problems.is_empty() {
        Finding::new(
            Verdict::Ok,
            "gatectl@",
            format!("{} gatectl@ unit(s), each in step with its gate", units.len()),
        )
    } else {
        let verdict = if failed.is_empty() && stale.is_empty() {
            Verdict::Warn
        } else {
            Verdict::Fail
        };
        Finding::new(verdict, "gatectl@", problems.join("; "))
    }
}

/// How many forwarders' properties `check` asks systemd for at once.
const SANDBOX_QUERIES: usize = 32;

/// Each active gate's forwarder sandbox as systemd holds it now, against
/// what gatectl set (a `daemon-reload` can lose settings of a transient
/// unit; gatectl's drop-in restores them).
async fn sandbox_findings(systemd: &Systemd, gates: &[GateStatus]) -> Vec<Finding> {
    // Asked SANDBOX_QUERIES at a time on the one connection: systemd
    // answers them in turn, without a round trip between them.
    let answers: Vec<_> = stream::iter(gates.iter().filter(|g| g.unit.is_active()))
        .map(|gate| async move {
            let unit = &gate.forwarder.name;
            (
                unit,
                systemd
                    .service_properties_as::<unit::SandboxProperties>(unit)
                    .await,
            )
        })
        .buffered(SANDBOX_QUERIES)
        .collect()
        .await;
    let mut weakened = Vec::new();
    let mut units = Vec::new();
    let mut checked = 0;
    for (unit, answer) in answers {
        match answer {
            Ok(properties) => {
                checked += 1;
                let drift = unit::sandbox_drift(&properties.0);
                if !drift.is_empty() {
                    weakened.push(format!("{unit}: {}", drift.join(", ")));
                    units.push(unit.as_str());
                }
            }
            Err(e) => return vec![Finding::failed("sandbox", &e)],
        }
    }
    if weakened.is_empty() {
        return vec![Finding::new(
            Verdict::Ok,
            "sandbox",
            format!("the forwarder sandbox of all {checked} active gate(s) is as gatectl set it"),
        )];
    }
    vec![Finding::new(
        Verdict::Fail,
        "sandbox",
        format!(
            "weakened: {}; run `systemctl revert {}` to drop changes made with `systemctl set-property`; \
             if that does not clear it, restore {}/{} (reinstall the package, or `gatectl start` writes {}/{}), \
             run `systemctl daemon-reload`, then restart the forwarder with `systemctl restart UNIT`",
            weakened.join("; "),
            units.join(" "),
            unit::PACKAGED_DROPIN_DIR,
            unit::DROPIN,
            unit::RUNTIME_DROPIN_DIR,
            unit::DROPIN,
        ),
    )]
}

/// Each active gate's own table inside its netns, which a host `flush
/// ruleset` does not reach but root can change. A table whose seal holds
/// (nothing committed in its netns since gatectl applied it) is not listed.
fn gate_table_findings(records: &Records, active: &[&GatePlan]) -> Vec<Finding> {
    let mut work = Vec::with_capacity(active.len());
    for plan in active {
        match netns::open(&plan.netns_path()) {
            Ok(ns) => work.push((
                ns,
                (plan.netns.clone(), GateTable::of(plan), records.seal(&plan.slug)),
            )),
            Err(e) => return vec![Finding::failed("gate tables", &e)],
        }
    }
    let states = netns::run_in_each(work, |(name, table, seal)| {
        table.survey_sealed(seal.as_ref()).map(|state| (name, state))
    });
    let mut missing = Vec::new();
    for state in states {
        match state {
            Ok((_, TableState::Intact)) => {}
            Ok((name, TableState::Missing)) => missing.push(format!("{name} (missing)")),
            Ok((name, TableState::Differs)) => missing.push(format!("{name} (changed)")),
            Err(e) => return vec![Finding::failed("gate tables", &e)],
        }
    }
    if missing.is_empty() {
        return vec![Finding::new(
            Verdict::Ok,
            "gate tables",
            format!(
                "all {} active gate netns hold their own allowlist table inet {TABLE}",
                active.len()
            ),
        )];
    }
    vec![Finding::new(
        Verdict::Fail,
        "gate tables",
        format!(
            "the allowlist table inet {TABLE} of {} is not as gatectl set it; run `gatectl reconcile`",
            missing.join(", ")
        ),
    )]
}

fn settings_finding(settings: &Settings) -> Finding {
    let path = Settings::path();
    let source = if path.exists() {
        format!("{} is valid", path.display())
    } else {
        format!("{} is absent, so the defaults apply", path.display())
    };
    Finding::new(
        Verdict::Ok,
        "settings",
        format!(
            "{source}: internal_pool {}, egress_pool {}, room for {} gates",
            settings.internal_pool,
            settings.egress_pool,
            settings.capacity()
        ),
    )
}

/// The connection to systemd, its version and every gate's status.
async fn gates_from_systemd(host: &Host) -> crate::Result<(Systemd, String, Vec<GateStatus>)> {
    let systemd = Systemd::connect().await?;
    let version = systemd.version().await?;
    let gates = host.list(&systemd).await?;
    Ok((systemd, version, gates))
}

/// How many gates run, and one warning per gate that is not whole.
fn gate_findings(gates: &[GateStatus]) -> Vec<Finding> {
    let running = gates.iter().filter(|g| g.state == GateState::Running).count();
    let mut findings = vec![Finding::new(Verdict::Ok, "gates", format!("{running} running"))];
    for gate in gates.iter().filter(|g| g.state == GateState::Broken) {
        findings.push(Finding::new(
            Verdict::Warn,
            "gates",
            format!(
                "gate {} is broken: {}; run `gatectl status {}`, then `gatectl stop {}` or `gatectl prune`",
                gate.slug,
                gate.problems.join("; "),
                gate.slug,
                gate.slug
            ),
        ));
    }
    findings
}

/// The table `inet gatectl` against the egress links of the gates whose
/// socket unit is active: each needs its allowlist there, or its traffic is
/// dropped.
pub fn firewall_finding(survey: &Survey, running_egress: &[String]) -> Finding {
    let interfaces = &survey.interfaces;
    let missing: Vec<&str> = running_egress
        .iter()
        .filter(|name| !interfaces.contains(name))
        .map(String::as_str)
        .collect();
    if !survey.present && running_egress.is_empty() {
        return Finding::new(
            Verdict::Ok,
            "nftables",
            format!("table inet {TABLE} is absent; the first start creates it"),
        );
    }
    if !survey.present {
        return Finding::new(
            Verdict::Fail,
            "nftables",
            format!(
                "table inet {TABLE} is missing, so {} gate(s) cannot reach their upstreams; \
                 run `gatectl reconcile`",
                running_egress.len()
            ),
        );
    }
    if !survey.short_chains.is_empty() {
        return Finding::new(
            Verdict::Fail,
            "nftables",
            format!(
                "table inet {TABLE} lacks gatectl's rules in chain(s) {}; run `gatectl reconcile`",
                survey.short_chains.join(", ")
            ),
        );
    }
    if !missing.is_empty() {
        return Finding::new(
            Verdict::Fail,
            "nftables",
            format!(
                "table inet {TABLE} has no allowlist for gate link(s) {}, whose traffic is dropped; \
                 run `gatectl reconcile`",
                missing.join(", ")
            ),
        );
    }
    let stale: Vec<&str> = interfaces
        .iter()
        .filter(|name| !running_egress.contains(name))
        .map(String::as_str)
        .collect();
    if !stale.is_empty() {
        return Finding::new(
            Verdict::Warn,
            "nftables",
            format!(
                "table inet {TABLE} holds allowlists of link(s) {} that no active gate has; \
                 `gatectl list` shows the gates, `gatectl prune` removes what gone ones left",
                stale.join(", ")
            ),
        );
    }
    if running_egress.is_empty() {
        return Finding::new(
            Verdict::Ok,
            "nftables",
            format!("table inet {TABLE} is present and holds no allowlist; `gatectl prune` removes it"),
        );
    }
    Finding::new(
        Verdict::Ok,
        "nftables",
        format!(
            "table inet {TABLE} holds the allowlists of all {} active gate(s)",
            running_egress.len()
        ),
    )
}

/// What IPv4 forwarding is checked against.
pub struct ForwardingCheck {
    /// gatectl turned forwarding on (its marker or its routing rules
    /// exist), so it must confine forwarding to gate traffic.
    pub set_by_gatectl: bool,
    /// Whether the table `inet gatectl` exists with all of gatectl's
    /// rules in its base chains, the final forward drop included.
    pub table_intact: bool,
    /// Whether gatectl's routing rules are all there.
    pub rules_complete: bool,
    /// How many gates have an active socket unit.
    pub active_gates: usize,
}

/// The finding on the interfaces that learn their IPv6 default route by
/// Router Advertisement with `accept_ra` below 2 (`links`), which lose that
/// route while IPv6 forwarding is `on`.
pub fn slaac_finding(links: &[String], on: bool) -> Finding {
    if links.is_empty() {
        return Finding::new(
            Verdict::Ok,
            "accept_ra",
            "no IPv6 default route learned by router advertisement depends on accept_ra=1",
        );
    }
    let names = links.join(", ");
    let fix: Vec<String> = links
        .iter()
        .map(|l| format!("sysctl -w net.ipv6.conf.{l}.accept_ra=2"))
        .collect();
    if on {
        Finding::new(
            Verdict::Fail,
            "accept_ra",
            format!(
                "{names} learned the IPv6 default route by router advertisement, but IPv6 forwarding is on                  and accept_ra is below 2, so the route goes when it expires; run `{}`",
                fix.join("; ")
            ),
        )
    } else {
        Finding::new(
            Verdict::Ok,
            "accept_ra",
            format!(
                "{names} learn the IPv6 default route by router advertisement: while a gate with an IPv6                  upstream runs, gatectl sets their accept_ra to 2 (so IPv6 forwarding keeps the route) and                  back to 1 after the last gate"
            ),
        )
    }
}

/// The address family a forwarding finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4: `net.ipv4.ip_forward`, every gate.
    V4,
    /// IPv6: `net.ipv6.conf.all.forwarding`, gates with IPv6 upstreams.
    V6,
}

impl ForwardingCheck {
    /// The finding for IPv4 forwarding being `on` or off.
    pub fn finding(&self, on: bool) -> Finding {
        self.finding_of(Family::V4, on)
    }

    /// The finding for forwarding of `family` being `on` or off.
    pub fn finding_of(&self, family: Family, on: bool) -> Finding {
        let (check, first, rules) = match family {
            Family::V4 => ("ip_forward", "the first start", "ip rule"),
            Family::V6 => (
                "ipv6_forward",
                "the first gate with an IPv6 upstream",
                "ip -6 rule",
            ),
        };
        let active = self.active_gates;
        let or_prune = if active == 0 {
            ", or `gatectl prune` to turn forwarding off"
        } else {
            ""
        };
        let (verdict, detail) = if !on && active > 0 {
            (
                Verdict::Fail,
                format!("off, so {active} gate(s) cannot reach their upstreams; run `gatectl reconcile`"),
            )
        } else if !on {
            (
                Verdict::Ok,
                format!("off; {first} turns it on and confines it to gate traffic"),
            )
        } else if !self.set_by_gatectl {
            (
                Verdict::Ok,
                "on, as the host had it: gatectl confines only gate traffic, not the host's \
                 other forwarding"
                    .to_string(),
            )
        } else if !self.table_intact && !self.rules_complete {
            (
                Verdict::Fail,
                format!(
                    "on, turned on by gatectl, but neither its routing rules nor its rules in table \
                     inet {TABLE} are in place, so the host forwards any traffic; run `gatectl reconcile`{or_prune}"
                ),
            )
        } else if !self.rules_complete {
            (
                Verdict::Fail,
                format!(
                    "on, turned on by gatectl; its routing rules ({rules}, proto 231) are missing, so \
                     only table inet {TABLE} confines forwarding to gate traffic; run `gatectl reconcile`{or_prune}"
                ),
            )
        } else if !self.table_intact {
            (
                Verdict::Warn,
                format!(
                    "on, turned on by gatectl; its routing rules confine forwarding to gate traffic, \
                     but the final drop of table inet {TABLE} is missing; run `gatectl reconcile`{or_prune}"
                ),
            )
        } else if active == 0 {
            (
                Verdict::Ok,
                "on, turned on by gatectl, and no gate runs: `gatectl prune` turns it off again".to_string(),
            )
        } else {
            (
                Verdict::Ok,
                "on, turned on by gatectl, confined to gate traffic by its routing rules and by its \
                 forward chain"
                    .to_string(),
            )
        };
        Finding::new(verdict, check, detail)
    }
}

/// Each address pool against the host's routes (other than the gates' own).
async fn pool_findings(settings: &Settings) -> Vec<Finding> {
    let root = match Netlink::current() {
        Ok(root) => root,
        Err(e) => return vec![Finding::failed("pools", &e)],
    };
    let mut findings = Vec::new();
    for (setting, pool, own) in [
        ("internal_pool", settings.internal_pool, AGENT_LINK_GROUP),
        ("egress_pool", settings.egress_pool, HOST_EGRESS_GROUP),
    ] {
        let pool = ipnet::IpNet::from(pool);
        findings.push(match root.route_overlapping(pool, &[own]).await {
            Ok(None) => Finding::new(Verdict::Ok, setting, format!("{pool}: no host route overlaps it")),
            Ok(Some(route)) => Finding::failed(setting, &overlap(setting, pool, route)),
            Err(e) => Finding::failed(setting, &e),
        });
    }
    let pool6 = ipnet::IpNet::from(settings.egress_pool6);
    findings.push(match root.route_overlapping(pool6, &[HOST_EGRESS_GROUP]).await {
        Ok(None) => Finding::new(
            Verdict::Ok,
            "egress_pool6",
            format!("{pool6}: no host route overlaps it"),
        ),
        Ok(Some(route)) => Finding::failed("egress_pool6", &overlap("egress_pool6", pool6, route)),
        Err(e) => Finding::failed("egress_pool6", &e),
    });
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_gatectl_unit_must_be_in_step_with_its_gate() {
        let unit = |slug: &str, active: &str, file_state: &str| {
            (
                UnitState {
                    name: format!("gatectl@{slug}.service"),
                    active: crate::systemd::ActiveState::parse(active),
                    sub: String::new(),
                },
                file_state.to_string(),
            )
        };
        // The units with their file states, the running gates, and what
        // check says.
        type Case<'a> = (&'a [(UnitState, String)], &'a [&'a str], Verdict, &'a str);
        let cases: &[Case] = &[
            (&[], &[], Verdict::Ok, "0 gatectl@ unit(s), each in step with its gate"),
            (
                &[unit("a", "active", "enabled"), unit("b", "inactive", "disabled")],
                &["a"],
                Verdict::Ok,
                "2 gatectl@ unit(s), each in step with its gate",
            ),
            // Enabled, not started, but its gate was started by hand: fine.
            (&[unit("a", "inactive", "enabled")], &["a"], Verdict::Ok, "1 gatectl@ unit(s), each in step with its gate"),
            (
                &[unit("a", "inactive", "enabled")],
                &[],
                Verdict::Warn,
                "gatectl@a.service enabled, but neither it nor its gate runs: run `systemctl start gatectl@a.service`",
            ),
            (
                &[unit("a", "active", "enabled")],
                &[],
                Verdict::Fail,
                "gatectl@a.service active, but its gate is not running: run `systemctl restart gatectl@a.service`",
            ),
            (
                &[unit("a", "failed", "enabled"), unit("b", "failed", "enabled")],
                &[],
                Verdict::Fail,
                "gatectl@a.service, gatectl@b.service failed: see `journalctl -u gatectl@a.service -u \
                 gatectl@b.service`, fix the cause, then `systemctl restart` it",
            ),
        ];
        for (units, running, verdict, detail) in cases {
            let finding = manager_unit_finding(units, running);
            assert_eq!((finding.verdict, finding.detail.as_str()), (*verdict, *detail));
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn firewall_needs_gatectls_rules_and_the_allowlist_of_every_active_gate() {
        let table = |present, interfaces: &[&str], short: &[&str]| Survey {
            present,
            interfaces: names(interfaces),
            short_chains: names(short),
        };
        // (what the table holds, the active gates' links, verdict, phrase, a phrase not there)
        let cases = [
            (
                table(false, &[], &[]),
                vec![],
                Verdict::Ok,
                "the first start creates it",
                None,
            ),
            (
                table(false, &[], &[]),
                vec!["gte0"],
                Verdict::Fail,
                "gatectl reconcile",
                None,
            ),
            (
                table(true, &["gte0"], &["forward (0 of 5 rules)"]),
                vec!["gte0"],
                Verdict::Fail,
                "chain(s) forward (0 of 5 rules); run `gatectl reconcile`",
                None,
            ),
            (
                table(true, &["gte0"], &[]),
                vec!["gte0", "gte1"],
                Verdict::Fail,
                "gte1",
                Some("gte0"),
            ),
            (
                table(true, &["gte0", "gte1"], &[]),
                vec!["gte0", "gte1"],
                Verdict::Ok,
                "all 2 active",
                None,
            ),
            (
                table(true, &["gte0", "gte9"], &[]),
                vec!["gte0"],
                Verdict::Warn,
                "gte9",
                Some("gte0"),
            ),
            (
                table(true, &[], &[]),
                vec![],
                Verdict::Ok,
                "`gatectl prune` removes it",
                None,
            ),
        ];
        for (survey, active, verdict, phrase, absent) in cases {
            let finding = firewall_finding(&survey, &names(&active));
            assert_eq!(finding.verdict, verdict, "{survey:?}: {finding:?}");
            assert!(finding.detail.contains(phrase), "{finding:?}");
            assert!(absent.is_none_or(|a| !finding.detail.contains(a)), "{finding:?}");
        }
    }

    #[test]
    fn forwarding_is_checked_against_the_gates_and_both_confining_layers() {
        // (gatectl set it, its table intact, its routing rules complete,
        // active gates, forwarding on)
        let cases = [
            (
                (false, false, false, 0, false),
                Verdict::Ok,
                "the first start turns it on",
            ),
            (
                (true, true, true, 2, false),
                Verdict::Fail,
                "off, so 2 gate(s) cannot reach their upstreams; run `gatectl reconcile`",
            ),
            (
                (true, true, true, 1, true),
                Verdict::Ok,
                "confined to gate traffic by its routing rules and by its forward chain",
            ),
            (
                (true, false, false, 1, true),
                Verdict::Fail,
                "so the host forwards any traffic; run `gatectl reconcile`",
            ),
            (
                (true, false, false, 0, true),
                Verdict::Fail,
                "or `gatectl prune` to turn forwarding off",
            ),
            (
                (true, true, false, 1, true),
                Verdict::Fail,
                "routing rules (ip rule, proto 231) are missing",
            ),
            (
                (true, false, true, 1, true),
                Verdict::Warn,
                "the final drop of table inet gatectl is missing",
            ),
            (
                (true, true, true, 0, true),
                Verdict::Ok,
                "`gatectl prune` turns it off",
            ),
            ((false, false, false, 1, true), Verdict::Ok, "as the host had it"),
        ];
        for ((set_by_gatectl, table_intact, rules_complete, active_gates, on), verdict, phrase) in cases {
            let check = ForwardingCheck {
                set_by_gatectl,
                table_intact,
                rules_complete,
                active_gates,
            };
            let finding = check.finding(on);
            assert_eq!(finding.verdict, verdict, "{finding:?}");
            assert!(finding.detail.contains(phrase), "{finding:?}");
        }
    }

    #[test]
    fn slaac_links_fail_only_while_ipv6_forwarding_is_on() {
        let links = ["eth0".to_string(), "wlan0".to_string()];
        let on = slaac_finding(&links, true);
        assert_eq!(on.verdict, Verdict::Fail);
        assert_eq!(on.subject, "accept_ra");
        assert!(
            on.detail.ends_with(
                "run `sysctl -w net.ipv6.conf.eth0.accept_ra=2; sysctl -w net.ipv6.conf.wlan0.accept_ra=2`"
            ),
            "{on:?}"
        );
        let off = slaac_finding(&links, false);
        assert_eq!(off.verdict, Verdict::Ok);
        assert!(
            off.detail.starts_with("eth0, wlan0 learn the IPv6 default route"),
            "{off:?}"
        );
        assert_eq!(slaac_finding(&[], true).verdict, Verdict::Ok);
        // The IPv6 forwarding finding has its own name.
        let check = ForwardingCheck {
            set_by_gatectl: true,
            table_intact: true,
            rules_complete: false,
            active_gates: 1,
        };
        let finding = check.finding_of(Family::V6, true);
        assert_eq!(
            (finding.subject.as_str(), finding.verdict),
            ("ipv6_forward", Verdict::Fail)
        );
        assert!(
            finding.detail.contains("(ip -6 rule, proto 231) are missing"),
            "{finding:?}"
        );
        let idle = ForwardingCheck {
            rules_complete: true,
            active_gates: 0,
            ..check
        };
        assert_eq!(
            idle.finding_of(Family::V6, false).detail,
            "off; the first gate with an IPv6 upstream turns it on and confines it to gate traffic"
        );
    }
}
