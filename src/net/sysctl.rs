//! IPv4 forwarding on the host. A gate's upstream traffic is routed by the
//! host, and IPv4 checks the forwarding flag of the ingress interface, so in
//! practice `net.ipv4.ip_forward` must be on.

use std::path::Path;

use crate::error::{Context, Result};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

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

/// Settles a new gate netns before any of its links exists (call it on a
/// thread that joined it): IPv4 forwarding off, which a new netns copies
/// from the host (a gate never routes between its links, so the agent
/// cannot bypass the forwarder), and IPv6 disabled on every link to come,
/// so no Router Advertisement from the agent's side gives the gate an
/// address or a route.
pub fn settle_gate_netns() -> Result<()> {
    std::fs::write(IP_FORWARD, b"0\n").context("cannot turn IPv4 forwarding off in the gate netns")?;
    for knob in ["all", "default"] {
        let path = format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6");
        match std::fs::write(&path, b"1\n") {
            Ok(()) => {}
            // A kernel without IPv6 has nothing to disable.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot write {path} in the gate netns")),
        }
    }
    Ok(())
}

fn read_flag(path: &Path) -> Result<bool> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.trim() != "0")
}
