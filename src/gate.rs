//! The gate lifecycle: prepare a plan, bring a gate up step by step (rolling
//! everything back if a step fails), tear it down idempotently, and report
//! its state from systemd and the kernel.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Settings;
use crate::error::{Context, Error, Result};
use crate::lock;
use crate::manifest::{self, Manifest};
use crate::net::firewall::{Firewall, GateRules};
use crate::net::link::{Mark, Netlink, VethEnd};
use crate::net::{netns, sysctl};
use crate::plan::{self, GatePlan, HOST_EGRESS_PREFIX, HOST_INTERNAL_PREFIX, LINK_PREFIX_LEN};
use crate::resolve;
use crate::slug::Slug;
use crate::state::{self, GateRecord, Records};
use crate::systemd::{GateUnits, Systemd, UnitState};
use crate::timings::{timed, Timings};
use crate::unit;

/// Marker file: gatectl turned IPv4 forwarding on, so the firewall keeps the
/// host from forwarding anything but gate traffic.
pub(crate) const FORWARDING_MARKER: &str = "ip_forward-enabled-by-gatectl";

/// The link alias that marks a host-side link as belonging to `slug`.
pub fn link_alias(slug: &Slug) -> String {
    format!("gatectl:{slug}")
}

/// The slug a link alias names, if it is one of [`link_alias`].
pub fn slug_of_link_alias(alias: &str) -> Option<Slug> {
    Slug::parse(alias.strip_prefix("gatectl:")?).ok()
}

/// The host: its settings and its record store.
pub struct Host {
    /// Host settings.
    pub settings: Settings,
    /// Gate records.
    pub records: Records,
}

impl Host {
    /// Loads the host settings.
    pub fn load() -> Result<Host> {
        let settings = Settings::load()?;
        let records = Records::new(&settings.state_dir);
        Ok(Host { settings, records })
    }

    /// The manifest of `slug`: `manifest` if given, else the default path.
    pub fn manifest(&self, slug: &Slug, manifest: Option<&Path>) -> Result<Manifest> {
        let path = match manifest {
            Some(p) => p.to_path_buf(),
            None => manifest::default_path(&self.settings.bottles_dir, slug.as_str())?,
        };
        manifest::load(&path)
    }

    /// Builds the plan `start` would carry out for `slug` at gate `index`,
    /// resolving upstream names on the host. Changes nothing.
    pub fn plan(
        &self,
        slug: &Slug,
        manifest: &Manifest,
        agent_netns: Option<&str>,
        index: u32,
    ) -> Result<GatePlan> {
        if let Some(ns) = agent_netns {
            manifest::validate_netns_ref(ns).map_err(|e| Error::invalid(format!("--agent-netns: {e}")))?;
        }
        GatePlan::build(
            slug,
            manifest,
            &self.settings,
            index,
            agent_netns,
            resolve::resolve,
        )
    }

    /// The index the next gate would get: the first unclaimed one from
    /// where the last allocation ended (`start` also skips an index whose
    /// host link still exists).
    pub fn next_index(&self) -> Result<u32> {
        state::probe_order(self.records.index_hint(), self.settings.capacity())
            .find(|&index| !self.records.index_claimed(index))
            .ok_or_else(|| self.slots_full())
    }

    /// Claims a free gate index for `slug`, probing from where the last
    /// allocation ended, so a start does not read every claim. An index
    /// whose host link exists is skipped: a gate whose record was lost
    /// still holds it. Call it under the allocation lock.
    async fn claim_free_index(&self, root: &Netlink, slug: &Slug) -> Result<u32> {
        for index in state::probe_order(self.records.index_hint(), self.settings.capacity()) {
            if !self.records.claim_index(slug, index)? {
                continue;
            }
            let linked = async {
                for name in [plan::host_egress_link(index), plan::host_internal_link(index)] {
                    if root.find(&name).await?.is_some() {
                        return Ok(true);
                    }
                }
                Ok(false)
            };
            match linked.await {
                Ok(false) => return Ok(index),
                Ok(true) => self.records.release_index(index)?,
                Err(e) => {
                    // A claim left behind is removed by `gatectl prune`.
                    let _ = self.records.release_index(index);
                    return Err(e);
                }
            }
        }
        Err(self.slots_full())
    }

    fn slots_full(&self) -> Error {
        Error::failed(format!(
            "all {} gate slots are in use; stop a gate or enlarge the address pools",
            self.settings.capacity()
        ))
    }

    /// The host firewall, as configured for this host now.
    pub(crate) fn firewall(&self) -> Firewall {
        host_firewall(&self.settings)
    }

    /// Starts the gate of `slug`. Validates everything before the first side
    /// effect; on failure rolls back everything it created.
    /// Each step's duration goes to `timings`.
    pub async fn start(
        &self,
        slug: &Slug,
        manifest: &Manifest,
        agent_netns: Option<&str>,
        timings: &mut Timings,
    ) -> Result<GatePlan> {
        // Everything that only reads comes before the first file is written.
        self.settings.check_forwarder_binary()?;
        let draft = self.plan(slug, manifest, agent_netns, 0)?;
        let agent_ns = match &draft.agent_netns {
            Some(path) => Some(netns::open(path).map_err(|e| {
                Error::invalid(format!(
                    "agent network namespace {}: {e}; create it first or fix agent_netns / --agent-netns",
                    path.display()
                ))
            })?),
            None => None,
        };
        timings.mark("plan: resolve upstreams, open the agent netns");
        let _slug_lock = lock::lock_slug(&self.settings.state_dir, slug)?;
        let systemd = Systemd::connect().await?;
        timings.mark("lock the slug, connect to systemd");
        // Holding the slug lock, an incomplete record is a start that died.
        let record = self.records.load(slug);
        let interrupted = matches!(&record, Ok(Some(r)) if !r.complete);
        if let Some(unit) = systemd.gate_units(slug).await?.loaded().find(|u| u.is_up()) {
            if !interrupted {
                return Err(Error::failed(format!(
                    "gate {slug} is already running ({} is {}); run `gatectl stop {slug}` first",
                    unit.name, unit.active
                )));
            }
        }
        let root = Netlink::current()?;
        // The first gate checks the whole pools against the host's routes (a
        // dump, short while no gate is up); later ones check only the
        // addresses they take, by lookups once their index is known, so the
        // cost of a start does not grow with the number of gates.
        let first = !self.records.any_index_claimed();
        if first {
            root.check_pool_free(
                "internal_pool",
                self.settings.internal_pool,
                &[HOST_INTERNAL_PREFIX],
            )
            .await?;
            root.check_pool_free("egress_pool", self.settings.egress_pool, &[HOST_EGRESS_PREFIX])
                .await?;
        }

        timings.mark("check the address pools against host routes");
        if !matches!(record, Ok(None)) || netns::exists(&plan::netns_name(slug)) {
            // Left over from a start that died or a gate whose unit is gone.
            self.stop_locked(&systemd, slug, &mut Timings::default())
                .await
                .map_err(|e| {
                    Error::failed(format!(
                        "cannot clean up what an earlier start of {slug} left behind: {e}"
                    ))
                })?;
        }

        let plan = {
            let _alloc = lock::lock_allocation(&self.settings.state_dir)?;
            let index = self.claim_free_index(&root, slug).await?;
            let plan = draft.at_index(&self.settings, index);
            let placed = async {
                if !first {
                    if plan.agent_in_root_ns() {
                        let internal = [plan.agent_link.address, plan.gate_internal.address];
                        root.check_addresses_free(
                            "internal_pool",
                            self.settings.internal_pool,
                            &internal,
                            &[HOST_INTERNAL_PREFIX],
                        )
                        .await?;
                    }
                    let egress = [plan.host_egress.address, plan.gate_egress.address];
                    root.check_addresses_free(
                        "egress_pool",
                        self.settings.egress_pool,
                        &egress,
                        &[HOST_EGRESS_PREFIX],
                    )
                    .await?;
                }
                self.records.set_index_hint(index + 1)?;
                self.records.save(&GateRecord {
                    plan: plan.clone(),
                    complete: false,
                })
            };
            if let Err(e) = placed.await {
                // A claim left behind is removed by `gatectl prune`.
                let _ = self.records.release_index(index);
                return Err(e);
            }
            plan
        };
        timings.mark("allocate the gate index, check its addresses' routes, write the record");
        let result = self
            .bring_up(&systemd, &root, &plan, agent_ns.as_ref(), timings)
            .await;
        match result {
            Ok(()) => {
                self.records.save(&GateRecord {
                    plan: plan.clone(),
                    complete: true,
                })?;
                Ok(plan)
            }
            Err((step, source)) => {
                let rollback = match self.teardown(&systemd, &plan, timings).await {
                    Ok(()) => match self.records.remove(slug) {
                        Ok(()) => Vec::new(),
                        Err(e) => vec![e],
                    },
                    Err(Error::List(errors)) => errors,
                    Err(e) => vec![e],
                };
                Err(Error::Start {
                    step,
                    source: Box::new(source),
                    rollback,
                })
            }
        }
    }

    async fn bring_up(
        &self,
        systemd: &Systemd,
        root: &Netlink,
        plan: &GatePlan,
        agent_ns: Option<&std::os::fd::OwnedFd>,
        timings: &mut Timings,
    ) -> Result<(), (&'static str, Error)> {
        let alias = link_alias(&plan.slug);
        let gate_ns = netns::create(&plan.netns).map_err(|e| ("create the gate netns", e))?;
        timings.mark("create the gate netns");
        let step = "create the veth pairs";
        let pairs = [(&plan.host_egress, None), (&plan.agent_link, agent_ns)];
        for (outer, gate_end) in pairs.into_iter().zip([&plan.gate_egress, &plan.gate_internal]) {
            let (outer, outer_ns) = outer;
            let outer = VethEnd {
                name: &outer.name,
                netns: outer_ns,
            };
            let inner = VethEnd {
                name: &gate_end.name,
                netns: Some(&gate_ns),
            };
            root.create_veth(outer, inner).await.map_err(|e| (step, e))?;
        }

        timings.mark(step);
        let step = "configure the host side";
        root.configure(
            &plan.host_egress.name,
            Some((plan.host_egress.address, LINK_PREFIX_LEN)),
            Mark::Alias(&alias),
        )
        .await
        .map_err(|e| (step, e))?;
        let agent = match agent_ns {
            Some(ns) => Netlink::in_netns(ns).map_err(|e| ("configure the agent side", e))?,
            None => root.clone(),
        };
        agent
            .configure(
                &plan.agent_link.name,
                Some((plan.agent_link.address, LINK_PREFIX_LEN)),
                Mark::Alias(&alias),
            )
            .await
            .map_err(|e| ("configure the agent side", e))?;

        timings.mark("configure the host and agent sides");
        let step = "configure the gate netns";
        let gate = Netlink::in_netns(&gate_ns).map_err(|e| (step, e))?;
        gate.configure("lo", None, Mark::None)
            .await
            .map_err(|e| (step, e))?;
        for end in [&plan.gate_internal, &plan.gate_egress] {
            let address = Some((end.address, LINK_PREFIX_LEN));
            gate.configure(&end.name, address, Mark::Group(plan::GATE_LINK_GROUP))
                .await
                .map_err(|e| (step, e))?;
        }
        gate.add_default_route(plan.host_egress.address)
            .await
            .map_err(|e| (step, e))?;
        // A new netns copies the host's forwarding flag; a gate never routes.
        netns::run_in(&gate_ns, sysctl::disable_ipv4_forwarding).map_err(|e| (step, e))?;
        drop(gate_ns);

        timings.mark(step);
        // The host's side and the units, at once: both mostly wait (the
        // kernel for an RCU grace period after the firewall commit, systemd
        // for the socket unit). A connection accepted before the firewall is
        // in place cannot reach the upstream yet: the order fails closed.
        let host_side = timed(tokio::task::spawn_blocking({
            let (settings, rules) = (self.settings.clone(), gate_rules(plan));
            move || open_host_path(&settings, &rules)
        }));
        let (socket_unit, socket) = (plan.socket_unit(), unit::socket_properties(plan));
        let service = unit::properties(plan, &self.settings);
        let aux = [(plan.unit.as_str(), service.as_slice())];
        let units = timed(systemd.start_transient(&socket_unit, &socket, &aux));
        let ((host_side, host_took), (units, units_took)) = tokio::join!(host_side, units);
        joined(host_side).map_err(|e| ("set up host forwarding and firewall", e))?;
        units.map_err(|e| ("start the gate's socket unit", e))?;
        timings.mark_parallel(
            "set up host forwarding and firewall; start the socket unit",
            &[
                ("host forwarding and firewall", host_took),
                (
                    "the socket unit (listening; the forwarder starts at the first connection)",
                    units_took,
                ),
            ],
        );
        Ok(())
    }

    /// Removes everything of the gate in `plan`: units, firewall rules and
    /// links, then the netns. Idempotent; keeps going past
    /// failures and reports them all.
    async fn teardown(&self, systemd: &Systemd, plan: &GatePlan, timings: &mut Timings) -> Result<()> {
        // Units, firewall rules and the gate's links at once: each mostly
        // waits (for systemd, or the kernel's RCU grace periods), and the
        // gate's index stays claimed until the record goes, so no other gate
        // can take its link names or allowlist meanwhile.
        let firewall = timed(tokio::task::spawn_blocking({
            let (firewall, egress_if) = (self.firewall(), plan.host_egress.name.clone());
            move || firewall.remove_gate(&egress_if)
        }));
        let socket_unit = plan.socket_unit();
        let unit_names = [socket_unit.as_str(), plan.unit.as_str()];
        let units = timed(systemd.stop(&unit_names));
        // The gate's link ends, with their peers (the host's egress end and
        // the agent's end), in one kernel batch. The kernel would destroy
        // them with an unmounted netns too, but asynchronously, and the
        // agent's end must be gone when `stop` returns.
        let links = timed(tokio::task::spawn_blocking({
            let netns = plan.netns.clone();
            // A thread and runtime of its own: the kernel answers the
            // deletion only after an RCU grace period, and this runtime must
            // meanwhile go on talking to systemd.
            move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start a runtime to delete the gate's links")?
                    .block_on(delete_gate_links(&netns))
            }
        }));
        let ((firewall, firewall_took), (units, units_took), (links, links_took)) =
            tokio::join!(firewall, units, links);
        let mut errors: Vec<Error> = [units, joined(firewall), joined(links)]
            .into_iter()
            .filter_map(Result::err)
            .collect();
        timings.mark_parallel(
            "stop the units, remove the firewall rules, delete the links",
            &[
                ("stop the socket and forwarder units", units_took),
                ("remove the firewall rules", firewall_took),
                ("delete the gate's links and their peers", links_took),
            ],
        );
        // What is left if the gate netns was already gone: the outer ends,
        // if they are this gate's.
        match Netlink::current() {
            Ok(root) => {
                let mut host_links = vec![plan.host_egress.name.clone()];
                if plan.agent_in_root_ns() {
                    host_links.push(plan.agent_link.name.clone());
                }
                for name in host_links {
                    if let Err(e) = delete_own_link(&root, &name, &plan.slug).await {
                        errors.push(e);
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        if let Some(agent_ns) = plan.agent_netns.as_deref().filter(|p| p.exists()) {
            if let Err(e) = delete_agent_link(agent_ns, &plan.agent_link.name, &plan.slug).await {
                errors.push(e);
            }
        }
        if let Err(e) = netns::delete(&plan.netns) {
            errors.push(e);
        }
        timings.mark("delete what the gate netns no longer held, and the netns");
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::List(errors))
        }
    }

    /// Stops the gate of `slug`: unit, firewall rules, links, netns and
    /// record. A gate that is already gone is success.
    /// Each step's duration goes to `timings`.
    pub async fn stop(&self, slug: &Slug, timings: &mut Timings) -> Result<()> {
        let _slug_lock = lock::lock_slug(&self.settings.state_dir, slug)?;
        let systemd = Systemd::connect().await?;
        timings.mark("lock the slug, connect to systemd");
        self.stop_locked(&systemd, slug, timings).await?;
        timings.mark("remove the record");
        Ok(())
    }

    /// [`Host::stop`] for a caller that holds the slug lock.
    /// Each step's duration goes to `timings`.
    pub(crate) async fn stop_locked(
        &self,
        systemd: &Systemd,
        slug: &Slug,
        timings: &mut Timings,
    ) -> Result<()> {
        // A corrupt record is treated like a missing one.
        match self.records.load(slug).ok().flatten() {
            Some(record) => self.teardown(systemd, &record.plan, timings).await?,
            None => {
                // No record (e.g. /run/gatectl was wiped): remove what the
                // names alone identify.
                systemd
                    .stop(&[&plan::socket_unit_name(slug), &plan::unit_name(slug)])
                    .await?;
                let root = Netlink::current()?;
                let ours = link_alias(slug);
                for (name, alias) in root.links_with_prefix("gt").await? {
                    if alias.as_deref() == Some(ours.as_str()) {
                        self.firewall().remove_gate(&name)?;
                        root.delete(&name).await?;
                    }
                }
                delete_gate_links(&plan::netns_name(slug)).await?;
                netns::delete(&plan::netns_name(slug))?;
            }
        }
        self.records.remove(slug)
    }

    /// Re-applies the firewall rules of every running gate from its record,
    /// e.g. after `nft flush ruleset` or a restart of nftables.service.
    /// Returns the slugs whose rules were applied.
    pub async fn reconcile(&self) -> Result<Vec<Slug>> {
        let systemd = Systemd::connect().await?;
        let firewall = self.firewall();
        firewall.ensure_base()?;
        let mut applied = Vec::new();
        for slug in self.records.slugs() {
            let _slug_lock = lock::lock_slug(&self.settings.state_dir, &slug)?;
            let Some(record) = self.records.load(&slug).ok().flatten() else {
                continue;
            };
            let running = systemd
                .gate_units(&slug)
                .await?
                .socket
                .is_some_and(|u| u.is_active());
            if record.complete && running {
                firewall.add_gate(&gate_rules(&record.plan))?;
                applied.push(slug);
            }
        }
        Ok(applied)
    }

    /// The state of one gate, from systemd, the kernel and its record.
    pub async fn status(&self, systemd: &Systemd, slug: &Slug) -> Result<GateStatus> {
        let units = systemd.gate_units(slug).await?;
        Ok(self.assemble_status(slug, units))
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
                let gate_units = GateUnits::of(&slug, &units);
                self.assemble_status(&slug, gate_units)
            })
            .collect())
    }

    fn assemble_status(&self, slug: &Slug, units: GateUnits) -> GateStatus {
        let (record, record_problem) = match self.records.load(slug) {
            Ok(r) => (r, None),
            Err(e) => (None, Some(e.to_string())),
        };
        let netns_present = netns::exists(&plan::netns_name(slug));
        let mut problems: Vec<String> = record_problem.into_iter().collect();
        if let Some(r) = &record {
            if !r.complete {
                problems.push(if lock::slug_busy(&self.settings.state_dir, slug) {
                    "a gatectl start or stop of this gate is running now".into()
                } else {
                    format!("an earlier start was interrupted; run `gatectl stop {slug}` or start it again")
                });
            }
        }
        let anything = units.loaded().next().is_some() || record.is_some() || netns_present;
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
        if !netns_present && (units.socket.is_some() || record.is_some()) {
            problems.push(format!("network namespace {} is missing", plan::netns_name(slug)));
        }
        let state = if !anything {
            GateState::Stopped
        } else if problems.is_empty() {
            GateState::Running
        } else {
            GateState::Broken
        };
        GateStatus {
            slug: slug.clone(),
            state,
            problems,
            unit: units
                .socket
                .unwrap_or_else(|| UnitState::not_loaded(plan::socket_unit_name(slug))),
            forwarder: units
                .service
                .unwrap_or_else(|| UnitState::not_loaded(plan::unit_name(slug))),
            netns: plan::netns_name(slug),
            netns_path: Path::new(plan::NETNS_DIR).join(plan::netns_name(slug)),
            netns_present,
            plan: record.map(|r| r.plan),
        }
    }
}

/// The firewall allowlist of a gate: its egress link may reach exactly the
/// resolved upstream `address:port` pairs.
pub fn gate_rules(plan: &GatePlan) -> GateRules {
    GateRules {
        egress_if: plan.host_egress.name.clone(),
        allowed: plan
            .upstreams
            .iter()
            .flat_map(|u| {
                u.addresses
                    .iter()
                    .map(move |a| std::net::SocketAddr::new(*a, u.port))
            })
            .collect(),
    }
}

/// The result of a task run with `spawn_blocking`.
fn joined<T>(task: std::result::Result<Result<T>, tokio::task::JoinError>) -> Result<T> {
    task.unwrap_or_else(|e| Err(Error::failed(format!("a gatectl task failed: {e}"))))
}

/// The host firewall as `settings` and the forwarding marker configure it.
fn host_firewall(settings: &Settings) -> Firewall {
    Firewall {
        egress_pool: settings.egress_pool,
        block_other_forwarding: settings.state_dir.join(FORWARDING_MARKER).exists(),
    }
}

/// Lets the host forward a gate's egress: the marker if gatectl is the one
/// turning forwarding on, then the firewall rules of `rules` (which block
/// other forwarding when the marker is there), and only then forwarding, so
/// that the host never forwards without gatectl's rules.
fn open_host_path(settings: &Settings, rules: &GateRules) -> Result<()> {
    if !sysctl::ipv4_forwarding()? {
        let marker = settings.state_dir.join(FORWARDING_MARKER);
        std::fs::write(&marker, b"").map_err(|e| Error::Io {
            context: format!("cannot write {}", marker.display()),
            source: e,
        })?;
    }
    host_firewall(settings).add_gate(rules)?;
    sysctl::enable_ipv4_forwarding()?;
    Ok(())
}

/// Deletes the gate's ends of both veth pairs (and with them their peers),
/// if the gate netns still exists.
async fn delete_gate_links(netns_name: &str) -> Result<()> {
    if !netns::exists(netns_name) {
        return Ok(());
    }
    let gate = Netlink::in_netns(&netns::open(&plan::netns_path(netns_name))?)?;
    gate.delete_group(plan::GATE_LINK_GROUP).await
}

/// Deletes the agent's end `name` in the agent netns at `path`, if it is
/// labelled as `slug`'s (the veth peer in the gate netns goes with it).
async fn delete_agent_link(path: &Path, name: &str, slug: &Slug) -> Result<()> {
    let Ok(ns) = netns::open(path) else {
        return Ok(());
    };
    delete_if_ours(&Netlink::in_netns(&ns)?, name, slug, false).await
}

/// Deletes host link `name` if it is unlabelled or labelled as `slug`'s.
async fn delete_own_link(root: &Netlink, name: &str, slug: &Slug) -> Result<()> {
    delete_if_ours(root, name, slug, true).await
}

/// Deletes link `name` if it carries `slug`'s alias, or no alias at all
/// when `unlabelled_too`.
async fn delete_if_ours(netlink: &Netlink, name: &str, slug: &Slug, unlabelled_too: bool) -> Result<()> {
    let ours = match netlink.alias_of(name).await? {
        None => false,
        Some(None) => unlabelled_too,
        Some(Some(alias)) => alias == link_alias(slug),
    };
    if ours {
        netlink.delete(name).await
    } else {
        Ok(())
    }
}

/// Whether a gate is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GateState {
    /// Unit running, netns present, record complete.
    Running,
    /// Some part exists but the gate is not whole; `problems` says why.
    Broken,
    /// Nothing of the gate exists.
    Stopped,
}

/// What `status` and `list` report for one gate.
#[derive(Debug, Clone, Serialize)]
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
}
