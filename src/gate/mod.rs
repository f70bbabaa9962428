//! The gate lifecycle. [`Host`] gathers facts and applies decisions; the
//! decisions themselves are pure and live beside it: a gate's state
//! ([`state`]), the steps of a start and what undoes each ([`steps`],
//! [`start`]), the teardown ([`stop`]), what a reload changes ([`changes`],
//! [`reload`]), and the DNS refresh ([`refresh`]).

pub mod changes;
pub mod refresh;
pub mod reload;
pub mod start;
pub mod state;
pub mod steps;
pub mod stop;

use std::path::Path;

use crate::config::Settings;
use crate::denied;
use crate::error::{Error, Result};
use crate::forward::stats;
use crate::host::HostWide;
use crate::lock;
use crate::manifest::{self, Manifest};
use crate::net::firewall::gate::{Denied, GateTable, Tried};
use crate::net::firewall::{Firewall, GateRules};
use crate::net::{netns, sysctl};
use crate::plan::{self, GatePlan, GateSpec};
use crate::resolve;
use crate::slug::Slug;
use crate::ssh_include::SshIncludes;
use crate::state::Records;
use crate::systemd::{ActiveState, GateUnits, Systemd};
use crate::timings::Timings;

pub use state::{GateFacts, GateState, GateStatus, RecordFact};

/// How many gates `reconcile` takes at a time: each holds a slug lock (a
/// file descriptor) until its chunk's allowlists are back.
const RECONCILE_CHUNK: usize = 256;

/// The link alias that marks an outer link end as belonging to `slug`.
pub fn link_alias(slug: &Slug) -> String {
    format!("gatectl:{slug}")
}

/// The slug a link alias names, if it is one of [`link_alias`].
pub fn slug_of_link_alias(alias: &str) -> Option<Slug> {
    Slug::parse(alias.strip_prefix("gatectl:")?).ok()
}

/// The host: its settings, its record store and its host-wide state.
pub struct Host {
    /// Host settings.
    pub settings: Settings,
    /// Gate records.
    pub records: Records,
    /// Forwarding, gatectl's routing rules and the host table's base.
    pub host_wide: HostWide,
    /// The ssh_config include of each running gate.
    pub ssh_includes: SshIncludes,
    /// The denied counts already recorded, per gate.
    pub denied: denied::Records,
}

impl Host {
    /// Loads the host settings.
    pub fn load() -> Result<Host> {
        Ok(Host::with(Settings::load()?))
    }

    /// The host with `settings`.
    pub fn with(settings: Settings) -> Host {
        Host {
            records: Records::new(&settings.state_dir),
            ssh_includes: SshIncludes::new(&settings.state_dir),
            denied: denied::Records::new(&settings.state_dir),
            host_wide: HostWide::new(&settings),
            settings,
        }
    }

    /// The manifest of `slug`: `manifest` if given, else the default path.
    pub fn manifest(&self, slug: &Slug, manifest: Option<&Path>) -> Result<Manifest> {
        let path = match manifest {
            Some(p) => p.to_path_buf(),
            None => manifest::default_path(&self.settings.bottles_dir, slug.as_str())?,
        };
        manifest::load(&path)
    }

    /// The gate `start` would bring up for `slug`, before placement:
    /// validated, with upstream names resolved on the host. Changes
    /// nothing.
    pub fn spec(&self, slug: &Slug, manifest: &Manifest, agent_netns: Option<&str>) -> Result<GateSpec> {
        if let Some(ns) = agent_netns {
            manifest::validate_netns_ref(ns).map_err(|e| Error::invalid(format!("--agent-netns: {e}")))?;
        }
        let spec = GateSpec::build(slug, manifest, &self.settings, agent_netns, resolve::resolve)?;
        if spec.uses_ipv6() && !sysctl::has_ipv6_default_route(&sysctl::ipv6_routes()?) {
            return spec.without_ipv6(
                "this host has no IPv6 default route, so no gate could reach it; give the host IPv6 \
                 connectivity (a default route in `ip -6 route`), or declare a host name or address with IPv4",
            );
        }
        Ok(spec)
    }

    /// The index the next gate would get: the first unclaimed one from
    /// where the last allocation ended (`start` also skips an index whose
    /// host link still exists).
    pub fn next_index(&self) -> Result<u32> {
        crate::state::probe_order(self.records.index_hint(), self.settings.capacity())
            .find(|&index| !self.records.index_claimed(index))
            .ok_or_else(|| self.slots_full())
    }

    /// The refusal when every gate index is taken.
    fn slots_full(&self) -> Error {
        Error::failed(format!(
            "all {} gate slots are in use; stop a gate or enlarge the address pools",
            self.settings.capacity()
        ))
    }

    /// Starts the gate of `spec`. Validates everything before the first
    /// side effect; on failure rolls back everything it created. A gate
    /// already running with the same spec is left as it is. Each step's
    /// duration goes to `timings`.
    pub async fn start(&self, spec: &GateSpec, timings: &mut Timings) -> Result<start::Started> {
        start::Start { host: self }.run(spec, timings).await
    }

    /// Applies `spec` to its running gate without a restart: added entries
    /// listen, changed ones forward elsewhere from now on, removed ones stop
    /// and have their sessions cut, unchanged ones keep their sessions.
    /// Refuses a gate that is not running, or a change of agent netns.
    pub async fn reload(&self, spec: &GateSpec) -> Result<reload::Reloaded> {
        reload::Reload { host: self }.run(spec).await
    }

    /// Stops the gate of `slug`: units, firewall rules, links, netns and
    /// record, then the host's own changes if it was the last gate; through
    /// `gatectl@<slug>.service` when that unit is active. A gate that is
    /// already gone is success; returns whether anything of it existed. Each step's duration goes to
    /// `timings`.
    pub async fn stop(&self, slug: &Slug, timings: &mut Timings) -> Result<bool> {
        let slot = lock::take_work_slot(&self.settings.state_dir)?;
        timings.mark("wait for a work slot");
        let systemd = Systemd::connect().await?;
        let manager = plan::manager_unit_name(slug);
        if systemd.unit_state(&manager).await?.active == ActiveState::Active {
            // gatectl@SLUG manages this gate: stop it through the unit,
            // whose ExecStop= runs this command again (the unit is then
            // deactivating), so the unit does not stay active over a gate
            // that is gone, and a later `systemctl start` starts it again.
            // That command needs a work slot of its own: let this one go.
            drop(slot);
            systemd.stop(&[&manager]).await?;
            timings.mark("stop the gate through its unit gatectl@SLUG.service");
            return Ok(true);
        }
        let _slug_lock = lock::lock_slug(&self.settings.state_dir, slug)?;
        let existed = self.status(&systemd, slug).await?.state != GateState::Stopped;
        timings.mark("connect to systemd, lock the slug, look at the gate");
        self.teardown(&systemd).gate(slug, timings).await?;
        self.host_wide.close_if_idle().await?;
        timings.mark("close the host path if no gate is left");
        Ok(existed)
    }

    /// Whether the gate of `plan` runs: its socket is active and its netns
    /// exists (what `reload` and the DNS refresh may change in place).
    pub(crate) async fn running(&self, systemd: &Systemd, plan: &GatePlan) -> Result<bool> {
        let units = systemd.gate_units(&plan.slug).await?;
        Ok(units.socket.as_ref().is_some_and(|u| u.is_active()) && netns::exists(&plan.netns))
    }

    /// The teardown of gates on this host.
    pub(crate) fn teardown<'h>(&'h self, systemd: &'h Systemd) -> stop::Teardown<'h> {
        stop::Teardown { host: self, systemd }
    }

    /// Re-applies what every running gate needs, from its record, e.g.
    /// after `nft flush ruleset` or a reload of nftables.service: the
    /// host's forwarding, routing rules and table base, each gate's
    /// allowlist in the host table, and each gate netns's own table where
    /// its seal no longer holds (a host `flush ruleset` does not reach
    /// those; an upgrade that builds them otherwise does). Returns the
    /// slugs of the running gates.
    ///
    /// Gates are taken [`RECONCILE_CHUNK`] at a time, each chunk under its
    /// slug locks (so no gate stops while its allowlist is added back) with
    /// its host allowlists in one batch: a flush at thousands of gates is
    /// undone in a few transactions, not one per gate.
    pub async fn reconcile(&self) -> Result<Vec<Slug>> {
        let systemd = Systemd::connect().await?;
        if !self.host_wide.reconcile().await? {
            return Ok(Vec::new());
        }
        let units = systemd.all_gate_units().await?;
        let firewall = self.host_firewall();
        let mut applied = Vec::new();
        for chunk in self.records.slugs().chunks(RECONCILE_CHUNK) {
            // Held until the chunk is done: no gate of it stops meanwhile.
            let mut locks = Vec::with_capacity(chunk.len());
            let mut plans = Vec::with_capacity(chunk.len());
            for slug in chunk {
                locks.push(lock::lock_slug(&self.settings.state_dir, slug)?);
                let Ok(Some(record)) = self.records.load(slug) else {
                    continue;
                };
                let running = GateUnits::of(slug, &units).socket.is_some_and(|u| u.is_active());
                if record.complete && running {
                    plans.push(record.plan);
                }
            }
            let rules: Vec<GateRules> = plans.iter().map(gate_rules).collect();
            firewall.add_elements(&rules)?;
            for plan in &plans {
                self.ssh_includes.write(plan)?;
            }
            self.reseal_gate_tables(&plans)?;
            applied.extend(plans.into_iter().map(|plan| plan.slug));
        }
        Ok(applied)
    }

    /// Applies the gate netns tables of `plans` again where their seals no
    /// longer hold, and keeps the new seals. Call it under their slug locks.
    fn reseal_gate_tables(&self, plans: &[GatePlan]) -> Result<()> {
        let mut work = Vec::with_capacity(plans.len());
        for plan in plans.iter().filter(|plan| netns::exists(&plan.netns)) {
            let ns = netns::open(&plan.netns_path())?;
            work.push((
                ns,
                (
                    plan.slug.clone(),
                    GateTable::of(plan),
                    self.records.seal(&plan.slug),
                ),
            ));
        }
        let resealed = netns::run_in_each(work, |(slug, table, seal)| match table.sealed(seal.as_ref())? {
            true => Ok((slug, None, None)),
            false => table.reapply().map(|(seal, before)| (slug, Some(seal), before)),
        });
        for result in resealed {
            if let (slug, Some(seal), before) = result? {
                if let Some((now, tried)) = before {
                    self.denied.record(&slug, seal.netns, now, &tried);
                }
                self.records.save_seal(&slug, &seal)?;
            }
        }
        Ok(())
    }

    /// The host table, for adding or removing one gate's allowlist (which
    /// leaves the base chains alone, so their shape does not matter).
    pub(crate) fn host_firewall(&self) -> Firewall {
        Firewall::of(&self.settings, false, false)
    }

    /// The state of one gate, from systemd, the kernel and its record,
    /// with its forwarder's counters.
    pub async fn status(&self, systemd: &Systemd, slug: &Slug) -> Result<GateStatus> {
        let units = systemd.gate_units(slug).await?;
        Ok(with_counters(GateStatus::assemble(slug, self.facts(slug, units))))
    }

    /// The states of every gate that has a record, a unit or a netns.
    pub async fn list(&self, systemd: &Systemd) -> Result<Vec<GateStatus>> {
        let units = systemd.all_gate_units().await?;
        let mut slugs: Vec<Slug> = self.records.slugs();
        let from_units = units.iter().filter_map(|u| plan::slug_of_unit(&u.name));
        let from_netns = netns::list(plan::GATE_PREFIX)
            .into_iter()
            .filter_map(|n| plan::slug_of_netns(&n));
        slugs.extend(from_units.chain(from_netns));
        slugs.sort();
        slugs.dedup();
        Ok(slugs
            .into_iter()
            .map(|slug| {
                let facts = self.facts(&slug, GateUnits::of(&slug, &units));
                with_counters(GateStatus::assemble(&slug, facts))
            })
            .collect())
    }

    /// What the kernel and gatectl's state say of the gate of `slug`,
    /// with its `units` as systemd reported them.
    pub(crate) fn facts(&self, slug: &Slug, units: GateUnits) -> GateFacts {
        let record = match self.records.load(slug) {
            Ok(Some(record)) => RecordFact::Present(Box::new(record)),
            Ok(None) => RecordFact::Absent,
            Err(e) => RecordFact::Corrupt(e.to_string()),
        };
        let busy = record.incomplete() && lock::slug_busy(&self.settings.state_dir, slug);
        GateFacts {
            units,
            record,
            netns_present: netns::exists(&plan::netns_name(slug)),
            busy,
        }
    }
}

/// What the gate netns of `slug`'s table denied so far and the
/// destinations tried within the last hour, with the inode of that netns
/// (which tells a restarted gate apart); `None` when the gate has no netns
/// or no table. Needs root (it enters the netns).
pub fn denied(slug: &Slug) -> Result<Option<(u64, Denied, Tried)>> {
    let path = Path::new(plan::NETNS_DIR).join(plan::netns_name(slug));
    let ns = netns::open(&path)?;
    let inode = nix::sys::stat::fstat(&ns)
        .map_err(|e| Error::failed(format!("cannot stat {}: {e}", path.display())))?
        .st_ino;
    Ok(netns::run_in(&ns, GateTable::denied)?.map(|(denied, tried)| (inode, denied, tried)))
}

/// `status` with its forwarder's counters, when the forwarder runs and
/// answers (see [`stats`](crate::forward::stats)); without them otherwise.
fn with_counters(mut status: GateStatus) -> GateStatus {
    if status.forwarder.is_active() && status.netns_present {
        let read =
            netns::open(&status.netns_path).and_then(|ns| netns::run_in(&ns, || stats::read(stats::SOCKET)));
        match read {
            Ok(counters) => status.counters = Some(counters),
            Err(e) => tracing::debug!(slug = %status.slug, error = %e, "no counters"),
        }
    }
    status
}

/// The host firewall allowlist of a gate: its egress link may reach exactly
/// the resolved upstream `address:port` pairs.
pub fn gate_rules(plan: &GatePlan) -> GateRules {
    GateRules {
        egress_if: plan.host_egress.name.clone(),
        allowed: plan.upstream_pairs().collect(),
    }
}
