//! The one owner of host-wide state: IPv4 and IPv6 forwarding, whether
//! gatectl is the one that turned each on (a marker file per family and the
//! confining routing rules of `net::rule`), the `accept_ra` of the
//! interfaces whose SLAAC default route IPv6 forwarding would drop, and the
//! base of the host table `inet gatectl`. Nothing else in gatectl changes
//! these.
//!
//! IPv6 is opened only for a gate with IPv6 upstreams. With
//! `net.ipv6.conf.all.forwarding=1` an interface accepts Router
//! Advertisements only when its `accept_ra` is 2, and the kernel drops the
//! RA-learned default routes of the others at once, so a host configured by
//! SLAAC would lose its IPv6 default route: before
//! turning IPv6 forwarding on, gatectl sets `accept_ra=2` on each interface
//! with an RA-learned default route and `accept_ra=1`, names them in the
//! IPv6 marker, and sets them back to 1 when it turns forwarding off.
//!
//! Every read-decide-change here holds the host lock (`lock::lock_host`), so
//! a `start` opening the host path, a `stop` or `prune` closing it after the
//! last gate, and a `reconcile` never interleave. The decision to close is
//! taken under that lock from what exists then, never from a snapshot taken
//! earlier: a gate that claimed its index meanwhile keeps the host open.
//!
//! Order, so the host never forwards without gatectl's confinement: to open,
//! the marker, then the routing rules, then the table, and only then
//! forwarding; to close, forwarding off first, then the rules, the marker and
//! the table.

use std::path::PathBuf;

use serde::Serialize;

use crate::config::Settings;
use crate::error::{Context, Error, Result};
use crate::lock;
use crate::net::firewall::{Firewall, GateRules};
use crate::net::link::Netlink;
use crate::net::rule::{ForwardingRules, RulesSurvey};
use crate::net::{netns, sysctl};
use crate::plan::GATE_PREFIX;
use crate::state::Records;

/// Marker file in the state directory: gatectl turned IPv4 forwarding on.
/// The routing rules say the same in the kernel, where a wiped state
/// directory cannot lose it.
pub const FORWARDING_MARKER: &str = "ip_forward-enabled-by-gatectl";
/// Marker file in the state directory: gatectl turned IPv6 forwarding on.
/// It holds the interfaces whose `accept_ra` gatectl changed from 1 to 2,
/// one per line.
pub const FORWARDING6_MARKER: &str = "ipv6-forwarding-enabled-by-gatectl";

/// What gatectl did to the host when the last gate went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Restored {
    /// IPv4 forwarding was turned off again (gatectl had turned it on).
    pub forwarding_off: bool,
    /// gatectl's routing rules were removed.
    pub rules_removed: bool,
    /// IPv6 forwarding was turned off again (gatectl had turned it on).
    pub forwarding6_off: bool,
    /// gatectl's IPv6 routing rules were removed.
    pub rules6_removed: bool,
    /// The interfaces whose `accept_ra` went back from 2 to 1.
    pub accept_ra_restored: Vec<String>,
    /// The table `inet gatectl` was deleted.
    pub table_removed: bool,
}

/// Forwarding of one address family on this host, as gatectl sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarding {
    /// `net.ipv4.ip_forward` or `net.ipv6.conf.all.forwarding`.
    pub on: bool,
    /// Whether the marker file exists.
    pub marker: bool,
    /// gatectl's routing rules.
    pub rules: RulesSurvey,
}

impl Forwarding {
    /// Whether gatectl turned forwarding on: then it must confine it.
    pub fn set_by_gatectl(&self) -> bool {
        self.marker || self.rules.present > 0
    }
}

/// Host-wide state, for one host's settings. Each operation runs on a
/// blocking thread of its own (it waits for the host lock, and libnftables
/// blocks).
#[derive(Debug, Clone)]
pub struct HostWide {
    settings: Settings,
}

impl HostWide {
    /// The host-wide state of a host with `settings`.
    pub fn new(settings: &Settings) -> HostWide {
        HostWide {
            settings: settings.clone(),
        }
    }

    /// Opens the host for a gate: forwarding on (confined, if gatectl is
    /// the one turning it on), the host table with its base chains, and the
    /// gate's allowlist.
    pub async fn open_for(&self, gate: GateRules) -> Result<()> {
        self.run(move |host| {
            let _lock = lock::lock_host(&host.settings.state_dir)?;
            host.open(Some(&gate))
        })
        .await
    }

    /// Re-applies what the running gates need of the host, e.g. after `nft
    /// flush ruleset` or a reload of nftables.service: the routing rules,
    /// forwarding, and the table's base chains. Nothing when no gate exists.
    /// The gates' allowlists are the caller's.
    pub async fn reconcile(&self) -> Result<bool> {
        self.run(|host| {
            let _lock = lock::lock_host(&host.settings.state_dir)?;
            if host.idle() {
                return Ok(false);
            }
            host.open(None)?;
            Ok(true)
        })
        .await
    }

    /// After a gate went (or a start was rolled back): when no gate is left
    /// (no record, no index claim, no gate netns), undoes what gatectl did
    /// to the host.
    pub async fn close_if_idle(&self) -> Result<Restored> {
        self.run(move |host| {
            let _lock = lock::lock_host(&host.settings.state_dir)?;
            if !host.idle() {
                return Ok(Restored::default());
            }
            host.restore(false)
        })
        .await
    }

    /// What [`HostWide::close_if_idle`] would undo once no gate is left.
    /// Only reads.
    pub async fn restore_preview(&self) -> Result<Restored> {
        self.run(move |host| host.restore(true)).await
    }

    /// IPv4 forwarding and gatectl's part in it. Only reads.
    pub async fn forwarding(&self) -> Result<Forwarding> {
        self.run(|host| host.forwarding_now()).await
    }

    /// IPv6 forwarding and gatectl's part in it. Only reads.
    pub async fn forwarding6(&self) -> Result<Forwarding> {
        self.run(|host| host.forwarding6_now()).await
    }

    /// The interfaces that would lose their SLAAC default route if IPv6
    /// forwarding is on now: an RA-learned default route with
    /// `accept_ra` below 2. Only reads.
    pub async fn slaac_at_risk(&self) -> Result<Vec<String>> {
        self.run(|_| {
            let mut at_risk = Vec::new();
            for link in sysctl::ra_default_route_links(&sysctl::ipv6_routes()?) {
                if sysctl::accept_ra(&link)?.is_some_and(|v| v < 2) {
                    at_risk.push(link);
                }
            }
            Ok(at_risk)
        })
        .await
    }

    /// The host table as gatectl would build it now: with the final drop of
    /// each family whose forwarding gatectl turned on.
    pub async fn firewall(&self) -> Result<Firewall> {
        self.run(|host| {
            Ok(host.firewall_with(
                host.forwarding_now()?.set_by_gatectl(),
                host.forwarding6_now()?.set_by_gatectl(),
            ))
        })
        .await
    }

    /// Runs `work` on a blocking thread with a clone of this host.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(HostWide) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let host = self.clone();
        tokio::task::spawn_blocking(move || work(host))
            .await
            .unwrap_or_else(|e| Err(Error::failed(format!("a gatectl task failed: {e}"))))
    }

    fn marker(&self) -> PathBuf {
        self.settings.state_dir.join(FORWARDING_MARKER)
    }

    fn marker6(&self) -> PathBuf {
        self.settings.state_dir.join(FORWARDING6_MARKER)
    }

    fn rules(&self) -> ForwardingRules {
        ForwardingRules {
            egress_pool: self.settings.egress_pool.into(),
        }
    }

    fn rules6(&self) -> ForwardingRules {
        ForwardingRules {
            egress_pool: self.settings.egress_pool6.into(),
        }
    }

    fn firewall_with(&self, block_other_forwarding: bool, block_other_forwarding6: bool) -> Firewall {
        Firewall::of(&self.settings, block_other_forwarding, block_other_forwarding6)
    }

    /// Whether no gate exists: no record, no index claim (a start claims
    /// its index before it opens the host), no gate netns (a gate whose
    /// state directory was wiped).
    fn idle(&self) -> bool {
        let records = Records::new(&self.settings.state_dir);
        !records.any_index_claimed() && records.slugs().is_empty() && netns::list(GATE_PREFIX).is_empty()
    }

    fn forwarding_now(&self) -> Result<Forwarding> {
        Ok(Forwarding {
            on: sysctl::ipv4_forwarding()?,
            marker: self.marker().exists(),
            rules: netlink(|nl, rules| async move { rules.survey(&nl).await }, self.rules())?,
        })
    }

    fn forwarding6_now(&self) -> Result<Forwarding> {
        Ok(Forwarding {
            on: sysctl::ipv6_forwarding()?,
            marker: self.marker6().exists(),
            rules: netlink(|nl, rules| async move { rules.survey(&nl).await }, self.rules6())?,
        })
    }

    /// The interfaces named in the IPv6 marker (their `accept_ra` went from
    /// 1 to 2).
    fn accept_ra_changed(&self) -> Result<Vec<String>> {
        match std::fs::read_to_string(self.marker6()) {
            Ok(text) => Ok(text
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.marker6().display())),
        }
    }

    /// The opening sequence, under the host lock. IPv6 is opened for a
    /// gate with an IPv6 upstream, and on reconcile when gatectl turned
    /// IPv6 forwarding on.
    fn open(&self, gate: Option<&GateRules>) -> Result<()> {
        let forwarding = self.forwarding_now()?;
        let confine = !forwarding.on || forwarding.set_by_gatectl();
        if confine {
            let marker = self.marker();
            std::fs::write(&marker, b"").with_context(|| format!("cannot write {}", marker.display()))?;
            netlink(|nl, rules| async move { rules.install(&nl).await }, self.rules())?;
        }
        let forwarding6 = self.forwarding6_now()?;
        let six = match gate {
            Some(gate) => gate.allowed.iter().any(std::net::SocketAddr::is_ipv6),
            None => forwarding6.set_by_gatectl(),
        };
        let confine6 = six && (!forwarding6.on || forwarding6.set_by_gatectl());
        let mut slaac = Vec::new();
        if confine6 {
            let marker = self.marker6();
            if !forwarding6.on {
                // Forwarding is off: the links that learned their default
                // route by RA and accept RAs only as a host now.
                for link in sysctl::ra_default_route_links(&sysctl::ipv6_routes()?) {
                    if sysctl::accept_ra(&link)? == Some(1) {
                        slaac.push(link);
                    }
                }
            }
            if !forwarding6.on || !marker.exists() {
                let mut links = self.accept_ra_changed()?;
                for link in &slaac {
                    if !links.contains(link) {
                        links.push(link.clone());
                    }
                }
                let text: String = links.iter().map(|l| format!("{l}\n")).collect();
                std::fs::write(&marker, text)
                    .with_context(|| format!("cannot write {}", marker.display()))?;
            }
            netlink(|nl, rules| async move { rules.install(&nl).await }, self.rules6())?;
        }
        let firewall = self.firewall_with(confine, confine6 || forwarding6.set_by_gatectl());
        match gate {
            Some(gate) => firewall.add_gate(gate)?,
            None => firewall.ensure_base()?,
        }
        if !forwarding.on {
            sysctl::enable_ipv4_forwarding()?;
        }
        if six && !forwarding6.on {
            for link in &slaac {
                sysctl::set_accept_ra(link, 2)?;
            }
            sysctl::enable_ipv6_forwarding()?;
        }
        Ok(())
    }

    /// The closing sequence, under the host lock, with no gate left.
    fn restore(&self, dry_run: bool) -> Result<Restored> {
        let forwarding = self.forwarding_now()?;
        let firewall = self.firewall_with(false, false);
        let mut restored = Restored::default();
        if forwarding.set_by_gatectl() {
            restored.forwarding_off = forwarding.on;
            restored.rules_removed = forwarding.rules.present > 0;
            if !dry_run {
                if forwarding.on {
                    sysctl::restore_ipv4_forwarding_off()?;
                }
                netlink(|nl, rules| async move { rules.remove(&nl).await }, self.rules())?;
                remove_marker(&self.marker())?;
            }
        }
        let forwarding6 = self.forwarding6_now()?;
        if forwarding6.set_by_gatectl() {
            restored.forwarding6_off = forwarding6.on;
            restored.rules6_removed = forwarding6.rules.present > 0;
            let changed = self.accept_ra_changed()?;
            for link in changed {
                if sysctl::accept_ra(&link)? == Some(2) {
                    restored.accept_ra_restored.push(link);
                }
            }
            if !dry_run {
                if forwarding6.on {
                    sysctl::restore_ipv6_forwarding_off()?;
                }
                for link in &restored.accept_ra_restored {
                    sysctl::set_accept_ra(link, 1)?;
                }
                netlink(|nl, rules| async move { rules.remove(&nl).await }, self.rules6())?;
                remove_marker(&self.marker6())?;
            }
        }
        if firewall.survey()?.present {
            restored.table_removed = true;
            if !dry_run {
                firewall.remove_table()?;
            }
        }
        Ok(restored)
    }
}

/// Removes a marker file; success when it is gone.
fn remove_marker(marker: &std::path::Path) -> Result<()> {
    match std::fs::remove_file(marker) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", marker.display())),
    }
}

/// Runs a netlink request in the host namespace on this (blocking) thread.
fn netlink<T, F>(request: impl FnOnce(Netlink, ForwardingRules) -> F, rules: ForwardingRules) -> Result<T>
where
    F: std::future::Future<Output = Result<T>>,
{
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime for a netlink request")?
        .block_on(async move { request(Netlink::current()?, rules).await })
}
