//! The one owner of host-wide state: IPv4 forwarding, whether gatectl is the
//! one that turned it on (the marker file and the confining routing rules of
//! `net::rule`), and the base of the host table `inet gatectl`. Nothing else
//! in gatectl changes these.
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

/// What gatectl did to the host when the last gate went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Restored {
    /// IPv4 forwarding was turned off again (gatectl had turned it on).
    pub forwarding_off: bool,
    /// gatectl's routing rules were removed.
    pub rules_removed: bool,
    /// The table `inet gatectl` was deleted.
    pub table_removed: bool,
}

/// IPv4 forwarding on this host, as gatectl sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarding {
    /// `net.ipv4.ip_forward`.
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

    /// The host table as gatectl would build it now: with the final drop
    /// when gatectl turned forwarding on.
    pub async fn firewall(&self) -> Result<Firewall> {
        self.run(|host| Ok(host.firewall_with(host.forwarding_now()?.set_by_gatectl())))
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

    fn rules(&self) -> ForwardingRules {
        ForwardingRules {
            egress_pool: self.settings.egress_pool,
        }
    }

    fn firewall_with(&self, block_other_forwarding: bool) -> Firewall {
        Firewall {
            egress_pool: self.settings.egress_pool,
            block_other_forwarding,
        }
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

    /// The opening sequence, under the host lock.
    fn open(&self, gate: Option<&GateRules>) -> Result<()> {
        let forwarding = self.forwarding_now()?;
        let confine = !forwarding.on || forwarding.set_by_gatectl();
        if confine {
            let marker = self.marker();
            std::fs::write(&marker, b"").with_context(|| format!("cannot write {}", marker.display()))?;
            netlink(|nl, rules| async move { rules.install(&nl).await }, self.rules())?;
        }
        let firewall = self.firewall_with(confine);
        match gate {
            Some(gate) => firewall.add_gate(gate)?,
            None => firewall.ensure_base()?,
        }
        if !forwarding.on {
            sysctl::enable_ipv4_forwarding()?;
        }
        Ok(())
    }

    /// The closing sequence, under the host lock, with no gate left.
    fn restore(&self, dry_run: bool) -> Result<Restored> {
        let forwarding = self.forwarding_now()?;
        let firewall = self.firewall_with(false);
        let mut restored = Restored::default();
        if forwarding.set_by_gatectl() {
            restored.forwarding_off = forwarding.on;
            restored.rules_removed = forwarding.rules.present > 0;
            if !dry_run {
                if forwarding.on {
                    sysctl::restore_ipv4_forwarding_off()?;
                }
                netlink(
                    |nl, _| async move { ForwardingRules::remove(&nl).await },
                    self.rules(),
                )?;
                match std::fs::remove_file(self.marker()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot remove {}", self.marker().display()))
                    }
                }
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
