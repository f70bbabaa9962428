//! The gate plan: a pure function from slug, manifest, settings, gate index
//! and resolved upstream addresses to every name, address and port a gate
//! uses. No I/O here.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::config::Settings;
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::slug::Slug;

/// Directory of iproute2's named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// Prefix of every gate's netns and unit name.
pub const GATE_PREFIX: &str = "gate-";
/// Prefix of the host-side internal link when the agent has no netns.
pub const HOST_INTERNAL_PREFIX: &str = "gti";
/// Prefix of the host-side egress link.
pub const HOST_EGRESS_PREFIX: &str = "gte";
/// Name of the internal link inside the gate netns.
pub const GATE_INTERNAL_LINK: &str = "int0";
/// Name of the egress link inside the gate netns.
pub const GATE_EGRESS_LINK: &str = "ext0";
/// The device group of the gate's two links inside its netns (`ip -n
/// gate-<slug> link show group 231`), so that one request deletes both, and
/// their peers, in a single kernel batch.
pub const GATE_LINK_GROUP: u32 = 231;
/// Name of the agent's end when it lives in the agent's netns.
pub const AGENT_LINK: &str = "gate0";
/// Prefix length of every gate link address.
pub const LINK_PREFIX_LEN: u8 = 31;

/// One forwarder rule: listen on `listen_port`, forward to the upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// Port the forwarder listens on, `base_port + i`.
    pub listen_port: u16,
    /// The alias (`Host`) from the manifest.
    pub alias: String,
    /// The upstream as written in the manifest (`Hostname`).
    pub host: String,
    /// The upstream port.
    pub port: u16,
    /// The remote user, if the manifest gave one.
    pub user: Option<String>,
    /// The addresses `host` resolved to, tried in order.
    pub addresses: Vec<IpAddr>,
}

/// A link end: its interface name and address (always a /31).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkEnd {
    /// Interface name.
    pub name: String,
    /// Its IPv4 address.
    pub address: Ipv4Addr,
}

/// Everything one gate consists of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatePlan {
    /// The agent's slug.
    pub slug: Slug,
    /// The gate index: picks the /31s and host link names.
    pub index: u32,
    /// Name of the gate netns (`gate-<slug>`).
    pub netns: String,
    /// The transient unit running the forwarder (`gate-<slug>.service`).
    pub unit: String,
    /// The agent's netns path, when the agent end goes into one.
    pub agent_netns: Option<PathBuf>,
    /// The agent's end of the internal link.
    pub agent_link: LinkEnd,
    /// The gate's end of the internal link; the forwarder listens here.
    pub gate_internal: LinkEnd,
    /// The gate's end of the egress link.
    pub gate_egress: LinkEnd,
    /// The host's end of the egress link; the gate's default gateway.
    pub host_egress: LinkEnd,
    /// The forwarder's rules, in manifest order.
    pub upstreams: Vec<Upstream>,
}

impl GatePlan {
    /// Builds the plan. `resolve` maps each manifest `Hostname` to its
    /// addresses; `agent_netns` (from the command line) overrides the
    /// manifest's.
    pub fn build(
        slug: &Slug,
        manifest: &Manifest,
        settings: &Settings,
        index: u32,
        agent_netns: Option<&str>,
        mut resolve: impl FnMut(&str) -> Result<Vec<IpAddr>>,
    ) -> Result<GatePlan> {
        if index >= settings.capacity() {
            return Err(Error::invalid(format!(
                "gate index {index} does not fit the address pools ({} gates); enlarge internal_pool and egress_pool",
                settings.capacity()
            )));
        }
        if manifest.ssh.is_empty() {
            return Err(Error::invalid(
                "no ssh entries: add at least one [[ssh]] table with Host and Hostname",
            ));
        }
        // u64: neither the entry count nor the sum can overflow.
        let last_port = u64::from(settings.base_port) + manifest.ssh.len() as u64 - 1;
        if last_port > u64::from(u16::MAX) {
            return Err(Error::invalid(format!(
                "{} ssh entries from base port {} would need port {last_port}; declare fewer entries or lower base_port",
                manifest.ssh.len(),
                settings.base_port
            )));
        }
        let agent_netns = agent_netns
            .map(str::to_string)
            .or_else(|| manifest.agent_netns.clone())
            .map(|ns| netns_path(&ns));
        let mut upstreams = Vec::with_capacity(manifest.ssh.len());
        for (i, entry) in manifest.ssh.iter().enumerate() {
            let addresses = resolve(&entry.hostname)
                .map_err(|e| Error::invalid(format!("ssh entry {} ({}): {e}", i + 1, entry.alias)))?;
            if addresses.is_empty() {
                return Err(Error::invalid(format!(
                    "ssh entry {} ({}): {} resolved to no address; fix the name or the host's resolver",
                    i + 1,
                    entry.alias,
                    entry.hostname
                )));
            }
            upstreams.push(Upstream {
                listen_port: settings.base_port + i as u16,
                alias: entry.alias.clone(),
                host: entry.hostname.clone(),
                port: entry.port,
                user: entry.user.clone(),
                addresses,
            });
        }
        let unplaced = |name: &str| LinkEnd {
            name: name.to_string(),
            address: Ipv4Addr::UNSPECIFIED,
        };
        let plan = GatePlan {
            slug: slug.clone(),
            index,
            netns: netns_name(slug),
            unit: unit_name(slug),
            agent_netns,
            agent_link: unplaced(AGENT_LINK),
            gate_internal: unplaced(GATE_INTERNAL_LINK),
            gate_egress: unplaced(GATE_EGRESS_LINK),
            host_egress: unplaced(HOST_EGRESS_PREFIX),
            upstreams,
        };
        Ok(plan.at_index(settings, index))
    }

    /// The same gate placed at gate index `index`: its /31s and host link
    /// names follow the index. `index` must be below `settings.capacity()`.
    pub fn at_index(mut self, settings: &Settings, index: u32) -> GatePlan {
        let (agent_addr, gate_int_addr) = pair(settings.internal_pool, index);
        let (host_egr_addr, gate_egr_addr) = pair(settings.egress_pool, index);
        self.index = index;
        self.agent_link = LinkEnd {
            name: match self.agent_netns {
                Some(_) => AGENT_LINK.to_string(),
                None => host_internal_link(index),
            },
            address: agent_addr,
        };
        self.gate_internal.address = gate_int_addr;
        self.gate_egress.address = gate_egr_addr;
        self.host_egress = LinkEnd {
            name: host_egress_link(index),
            address: host_egr_addr,
        };
        self
    }

    /// The socket unit holding the gate's listening sockets
    /// (`gate-<slug>.socket`); systemd starts [`GatePlan::unit`] from it.
    pub fn socket_unit(&self) -> String {
        socket_unit_name(&self.slug)
    }

    /// Path of the gate netns (`/run/netns/gate-<slug>`).
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.netns)
    }

    /// The internal /31 (agent address and gate address).
    pub fn internal_net(&self) -> Ipv4Net {
        Ipv4Net::new(self.agent_link.address, LINK_PREFIX_LEN).expect("valid /31")
    }

    /// Whether the agent end stays in the host's root namespace.
    pub fn agent_in_root_ns(&self) -> bool {
        self.agent_netns.is_none()
    }
}

/// The netns name of a slug's gate.
pub fn netns_name(slug: &Slug) -> String {
    format!("{GATE_PREFIX}{slug}")
}

/// The unit name of a slug's forwarder.
pub fn unit_name(slug: &Slug) -> String {
    format!("{GATE_PREFIX}{slug}.service")
}

/// The name of the socket unit holding a slug's listening sockets; it
/// starts the forwarder at the first connection.
pub fn socket_unit_name(slug: &Slug) -> String {
    format!("{GATE_PREFIX}{slug}.socket")
}

/// The slug whose forwarder or socket unit is `unit` (`gate-<slug>.service`,
/// `gate-<slug>.socket`).
pub fn slug_of_unit(unit: &str) -> Option<Slug> {
    let name = unit.strip_prefix(GATE_PREFIX)?;
    let slug = name
        .strip_suffix(".service")
        .or_else(|| name.strip_suffix(".socket"))?;
    Slug::parse(slug).ok()
}

/// The slug whose gate netns is `netns` (`gate-<slug>`).
pub fn slug_of_netns(netns: &str) -> Option<Slug> {
    Slug::parse(netns.strip_prefix(GATE_PREFIX)?).ok()
}

/// The host-side egress link of gate index `index` (`gte<k>`).
pub fn host_egress_link(index: u32) -> String {
    format!("{HOST_EGRESS_PREFIX}{index}")
}

/// The host-side internal link of gate index `index` (`gti<k>`), used when
/// the agent has no netns of its own.
pub fn host_internal_link(index: u32) -> String {
    format!("{HOST_INTERNAL_PREFIX}{index}")
}

/// The gate index in a host-side link name (`gte<k>` or `gti<k>`).
pub fn host_link_index(name: &str) -> Option<u32> {
    let number = name
        .strip_prefix(HOST_EGRESS_PREFIX)
        .or(name.strip_prefix(HOST_INTERNAL_PREFIX))?;
    number.parse().ok()
}

/// Turns a netns name into its path under /run/netns; a path stays as is.
pub fn netns_path(ns: &str) -> PathBuf {
    if ns.starts_with('/') {
        PathBuf::from(ns)
    } else {
        PathBuf::from(NETNS_DIR).join(ns)
    }
}

/// The /31 of gate `index` in `pool`: (even address, odd address).
fn pair(pool: Ipv4Net, index: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(pool.network()) + 2 * index;
    (Ipv4Addr::from(base), Ipv4Addr::from(base + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{parse, Format};

    fn manifest(text: &str) -> Manifest {
        parse(text, Format::Toml).unwrap()
    }

    fn fake_resolve(host: &str) -> Result<Vec<IpAddr>> {
        Ok(vec![host
            .parse()
            .unwrap_or(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)))])
    }

    const TWO: &str = "[[ssh]]\nHost = \"github\"\nHostname = \"github.com\"\nUser = \"git\"\n\
                       [[ssh]]\nHost = \"box\"\nHostname = \"198.51.100.4\"\nPort = 2222\n";

    fn plan(text: &str, index: u32) -> GatePlan {
        let slug = Slug::parse("alice").unwrap();
        GatePlan::build(
            &slug,
            &manifest(text),
            &Settings::default(),
            index,
            None,
            fake_resolve,
        )
        .unwrap()
    }

    #[test]
    fn names_addresses_and_ports_follow_the_index_and_order() {
        let p = plan(TWO, 3);
        assert_eq!(p.netns, "gate-alice");
        assert_eq!(p.unit, "gate-alice.service");
        assert_eq!(p.socket_unit(), "gate-alice.socket");
        for unit in ["gate-alice.service", "gate-alice.socket"] {
            assert_eq!(slug_of_unit(unit).as_ref(), Some(&p.slug), "{unit}");
        }
        for not_ours in ["gate-alice.scope", "alice.service", "gate-.socket"] {
            assert_eq!(slug_of_unit(not_ours), None, "{not_ours}");
        }
        assert_eq!(p.netns_path(), PathBuf::from("/run/netns/gate-alice"));
        assert_eq!(p.agent_link.name, "gti3");
        assert_eq!(p.agent_link.address, Ipv4Addr::new(10, 231, 0, 6));
        assert_eq!(p.gate_internal.address, Ipv4Addr::new(10, 231, 0, 7));
        assert_eq!(p.host_egress.name, "gte3");
        assert_eq!(p.host_egress.address, Ipv4Addr::new(10, 232, 0, 6));
        assert_eq!(p.gate_egress.address, Ipv4Addr::new(10, 232, 0, 7));
        let table: Vec<_> = p
            .upstreams
            .iter()
            .map(|u| (u.listen_port, u.host.as_str(), u.port, u.alias.as_str()))
            .collect();
        assert_eq!(
            table,
            [
                (30000, "github.com", 22, "github"),
                (30001, "198.51.100.4", 2222, "box")
            ]
        );
        assert!(p.agent_in_root_ns());
    }

    #[test]
    fn reordering_the_manifest_changes_the_mapping() {
        let reordered = "[[ssh]]\nHost = \"box\"\nHostname = \"198.51.100.4\"\nPort = 2222\n\
                         [[ssh]]\nHost = \"github\"\nHostname = \"github.com\"\n";
        let a = plan(TWO, 0);
        let b = plan(reordered, 0);
        assert_eq!(a.upstreams[0].alias, "github");
        assert_eq!(b.upstreams[0].alias, "box");
        assert_eq!(b.upstreams[0].listen_port, 30000);
    }

    #[test]
    fn high_indexes_cross_octets() {
        let p = plan(TWO, 300);
        assert_eq!(p.agent_link.address, Ipv4Addr::new(10, 231, 2, 88));
        assert_eq!(p.gate_internal.address, Ipv4Addr::new(10, 231, 2, 89));
    }

    #[test]
    fn agent_netns_puts_the_agent_end_in_it() {
        let slug = Slug::parse("bob").unwrap();
        let m = manifest(&format!("agent_netns = \"agent-bob\"\n{TWO}"));
        let p = GatePlan::build(&slug, &m, &Settings::default(), 0, None, fake_resolve).unwrap();
        assert_eq!(p.agent_netns, Some(PathBuf::from("/run/netns/agent-bob")));
        assert_eq!(p.agent_link.name, "gate0");
        let p = GatePlan::build(
            &slug,
            &m,
            &Settings::default(),
            0,
            Some("/proc/1/ns/net"),
            fake_resolve,
        )
        .unwrap();
        assert_eq!(p.agent_netns, Some(PathBuf::from("/proc/1/ns/net")));
    }

    #[test]
    fn refuses_listen_ports_past_65535_and_full_pools() {
        let slug = Slug::parse("a").unwrap();
        let settings = Settings {
            base_port: 65535,
            ..Settings::default()
        };
        let err = GatePlan::build(&slug, &manifest(TWO), &settings, 0, None, fake_resolve).unwrap_err();
        assert!(err.to_string().contains("would need port 65536"), "{err}");
        let err = GatePlan::build(
            &slug,
            &manifest(TWO),
            &Settings::default(),
            32768,
            None,
            fake_resolve,
        )
        .unwrap_err();
        assert!(err.to_string().contains("enlarge internal_pool"), "{err}");
    }
}
