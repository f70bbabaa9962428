//! `reload`: applies a changed manifest (or newly resolved upstream
//! addresses) to a running gate without restarting it, so that every entry
//! that did not change keeps its port, its listener and its sessions.
//!
//! Everything that only reads comes first (the spec was built and checked by
//! the caller; here the record, the units and the routes file). Then, in
//! this order, so that each layer allows a new upstream before the
//! forwarder uses it:
//!
//! 1. the forwarder's `IPAddressAllow=` gets the new addresses (set at run
//!    time; an address that is no longer used stays there, so its
//!    established sessions go on, while both nftables tables refuse new
//!    connections to it);
//! 2. the host table's allowlist of the gate is replaced in one batch;
//! 3. the gate netns's table (listen ports and upstream pairs) is replaced
//!    in one batch;
//! 4. the routes file is rewritten with the next generation, and the
//!    forwarder told (SIGHUP), or started when the gate gained a port and
//!    its forwarder was not running; `reload` waits until the forwarder's
//!    status line shows the new generation;
//! 5. the record is saved, and the ssh config that `ssh-config --include`
//!    names is rewritten.
//!
//! A failure after step 1 re-applies the old plan the same way and reports
//! both. The DNS refresh (`refresh.rs`) moves a gate to newly resolved
//! addresses through the same steps ([`apply_in_place`]). Running `reload` again after a crash applies the same changes
//! again: every step is idempotent.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use super::changes::{entry_changes, EntryChange};
use super::{gate_rules, Host};
use crate::error::{Error, Result};
use crate::forward::RoutesFile;
use crate::lock;
use crate::net::firewall::gate::GateTable;
use crate::net::netns;
use crate::plan::{GatePlan, GateSpec};
use crate::state::GateRecord;
use crate::systemd::{ActiveState, Systemd};
use crate::unit;

/// How long `reload` waits for the forwarder to confirm a routes file.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the forwarder's status is read meanwhile.
const CONFIRM_POLL: Duration = Duration::from_millis(20);

/// What a `reload` did.
#[derive(Debug)]
pub enum Reloaded {
    /// The running gate already had this spec: nothing changed.
    Unchanged(GatePlan),
    /// The gate now runs `plan`; `changes` says what changed, by port.
    Changed {
        /// The gate's plan now.
        plan: GatePlan,
        /// What changed.
        changes: Vec<EntryChange>,
    },
}

/// One `reload` on a host.
pub struct Reload<'h> {
    /// The host.
    pub host: &'h Host,
}

impl Reload<'_> {
    /// Applies `spec` to its running gate; see [`Host::reload`].
    pub async fn run(&self, spec: &GateSpec) -> Result<Reloaded> {
        let host = self.host;
        let slug = &spec.slug;
        let _slug_lock = lock::lock_slug(&host.settings.state_dir, slug)?;
        let systemd = Systemd::connect().await?;
        let not_running = || {
            Error::invalid(format!(
                "gate {slug} is not running, so there is nothing to reload; start it with `gatectl start {slug}`"
            ))
        };
        let record = match host.records.load(slug)? {
            Some(record) if record.complete => record,
            _ => return Err(not_running()),
        };
        if !host.running(&systemd, &record.plan).await? {
            return Err(not_running());
        }
        let old = record.plan.clone();
        if (&old.agent_netns, old.agent_netns_owned) != (&spec.agent_netns, spec.agent_netns_owned) {
            let shown = |netns: &Option<std::path::PathBuf>| {
                netns
                    .as_ref()
                    .map_or("none (the host's)".to_string(), |p| p.display().to_string())
            };
            return Err(Error::invalid(format!(
                "the agent netns of {slug} changed (from {} to {}), which a reload cannot apply: the agent's \
                 end of the gate would move; run `gatectl stop {slug}`, then `gatectl start {slug}`",
                shown(&old.agent_netns),
                shown(&spec.agent_netns)
            )));
        }
        let routes_dir = host.records.routes_dir(slug);
        let Some(current) = RoutesFile::read_in(&routes_dir)? else {
            return Err(older_gatectl(slug));
        };
        // A gate started without IPv6 egress stays IPv4: its dual-stack
        // upstreams are reached over IPv4, and an IPv6-only one needs a restart.
        let upstreams = if old.egress6.is_none() && spec.uses_ipv6() {
            spec.clone()
                .without_ipv6(&format!(
                    "gate {slug} runs without IPv6 (no upstream of it had an IPv6 address at start); \
                     restart it to give it IPv6: `gatectl stop {slug} && gatectl start {slug}`"
                ))?
                .upstreams
        } else {
            spec.upstreams.clone()
        };
        let new = GatePlan {
            upstreams,
            ..old.clone()
        };
        let changes = entry_changes(&old.upstreams, &new.upstreams);
        if changes.is_empty() && current.routes == unit::forward_routes(&new) {
            return Ok(Reloaded::Unchanged(old));
        }
        apply_in_place(host, &systemd, &record, &new).await?;
        host.schedule_refresh(slug)?;
        Ok(Reloaded::Changed { plan: new, changes })
    }
}

/// Moves the running gate of `record` from its plan (`old`) to `new` in
/// place (the module's steps 1–4), writing the next generation of its
/// routes file, then saves the record and the ssh include (step 5); if a
/// step of 1–4 fails, puts `old` back the same way and says so. The caller
/// holds the slug lock and has just loaded `record`.
pub(crate) async fn apply_in_place(
    host: &Host,
    systemd: &Systemd,
    record: &GateRecord,
    new: &GatePlan,
) -> Result<()> {
    let (slug, old) = (&new.slug, &record.plan);
    let Some(current) = RoutesFile::read_in(&host.records.routes_dir(slug))? else {
        return Err(older_gatectl(slug));
    };
    // Until the change is done, the record names the pairs it adds to the
    // host allowlist too: `stop` removes exactly the pairs a record names,
    // so after an interrupted change none of them outlives the gate.
    host.records.save(&GateRecord {
        pending_pairs: record
            .pending_pairs
            .iter()
            .copied()
            .chain(new.upstream_pairs())
            .collect(),
        ..GateRecord::new(old.clone(), true)
    })?;
    let apply = Apply { host, systemd };
    let Err(error) = apply.plan(old, new, current.generation + 1).await else {
        // The allowlist is now exactly `new`'s (replaced as listed).
        host.records.save(&GateRecord::new(new.clone(), true))?;
        return host.ssh_includes.write(new);
    };
    Err(match apply.plan(new, old, current.generation + 2).await {
        Ok(()) => {
            host.records.save(&GateRecord::new(old.clone(), true))?;
            Error::failed(format!(
                "cannot change gate {slug}: {error}; it runs as before the change"
            ))
        }
        Err(undo) => Error::failed(format!(
            "cannot change gate {slug}: {error}; putting the previous routes back failed too \
             ({undo}): run `gatectl stop {slug}`, then `gatectl start {slug}`"
        )),
    })
}

/// The refusal of a change to a gate whose forwarder has no routes file.
fn older_gatectl(slug: &crate::slug::Slug) -> Error {
    Error::invalid(format!(
        "gate {slug} was started by an older gatectl, whose forwarder cannot take new routes; \
         restart the gate once to apply the manifest: `gatectl stop {slug} && gatectl start {slug}`"
    ))
}

/// Applies one plan change to a running gate.
struct Apply<'a> {
    host: &'a Host,
    systemd: &'a Systemd,
}

impl Apply<'_> {
    /// Moves the running gate from `old` to `new`, writing routes file
    /// `generation`; see the module's steps.
    async fn plan(&self, old: &GatePlan, new: &GatePlan, generation: u64) -> Result<()> {
        self.allow_addresses(new).await?;
        let (firewall, rules) = (self.host.host_firewall(), gate_rules(new));
        tokio::task::spawn_blocking(move || firewall.replace_gate(&rules))
            .await
            .unwrap_or_else(|e| Err(Error::failed(format!("a gatectl task failed: {e}"))))?;
        let gate_ns = netns::open(&new.netns_path())?;
        let table = GateTable::of(new);
        let (seal, before) = netns::run_in(&gate_ns, move || table.reapply())?;
        if let Some((now, tried)) = before {
            self.host.denied.record(&new.slug, seal.netns, now, &tried);
        }
        self.host.records.save_seal(&new.slug, &seal)?;
        let routes = RoutesFile {
            generation,
            routes: unit::forward_routes(new),
        };
        routes.write_in(&self.host.records.routes_dir(&new.slug))?;
        let old_ports: BTreeSet<u16> = old.listen_ports().collect();
        let gains_a_port = new.listen_ports().any(|port| !old_ports.contains(&port));
        self.tell_forwarder(&new.unit, generation, gains_a_port).await
    }

    /// Adds to the forwarder's `IPAddressAllow=` the prefixes of `plan` it
    /// does not have yet.
    async fn allow_addresses(&self, plan: &GatePlan) -> Result<()> {
        let live = self.systemd.service_properties(&plan.unit).await?;
        let allowed: Vec<IpNet> = live
            .get("IPAddressAllow")
            .map(unit::prefixes_of)
            .unwrap_or_default();
        let missing: Vec<IpNet> = unit::allowed_prefixes(plan)
            .into_iter()
            .filter(|p| !allowed.contains(p))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        self.systemd
            .set_runtime_properties(&plan.unit, &[unit::allow_also(missing)])
            .await
    }

    /// Has the forwarder of `unit` serve routes file `generation`: a
    /// running one re-reads it at SIGHUP; one that is not running (or exits
    /// for being idle meanwhile) reads it when it starts, which happens now
    /// if the gate gained a port (only a running forwarder listens on it).
    /// Waits for the forwarder's status to show the generation.
    async fn tell_forwarder(&self, unit: &str, generation: u64, gains_a_port: bool) -> Result<()> {
        let deadline = Instant::now() + CONFIRM_TIMEOUT;
        let before = loop {
            match self.systemd.unit_state(unit).await?.active {
                ActiveState::Active | ActiveState::Reloading => {
                    let before = self.status_text(unit).await?;
                    self.systemd.signal_main(unit, libc::SIGHUP).await?;
                    break before;
                }
                // Starting (a connection arrived): it may have read the old
                // file, and it handles SIGHUP only once it is ready.
                ActiveState::Activating if Instant::now() < deadline => {
                    tokio::time::sleep(CONFIRM_POLL).await;
                }
                _ if gains_a_port => {
                    self.systemd.start(unit).await?;
                    break String::new();
                }
                _ => return Ok(()),
            }
        };
        let wanted = format!("(generation {generation})");
        let mut last = String::new();
        while Instant::now() < deadline {
            last = self.status_text(unit).await?;
            if last.contains(&wanted) {
                return Ok(());
            }
            // A forwarder that exited for being idle before it read the file
            // reads it when it starts again; start it now if only it can
            // listen on the gained port.
            if !self.systemd.unit_state(unit).await?.is_up() {
                if !gains_a_port {
                    return Ok(());
                }
                self.systemd.start(unit).await?;
                continue;
            }
            // A failure it reports after this SIGHUP (not an earlier one).
            if let Some((_, why)) = last.split_once("reload failed: ").filter(|_| last != before) {
                return Err(Error::failed(format!(
                    "the forwarder {unit} refused the new routes: {why}"
                )));
            }
            tokio::time::sleep(CONFIRM_POLL).await;
        }
        Err(Error::failed(format!(
            "the forwarder {unit} did not confirm the new routes within {}s (its status: {last:?}); \
             see `journalctl -u {unit}`",
            CONFIRM_TIMEOUT.as_secs()
        )))
    }

    /// The `STATUS=` line the forwarder of `unit` last sent.
    async fn status_text(&self, unit: &str) -> Result<String> {
        let live = self.systemd.service_properties(unit).await?;
        Ok(live
            .get("StatusText")
            .and_then(|v| <&str>::try_from(v).ok())
            .unwrap_or_default()
            .to_string())
    }
}
