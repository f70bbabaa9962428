//! `start`: everything that only reads comes first (the spec, the agent
//! netns, the pools); then the gate index is claimed and the record written;
//! then the gate is brought up as a list of steps, each registering what
//! undoes it, and a failure rolls back exactly what was created.

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::steps::{Part, StepError, Steps, Undo};
use super::{gate_rules, link_alias, slug_of_link_alias, Host};
use crate::error::{Error, Result};
use crate::forward::RoutesFile;
use crate::lock;
use crate::net::firewall::gate::GateTable;
use crate::net::link::{Created, Netlink, VethEnd};
use crate::net::{netns, sysctl};
use crate::plan::{
    self, GatePlan, GateSpec, AGENT_LINK, AGENT_LINK_GROUP, GATE_EGRESS_LINK, GATE_LINK_GROUP,
    HOST_EGRESS_GROUP, LINK_PREFIX_LEN, LINK_PREFIX_LEN6,
};
use crate::state::{self, GateRecord, Records};
use crate::systemd::{Prestart, Systemd};
use crate::timings::Timings;
use crate::unit;

/// What a `start` did.
#[derive(Debug)]
pub enum Started {
    /// The gate was brought up.
    New(GatePlan),
    /// The gate was already running with this very spec (the same
    /// upstreams, addresses and agent netns): nothing changed.
    Unchanged(GatePlan),
}

/// What a `start` finds of an earlier gate of its slug.
enum Earlier {
    /// Nothing.
    Nothing,
    /// Remains of a start that died or of a gate whose unit is gone.
    Leftovers,
    /// A whole gate running with the same spec.
    Same(Box<GatePlan>),
}

/// One `start` on a host.
pub struct Start<'h> {
    /// The host.
    pub host: &'h Host,
}

impl Start<'_> {
    /// Starts the gate of `spec`; see [`Host::start`].
    pub async fn run(&self, spec: &GateSpec, timings: &mut Timings) -> Result<Started> {
        let host = self.host;
        let slug = &spec.slug;
        host.settings.check_forwarder_binary()?;
        // gatectl deletes an agent netns it owns at stop, so it owns only
        // one it created: an existing one must be in this slug's record.
        if let (true, Some(path)) = (spec.agent_netns_owned, spec.agent_netns.as_deref()) {
            let ours = matches!(host.records.load(slug), Ok(Some(r))
                if r.plan.agent_netns_owned && r.plan.agent_netns.as_deref() == Some(path));
            if path.exists() && !ours {
                return Err(Error::invalid(format!(
                    "agent netns {} exists and gatectl did not create it for {slug}, yet it would delete it at \
                     stop; remove own_agent_netns, or name a netns that does not exist yet",
                    path.display()
                )));
            }
        }
        // An agent netns gatectl owns and that is missing is created by a
        // step below; any other is checked and opened now.
        let owned_and_missing = |path: &Path| spec.agent_netns_owned && !path.exists();
        let mut agent_ns = match &spec.agent_netns {
            Some(path) if owned_and_missing(path) => None,
            Some(path) => Some(open_agent_netns(path, slug).await?),
            None => None,
        };
        timings.mark("check the forwarder binary and the agent netns");
        let _slug_lock = lock::lock_slug(&host.settings.state_dir, slug)?;
        let systemd = Systemd::connect().await?;
        timings.mark("lock the slug, connect to systemd");
        let leftovers = match self.earlier_gate(&systemd, spec).await? {
            Earlier::Same(plan) => {
                host.ssh_includes.write(&plan)?;
                return Ok(Started::Unchanged(*plan));
            }
            Earlier::Leftovers => true,
            Earlier::Nothing => false,
        };
        let root = Netlink::current()?;
        let first = self.check_pools_if_first(&root).await?;
        if spec.uses_ipv6() {
            // One dump of the IPv6 routes, for gates with IPv6 only.
            let pool6 = host.settings.egress_pool6.into();
            if let Some(route) = root.route_overlapping(pool6, &[HOST_EGRESS_GROUP]).await? {
                return Err(overlap("egress_pool6", pool6, route));
            }
        }
        timings.mark("check the address pools against host routes");
        if leftovers {
            host.teardown(&systemd)
                .gate(slug, &mut Timings::default())
                .await
                .map_err(|e| {
                    Error::failed(format!(
                        "cannot clean up what an earlier start of {slug} left behind: {e}"
                    ))
                })?;
            // The clean-up deletes an owned agent netns of that start.
            if spec.agent_netns.as_deref().is_some_and(owned_and_missing) {
                agent_ns = None;
            }
        }
        let plan = self.place(&root, spec, first).await?;
        timings.mark("allocate the gate index, check its addresses' routes, write the record");

        let mut steps = Steps::new(timings);
        let brought_up = self.bring_up(&mut steps, &systemd, &root, &plan, agent_ns).await;
        match brought_up.and_then(|()| self.finish(&plan)) {
            Ok(()) => Ok(Started::New(plan)),
            Err(StepError { step, error }) => {
                let undos = steps.into_undos();
                let rollback = host.teardown(&systemd).undo(&plan, &undos).await;
                Err(Error::Start {
                    step,
                    source: Box::new(error),
                    rollback,
                })
            }
        }
    }

    /// The last step of a start: the agent's ssh_config include, the first
    /// DNS refresh's schedule, then the record that says the start is
    /// complete.
    fn finish(&self, plan: &GatePlan) -> std::result::Result<(), StepError> {
        let host = self.host;
        host.ssh_includes
            .write(plan)
            .and_then(|()| host.schedule_refresh(&plan.slug))
            .and_then(|()| host.records.save(&GateRecord::new(plan.clone(), true)))
            .map_err(|error| StepError {
                step: "write the ssh_config include and the record",
                error,
            })
    }

    /// What is left of an earlier gate of the spec's slug. A gate that is
    /// up and whole with the same spec is [`Earlier::Same`] (so `start` is
    /// idempotent, as `systemctl start gatectl@SLUG` after a hand start
    /// needs); one that is up otherwise is refused, unless its record says
    /// an earlier start died (holding the slug lock, an incomplete record
    /// means that).
    async fn earlier_gate(&self, systemd: &Systemd, spec: &GateSpec) -> Result<Earlier> {
        let slug = &spec.slug;
        let record = self.host.records.load(slug);
        let interrupted = matches!(&record, Ok(Some(r)) if !r.complete);
        if let Some(unit) = systemd.gate_units(slug).await?.loaded().find(|u| u.is_up()) {
            if !interrupted {
                return match &record {
                    Ok(Some(r))
                        if r.plan.agent_netns == spec.agent_netns
                            && r.plan.agent_netns_owned == spec.agent_netns_owned
                            && r.plan.upstreams == spec.upstreams =>
                    {
                        if netns::exists(&r.plan.netns) {
                            Ok(Earlier::Same(Box::new(r.plan.clone())))
                        } else {
                            Err(Error::failed(format!(
                                "gate {slug} is already running ({} is {}) but broken: its network namespace \
                                 {} is missing; run `gatectl stop {slug}` first",
                                unit.name, unit.active, r.plan.netns
                            )))
                        }
                    }
                    Ok(Some(r))
                        if r.plan.agent_netns == spec.agent_netns
                            && r.plan.agent_netns_owned == spec.agent_netns_owned =>
                    {
                        Err(Error::failed(format!(
                            "gate {slug} is already running ({} is {}) with another manifest or other \
                             upstream addresses; to apply them without dropping its sessions, run \
                             `gatectl reload {slug}`",
                            unit.name, unit.active
                        )))
                    }
                    Ok(Some(_)) => Err(Error::failed(format!(
                        "gate {slug} is already running ({} is {}) with another agent netns; to move it, \
                         run `gatectl stop {slug}`, then `gatectl start {slug}`",
                        unit.name, unit.active
                    ))),
                    _ => Err(Error::failed(format!(
                        "gate {slug} is already running ({} is {}); run `gatectl stop {slug}` first",
                        unit.name, unit.active
                    ))),
                };
            }
        }
        Ok(
            if !matches!(record, Ok(None)) || netns::exists(&plan::netns_name(slug)) {
                Earlier::Leftovers
            } else {
                Earlier::Nothing
            },
        )
    }

    /// The first gate checks the whole pools against the host's routes (a
    /// dump, short while no gate is up); later ones check only the
    /// addresses they take, by lookups once their index is known (see
    /// [`Start::place`]), so the cost of a start does not grow with the
    /// number of gates. Returns whether this is the first gate.
    async fn check_pools_if_first(&self, root: &Netlink) -> Result<bool> {
        let first = !self.host.records.any_index_claimed();
        if first {
            for (setting, pool, own) in pools(self.host) {
                if let Some(route) = root.route_overlapping(pool.into(), &[own]).await? {
                    return Err(overlap(setting, pool.into(), route));
                }
            }
        }
        Ok(first)
    }

    /// Claims a gate index, places the spec there, checks the addresses it
    /// takes (after the first gate) and writes the record, all under the
    /// allocation lock.
    async fn place(&self, root: &Netlink, spec: &GateSpec, first: bool) -> Result<GatePlan> {
        let host = self.host;
        let _alloc = lock::lock_allocation(&host.settings.state_dir)?;
        let index = self.claim_free_index(root, &spec.slug).await?;
        let placed = async {
            let plan = spec.place(&host.settings, index)?;
            if !first {
                let internal = [plan.agent_link.address, plan.gate_internal.address];
                let egress = [plan.host_egress.address, plan.gate_egress.address];
                for ((setting, pool, own), addresses) in pools(host).into_iter().zip([internal, egress]) {
                    // The agent's end in an agent netns uses no host route.
                    if setting == "internal_pool" && !plan.agent_in_root_ns() {
                        continue;
                    }
                    if let Some(route) = root.route_covering(pool, &addresses, &[own]).await? {
                        return Err(overlap(setting, pool.into(), route));
                    }
                }
            }
            host.records.set_index_hint(index + 1)?;
            host.records.save(&GateRecord::new(plan.clone(), false))?;
            Ok(plan)
        };
        match placed.await {
            Ok(plan) => Ok(plan),
            Err(e) => {
                // A claim left behind is removed by `gatectl prune`.
                let _ = host.records.release_index(index);
                Err(e)
            }
        }
    }

    /// Claims a free gate index for `slug`, probing from where the last
    /// allocation ended, so a start does not read every claim. An index
    /// whose host link name exists is skipped, whoever owns the link: a
    /// gate whose record was lost still holds it. Call it under the
    /// allocation lock.
    async fn claim_free_index(&self, root: &Netlink, slug: &crate::slug::Slug) -> Result<u32> {
        let records = &self.host.records;
        for index in state::probe_order(records.index_hint(), self.host.settings.capacity()) {
            if !records.claim_index(slug, index)? {
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
                Ok(true) => records.release_index(index)?,
                Err(e) => {
                    // A claim left behind is removed by `gatectl prune`.
                    let _ = records.release_index(index);
                    return Err(e);
                }
            }
        }
        Err(self.host.slots_full())
    }

    /// The steps that bring the gate of `plan` up, each with what undoes it.
    async fn bring_up(
        &self,
        steps: &mut Steps<'_>,
        systemd: &Systemd,
        root: &Netlink,
        plan: &GatePlan,
        agent_ns: Option<OwnedFd>,
    ) -> Result<(), StepError> {
        let agent_ns = match (agent_ns, plan.owned_agent_netns()) {
            (None, Some(name)) => Some(
                steps
                    .run(
                        "create the agent netns gatectl owns",
                        Some(Undo::AgentNetns),
                        async { netns::create(name) },
                    )
                    .await?,
            ),
            (agent_ns, _) => agent_ns,
        };
        let agent_ns = agent_ns.as_ref();
        let gate_ns = steps
            .run("create the gate netns", Some(Undo::Netns), async {
                netns::create(&plan.netns)
            })
            .await?;
        let settle =
            "settle the gate netns: forwarding, IPv6 and router advertisements off, its own allowlist";
        steps
            .run(
                settle,
                None,
                settle_gate_netns(&self.host.records, plan, &gate_ns),
            )
            .await?;
        steps
            .run(
                "create the veth pairs",
                Some(Undo::Links),
                create_veth_pairs(root, plan, agent_ns, &gate_ns),
            )
            .await?;
        steps
            .run(
                "configure the host and agent sides",
                None,
                configure_outer_ends(root, plan, agent_ns),
            )
            .await?;
        steps
            .run(
                "configure the gate netns",
                None,
                configure_gate_netns(plan, &gate_ns),
            )
            .await?;
        drop(gate_ns);
        // The host's side and the units, at once: both mostly wait (the
        // kernel for an RCU grace period after the firewall commit, systemd
        // for the socket unit). A connection accepted before the host path
        // is open cannot reach the upstream yet: the order fails closed.
        let host_path = Part {
            name: "set up host forwarding and firewall",
            undo: Some(Undo::HostRules),
            work: self.host.host_wide.open_for(gate_rules(plan)),
        };
        let units = Part {
            name: "start the gate's socket unit",
            undo: Some(Undo::Units),
            work: start_units(systemd, plan, &self.host.settings),
        };
        steps
            .run_both(
                "set up host forwarding and firewall; start the socket unit",
                host_path,
                units,
            )
            .await?;
        Ok(())
    }
}

/// Turns forwarding and IPv6 off in the new gate netns, before any link is
/// up, and gives it its own allowlist table, whose seal it keeps.
async fn settle_gate_netns(records: &Records, plan: &GatePlan, gate_ns: &OwnedFd) -> Result<()> {
    let table = GateTable::of(plan);
    let seal = netns::run_in(gate_ns, move || {
        sysctl::settle_gate_netns()?;
        table.create()
    })?;
    records.save_seal(&plan.slug, &seal)
}

/// Starts the gate's socket unit, with its service defined in the same
/// call, after making sure the hardening drop-in is in place and writing
/// the forwarder's routes file (removed with the record). With
/// `forwarder_prestart`, also queues the start of the forwarder (while the
/// socket's job runs; systemd runs it once the socket listens) without
/// waiting for it: its sandbox is set up while the agent gets ready, so the
/// first connection need not wait for it. That start is an optimisation
/// only: if it cannot be queued, the socket unit still starts the forwarder
/// at the first connection, so the start goes on.
async fn start_units(systemd: &Systemd, plan: &GatePlan, settings: &crate::config::Settings) -> Result<()> {
    unit::ensure_hardening_dropin()?;
    let routes = RoutesFile {
        generation: 1,
        routes: unit::forward_routes(plan),
    };
    routes.write_in(&state::routes_dir(&settings.state_dir, &plan.slug))?;
    let (socket_unit, socket) = (plan.socket_unit(), unit::socket_properties(plan));
    let service = unit::properties(plan, settings);
    let aux = [(plan.unit.as_str(), service.as_slice())];
    // Not while another gate's forwarder is still starting: in a burst of
    // starts (a boot, the benchmark's 500 gates), each forwarder's sandbox
    // set-up would hold up systemd and the CPU for the next start; those
    // forwarders start at their first connection instead.
    let prestart = settings.forwarder_prestart.then_some(Prestart {
        unit: &plan.unit,
        unless_activating: "gate-*.service",
    });
    if let Some(e) = systemd
        .start_transient(&socket_unit, &socket, &aux, prestart)
        .await?
    {
        eprintln!("gatectl: note: {e}; the forwarder will start at the gate's first connection instead");
    }
    Ok(())
}

/// Creates the gate's two veth pairs, each outer end with its device group
/// (the egress end in the host, the agent end in the agent netns or the
/// host) and each inner end in the gate netns with gatectl's gate group.
async fn create_veth_pairs(
    root: &Netlink,
    plan: &GatePlan,
    agent_ns: Option<&OwnedFd>,
    gate_ns: &OwnedFd,
) -> Result<()> {
    let egress = (
        &plan.host_egress.name,
        HOST_EGRESS_GROUP,
        None,
        &plan.gate_egress.name,
    );
    let internal = (
        &plan.agent_link.name,
        AGENT_LINK_GROUP,
        agent_ns,
        &plan.gate_internal.name,
    );
    for (outer, group, outer_ns, inner) in [egress, internal] {
        let created = root
            .create_veth(
                VethEnd {
                    name: outer,
                    group,
                    netns: outer_ns,
                },
                VethEnd {
                    name: inner,
                    group: GATE_LINK_GROUP,
                    netns: Some(gate_ns),
                },
            )
            .await?;
        if created == Created::NameTaken {
            return Err(Error::failed(format!(
                "cannot create veth pair {outer} / {inner}: a link of that name already exists; \
                 find its owner with `ip -d link show {outer}` (gatectl's links carry the alias \
                 gatectl:<slug>) and stop that gate"
            )));
        }
    }
    Ok(())
}

/// Gives the host's egress end and the agent end their addresses and the
/// alias that marks them as the gate's, and brings them up. IPv6 is on only
/// on a host end of a gate with IPv6 egress.
async fn configure_outer_ends(root: &Netlink, plan: &GatePlan, agent_ns: Option<&OwnedFd>) -> Result<()> {
    let alias = link_alias(&plan.slug);
    let address = |end: &plan::LinkEnd| Some((end.address, LINK_PREFIX_LEN));
    match plan.egress6 {
        Some(egress6) => {
            sysctl::settle_host_egress_ipv6(&plan.host_egress.name)?;
            root.add_address6(&plan.host_egress.name, egress6.host, LINK_PREFIX_LEN6)
                .await?;
        }
        None => sysctl::disable_link_ipv6(&plan.host_egress.name)?,
    }
    if plan.agent_in_root_ns() {
        sysctl::disable_link_ipv6(&plan.agent_link.name)?;
    }
    root.configure(&plan.host_egress.name, address(&plan.host_egress), Some(&alias))
        .await?;
    let agent = match agent_ns {
        Some(ns) => Netlink::in_netns(ns)?,
        None => root.clone(),
    };
    agent
        .configure(&plan.agent_link.name, address(&plan.agent_link), Some(&alias))
        .await
}

/// Brings up the gate netns's loopback and inner ends with their addresses,
/// and its default route via the host's egress end; with IPv6 egress, IPv6
/// on the egress end only, its /127 address and the IPv6 default route.
async fn configure_gate_netns(plan: &GatePlan, gate_ns: &OwnedFd) -> Result<()> {
    let gate = Netlink::in_netns(gate_ns)?;
    gate.configure("lo", None, None).await?;
    if let Some(egress6) = plan.egress6 {
        netns::run_in(gate_ns, || sysctl::enable_gate_ipv6(GATE_EGRESS_LINK))?;
        gate.add_address6(GATE_EGRESS_LINK, egress6.gate, LINK_PREFIX_LEN6)
            .await?;
    }
    for end in [&plan.gate_internal, &plan.gate_egress] {
        gate.configure(&end.name, Some((end.address, LINK_PREFIX_LEN)), None)
            .await?;
    }
    gate.add_default_route(plan.host_egress.address).await?;
    if let Some(egress6) = plan.egress6 {
        gate.add_default_route6(GATE_EGRESS_LINK, egress6.host).await?;
    }
    Ok(())
}

/// The address pools with their settings' names and the device group of
/// the host links that route them.
fn pools(host: &Host) -> [(&'static str, ipnet::Ipv4Net, u32); 2] {
    [
        ("internal_pool", host.settings.internal_pool, AGENT_LINK_GROUP),
        ("egress_pool", host.settings.egress_pool, HOST_EGRESS_GROUP),
    ]
}

/// The refusal of `pool`, the value of `setting`, for overlapping `route`.
pub(crate) fn overlap(setting: &str, pool: ipnet::IpNet, route: ipnet::IpNet) -> Error {
    Error::invalid(format!(
        "{setting} {pool} overlaps the host route {route}; choose a free range for {setting} in /etc/gatectl/gatectl.toml"
    ))
}

/// The refusal of an agent netns at `path` that does not exist, naming the
/// command that creates it; `None` when it exists.
pub fn missing_agent_netns(path: &Path) -> Option<Error> {
    if std::fs::symlink_metadata(path).is_ok() {
        return None;
    }
    let shown = path.display();
    let name = path
        .strip_prefix(plan::NETNS_DIR)
        .ok()
        .and_then(|n| n.to_str())
        .filter(|n| !n.contains('/'));
    Some(Error::invalid(match name {
        Some(name) => format!("agent netns {shown} does not exist; create it with `ip netns add {name}`"),
        None => format!("agent netns {shown} does not exist; fix agent_netns or --agent-netns"),
    }))
}

/// Opens the agent's network namespace at `path` for the gate of `slug`,
/// refusing one the agent must not have: the host's own, a gate's, or one
/// where another gate's agent end already lives. Changes nothing.
async fn open_agent_netns(path: &Path, slug: &crate::slug::Slug) -> Result<OwnedFd> {
    let shown = path.display();
    if let Some(missing) = missing_agent_netns(path) {
        return Err(missing);
    }
    let ns = netns::open(path).map_err(|e| Error::invalid(format!("agent netns: {e}")))?;
    let identity = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let this = identity(path);
    if this.is_some()
        && (this == identity(Path::new("/proc/1/ns/net")) || this == identity(Path::new("/proc/self/ns/net")))
    {
        return Err(Error::invalid(format!(
            "agent netns {shown} is the host's own network namespace: every local user could use the gate \
             and the agent would keep the host's network; give the agent a namespace of its own \
             (`ip netns add agent-{slug}`)"
        )));
    }
    let netlink = Netlink::in_netns(&ns)?;
    if !netlink.links_in_groups(&[GATE_LINK_GROUP]).await?.is_empty() {
        return Err(Error::invalid(format!(
            "agent netns {shown} is the network namespace of a gatectl gate; give the agent a namespace \
             of its own (`ip netns add agent-{slug}`)"
        )));
    }
    if let Some(link) = netlink.info(AGENT_LINK).await? {
        let owner = link.alias.as_deref().and_then(slug_of_link_alias);
        if owner.as_ref() != Some(slug) {
            let whose = match owner {
                Some(other) => format!("the agent end of gate {other}"),
                None => "a link of that name that is not gatectl's".to_string(),
            };
            return Err(Error::invalid(format!(
                "agent netns {shown} already holds {AGENT_LINK}, {whose}; each agent needs a namespace of \
                 its own: give this gate another one, or stop the gate that uses it"
            )));
        }
    }
    Ok(ns)
}
