//! Resolution of upstream names on the host: the gate netns may have no
//! usable resolver (e.g. a 127.0.0.53 stub), so `start` resolves every
//! `Hostname` here and hands addresses to the forwarder and the firewall.
//! `start` and `reload` ask the C library (`getaddrinfo`, which follows
//! nsswitch.conf); the DNS refresh of running gates asks the resolvers of
//! /etc/resolv.conf (and /etc/hosts) itself, with hickory-resolver, since it
//! needs each answer's TTL.

use std::net::{IpAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;

use crate::error::{Error, Result};

/// The addresses of a name and how long they may be kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The addresses, IPv4 first, without duplicates.
    pub addresses: Vec<IpAddr>,
    /// How long the answer is valid (its smallest TTL).
    pub ttl: Duration,
}

/// A resolver with the host's configuration (/etc/resolv.conf, /etc/hosts),
/// for the DNS refresh.
pub fn system_resolver() -> Result<TokioResolver> {
    TokioResolver::builder_tokio()
        .map(|builder| builder.build())
        .map_err(|e| {
            Error::failed(format!(
                "cannot read the host's resolver configuration (/etc/resolv.conf): {e}; fix it so the host \
                 resolves names"
            ))
        })
}

/// Every A and AAAA address of `host` with the answer's TTL, through
/// `resolver` (see [`system_resolver`]).
pub async fn resolve_with_ttl(resolver: &TokioResolver, host: &str) -> Result<Answer> {
    let lookup = resolver
        .lookup_ip(host)
        .await
        .map_err(|e| Error::failed(format!("cannot resolve upstream {host:?}: {e}")))?;
    Ok(Answer {
        addresses: ordered(lookup.iter()),
        ttl: lookup.valid_until().saturating_duration_since(Instant::now()),
    })
}

/// `found` without duplicates, IPv4 first (a gate's egress is IPv4), in
/// the resolver's order otherwise.
fn ordered(found: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> = Vec::new();
    for a in found {
        if !addresses.contains(&a) {
            addresses.push(a);
        }
    }
    addresses.sort_by_key(|a| a.is_ipv6());
    addresses
}

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
    Ok(ordered(found.map(|a| a.ip())))
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
