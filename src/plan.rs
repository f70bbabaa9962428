//! The gate plan: a pure function from slug, manifest, settings, gate index
//! and resolved upstream addresses to every name, address and port a gate
//! uses. No I/O here.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::alias::Alias;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::policy;
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
/// The device group of gatectl's host-side egress links (`gte<k>`): the
/// host firewall matches gate traffic by this group, never by a name
/// pattern that a foreign interface could share. Set when the link is
/// created, in the same netlink message.
pub const HOST_EGRESS_GROUP: u32 = 232;
/// The device group of gatectl's other outer link ends: `gti<k>` in the
/// host namespace and `gate0` in an agent netns. With the alias
/// `gatectl:<slug>`, it proves a link is gatectl's before it is deleted.
pub const AGENT_LINK_GROUP: u32 = 233;
/// Prefix length of every gate link address.
pub const LINK_PREFIX_LEN: u8 = 31;
/// Most ssh entries one gate serves. Each is a listening socket that
/// systemd creates when the socket unit starts (2 s for 1,024 here; more
/// than 30 s for 10,000) and a descriptor the forwarder holds.
pub const MAX_ENTRIES: usize = 1024;

/// Why an upstream with IPv6 addresses only is refused, worded to follow
/// "upstream X ": a gate's egress is IPv4 (IPv6 is off in the gate netns),
/// so the gate could never reach it.
pub const NO_IPV4: &str = "has no IPv4 address; gates reach upstreams over IPv4 only for now, \
     so this one could never be reached: declare a host name or address with IPv4";

/// Whether a gate can reach an upstream with these addresses (one of them
/// IPv4; see [`NO_IPV4`]).
pub fn reachable(addresses: &[IpAddr]) -> bool {
    addresses.iter().any(IpAddr::is_ipv4)
}

/// One forwarder rule: listen on `listen_port`, forward to the upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Upstream {
    /// Port the forwarder listens on, `base_port + i`.
    pub listen_port: u16,
    /// The alias (`Host`) from the manifest.
    pub alias: Alias,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LinkEnd {
    /// Interface name.
    pub name: String,
    /// Its IPv4 address.
    pub address: Ipv4Addr,
}

/// Everything one gate consists of: its [`GateSpec`] placed at a gate
/// index, which picks its /31s and host link names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    /// Whether gatectl owns the agent's netns: `start` creates it when it
    /// is missing, `stop` deletes it.
    #[serde(default)]
    pub agent_netns_owned: bool,
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

/// A gate before it has an index: the slug, the agent's netns and the
/// upstream table, validated and resolved. Everything here is known before
/// gatectl touches the host; [`GateSpec::place`] adds the addresses and
/// link names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateSpec {
    /// The agent's slug.
    pub slug: Slug,
    /// The agent's netns path, when the agent end goes into one.
    pub agent_netns: Option<PathBuf>,
    /// Whether gatectl owns the agent's netns (see [`GatePlan`]).
    pub agent_netns_owned: bool,
    /// The forwarder's rules, in manifest order.
    pub upstreams: Vec<Upstream>,
}

impl GateSpec {
    /// Builds the spec. `resolve` maps each manifest `Hostname` to its
    /// addresses, each of which must pass [`policy::refusal`];
    /// `agent_netns` (from the command line) overrides the manifest's.
    pub fn build(
        slug: &Slug,
        manifest: &Manifest,
        settings: &Settings,
        agent_netns: Option<&str>,
        mut resolve: impl FnMut(&str) -> Result<Vec<IpAddr>>,
    ) -> Result<GateSpec> {
        if manifest.ssh.is_empty() {
            return Err(Error::invalid(
                "no ssh entries: add at least one [[ssh]] table with Host and Hostname",
            ));
        }
        if manifest.ssh.len() > MAX_ENTRIES {
            return Err(Error::invalid(format!(
                "{} ssh entries: a gate serves at most {MAX_ENTRIES} (each is a listening socket \
                 systemd sets up at start); give the hosts to more than one agent",
                manifest.ssh.len()
            )));
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
        let owned = manifest.own_agent_netns;
        let agent_netns = agent_netns
            .map(str::to_string)
            .or_else(|| manifest.agent_netns.clone())
            .or_else(|| owned.then(|| format!("agent-{slug}")))
            .map(|ns| netns_path(&ns));
        if let Some(path) = agent_netns
            .as_ref()
            .filter(|p| owned && p.parent() != Some(Path::new(NETNS_DIR)))
        {
            return Err(Error::invalid(format!(
                "own_agent_netns: gatectl owns only a named netns under {NETNS_DIR}, not {}; give a name",
                path.display()
            )));
        }
        // gate-* names are gatectl's gate netns: an agent netns of that
        // name would be another gate's (or, owned, would be deleted as one).
        if let Some(name) = agent_netns
            .as_ref()
            .filter(|p| p.parent() == Some(Path::new(NETNS_DIR)))
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .filter(|n| n.starts_with(GATE_PREFIX))
        {
            return Err(Error::invalid(format!(
                "agent_netns {name}: names starting with {GATE_PREFIX} are gatectl's gate netns; give the \
                 agent's netns another name (e.g. agent-{slug})"
            )));
        }
        let mut upstreams = Vec::with_capacity(manifest.ssh.len());
        for (i, entry) in manifest.ssh.iter().enumerate() {
            let entry_name = format!("ssh entry {} ({})", i + 1, entry.alias);
            let addresses =
                resolve(&entry.hostname).map_err(|e| Error::invalid(format!("{entry_name}: {e}")))?;
            if addresses.is_empty() {
                return Err(Error::invalid(format!(
                    "{entry_name}: {} resolved to no address; fix the name or the host's resolver",
                    entry.hostname
                )));
            }
            for address in &addresses {
                if let Some(reason) = policy::refusal(*address, settings) {
                    let upstream = if entry.hostname.parse::<IpAddr>().is_ok() {
                        format!("upstream {address}")
                    } else {
                        format!("upstream {} resolves to {address}, which", entry.hostname)
                    };
                    return Err(Error::invalid(format!("{entry_name}: {upstream} {reason}")));
                }
            }
            if !reachable(&addresses) {
                return Err(Error::invalid(format!(
                    "{entry_name}: upstream {} {NO_IPV4}",
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
        Ok(GateSpec {
            slug: slug.clone(),
            agent_netns,
            agent_netns_owned: owned,
            upstreams,
        })
    }

    /// The gate placed at gate index `index`: its egress /31 and host link
    /// names follow the index, and so does its internal /31 when the agent
    /// end stays in the host's namespace; with an agent netns the internal
    /// /31 is always the pool's first. Refuses an index the pools do not
    /// hold.
    pub fn place(&self, settings: &Settings, index: u32) -> Result<GatePlan> {
        if index >= settings.capacity() {
            return Err(Error::invalid(format!(
                "gate index {index} does not fit the address pools ({} gates); enlarge internal_pool and egress_pool",
                settings.capacity()
            )));
        }
        // An agent in a netns of its own sees only its gate, so every such
        // gate takes the internal pool's first /31: the gate's address, and
        // the ssh config written from it, stay the same across stops,
        // starts in any order and reboots. An agent end in the host's
        // namespace needs the /31 of its own index.
        let internal_index = if self.agent_netns.is_some() { 0 } else { index };
        let (agent_addr, gate_int_addr) = pair(settings.internal_pool, internal_index);
        let (host_egr_addr, gate_egr_addr) = pair(settings.egress_pool, index);
        let end = |name: String, address| LinkEnd { name, address };
        Ok(GatePlan {
            slug: self.slug.clone(),
            index,
            netns: netns_name(&self.slug),
            unit: unit_name(&self.slug),
            agent_netns: self.agent_netns.clone(),
            agent_netns_owned: self.agent_netns_owned,
            agent_link: end(
                match self.agent_netns {
                    Some(_) => AGENT_LINK.to_string(),
                    None => host_internal_link(index),
                },
                agent_addr,
            ),
            gate_internal: end(GATE_INTERNAL_LINK.to_string(), gate_int_addr),
            gate_egress: end(GATE_EGRESS_LINK.to_string(), gate_egr_addr),
            host_egress: end(host_egress_link(index), host_egr_addr),
            upstreams: self.upstreams.clone(),
        })
    }
}

impl GatePlan {
    /// The socket unit holding the gate's listening sockets
    /// (`gate-<slug>.socket`); systemd starts [`GatePlan::unit`] from it.
    pub fn socket_unit(&self) -> String {
        socket_unit_name(&self.slug)
    }

    /// The name (under /run/netns) of the agent's netns when gatectl owns
    /// it.
    pub fn owned_agent_netns(&self) -> Option<&str> {
        self.agent_netns
            .as_deref()
            .filter(|_| self.agent_netns_owned)
            .and_then(Path::file_name)
            .and_then(|name| name.to_str())
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

    /// The listen ports, in manifest order.
    pub fn listen_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.upstreams.iter().map(|u| u.listen_port)
    }

    /// Every resolved upstream `address:port` pair, in manifest order.
    pub fn upstream_pairs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.upstreams
            .iter()
            .flat_map(|u| u.addresses.iter().map(move |a| SocketAddr::new(*a, u.port)))
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

/// The packaged unit that manages the gate of `slug` across boots
/// (`gatectl@<slug>.service`: `ExecStart=gatectl start`, `ExecStop=gatectl
/// stop`).
pub fn manager_unit_name(slug: &Slug) -> String {
    format!("gatectl@{slug}.service")
}

/// The slug whose manager unit is `unit` (`gatectl@<slug>.service`).
pub fn slug_of_manager_unit(unit: &str) -> Option<Slug> {
    Slug::parse(unit.strip_prefix("gatectl@")?.strip_suffix(".service")?).ok()
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

    fn spec(slug: &str, text: &str, settings: &Settings, netns: Option<&str>) -> Result<GateSpec> {
        GateSpec::build(
            &Slug::parse(slug).unwrap(),
            &manifest(text),
            settings,
            netns,
            fake_resolve,
        )
    }

    fn plan(text: &str, index: u32) -> GatePlan {
        let settings = Settings::default();
        spec("alice", text, &settings, None)
            .unwrap()
            .place(&settings, index)
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
        assert_eq!(a.upstreams[0].alias.as_str(), "github");
        assert_eq!(b.upstreams[0].alias.as_str(), "box");
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
        let settings = Settings::default();
        let text = format!("agent_netns = \"agent-bob\"\n{TWO}");
        let p = spec("bob", &text, &settings, None)
            .unwrap()
            .place(&settings, 0)
            .unwrap();
        assert_eq!(p.agent_netns, Some(PathBuf::from("/run/netns/agent-bob")));
        assert_eq!(p.agent_link.name, "gate0");
        let cli = spec("bob", &text, &settings, Some("/run/netns/other")).unwrap();
        assert_eq!(cli.agent_netns, Some(PathBuf::from("/run/netns/other")));
    }

    #[test]
    fn placing_keeps_the_spec_and_only_adds_addresses_and_link_names() {
        let settings = Settings::default();
        let spec = spec("alice", TWO, &settings, None).unwrap();
        let (a, b) = (
            spec.place(&settings, 0).unwrap(),
            spec.place(&settings, 7).unwrap(),
        );
        assert_eq!(a.upstreams, spec.upstreams);
        assert_eq!(a.upstreams, b.upstreams);
        assert_eq!(
            (a.host_egress.name.as_str(), b.host_egress.name.as_str()),
            ("gte0", "gte7")
        );
        assert_eq!(b.gate_internal.address, Ipv4Addr::new(10, 231, 0, 15));
        assert_eq!(
            a.upstream_pairs().map(|p| p.to_string()).collect::<Vec<_>>(),
            ["192.0.2.7:22", "198.51.100.4:2222"]
        );
        assert_eq!(a.listen_ports().collect::<Vec<_>>(), [30000, 30001]);
    }

    #[test]
    fn refuses_listen_ports_past_65535_too_many_entries_and_full_pools() {
        let settings = Settings {
            base_port: 65535,
            ..Settings::default()
        };
        let err = spec("a", TWO, &settings, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "2 ssh entries from base port 65535 would need port 65536; declare fewer entries or lower base_port"
        );
        let many: String = (0..=MAX_ENTRIES)
            .map(|i| format!("[[ssh]]\nHost = \"h{i}\"\nHostname = \"192.0.2.1\"\n"))
            .collect();
        let err = spec("a", &many, &Settings::default(), None).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("1025 ssh entries: a gate serves at most 1024"),
            "{err}"
        );
        let settings = Settings::default();
        let err = spec("a", TWO, &settings, None)
            .unwrap()
            .place(&settings, 32768)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "gate index 32768 does not fit the address pools (32768 gates); enlarge internal_pool and egress_pool"
        );
    }

    #[test]
    fn refuses_upstreams_the_policy_refuses_naming_entry_and_address() {
        let settings = Settings::default();
        let literal = "[[ssh]]\nHost = \"ok\"\nHostname = \"192.0.2.1\"\n[[ssh]]\nHost = \"meta\"\nHostname = \"169.254.169.254\"\n";
        let err = spec("a", literal, &settings, None).unwrap_err().to_string();
        assert!(
            err.starts_with("ssh entry 2 (meta): upstream 169.254.169.254 is link-local"),
            "{err}"
        );
        // A name is checked for every address it resolves to.
        let named = "[[ssh]]\nHost = \"loop\"\nHostname = \"sneaky.example\"\n";
        let err = GateSpec::build(
            &Slug::parse("a").unwrap(),
            &manifest(named),
            &settings,
            None,
            |_| Ok(vec!["192.0.2.1".parse().unwrap(), "10.232.0.9".parse().unwrap()]),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "ssh entry 1 (loop): upstream sneaky.example resolves to 10.232.0.9, which is inside \
             gatectl's egress_pool 10.232.0.0/16: it would lead into another gate; declare the real host's address"
        );
    }

    #[test]
    fn an_upstream_with_ipv6_addresses_only_is_refused() {
        let settings = Settings::default();
        let v6_only = "[[ssh]]\nHost = \"six\"\nHostname = \"2001:db8::5\"\n";
        let err = spec("alice", v6_only, &settings, None).unwrap_err().to_string();
        assert_eq!(err, format!("ssh entry 1 (six): upstream 2001:db8::5 {NO_IPV4}"));
        // A name with both families is accepted, and keeps both.
        let both = GateSpec::build(
            &Slug::parse("alice").unwrap(),
            &manifest("[[ssh]]\nHost = \"dual\"\nHostname = \"dual.example\"\n"),
            &settings,
            None,
            |_| Ok(vec!["2001:db8::5".parse().unwrap(), "192.0.2.5".parse().unwrap()]),
        )
        .unwrap();
        assert_eq!(both.upstreams[0].addresses.len(), 2);
    }

    #[test]
    fn a_gate_with_an_agent_netns_has_the_same_address_at_every_index() {
        let settings = Settings::default();
        let with_netns = spec("alice", TWO, &settings, Some("agent-alice")).unwrap();
        let without = spec("alice", TWO, &settings, None).unwrap();
        let at = |spec: &GateSpec, index| spec.place(&settings, index).unwrap();
        for index in [0, 1, 7, 4000] {
            let plan = at(&with_netns, index);
            assert_eq!(plan.agent_link.address, Ipv4Addr::new(10, 231, 0, 0));
            assert_eq!(plan.gate_internal.address, Ipv4Addr::new(10, 231, 0, 1));
            assert_eq!(plan.host_egress.name, format!("gte{index}"));
            assert_eq!(plan.gate_egress.address, at(&without, index).gate_egress.address);
        }
        assert_eq!(
            at(&without, 7).gate_internal.address,
            Ipv4Addr::new(10, 231, 0, 15)
        );
    }

    #[test]
    fn an_owned_agent_netns_defaults_to_agent_slug_and_must_be_a_name() {
        let settings = Settings::default();
        let text = format!("own_agent_netns = true\n{TWO}");
        let owned = spec("alice", &text, &settings, None)
            .unwrap()
            .place(&settings, 3)
            .unwrap();
        assert_eq!(owned.agent_netns, Some(PathBuf::from("/run/netns/agent-alice")));
        assert_eq!(owned.owned_agent_netns(), Some("agent-alice"));
        let named = spec("alice", &text, &settings, Some("elsewhere")).unwrap();
        assert_eq!(named.agent_netns, Some(PathBuf::from("/run/netns/elsewhere")));
        assert!(named.agent_netns_owned);
        let err = spec("alice", &text, &settings, Some("/proc/1/ns/net")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "own_agent_netns: gatectl owns only a named netns under /run/netns, not /proc/1/ns/net; give a name"
        );
        let plain = plan(&format!("agent_netns = \"a\"\n{TWO}"), 0);
        assert_eq!(plain.owned_agent_netns(), None);
        for text in [
            format!("agent_netns = \"gate-bob\"\n{TWO}"),
            format!("agent_netns = \"gate-bob\"\n{text}"),
        ] {
            let err = spec("alice", &text, &settings, None).unwrap_err();
            assert_eq!(
                err.to_string(),
                "agent_netns gate-bob: names starting with gate- are gatectl's gate netns; give the agent's \
                 netns another name (e.g. agent-alice)"
            );
        }
    }
}
