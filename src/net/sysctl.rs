//! Forwarding on the host, and the IPv6 settings of gate links. A gate's
//! upstream traffic is routed by the host, and IPv4 checks the forwarding
//! flag of the ingress interface, so in practice `net.ipv4.ip_forward` must
//! be on; IPv6 forwards only with `net.ipv6.conf.all.forwarding` on, which
//! also stops every interface from accepting Router Advertisements unless
//! its `accept_ra` is 2.

use std::path::Path;

use crate::error::{Context, Result};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const IPV6_FORWARDING: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
/// The kernel's IPv6 routes (every table), one per line.
const IPV6_ROUTES: &str = "/proc/net/ipv6_route";
/// `RTF_REJECT`: an unreachable, prohibit or blackhole route.
const RTF_REJECT: u32 = 0x0200;
/// `RTF_DEFAULT | RTF_ADDRCONF`: a default route learned from a Router
/// Advertisement.
const RTF_RA_DEFAULT: u32 = 0x0001_0000 | 0x0004_0000;

/// Whether `net.ipv4.ip_forward` is on in the current namespace.
pub fn ipv4_forwarding() -> Result<bool> {
    read_flag(Path::new(IP_FORWARD))
}

/// Turns `net.ipv4.ip_forward` on. Returns true if gatectl changed it (the
/// host did not forward before), so the firewall can keep the host from
/// forwarding anything but gate traffic.
pub fn enable_ipv4_forwarding() -> Result<bool> {
    if ipv4_forwarding()? {
        return Ok(false);
    }
    std::fs::write(IP_FORWARD, b"1\n")
        .context("cannot enable IPv4 forwarding (net.ipv4.ip_forward); gatectl must run as root")?;
    Ok(true)
}

/// Turns `net.ipv4.ip_forward` off again (when gatectl had turned it on
/// and no gate is left).
pub fn restore_ipv4_forwarding_off() -> Result<()> {
    std::fs::write(IP_FORWARD, b"0\n").context("cannot turn IPv4 forwarding (net.ipv4.ip_forward) back off")
}

/// Whether `net.ipv6.conf.all.forwarding` is on in the current namespace
/// (off on a kernel without IPv6).
pub fn ipv6_forwarding() -> Result<bool> {
    match std::fs::read_to_string(IPV6_FORWARDING) {
        Ok(text) => Ok(text.trim() != "0"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot read {IPV6_FORWARDING}")),
    }
}

/// Turns `net.ipv6.conf.all.forwarding` on (every interface forwards).
pub fn enable_ipv6_forwarding() -> Result<()> {
    std::fs::write(IPV6_FORWARDING, b"1\n")
        .context("cannot enable IPv6 forwarding (net.ipv6.conf.all.forwarding); gatectl must run as root")
}

/// Turns `net.ipv6.conf.all.forwarding` off again (when gatectl had turned
/// it on and no gate is left).
pub fn restore_ipv6_forwarding_off() -> Result<()> {
    std::fs::write(IPV6_FORWARDING, b"0\n")
        .context("cannot turn IPv6 forwarding (net.ipv6.conf.all.forwarding) back off")
}

/// `net.ipv6.conf.<link>.accept_ra`, or `None` when the link is gone.
pub fn accept_ra(link: &str) -> Result<Option<u8>> {
    let path = ipv6_conf(link, "accept_ra");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text.trim().parse().ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {path}")),
    }
}

/// Sets `net.ipv6.conf.<link>.accept_ra`; a link that is gone is success.
pub fn set_accept_ra(link: &str, value: u8) -> Result<()> {
    match std::fs::write(ipv6_conf(link, "accept_ra"), format!("{value}\n")) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot set net.ipv6.conf.{link}.accept_ra to {value}")),
    }
}

/// The kernel's IPv6 routes of the current namespace, as
/// `/proc/net/ipv6_route` lists them (empty without IPv6).
pub fn ipv6_routes() -> Result<String> {
    match std::fs::read_to_string(IPV6_ROUTES) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {IPV6_ROUTES}")),
    }
}

/// The default routes in a `/proc/net/ipv6_route` listing that lead
/// somewhere (not through `lo`, not unreachable): (link, flags).
fn default_routes(listing: &str) -> impl Iterator<Item = (&str, u32)> {
    listing.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [dest, dest_len, .., flags, link] = fields.as_slice() else {
            return None;
        };
        let flags = u32::from_str_radix(flags, 16).ok()?;
        let default = dest.bytes().all(|b| b == b'0') && *dest_len == "00";
        (fields.len() == 10 && default && flags & RTF_REJECT == 0 && *link != "lo").then_some((*link, flags))
    })
}

/// Whether a `/proc/net/ipv6_route` listing has an IPv6 default route.
pub fn has_ipv6_default_route(listing: &str) -> bool {
    default_routes(listing).next().is_some()
}

/// The links of a `/proc/net/ipv6_route` listing with a default route
/// learned from a Router Advertisement (SLAAC), each once.
pub fn ra_default_route_links(listing: &str) -> Vec<String> {
    let mut links: Vec<String> = Vec::new();
    for (link, flags) in default_routes(listing) {
        if flags & RTF_RA_DEFAULT == RTF_RA_DEFAULT && !links.iter().any(|l| l == link) {
            links.push(link.to_string());
        }
    }
    links
}

/// Settles a new gate netns before any of its links exists (call it on a
/// thread that joined it): IPv4 forwarding off, which a new netns copies
/// from the host (a gate never routes between its links, so the agent
/// cannot bypass the forwarder), and IPv6 disabled on every link to come,
/// with Router Advertisements, autoconfiguration and duplicate address
/// detection off for when [`enable_gate_ipv6`] turns it on for the egress
/// link: no Router Advertisement gives the gate an address or a route.
pub fn settle_gate_netns() -> Result<()> {
    std::fs::write(IP_FORWARD, b"0\n").context("cannot turn IPv4 forwarding off in the gate netns")?;
    for knob in ["all", "default"] {
        for (setting, value) in [
            ("forwarding", "0"),
            ("accept_ra", "0"),
            ("autoconf", "0"),
            ("accept_dad", "0"),
            ("disable_ipv6", "1"),
        ] {
            write_ipv6_conf(knob, setting, value, "in the gate netns")?;
        }
    }
    Ok(())
}

/// Turns IPv6 on for `link` alone in a gate netns settled by
/// [`settle_gate_netns`] (call it on a thread that joined it), after
/// making sure it accepts no Router Advertisement and configures no
/// address by itself: it has only the static address gatectl gives it
/// (and its link-local one, which the gate's table lets carry nothing but
/// neighbour discovery).
pub fn enable_gate_ipv6(link: &str) -> Result<()> {
    for (setting, value) in [
        ("accept_ra", "0"),
        ("autoconf", "0"),
        ("accept_dad", "0"),
        ("disable_ipv6", "0"),
    ] {
        write_ipv6_conf(link, setting, value, "in the gate netns")?;
    }
    Ok(())
}

/// Readies the host's end of a gate's egress link for IPv6: no Router
/// Advertisement or autoconfiguration from the gate's side (root in a gate
/// netns could send them), no duplicate address detection (the gate's
/// gateway address is usable at once), IPv6 on.
pub fn settle_host_egress_ipv6(link: &str) -> Result<()> {
    for (setting, value) in [
        ("accept_ra", "0"),
        ("autoconf", "0"),
        ("accept_dad", "0"),
        ("disable_ipv6", "0"),
    ] {
        write_ipv6_conf(link, setting, value, "on the host")?;
    }
    Ok(())
}

/// Turns IPv6 off on gatectl's own host-side link `link`: the host end of
/// a gate without IPv6 egress, or an agent end in the host namespace. It
/// gets no link-local address, and no IPv6 crosses it.
pub fn disable_link_ipv6(link: &str) -> Result<()> {
    write_ipv6_conf(link, "disable_ipv6", "1", "on the host")
}

fn ipv6_conf(link: &str, setting: &str) -> String {
    format!("/proc/sys/net/ipv6/conf/{link}/{setting}")
}

/// Writes `net.ipv6.conf.<link>.<setting>`; on a kernel without IPv6
/// there is nothing to write.
fn write_ipv6_conf(link: &str, setting: &str, value: &str, place: &str) -> Result<()> {
    let path = ipv6_conf(link, setting);
    match std::fs::write(&path, format!("{value}\n")) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !Path::new("/proc/sys/net/ipv6").exists() => {
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("cannot write {path} {place}")),
    }
}

fn read_flag(path: &Path) -> Result<bool> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.trim() != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/net/ipv6_route` of a SLAAC host: a default route learned by
    /// RA on eth0, a static one on eth1 in another table, the `lo`
    /// unreachable default, an unreachable one on eth9, default routes with
    /// only one of the RA flags (eth2: `RTF_DEFAULT`, eth3: `RTF_ADDRCONF`),
    /// and a /64.
    const LISTING: &str = "\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00450003 eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 20010db8000000000000000000000001 00000400 00000001 00000000 00000003 eth1
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 00000400 00000001 00000000 00000201 eth9
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000002 00000400 00000001 00000000 00010003 eth2
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000003 00000400 00000001 00000000 00040003 eth3
20010db8000000010000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0
";

    #[test]
    fn default_routes_are_found_and_those_learned_by_ra_are_named() {
        assert!(has_ipv6_default_route(LISTING));
        assert_eq!(ra_default_route_links(LISTING), ["eth0"]);
        let unreachable: String = LISTING
            .lines()
            .filter(|l| l.ends_with(" lo") || l.ends_with(" eth9") || !l.starts_with("0000"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(
            !has_ipv6_default_route(&unreachable),
            "an unreachable default is no route"
        );
        assert!(ra_default_route_links(&unreachable).is_empty());
        assert!(!has_ipv6_default_route(""));
    }
}
