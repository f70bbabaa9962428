//! Denied attempts on record: what each gate netns's table denied since
//! the last record of it becomes one journal record per gate (the same
//! `GATE_*` fields as the connection records, `GATE_OUTCOME=denied`), so a
//! flood of attempts costs one line per run of `gatectl metrics`, never one
//! per packet.
//!
//! Owns `STATE_DIR/denied/SLUG.json`: the counts already recorded, with the
//! gate netns they were read in (a restarted gate's counters start again
//! from zero).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Context, Result};

use crate::net::firewall::gate::{Denied, Tried, TRIED_SIZE};
use crate::slug::Slug;

/// The counts already recorded for one gate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// The inode of the gate netns they were read in.
    pub netns: u64,
    /// Denied from the agent's side.
    pub agent: u64,
    /// Denied from inside the gate netns.
    pub egress: u64,
}

/// What was denied since `last` (all of `now` when the netns is another
/// one, or its counters went back), and what to keep as recorded.
pub fn since(last: Option<Recorded>, netns: u64, now: Denied) -> (Denied, Recorded) {
    let base = match last {
        Some(last) if last.netns == netns && last.agent <= now.agent && last.egress <= now.egress => last,
        _ => Recorded::default(),
    };
    let delta = Denied {
        agent: now.agent - base.agent,
        egress: now.egress - base.egress,
    };
    let keep = Recorded {
        netns,
        agent: now.agent,
        egress: now.egress,
    };
    (delta, keep)
}

/// The one-line text of a denied record: the counts since the last record,
/// and the destinations tried within the last hour, when there are any.
pub fn message(slug: &Slug, delta: Denied, tried: &Tried) -> String {
    let (ports, pairs) = tried_fields(tried);
    let mut text = format!(
        "gate {slug}: denied {} packet(s) since the last record: {} from the agent's side to no listener, \
         {} from inside the gate to an undeclared address or port",
        delta.agent + delta.egress,
        delta.agent,
        delta.egress
    );
    // Each set keeps at most TRIED_SIZE: a full one says that more may
    // have been tried (the IPv4 and IPv6 pairs are two sets).
    let full = |full: bool| {
        if full {
            " (a full set: more may have been tried)"
        } else {
            ""
        }
    };
    let pairs_full = [true, false]
        .into_iter()
        .any(|v4| tried.egress.iter().filter(|p| p.is_ipv4() == v4).count() >= TRIED_SIZE);
    let mut tried_parts = Vec::new();
    if !ports.is_empty() {
        tried_parts.push(format!(
            "gate ports {ports}{}",
            full(tried.agent_ports.len() >= TRIED_SIZE)
        ));
    }
    if !pairs.is_empty() {
        tried_parts.push(format!("from inside {pairs}{}", full(pairs_full)));
    }
    if !tried_parts.is_empty() {
        text.push_str(&format!(
            "; tried within the last hour: {}",
            tried_parts.join("; ")
        ));
    }
    text
}

/// The journal fields of the destinations tried: the gate ports
/// (`GATE_DENIED_AGENT_PORTS`, e.g. `22 31000`) and the `address:port`
/// pairs (`GATE_DENIED_EGRESS_TO`, e.g. `192.0.2.7:443 [2001:db8::1]:22`),
/// each space-separated and empty when there is none.
pub fn tried_fields(tried: &Tried) -> (String, String) {
    let join = |items: Vec<String>| items.join(" ");
    (
        join(tried.agent_ports.iter().map(u16::to_string).collect()),
        join(tried.egress.iter().map(SocketAddr::to_string).collect()),
    )
}

/// The files of the recorded counts under a state directory.
pub struct Records {
    dir: PathBuf,
}

impl Records {
    /// The records under `state_dir`.
    pub fn new(state_dir: &Path) -> Records {
        Records {
            dir: state_dir.join("denied"),
        }
    }

    fn path(&self, slug: &str) -> PathBuf {
        self.dir.join(format!("{slug}.json"))
    }

    /// The counts recorded for `slug`, if any (an unreadable file counts as
    /// none: everything is recorded again).
    pub fn load(&self, slug: &Slug) -> Option<Recorded> {
        let text = std::fs::read_to_string(self.path(slug.as_str())).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Keeps `recorded` for `slug` (written aside, then renamed).
    pub fn save(&self, slug: &Slug, recorded: Recorded) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let path = self.path(slug.as_str());
        let partial = path.with_extension("json.partial");
        let text = serde_json::to_string(&recorded).expect("counts serialize");
        std::fs::write(&partial, text).with_context(|| format!("cannot write {}", partial.display()))?;
        std::fs::rename(&partial, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Records in the journal what `slug`'s table denied since the last
    /// record (nothing when nothing was), with the destinations tried
    /// within the last hour, then keeps the counts as recorded. A failure is
    /// a warning: recording never stops the command that does it.
    pub fn record(&self, slug: &Slug, netns: u64, now: Denied, tried: &Tried) {
        let (delta, keep) = since(self.load(slug), netns, now);
        if delta.agent + delta.egress > 0 {
            let text = message(slug, delta, tried);
            let (ports, pairs) = tried_fields(tried);
            let logged = crate::logging::in_journal(|| {
                tracing::info!(
                    slug = slug.as_str(),
                    outcome = "denied",
                    denied_agent = delta.agent,
                    denied_egress = delta.egress,
                    denied_agent_ports = ports.as_str(),
                    denied_egress_to = pairs.as_str(),
                    "{text}"
                );
            });
            if let Err(e) = logged {
                tracing::warn!(slug = %slug, error = %e, "cannot record denied attempts in the journal: {e}");
                return;
            }
        }
        if let Err(e) = self.save(slug, keep) {
            tracing::warn!(slug = %slug, error = %e, "cannot keep the denied counts recorded: {e}");
        }
    }

    /// Forgets the counts recorded for `slug` (its gate is gone).
    pub fn remove(&self, slug: &Slug) {
        let _ = std::fs::remove_file(self.path(slug.as_str()));
    }

    /// Removes the records of gates not in `gates`.
    pub fn keep_only(&self, gates: &[Slug]) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let slug = name.strip_suffix(".json").unwrap_or(&name);
            if !gates.iter().any(|g| g.as_str() == slug) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_since_the_last_record_of_the_same_netns() {
        let now = Denied { agent: 10, egress: 3 };
        let last = Recorded {
            netns: 7,
            agent: 4,
            egress: 3,
        };
        let (delta, keep) = since(Some(last), 7, now);
        assert_eq!(delta, Denied { agent: 6, egress: 0 });
        assert_eq!(
            keep,
            Recorded {
                netns: 7,
                agent: 10,
                egress: 3
            }
        );
        assert_eq!(since(None, 7, now).0, now);
        assert_eq!(
            since(Some(last), 8, now).0,
            now,
            "another netns: a restarted gate"
        );
        let lower = Denied { agent: 2, egress: 3 };
        assert_eq!(since(Some(last), 7, lower).0, lower, "counters went back");
    }

    #[test]
    fn keeps_and_prunes_records() {
        let dir = std::env::temp_dir().join(format!("gatectl-denied-{}", std::process::id()));
        let records = Records::new(&dir);
        let (alice, bob) = (Slug::parse("alice").unwrap(), Slug::parse("bob").unwrap());
        assert_eq!(records.load(&alice), None);
        let r = Recorded {
            netns: 1,
            agent: 2,
            egress: 3,
        };
        records.save(&alice, r).unwrap();
        records.save(&bob, r).unwrap();
        assert_eq!(records.load(&alice), Some(r));
        records.keep_only(std::slice::from_ref(&bob));
        assert_eq!((records.load(&alice), records.load(&bob)), (None, Some(r)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_message_sums_and_names_both_directions_and_what_was_tried() {
        let slug = Slug::parse("alice").unwrap();
        let counts = "gate alice: denied 37 packet(s) since the last record: 35 from the agent's side to no \
                      listener, 2 from inside the gate to an undeclared address or port";
        assert_eq!(
            message(&slug, Denied { agent: 35, egress: 2 }, &Tried::default()),
            counts
        );
        let tried = Tried {
            agent_ports: [31000, 22].into(),
            egress: [
                "192.0.2.7:443".parse().unwrap(),
                "[2001:db8::1]:22".parse().unwrap(),
            ]
            .into(),
        };
        assert_eq!(
            message(&slug, Denied { agent: 35, egress: 2 }, &tried),
            format!(
                "{counts}; tried within the last hour: gate ports 22 31000; \
                 from inside 192.0.2.7:443 [2001:db8::1]:22"
            )
        );
        assert_eq!(
            tried_fields(&tried),
            (
                "22 31000".to_string(),
                "192.0.2.7:443 [2001:db8::1]:22".to_string()
            )
        );
        // A full set says that it holds only the first destinations.
        let full = Tried {
            agent_ports: (1..=TRIED_SIZE as u16).collect(),
            egress: Default::default(),
        };
        assert!(message(&slug, Denied { agent: 64, egress: 0 }, &full)
            .ends_with(" 64 (a full set: more may have been tried)"));
        // 40 IPv4 and 24 IPv6 pairs fill neither of their two sets.
        let mixed = Tried {
            agent_ports: Default::default(),
            egress: (1..=40u16)
                .map(|port| SocketAddr::from(([192, 0, 2, 7], port)))
                .chain((1..=24u16).map(|port| SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], port))))
                .collect(),
        };
        assert!(!message(&slug, Denied { agent: 0, egress: 64 }, &mixed).contains("full set"));
        let v4_full = Tried {
            agent_ports: Default::default(),
            egress: (1..=TRIED_SIZE as u16)
                .map(|port| SocketAddr::from(([192, 0, 2, 7], port)))
                .collect(),
        };
        assert!(message(&slug, Denied { agent: 0, egress: 64 }, &v4_full)
            .ends_with(" (a full set: more may have been tried)"));
    }
}
