//! `prune`: find what gates that are gone left behind (a netns without a
//! running unit, a failed unit, what an interrupted start created, links,
//! firewall elements, records) and remove it. A gate whose forwarder is up
//! after a completed start, or that a gatectl is starting or stopping right
//! now, is never touched.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::error::Result;
use crate::gate::{link_alias, slug_of_link_alias, Host, FORWARDING_MARKER};
use crate::lock;
use crate::net::firewall::{Firewall, TABLE};
use crate::net::link::Netlink;
use crate::net::{netns, sysctl};
use crate::plan::{self, HOST_EGRESS_PREFIX, HOST_INTERNAL_PREFIX};
use crate::slug::Slug;
use crate::systemd::{GateUnits, Systemd};
use crate::timings::Timings;

/// One leftover that prune removed (or would remove).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leftover {
    /// What it is: `netns`, `unit`, `record`, `link` or `firewall`.
    pub kind: &'static str,
    /// Its name (netns, unit, link or interface name, or the slug).
    pub name: String,
}

fn leftover(kind: &'static str, name: impl Into<String>) -> Leftover {
    Leftover {
        kind,
        name: name.into(),
    }
}

fn slug_of_alias(alias: Option<&str>) -> Option<Slug> {
    slug_of_link_alias(alias?)
}

impl Host {
    /// Removes the leftovers of gates that are gone; with `dry_run`, only
    /// lists them. Running it twice is harmless.
    pub async fn prune(&self, dry_run: bool) -> Result<Vec<Leftover>> {
        let systemd = Systemd::connect().await?;
        let root = Netlink::current()?;
        let units = systemd.all_gate_units().await?;
        let mut host_links = root.links_with_prefix(HOST_EGRESS_PREFIX).await?;
        host_links.extend(root.links_with_prefix(HOST_INTERNAL_PREFIX).await?);

        let mut slugs: BTreeSet<Slug> = self.records.slugs().into_iter().collect();
        slugs.extend(units.iter().filter_map(|u| plan::slug_of_unit(&u.name)));
        slugs.extend(
            netns::list(plan::GATE_PREFIX)
                .iter()
                .filter_map(|n| plan::slug_of_netns(n)),
        );
        slugs.extend(
            host_links
                .iter()
                .filter_map(|(_, alias)| slug_of_alias(alias.as_deref())),
        );
        slugs.extend(
            self.records
                .index_holders()
                .iter()
                .filter_map(|(_, s)| Slug::parse(s).ok()),
        );

        let mut found = Vec::new();
        let mut kept = BTreeSet::new();
        for slug in slugs {
            let Some(_lock) = lock::try_lock_slug(&self.settings.state_dir, &slug)? else {
                kept.insert(slug);
                continue;
            };
            let gate_units = GateUnits::of(&slug, &units);
            // Holding the slug lock, an incomplete record is a start that
            // died: what it left goes, even a unit it got running.
            let interrupted = self
                .records
                .load(&slug)
                .ok()
                .flatten()
                .is_some_and(|r| !r.complete);
            if gate_units.is_up() && !interrupted {
                kept.insert(slug);
                continue;
            }
            let traces = self.traces(&slug, &gate_units, &host_links);
            if traces.is_empty() {
                continue;
            }
            if !dry_run {
                self.stop_locked(&systemd, &slug, &mut Timings::default()).await?;
            }
            found.extend(traces);
        }

        // Links nobody claims: no gatectl alias of a kept gate, and no
        // record holds their index.
        let claimed: BTreeSet<u32> = self.records.all().iter().map(|r| r.plan.index).collect();
        for (name, alias) in &host_links {
            let owner = slug_of_alias(alias.as_deref());
            if owner.is_some_and(|s| kept.contains(&s) || found.iter().any(|f| f.name == *name)) {
                continue;
            }
            let index = plan::host_link_index(name);
            if index.is_some_and(|i| claimed.contains(&i)) {
                continue;
            }
            if !dry_run {
                root.delete(name).await?;
            }
            found.push(leftover("link", name.clone()));
        }

        // Firewall elements of links that no longer exist.
        let firewall = self.firewall();
        let existing = root.links_with_prefix(HOST_EGRESS_PREFIX).await?;
        for ifname in firewall.gate_interfaces()? {
            if existing.iter().any(|(n, _)| *n == ifname) {
                continue;
            }
            if !dry_run {
                firewall.remove_gate(&ifname)?;
            }
            found.push(leftover("firewall", ifname));
        }
        if kept.is_empty() {
            self.restore_host(&firewall, dry_run, &mut found)?;
        }
        Ok(found)
    }

    /// With no gate left, undoes what gatectl did to the host: IPv4
    /// forwarding off again if gatectl turned it on (before the rules that
    /// confine it go), then the table `inet gatectl`.
    fn restore_host(&self, firewall: &Firewall, dry_run: bool, found: &mut Vec<Leftover>) -> Result<()> {
        let marker = self.settings.state_dir.join(FORWARDING_MARKER);
        if marker.exists() {
            if !dry_run {
                sysctl::restore_ipv4_forwarding_off()?;
                std::fs::remove_file(&marker).ok();
            }
            found.push(leftover("sysctl", "net.ipv4.ip_forward=1 (set by gatectl)"));
        }
        if firewall.table_present()? {
            if !dry_run {
                firewall.remove_table()?;
            }
            found.push(leftover("firewall", format!("table inet {TABLE}")));
        }
        Ok(())
    }

    /// What exists of the gate of `slug`.
    fn traces(
        &self,
        slug: &Slug,
        units: &GateUnits,
        host_links: &[(String, Option<String>)],
    ) -> Vec<Leftover> {
        let mut traces = Vec::new();
        for u in units.loaded() {
            traces.push(leftover("unit", format!("{} ({}/{})", u.name, u.active, u.sub)));
        }
        if netns::exists(&plan::netns_name(slug)) {
            traces.push(leftover("netns", plan::netns_name(slug)));
        }
        let ours = link_alias(slug);
        for (name, alias) in host_links {
            if alias.as_deref() == Some(ours.as_str()) {
                traces.push(leftover("link", name.clone()));
            }
        }
        if self.records.slugs().contains(slug) {
            traces.push(leftover("record", slug.to_string()));
        } else if self
            .records
            .index_holders()
            .iter()
            .any(|(_, s)| s == slug.as_str())
        {
            traces.push(leftover("index claim", slug.to_string()));
        }
        traces
    }
}
