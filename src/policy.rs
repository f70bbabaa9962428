//! Which upstream addresses a gate may be given. Pure: the same answer for a
//! literal in a manifest and for a name resolved at start (or later).
//!
//! An upstream must be a unicast address on some network other than gatectl's
//! own: an address in the internal or egress pool would chain one gate into
//! another (A's agent reaching C's upstream, credited to C in C's audit log),
//! and the unspecified, broadcast, multicast and loopback addresses never name
//! one remote host. Link-local addresses (169.254.0.0/16 holds the cloud
//! metadata service) are refused unless the host setting `allow_link_local`
//! says otherwise.

use std::net::{IpAddr, Ipv4Addr};

use crate::config::Settings;

/// Why `address` may not be an upstream of a gate on a host with `settings`,
/// worded to follow "upstream X "; `None` when it may.
pub fn refusal(address: IpAddr, settings: &Settings) -> Option<String> {
    let address = address.to_canonical();
    if let IpAddr::V4(v4) = address {
        for (setting, pool) in [
            ("internal_pool", settings.internal_pool),
            ("egress_pool", settings.egress_pool),
        ] {
            if pool.contains(&v4) {
                return Some(format!(
                    "is inside gatectl's {setting} {pool}: it would lead into another gate; \
                     declare the real host's address"
                ));
            }
        }
    }
    if let IpAddr::V6(v6) = address {
        let pool = settings.egress_pool6;
        if pool.contains(&v6) {
            return Some(format!(
                "is inside gatectl's egress_pool6 {pool}: it would lead into another gate; \
                 declare the real host's address"
            ));
        }
    }
    let class = match address {
        IpAddr::V4(v4) => class_v4(v4),
        IpAddr::V6(v6) if v6.is_unspecified() => Some(Class::Unspecified),
        IpAddr::V6(v6) if v6.is_loopback() => Some(Class::Loopback),
        IpAddr::V6(v6) if v6.is_multicast() => Some(Class::Multicast),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some(Class::LinkLocal),
        IpAddr::V6(_) => None,
    }?;
    match class {
        Class::Unspecified => Some("is an unspecified address, not a host".into()),
        Class::Broadcast => Some("is the broadcast address, not a host".into()),
        Class::Multicast => Some("is a multicast address, not a host".into()),
        Class::Loopback => Some(
            "is a loopback address, which inside the gate means the gate itself; \
             for a service of this host, declare one of the host's own addresses"
                .into(),
        ),
        Class::LinkLocal if settings.allow_link_local => None,
        Class::LinkLocal => Some(
            "is link-local (169.254.0.0/16 or fe80::/10, where cloud metadata services live); \
             set allow_link_local = true in /etc/gatectl/gatectl.toml if gates may reach such addresses"
                .into(),
        ),
    }
}

/// The kinds of address that name no remote host of their own.
enum Class {
    Unspecified,
    Broadcast,
    Multicast,
    Loopback,
    LinkLocal,
}

fn class_v4(v4: Ipv4Addr) -> Option<Class> {
    // 0.0.0.0/8 is "this network": no packet may carry it as a destination.
    if v4.octets()[0] == 0 {
        Some(Class::Unspecified)
    } else if v4.is_broadcast() {
        Some(Class::Broadcast)
    } else if v4.is_multicast() {
        Some(Class::Multicast)
    } else if v4.is_loopback() {
        Some(Class::Loopback)
    } else if v4.is_link_local() {
        Some(Class::LinkLocal)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_names_no_remote_host_and_gatectls_own_pools() {
        let settings = Settings::default();
        // (address, a phrase of the refusal, or None when allowed)
        let cases = [
            ("192.0.2.10", None),
            ("2001:db8::1", None),
            ("10.99.2.1", None),
            ("10.231.0.5", Some("inside gatectl's internal_pool 10.231.0.0/16")),
            (
                "10.232.255.255",
                Some("inside gatectl's egress_pool 10.232.0.0/16"),
            ),
            ("::ffff:10.232.0.1", Some("egress_pool")),
            (
                "fd23:1:2:ffff::9",
                Some("inside gatectl's egress_pool6 fd23:1:2::/48"),
            ),
            ("fd23:1:3::9", None),
            ("0.0.0.0", Some("unspecified")),
            ("0.1.2.3", Some("unspecified")),
            ("::", Some("unspecified")),
            ("255.255.255.255", Some("broadcast")),
            ("224.0.0.1", Some("multicast")),
            ("ff02::1", Some("multicast")),
            ("127.0.0.1", Some("loopback")),
            ("127.8.9.10", Some("loopback")),
            ("::1", Some("loopback")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("169.254.169.254", Some("allow_link_local = true")),
            ("fe80::1", Some("link-local")),
        ];
        for (address, phrase) in cases {
            let found = refusal(address.parse().unwrap(), &settings);
            match (phrase, &found) {
                (None, None) => {}
                (Some(p), Some(reason)) => assert!(reason.contains(p), "{address}: {reason}"),
                _ => panic!("{address}: expected {phrase:?}, got {found:?}"),
            }
        }
    }

    #[test]
    fn link_local_is_allowed_when_the_host_setting_says_so() {
        let settings = Settings {
            allow_link_local: true,
            ..Settings::default()
        };
        assert_eq!(refusal("169.254.169.254".parse().unwrap(), &settings), None);
        assert_eq!(refusal("fe80::1".parse().unwrap(), &settings), None);
        assert!(refusal("127.0.0.1".parse().unwrap(), &settings).is_some());
    }
}
