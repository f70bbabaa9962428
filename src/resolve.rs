//! Resolution of upstream names on the host: the gate netns may have no
//! usable resolver (e.g. a 127.0.0.53 stub), so `start` resolves every
//! `Hostname` here and hands addresses to the forwarder and the firewall.

use std::net::{IpAddr, ToSocketAddrs};

use crate::error::{Error, Result};

/// Every A and AAAA address of `host` (or the literal itself), IPv4 first
/// (a gate's egress link is IPv4), without duplicates.
pub fn resolve(host: &str) -> Result<Vec<IpAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let found = (host, 0u16).to_socket_addrs().map_err(|e| {
        Error::invalid(format!(
            "cannot resolve upstream {host:?}: {e}; check the Hostname in the manifest and the host's resolver"
        ))
    })?;
    let mut addresses: Vec<IpAddr> = Vec::new();
    for a in found {
        if !addresses.contains(&a.ip()) {
            addresses.push(a.ip());
        }
    }
    addresses.sort_by_key(|a| a.is_ipv6());
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_resolve_to_themselves() {
        assert_eq!(
            resolve("192.0.2.1").unwrap(),
            vec!["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            resolve("2001:db8::1").unwrap(),
            vec!["2001:db8::1".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn localhost_resolves_ipv4_first() {
        let a = resolve("localhost").unwrap();
        assert!(a[0].is_ipv4(), "{a:?}");
    }

    #[test]
    fn unresolvable_names_say_so() {
        let err = resolve("no-such-host.invalid").unwrap_err().to_string();
        assert!(
            err.contains("cannot resolve upstream \"no-such-host.invalid\""),
            "{err}"
        );
    }
}
