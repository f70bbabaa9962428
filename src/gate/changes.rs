//! What a reload changes in a gate's entries (pure). Ports stay by entry
//! index (`base_port + i`), so an entry is compared with the one at its
//! index; an alias found at another index than before has moved, which the
//! agent's ssh config must follow.

use std::fmt;

use crate::alias::Alias;
use crate::plan::Upstream;

/// One change of a reload, by listen port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryChange {
    /// A new entry: a new port listens.
    Added {
        /// The entry's alias.
        alias: Alias,
        /// Its listen port.
        port: u16,
        /// Where it forwards to, e.g. `github.com:22 (140.82.112.3)`.
        upstream: String,
    },
    /// An entry that is gone: its port stops listening and its sessions are
    /// cut.
    Removed {
        /// The entry's alias.
        alias: Alias,
        /// Its listen port.
        port: u16,
    },
    /// The entry at a port forwards elsewhere, or under another alias or
    /// user, from now on; its established sessions go on.
    Changed {
        /// The entry's alias now.
        alias: Alias,
        /// Its listen port.
        port: u16,
        /// What changed, e.g. `upstream github.com:22 (…) -> gitlab.com:22 (…)`.
        what: String,
    },
    /// An alias that now has another index, hence another port.
    Moved {
        /// The alias.
        alias: Alias,
        /// Its port before.
        from: u16,
        /// Its port now.
        to: u16,
    },
}

impl fmt::Display for EntryChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryChange::Added {
                alias,
                port,
                upstream,
            } => {
                write!(f, "added {alias} on port {port}, forwarding to {upstream}")
            }
            EntryChange::Removed { alias, port } => {
                write!(
                    f,
                    "removed {alias}: port {port} no longer listens and its sessions are cut"
                )
            }
            EntryChange::Changed { alias, port, what } => {
                write!(f, "changed {alias} on port {port}: {what}")
            }
            EntryChange::Moved { alias, from, to } => write!(
                f,
                "moved {alias} from port {from} to port {to} (entries are numbered by their order); \
                 the agent's ssh config must follow it"
            ),
        }
    }
}

/// The changes from entries `old` to entries `new`, in port order. Empty
/// when they are the same.
pub fn entry_changes(old: &[Upstream], new: &[Upstream]) -> Vec<EntryChange> {
    let port_of = |entries: &[Upstream], alias: &Alias| {
        entries.iter().find(|u| u.alias == *alias).map(|u| u.listen_port)
    };
    let mut changes = Vec::new();
    for i in 0..old.len().max(new.len()) {
        match (old.get(i), new.get(i)) {
            (Some(before), Some(now)) if before == now => {}
            (before, Some(now)) => match port_of(old, &now.alias) {
                Some(from) if from != now.listen_port => changes.push(EntryChange::Moved {
                    alias: now.alias.clone(),
                    from,
                    to: now.listen_port,
                }),
                _ => changes.push(match before {
                    None => EntryChange::Added {
                        alias: now.alias.clone(),
                        port: now.listen_port,
                        upstream: upstream(now),
                    },
                    Some(before) => EntryChange::Changed {
                        alias: now.alias.clone(),
                        port: now.listen_port,
                        what: difference(before, now),
                    },
                }),
            },
            (Some(before), None) if port_of(new, &before.alias).is_none() => {
                changes.push(EntryChange::Removed {
                    alias: before.alias.clone(),
                    port: before.listen_port,
                })
            }
            _ => {}
        }
    }
    changes
}

/// `host:port (addresses)` of an entry.
fn upstream(entry: &Upstream) -> String {
    let addresses: Vec<String> = entry.addresses.iter().map(ToString::to_string).collect();
    format!("{}:{} ({})", entry.host, entry.port, addresses.join(", "))
}

/// What differs between two entries at the same port, `; `-separated.
fn difference(before: &Upstream, now: &Upstream) -> String {
    let mut parts = Vec::new();
    if before.alias != now.alias {
        parts.push(format!("alias {} -> {}", before.alias, now.alias));
    }
    if (&before.host, before.port, &before.addresses) != (&now.host, now.port, &now.addresses) {
        parts.push(format!("upstream {} -> {}", upstream(before), upstream(now)));
    }
    if before.user != now.user {
        let user = |u: &Option<String>| u.clone().unwrap_or_else(|| "(none)".into());
        parts.push(format!("user {} -> {}", user(&before.user), user(&now.user)));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u16, alias: &str, host: &str, address: &str) -> Upstream {
        Upstream {
            listen_port: 30000 + i,
            alias: alias.parse().unwrap(),
            host: host.into(),
            port: 22,
            user: None,
            addresses: vec![address.parse().unwrap()],
        }
    }

    fn shown(old: &[Upstream], new: &[Upstream]) -> Vec<String> {
        entry_changes(old, new).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_same_entries_are_no_change() {
        let entries = [
            entry(0, "a", "a.example", "192.0.2.1"),
            entry(1, "b", "b.example", "192.0.2.2"),
        ];
        assert_eq!(shown(&entries, &entries), Vec::<String>::new());
    }

    #[test]
    fn added_changed_and_removed_entries_are_named_with_their_ports() {
        let old = [
            entry(0, "a", "a.example", "192.0.2.1"),
            entry(1, "b", "b.example", "192.0.2.2"),
        ];
        let mut changed = entry(0, "a", "a2.example", "192.0.2.9");
        changed.user = Some("git".into());
        let new = [
            changed,
            entry(1, "c", "c.example", "192.0.2.3"),
            entry(2, "d", "d.example", "192.0.2.4"),
        ];
        assert_eq!(
            shown(&old, &new),
            [
                "changed a on port 30000: upstream a.example:22 (192.0.2.1) -> a2.example:22 (192.0.2.9); \
                 user (none) -> git",
                "changed c on port 30001: alias b -> c; upstream b.example:22 (192.0.2.2) -> c.example:22 (192.0.2.3)",
                "added d on port 30002, forwarding to d.example:22 (192.0.2.4)",
            ]
        );
        assert_eq!(
            shown(&new[..1], &old[..1]),
            ["changed a on port 30000: upstream a2.example:22 (192.0.2.9) -> a.example:22 (192.0.2.1); user git -> (none)"]
        );
        assert_eq!(
            shown(&old, &old[..1]),
            ["removed b: port 30001 no longer listens and its sessions are cut"]
        );
    }

    #[test]
    fn a_reorder_names_the_entries_that_moved() {
        let old = [
            entry(0, "a", "a.example", "192.0.2.1"),
            entry(1, "b", "b.example", "192.0.2.2"),
            entry(2, "c", "c.example", "192.0.2.3"),
        ];
        let new = [
            entry(0, "b", "b.example", "192.0.2.2"),
            entry(1, "a", "a.example", "192.0.2.1"),
        ];
        assert_eq!(
            shown(&old, &new),
            [
                "moved b from port 30001 to port 30000 (entries are numbered by their order); \
                 the agent's ssh config must follow it",
                "moved a from port 30000 to port 30001 (entries are numbered by their order); \
                 the agent's ssh config must follow it",
                "removed c: port 30002 no longer listens and its sessions are cut",
            ]
        );
    }
}
