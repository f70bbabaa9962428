//! `prune`: find what gates that are gone left behind (a netns without a
//! running unit, a failed unit, what an interrupted start created, links,
//! firewall elements, records, index claims) and remove it. A gate whose
//! forwarder is up after a completed start, or that a gatectl is starting or
//! stopping right now, is never touched; neither is a link that is not
//! provably gatectl's. When no gate is left, the host's own changes are
//! undone too, decided under the host lock (`crate::host`).
//!
//! The decisions are pure functions of what was found ([`decide_gate`],
//! [`orphan_links`], [`stale_allowlists`]); [`Prune`] gathers the facts and
//! applies them.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::Serialize;

use crate::error::Result;
use crate::gate::{slug_of_link_alias, GateFacts, Host, RecordFact};
use crate::host::Restored;
use crate::lock;
use crate::net::link::{LinkInfo, Netlink};
use crate::net::netns;
use crate::plan::{self, AGENT_LINK_GROUP, HOST_EGRESS_GROUP};
use crate::slug::Slug;
use crate::systemd::{GateUnits, Systemd};
use crate::timings::Timings;

/// What a leftover is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LeftoverKind {
    /// A gate netns.
    Netns,
    /// A gate unit that is not up.
    Unit,
    /// A gate record.
    Record,
    /// A gate index claimed by a start that died before writing its record.
    #[serde(rename = "index claim")]
    IndexClaim,
    /// A link of gatectl's.
    Link,
    /// Allowlist elements of a link that is gone, or the host table.
    Firewall,
    /// gatectl's routing rules.
    Rules,
    /// IPv4 forwarding that gatectl turned on.
    Sysctl,
}

impl LeftoverKind {
    /// The word `prune` prints and `--json` carries.
    pub fn as_str(self) -> &'static str {
        match self {
            LeftoverKind::Netns => "netns",
            LeftoverKind::Unit => "unit",
            LeftoverKind::Record => "record",
            LeftoverKind::IndexClaim => "index claim",
            LeftoverKind::Link => "link",
            LeftoverKind::Firewall => "firewall",
            LeftoverKind::Rules => "rules",
            LeftoverKind::Sysctl => "sysctl",
        }
    }
}

/// One leftover that prune removed (or would remove).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Leftover {
    /// What it is.
    pub kind: LeftoverKind,
    /// Its name (netns, unit, link or interface name, or the slug).
    pub name: String,
}

fn leftover(kind: LeftoverKind, name: impl Into<String>) -> Leftover {
    Leftover {
        kind,
        name: name.into(),
    }
}

/// What prune knows of one gate whose lock it holds.
#[derive(Debug, Clone)]
pub struct PruneFacts {
    /// The gate's units, record and netns.
    pub gate: GateFacts,
    /// Host links of gatectl's groups that carry the gate's alias.
    pub links: Vec<String>,
    /// Whether a gate index is claimed for the slug.
    pub claimed: bool,
}

/// What prune does with one gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Up and whole (or busy): leave it.
    Keep,
    /// Nothing of it exists.
    Nothing,
    /// Gone, but these traces are left: remove them.
    Remove(Vec<Leftover>),
}

/// What to do with the gate of `slug`. An interrupted start's leftovers go,
/// even a unit it got running; a gate that is up after a complete start
/// stays.
pub fn decide_gate(slug: &Slug, facts: &PruneFacts) -> Verdict {
    let gate = &facts.gate;
    if gate.units.is_up() && !gate.record.incomplete() {
        return Verdict::Keep;
    }
    let mut traces: Vec<Leftover> = gate
        .units
        .loaded()
        .map(|u| leftover(LeftoverKind::Unit, format!("{} ({}/{})", u.name, u.active, u.sub)))
        .collect();
    if gate.netns_present {
        traces.push(leftover(LeftoverKind::Netns, plan::netns_name(slug)));
    }
    traces.extend(
        facts
            .links
            .iter()
            .map(|l| leftover(LeftoverKind::Link, l.clone())),
    );
    if gate.record != RecordFact::Absent {
        traces.push(leftover(LeftoverKind::Record, slug.to_string()));
    } else if facts.claimed {
        traces.push(leftover(LeftoverKind::IndexClaim, slug.to_string()));
    }
    if traces.is_empty() {
        Verdict::Nothing
    } else {
        Verdict::Remove(traces)
    }
}

/// The links of gatectl's groups that no gate claims: not labelled as a
/// kept gate's, not removed with a gate already, and their index (from the
/// name) not claimed by anyone.
pub fn orphan_links(
    links: &[LinkInfo],
    kept: &BTreeSet<Slug>,
    removed: &BTreeSet<String>,
    claimed: &BTreeSet<u32>,
) -> Vec<String> {
    links
        .iter()
        .filter(|l| {
            let owner = l.alias.as_deref().and_then(slug_of_link_alias);
            !owner.is_some_and(|s| kept.contains(&s))
                && !removed.contains(&l.name)
                && !plan::host_link_index(&l.name).is_some_and(|i| claimed.contains(&i))
        })
        .map(|l| l.name.clone())
        .collect()
}

/// The interfaces with allowlist elements in the host table whose egress
/// link no longer exists.
pub fn stale_allowlists(interfaces: &[String], egress_links: &[String]) -> Vec<String> {
    interfaces
        .iter()
        .filter(|i| !egress_links.contains(i))
        .cloned()
        .collect()
}

/// What the host's restoration undid, as leftovers.
fn restored(restored: Restored) -> Vec<Leftover> {
    let mut found = Vec::new();
    if restored.forwarding_off {
        found.push(leftover(
            LeftoverKind::Sysctl,
            "net.ipv4.ip_forward=1 (set by gatectl)",
        ));
    }
    if restored.rules_removed {
        found.push(leftover(
            LeftoverKind::Rules,
            "gatectl's routing rules (ip rule, proto 231)",
        ));
    }
    if restored.forwarding6_off {
        found.push(leftover(
            LeftoverKind::Sysctl,
            "net.ipv6.conf.all.forwarding=1 (set by gatectl)",
        ));
    }
    for link in &restored.accept_ra_restored {
        found.push(leftover(
            LeftoverKind::Sysctl,
            format!("net.ipv6.conf.{link}.accept_ra=2 (set by gatectl; back to 1)"),
        ));
    }
    if restored.rules6_removed {
        found.push(leftover(
            LeftoverKind::Rules,
            "gatectl's IPv6 routing rules (ip -6 rule, proto 231)",
        ));
    }
    if restored.table_removed {
        found.push(leftover(
            LeftoverKind::Firewall,
            format!("table inet {}", crate::net::firewall::TABLE),
        ));
    }
    found
}

/// What `prune` found of the gates that are gone.
struct GoneGates {
    /// Their leftovers.
    found: Vec<Leftover>,
    /// The slugs whose gates stay (running, or busy).
    kept: BTreeSet<Slug>,
    /// The slugs whose gates were (or, in a dry run, would be) torn down.
    torn_down: BTreeSet<String>,
}

/// What decides which of gatectl's links are orphans.
struct Orphans<'a> {
    /// gatectl's links on the host (and agent ends in the host namespace).
    links: &'a [LinkInfo],
    /// The slugs whose gates stay.
    kept: &'a BTreeSet<Slug>,
    /// Links already removed with their gates.
    removed: &'a BTreeSet<String>,
    /// The slugs whose gates were torn down.
    torn_down: &'a BTreeSet<String>,
}

/// One `prune` on a host.
pub struct Prune<'h> {
    /// The host.
    pub host: &'h Host,
}

impl Prune<'_> {
    /// Removes the leftovers of gates that are gone; with `dry_run`, only
    /// lists them. Running it twice is harmless.
    pub async fn run(&self, dry_run: bool) -> Result<Vec<Leftover>> {
        let systemd = Systemd::connect().await?;
        let root = Netlink::current()?;
        let links = root
            .links_in_groups(&[HOST_EGRESS_GROUP, AGENT_LINK_GROUP])
            .await?;
        let GoneGates {
            mut found,
            kept,
            torn_down,
        } = self.gone_gates(&systemd, &links, dry_run).await?;
        let removed: BTreeSet<String> = found
            .iter()
            .filter(|f| f.kind == LeftoverKind::Link)
            .map(|f| f.name.clone())
            .collect();
        let orphans = Orphans {
            links: &links,
            kept: &kept,
            removed: &removed,
            torn_down: &torn_down,
        };
        found.extend(self.orphan_links(&root, orphans, dry_run).await?);
        found.extend(self.stale_allowlists(&root, dry_run).await?);

        // The host's own changes, once no gate is left: decided under the
        // host lock from what exists then, not from the snapshot above.
        let host_wide = &self.host.host_wide;
        let restoration = match (dry_run, kept.is_empty()) {
            (false, _) => host_wide.close_if_idle().await?,
            (true, true) => host_wide.restore_preview().await?,
            (true, false) => Restored::default(),
        };
        found.extend(restored(restoration));
        Ok(found)
    }

    /// Decides, and unless `dry_run` removes, each gate that is gone, each
    /// under its slug's lock (a start or stop of that slug cannot run
    /// meanwhile).
    async fn gone_gates(&self, systemd: &Systemd, links: &[LinkInfo], dry_run: bool) -> Result<GoneGates> {
        let host = self.host;
        let units = systemd.all_gate_units().await?;
        let holders = host.records.index_holders();
        let mut slugs: BTreeSet<Slug> = host.records.slugs().into_iter().collect();
        slugs.extend(units.iter().filter_map(|u| plan::slug_of_unit(&u.name)));
        slugs.extend(
            netns::list(plan::GATE_PREFIX)
                .iter()
                .filter_map(|n| plan::slug_of_netns(n)),
        );
        slugs.extend(
            links
                .iter()
                .filter_map(|l| l.alias.as_deref().and_then(slug_of_link_alias)),
        );
        slugs.extend(holders.iter().filter_map(|(_, s)| Slug::parse(s).ok()));

        let mut found = Vec::new();
        let mut kept = BTreeSet::new();
        let mut torn_down = BTreeSet::new();
        for slug in slugs {
            let Some(_lock) = lock::try_lock_slug(&host.settings.state_dir, &slug)? else {
                kept.insert(slug);
                continue;
            };
            let alias = crate::gate::link_alias(&slug);
            let facts = PruneFacts {
                gate: host.facts(&slug, GateUnits::of(&slug, &units)),
                links: links
                    .iter()
                    .filter(|l| l.alias.as_deref() == Some(alias.as_str()))
                    .map(|l| l.name.clone())
                    .collect(),
                claimed: holders.iter().any(|(_, s)| s == slug.as_str()),
            };
            match decide_gate(&slug, &facts) {
                Verdict::Keep => {
                    kept.insert(slug);
                }
                Verdict::Nothing => {}
                Verdict::Remove(traces) => {
                    if !dry_run {
                        host.teardown(systemd)
                            .gate(&slug, &mut Timings::default())
                            .await?;
                    }
                    found.extend(traces);
                    torn_down.insert(slug.as_str().to_string());
                }
            }
        }
        Ok(GoneGates {
            found,
            kept,
            torn_down,
        })
    }

    /// Deletes (unless `dry_run`) gatectl's links that no kept gate, no
    /// removed gate and no index claim accounts for. Claims are read again:
    /// a start may have claimed an index since the links were listed. A
    /// gate torn down before released its claim; a dry run counts it as
    /// released too, so that it lists the links the real run removes.
    async fn orphan_links(
        &self,
        root: &Netlink,
        orphans: Orphans<'_>,
        dry_run: bool,
    ) -> Result<Vec<Leftover>> {
        let claimed: BTreeSet<u32> = self
            .host
            .records
            .index_holders()
            .into_iter()
            .filter(|(_, holder)| !(dry_run && orphans.torn_down.contains(holder)))
            .map(|(i, _)| i)
            .collect();
        let mut found = Vec::new();
        for name in orphan_links(orphans.links, orphans.kept, orphans.removed, &claimed) {
            if !dry_run {
                root.delete(&name).await?;
            }
            found.push(leftover(LeftoverKind::Link, name));
        }
        Ok(found)
    }

    /// Removes (unless `dry_run`) the allowlists of egress links that no
    /// longer exist.
    async fn stale_allowlists(&self, root: &Netlink, dry_run: bool) -> Result<Vec<Leftover>> {
        let firewall = self.host.host_firewall();
        let egress_links: Vec<String> = root
            .links_in_groups(&[HOST_EGRESS_GROUP])
            .await?
            .into_iter()
            .map(|l| l.name)
            .collect();
        let interfaces = tokio::task::spawn_blocking({
            let firewall = firewall.clone();
            move || firewall.survey()
        })
        .await
        .unwrap_or_else(|e| Err(crate::Error::failed(format!("a gatectl task failed: {e}"))))?
        .interfaces;
        let mut found = Vec::new();
        for ifname in stale_allowlists(&interfaces, &egress_links) {
            if !dry_run {
                firewall.remove_gate(&ifname)?;
            }
            found.push(leftover(LeftoverKind::Firewall, ifname));
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systemd::{ActiveState, UnitState};

    fn slug(s: &str) -> Slug {
        Slug::parse(s).unwrap()
    }

    fn unit(name: &str, active: &str) -> Option<UnitState> {
        Some(UnitState {
            name: name.into(),
            active: ActiveState::parse(active),
            sub: "x".into(),
        })
    }

    fn facts(
        socket: Option<UnitState>,
        record: RecordFact,
        netns: bool,
        links: &[&str],
        claimed: bool,
    ) -> PruneFacts {
        PruneFacts {
            gate: GateFacts {
                units: GateUnits {
                    socket,
                    service: None,
                },
                record,
                netns_present: netns,
                busy: false,
            },
            links: links.iter().map(|l| l.to_string()).collect(),
            claimed,
        }
    }

    fn record(complete: bool) -> RecordFact {
        let m = crate::manifest::parse(
            "[[ssh]]\nHost = \"up\"\nHostname = \"192.0.2.1\"\n",
            crate::manifest::Format::Toml,
        )
        .unwrap();
        let settings = crate::config::Settings::default();
        let plan =
            crate::plan::GateSpec::build(&slug("a"), &m, &settings, None, |h| Ok(vec![h.parse().unwrap()]))
                .unwrap()
                .place(&settings, 0)
                .unwrap();
        RecordFact::Present(Box::new(crate::state::GateRecord::new(plan, complete)))
    }

    fn kinds(verdict: &Verdict) -> Vec<LeftoverKind> {
        match verdict {
            Verdict::Remove(traces) => traces.iter().map(|t| t.kind).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn a_gate_is_kept_only_while_up_after_a_complete_start() {
        use LeftoverKind::*;
        let s = slug("a");
        let socket = "gate-a.socket";
        // (facts, verdict or the kinds removed)
        let cases: Vec<(PruneFacts, Option<Verdict>, Vec<LeftoverKind>)> = vec![
            (
                facts(unit(socket, "active"), record(true), true, &["gte0"], true),
                Some(Verdict::Keep),
                vec![],
            ),
            (
                facts(unit(socket, "activating"), record(true), true, &[], true),
                Some(Verdict::Keep),
                vec![],
            ),
            (
                facts(None, RecordFact::Absent, false, &[], false),
                Some(Verdict::Nothing),
                vec![],
            ),
            // An interrupted start: even its running unit goes.
            (
                facts(unit(socket, "active"), record(false), true, &["gte0"], true),
                None,
                vec![Unit, Netns, Link, Record],
            ),
            // A failed unit, its netns, no record.
            (
                facts(unit(socket, "failed"), RecordFact::Absent, true, &[], false),
                None,
                vec![Unit, Netns],
            ),
            // A claim without a record: a start that died before writing it.
            (
                facts(None, RecordFact::Absent, false, &[], true),
                None,
                vec![IndexClaim],
            ),
            // A record that cannot be read is removed like any other.
            (
                facts(None, RecordFact::Corrupt("bad".into()), false, &[], true),
                None,
                vec![Record],
            ),
        ];
        for (f, verdict, removed) in cases {
            let got = decide_gate(&s, &f);
            match verdict {
                Some(v) => assert_eq!(got, v, "{f:?}"),
                None => assert_eq!(kinds(&got), removed, "{f:?}"),
            }
        }
    }

    #[test]
    fn only_links_nobody_claims_are_orphans() {
        let link = |name: &str, alias: Option<&str>| LinkInfo {
            name: name.into(),
            alias: alias.map(String::from),
            group: HOST_EGRESS_GROUP,
        };
        let links = [
            link("gte0", Some("gatectl:kept")),
            link("gte1", Some("gatectl:gone")),
            link("gte2", None),
            link("gte3", None),
            link("gti4", Some("gatectl:other")),
        ];
        let kept: BTreeSet<Slug> = [slug("kept")].into();
        let removed: BTreeSet<String> = ["gte1".to_string()].into();
        let claimed: BTreeSet<u32> = [3].into();
        assert_eq!(orphan_links(&links, &kept, &removed, &claimed), ["gte2", "gti4"]);
    }

    #[test]
    fn allowlists_are_stale_when_their_egress_link_is_gone() {
        let interfaces = ["gte0".to_string(), "gte5".to_string()];
        assert_eq!(stale_allowlists(&interfaces, &["gte0".to_string()]), ["gte5"]);
        assert!(stale_allowlists(&interfaces, &interfaces).is_empty());
    }

    #[test]
    fn the_hosts_restoration_is_reported_in_the_kinds_prune_always_used() {
        let all = Restored {
            forwarding_off: true,
            rules_removed: true,
            forwarding6_off: true,
            rules6_removed: true,
            accept_ra_restored: vec!["eth0".into()],
            table_removed: true,
        };
        let json = serde_json::to_value(restored(all)).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"kind": "sysctl", "name": "net.ipv4.ip_forward=1 (set by gatectl)"},
                {"kind": "rules", "name": "gatectl's routing rules (ip rule, proto 231)"},
                {"kind": "sysctl", "name": "net.ipv6.conf.all.forwarding=1 (set by gatectl)"},
                {"kind": "sysctl", "name": "net.ipv6.conf.eth0.accept_ra=2 (set by gatectl; back to 1)"},
                {"kind": "rules", "name": "gatectl's IPv6 routing rules (ip -6 rule, proto 231)"},
                {"kind": "firewall", "name": "table inet gatectl"}
            ])
        );
        assert!(restored(Restored::default()).is_empty());
    }
}
