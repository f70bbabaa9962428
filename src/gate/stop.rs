//! Teardown: a whole gate from its record (or, without one, from what its
//! names identify), or the undos a failed start registered. Idempotent:
//! every part treats "already gone" as done, keeps going past failures and
//! reports them all. Host-side clean-up never depends on the gate netns
//! still existing.

use std::path::Path;

use super::steps::Undo;
use super::{gate_rules, link_alias, Host};
use crate::error::{Context, Error, Result};
use crate::net::firewall::host::GateRules;
use crate::net::link::Netlink;
use crate::net::netns;
use crate::plan::{self, GatePlan, AGENT_LINK_GROUP, GATE_LINK_GROUP, HOST_EGRESS_GROUP};
use crate::slug::Slug;
use crate::state::GateRecord;
use crate::systemd::Systemd;
use crate::timings::{timed, Timings};

/// Takes gates of one host down.
pub struct Teardown<'h> {
    /// The host.
    pub host: &'h Host,
    /// The connection to systemd.
    pub systemd: &'h Systemd,
}

impl Teardown<'_> {
    /// Removes the gate of `slug` and its record, for a caller holding the
    /// slug lock. A corrupt record is treated like a missing one. Does not
    /// close the host path: the caller does, once no gate is left.
    pub async fn gate(&self, slug: &Slug, timings: &mut Timings) -> Result<()> {
        match self.host.records.load(slug).ok().flatten() {
            Some(record) => self.record(&record, timings).await?,
            None => self.unrecorded(slug).await?,
        }
        self.host.ssh_includes.remove(slug)?;
        self.host.records.remove(slug)?;
        timings.mark("remove the ssh_config include and the record");
        Ok(())
    }

    /// Rolls back a failed start of `plan`: `undos` in the order given (last
    /// step first), then the record, then the host's own changes if no gate
    /// is left. Returns what could not be undone.
    pub async fn undo(&self, plan: &GatePlan, undos: &[Undo]) -> Vec<Error> {
        let mut errors = Vec::new();
        for undo in undos {
            let done = match undo {
                Undo::Units => self.stop_units(&plan.slug).await,
                Undo::HostRules => self.remove_host_rules(gate_rules(plan)).await,
                Undo::Links => delete_links(plan).await,
                Undo::Netns => netns::delete(&plan.netns),
                Undo::AgentNetns => plan.owned_agent_netns().map_or(Ok(()), netns::delete),
            };
            errors.extend(done.err());
        }
        errors.extend(self.host.ssh_includes.remove(&plan.slug).err());
        errors.extend(self.host.records.remove(&plan.slug).err());
        errors.extend(self.host.host_wide.close_if_idle().await.err());
        errors
    }

    /// Removes everything of the gate of `record`: units, firewall rules
    /// and links at once, then what the gate netns no longer held, the
    /// netns, and the agent's netns when gatectl owns it.
    async fn record(&self, record: &GateRecord, timings: &mut Timings) -> Result<()> {
        let plan = &record.plan;
        let rules = GateRules {
            egress_if: plan.host_egress.name.clone(),
            allowed: record.allowlist(),
        };
        // Units, firewall rules and the gate's links at once: each mostly
        // waits (for systemd, or the kernel's RCU grace periods), and the
        // gate's index stays claimed until the record goes, so no other gate
        // can take its link names or allowlist meanwhile.
        // The last record of what the gate netns's table denied follows the
        // links' deletion (no packet of the agent's can reach the table
        // after it) and comes before the netns's, which takes the table away.
        let ((units, units_took), (rules, rules_took), ((links, links_took), ((), denied_took))) = tokio::join!(
            timed(self.stop_units(&plan.slug)),
            timed(self.remove_host_rules(rules)),
            async {
                let links = timed(delete_gate_links_apart(&plan.netns)).await;
                (links, timed(self.record_last_denied(&plan.slug)).await)
            },
        );
        timings.mark_parallel(
            "stop the units, remove the firewall rules, delete the links",
            &[
                ("stop the socket and forwarder units", units_took),
                ("remove the firewall rules", rules_took),
                ("delete the gate's links and their peers", links_took),
                (
                    "record what the gate's table denied since the last record",
                    denied_took,
                ),
            ],
        );
        let mut errors: Vec<Error> = [units, rules, links]
            .into_iter()
            .filter_map(Result::err)
            .collect();
        // What is left if the gate netns was already gone: the outer ends,
        // if they are this gate's.
        errors.extend(delete_outer_ends(plan).await.err());
        errors.extend(netns::delete(&plan.netns).err());
        if let Some(owned) = plan.owned_agent_netns() {
            errors.extend(netns::delete(owned).err());
        }
        timings.mark("delete what the gate netns no longer held, the netns, and an agent netns gatectl owns");
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::List(errors))
        }
    }

    /// Removes what the names of `slug`'s gate identify, when its record is
    /// gone (e.g. /run/gatectl was wiped): its units, the host links that
    /// carry its alias and their allowlists, the gate netns and its links.
    async fn unrecorded(&self, slug: &Slug) -> Result<()> {
        self.stop_units(slug).await?;
        let root = Netlink::current()?;
        let ours = link_alias(slug);
        for link in root
            .links_in_groups(&[HOST_EGRESS_GROUP, AGENT_LINK_GROUP])
            .await?
        {
            if link.alias.as_deref() == Some(ours.as_str()) {
                if link.group == HOST_EGRESS_GROUP {
                    self.host.host_firewall().remove_gate(&link.name)?;
                }
                root.delete(&link.name).await?;
            }
        }
        delete_gate_links(&plan::netns_name(slug)).await?;
        netns::delete(&plan::netns_name(slug))
    }

    /// Records in the journal what the gate netns's table of `slug` denied
    /// since the last record (`gatectl metrics`), which its netns takes
    /// with it, then forgets the counts. Nothing stops on a failure here:
    /// a gate without netns or table has nothing to record.
    async fn record_last_denied(&self, slug: &Slug) {
        let records = &self.host.denied;
        let owned = slug.clone();
        let read = tokio::task::spawn_blocking(move || super::denied(&owned))
            .await
            .unwrap_or_else(|e| Err(Error::failed(format!("a gatectl task failed: {e}"))));
        match read {
            Ok(Some((netns, now, tried))) => records.record(slug, netns, now, &tried),
            Ok(None) => {}
            Err(e) => tracing::debug!(slug = %slug, error = %e, "no last denied record"),
        }
        records.remove(slug);
    }

    /// Stops the gate's socket and forwarder units and waits for them.
    async fn stop_units(&self, slug: &Slug) -> Result<()> {
        self.systemd
            .stop(&[&plan::socket_unit_name(slug), &plan::unit_name(slug)])
            .await
    }

    /// Removes the pairs of `rules` from the host allowlist.
    async fn remove_host_rules(&self, rules: GateRules) -> Result<()> {
        let firewall = self.host.host_firewall();
        tokio::task::spawn_blocking(move || firewall.remove_pairs(&rules))
            .await
            .unwrap_or_else(|e| Err(Error::failed(format!("a gatectl task failed: {e}"))))
    }
}

/// Deletes both veth pairs of the gate in `plan`: by their ends in the gate
/// netns, then any outer end that is left.
async fn delete_links(plan: &GatePlan) -> Result<()> {
    delete_gate_links(&plan.netns).await?;
    delete_outer_ends(plan).await
}

/// [`delete_gate_links`] on a thread and runtime of its own: the kernel
/// answers the deletion only after an RCU grace period, and the caller's
/// runtime must meanwhile go on talking to systemd.
async fn delete_gate_links_apart(netns_name: &str) -> Result<()> {
    let netns_name = netns_name.to_string();
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a runtime to delete the gate's links")?
            .block_on(delete_gate_links(&netns_name))
    })
    .await
    .unwrap_or_else(|e| Err(Error::failed(format!("a gatectl task failed: {e}"))))
}

/// Deletes the gate's ends of both veth pairs (and with them their peers,
/// the host's egress end and the agent's end) in one kernel batch, if the
/// gate netns still exists. The kernel would destroy them with an
/// unmounted netns too, but asynchronously, and the agent's end must be
/// gone when `stop` returns.
async fn delete_gate_links(netns_name: &str) -> Result<()> {
    if !netns::exists(netns_name) {
        return Ok(());
    }
    let gate = Netlink::in_netns(&netns::open(&plan::netns_path(netns_name))?)?;
    gate.delete_group(GATE_LINK_GROUP).await
}

/// Deletes the outer ends of the gate in `plan` that are still there (the
/// gate netns was gone, or a start died before moving them), each only if
/// it is provably this gate's.
async fn delete_outer_ends(plan: &GatePlan) -> Result<()> {
    let root = Netlink::current()?;
    delete_if_ours(&root, &plan.host_egress.name, HOST_EGRESS_GROUP, &plan.slug).await?;
    if plan.agent_in_root_ns() {
        delete_if_ours(&root, &plan.agent_link.name, AGENT_LINK_GROUP, &plan.slug).await?;
    }
    if let Some(agent_ns) = plan.agent_netns.as_deref().filter(|p| p.exists()) {
        delete_agent_link(agent_ns, &plan.agent_link.name, &plan.slug).await?;
    }
    Ok(())
}

/// Deletes the agent's end `name` in the agent netns at `path`, if it is
/// `slug`'s (the veth peer in the gate netns goes with it).
async fn delete_agent_link(path: &Path, name: &str, slug: &Slug) -> Result<()> {
    let Ok(ns) = netns::open(path) else {
        return Ok(());
    };
    delete_if_ours(&Netlink::in_netns(&ns)?, name, AGENT_LINK_GROUP, slug).await
}

/// Deletes link `name` if it is `slug`'s: in gatectl's device `group` (set
/// when it was created), with `slug`'s alias or none yet (a start that died
/// before labelling it). Never a link that is not provably gatectl's.
async fn delete_if_ours(netlink: &Netlink, name: &str, group: u32, slug: &Slug) -> Result<()> {
    let Some(link) = netlink.info(name).await? else {
        return Ok(());
    };
    let labelled_ours = match &link.alias {
        None => true,
        Some(alias) => *alias == link_alias(slug),
    };
    if link.group == group && labelled_ours {
        netlink.delete(name).await
    } else {
        Ok(())
    }
}
