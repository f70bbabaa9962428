//! The table `inet gatectl` inside a gate netns: the gate's own allowlist,
//! which a host `nft flush ruleset` (nftables.service's reload, stop and
//! restart) cannot reach. With it, each layer alone stops an undeclared
//! `address:port`: this table, the host table, and (for addresses) the
//! forwarder's BPF `IPAddressAllow=`.
//!
//! ```text
//! table inet gatectl {
//!   set allow4 { type ipv4_addr . inet_service; elements = { 192.0.2.10 . 22 } }
//!   set allow6 { type ipv6_addr . inet_service; }
//!   set listen { type inet_service; elements = { 30000, 30001 } }
//!   set tried_ports { type inet_service; size 64; flags timeout; timeout 1h; }
//!   set tried4 { type ipv4_addr . inet_service; size 64; flags timeout; timeout 1h; }
//!   set tried6 { type ipv6_addr . inet_service; size 64; flags timeout; timeout 1h; }
//!   chain input { type filter hook input priority filter; policy drop;
//!     iifname "lo" accept
//!     ct state established,related accept
//!     iifname "ext0" icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept
//!     iifname "int0" ip saddr <agent address> tcp dport @listen accept
//!     iifname "int0" meta l4proto tcp add @tried_ports { tcp dport }
//!     iifname "int0" counter name "denied_agent"
//!     iifname "int0" meta l4proto tcp reject with tcp reset
//!     counter drop
//!   }
//!   chain output { type filter hook output priority filter; policy drop;
//!     oifname "lo" accept
//!     ct state established,related accept
//!     oifname "ext0" icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept
//!     oifname "ext0" ip daddr . tcp dport @allow4 accept
//!     oifname "ext0" ip6 daddr . tcp dport @allow6 accept
//!     meta nfproto ipv4 meta l4proto tcp add @tried4 { ip daddr . tcp dport }
//!     meta nfproto ipv6 meta l4proto tcp add @tried6 { ip6 daddr . tcp dport }
//!     counter name "denied_egress"
//!     counter drop
//!   }
//!   chain forward { type filter hook forward priority filter; policy drop; }
//!   counter denied_agent { }
//!   counter denied_egress { }
//! }
//! ```
//!
//! The two named counters count what the table denies: packets from the
//! agent's side that reach no listener, and packets from inside the gate
//! netns to anything undeclared. They cost no log line per packet (a kernel
//! `log` statement in a netns other than the host's is silent unless the
//! host sets `net.netfilter.nf_log_all_netns`, which would let every netns
//! write to the kernel log); `gatectl metrics` exports them and records
//! their increase in the journal, one record per gate per run, however many
//! packets a flood sends (see [`GateTable::denied`]); `reload`, reconcile
//! and `stop` take one before they apply the table anew or it goes.
//!
//! The three `tried` sets say what was denied: the gate ports the agent's
//! side was denied (a port that is no listener, or a listener from another
//! source address), and the `address . port` pairs tried from
//! inside the gate netns (TCP; other protocols are only counted). The
//! packet path adds to them, with no commit (the table's seal holds); each
//! entry leaves after an hour, and a set holds at most 64, so a flood of
//! distinct destinations fills it and is still counted. Each `add` is a
//! rule of its own: the add of a full set ends its rule, and the count and
//! the drop come in the rules after it.
//!
//! The agent still sees "connection refused" on a port that is not a
//! listener (the TCP reset), and nothing in the gate netns, root included,
//! opens a connection to anything but a declared upstream pair. Over IPv6
//! (on `ext0` only, when the gate has IPv6 upstreams) nothing leaves but
//! those pairs and the neighbour discovery that finds the gateway: no
//! link-local or multicast traffic, no Router or Multicast Listener
//! messages.

use std::collections::BTreeSet;
use std::hash::Hasher;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;

use nftables::batch::Batch;
use nftables::expr::{Expression, MetaKey, NamedExpression};
use nftables::schema::{
    Chain, Counter, NfCmd, NfListObject, Nftables, Set, SetFlag, SetType, SetTypeValue, Table,
};
use nftables::stmt::{
    Counter as NamedCounter, Operator, Reject, RejectType, Set as SetStatement, SetOp, Statement,
};
use nftables::types::{NfChainPolicy, NfChainType, NfHook};
use serde::{Deserialize, Serialize};

use super::host::neighbour_discovery;
use super::{
    accept, batch_as_listing, counter, drop, listed, matches, meta, payload, replies, rule, rules_of,
    set_ref, string, Session, ALLOW4_SET, ALLOW6_SET, FAMILY, PRIO_FILTER, TABLE,
};
use crate::error::{Context, Result};
use crate::net::nft_generation;
use crate::plan::{GatePlan, GATE_EGRESS_LINK, GATE_INTERNAL_LINK};

/// The set of the gate's listen ports.
const LISTEN_SET: &str = "listen";
const INPUT_CHAIN: &str = "input";
const OUTPUT_CHAIN: &str = "output";
const FORWARD_CHAIN: &str = "forward";
/// The named counter of packets from the agent's side that reach no
/// listener.
const DENIED_AGENT: &str = "denied_agent";
/// The named counter of packets from inside the gate netns to anything
/// undeclared.
const DENIED_EGRESS: &str = "denied_egress";

/// The set of the gate ports denied to the agent's side.
const TRIED_PORTS_SET: &str = "tried_ports";
/// The set of the undeclared IPv4 `address . port` pairs tried from inside
/// the gate netns.
const TRIED4_SET: &str = "tried4";
/// The same for IPv6.
const TRIED6_SET: &str = "tried6";
/// How many destinations each `tried` set holds at most.
pub const TRIED_SIZE: usize = 64;
/// How long a destination stays in a `tried` set, in seconds.
const TRIED_SECS: u32 = 3600;

/// The destinations the gate netns's table denied within the last hour
/// (TCP; at most [`TRIED_SIZE`] of each kind).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tried {
    /// Gate ports denied to the agent's side: no listener, or a listener
    /// tried from another source address.
    pub agent_ports: BTreeSet<u16>,
    /// Undeclared `address:port` pairs tried from inside the gate netns.
    pub egress: BTreeSet<SocketAddr>,
}

/// Packets the gate netns's table denied since it was applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Denied {
    /// From the agent's side to anything of the gate but a listen port.
    pub agent: u64,
    /// From inside the gate netns to an undeclared address or port.
    pub egress: u64,
}

/// The allowlist of one gate, as its netns enforces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateTable {
    /// The agent's address: the only source the listen ports accept.
    pub agent: Ipv4Addr,
    /// The listen ports.
    pub listen_ports: BTreeSet<u16>,
    /// The upstream `address:port` pairs the gate may connect to.
    pub allowed: BTreeSet<SocketAddr>,
}

/// gatectl's table in a gate netns, as a command names it.
fn table() -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: FAMILY,
        name: TABLE.into(),
        handle: None,
    })
}

/// The inode of the calling thread's network namespace.
fn current_netns_inode() -> Result<u64> {
    let path = "/proc/thread-self/ns/net";
    Ok(std::fs::metadata(path)
        .with_context(|| format!("cannot stat {path}"))?
        .ino())
}

/// What [`GateTable::survey`] found in a gate netns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableState {
    /// No table `inet gatectl`.
    Missing,
    /// The table differs from the one gatectl applies (elements or rules).
    Differs,
    /// Exactly the table gatectl applies.
    Intact,
}

/// What [`GateTable::apply`] left in a gate netns, kept with the gate's
/// record: with it, one `NFT_MSG_GETGEN` request tells that nobody changed
/// that netns's ruleset since (the generation moves at every commit there,
/// whoever makes it), where a listing costs libnftables' cache and a JSON
/// document. `gatectl check` and `reconcile` list only the tables whose
/// seal no longer holds, which keeps them fast at thousands of gates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSeal {
    /// The inode of the gate netns the table was applied in (a new netns of
    /// the same name has another).
    pub netns: u64,
    /// That netns's nftables generation right after the table was applied.
    pub generation: u32,
    /// FNV-1a of the batch that was applied, so a gatectl that builds the
    /// table otherwise (an upgrade) does not take the old one for its own.
    pub digest: u64,
}

impl GateTable {
    /// The table of the gate in `plan`.
    pub fn of(plan: &GatePlan) -> GateTable {
        GateTable {
            agent: plan.agent_link.address,
            listen_ports: plan.listen_ports().collect(),
            allowed: plan
                .upstream_pairs()
                .map(|p| SocketAddr::new(p.ip().to_canonical(), p.port()))
                .collect(),
        }
    }

    /// Replaces the table in the calling thread's network namespace (a
    /// thread that joined the gate netns), in one atomic batch: there is
    /// no moment without it once it exists. Returns the seal to keep.
    pub fn apply(&self) -> Result<TableSeal> {
        let context = format!("could not set up the nftables table `inet {TABLE}` in the gate netns");
        self.commit(&self.batch(), context)
    }

    /// [`apply`](Self::apply) over a table that may hold counts: what it
    /// denied so far ([`GateTable::denied`], `None` without a table or
    /// when it cannot be read) is read first, since the new table starts
    /// its counters and tried sets empty.
    pub fn reapply(&self) -> Result<(TableSeal, Option<(Denied, Tried)>)> {
        let before = Self::denied().ok().flatten();
        self.apply().map(|seal| (seal, before))
    }

    /// Creates the table in the calling thread's network namespace, which
    /// must have none (a gate netns just made), in one batch; fails if it
    /// exists. The same table as [`apply`](Self::apply) and the same seal,
    /// but the commit deletes nothing: after one that deletes, the kernel
    /// waits for an RCU grace period when the netlink socket closes (about
    /// 10 ms on this kind of machine, in every start).
    pub fn create(&self) -> Result<TableSeal> {
        let context = format!("could not create the nftables table `inet {TABLE}` in the gate netns");
        self.commit(&self.create_batch(), context)
    }

    /// Commits `batch` (this table's) and seals what it left.
    fn commit(&self, batch: &Nftables<'static>, context: String) -> Result<TableSeal> {
        Session::open(&context)?.apply(batch, context)?;
        Ok(TableSeal {
            netns: current_netns_inode()?,
            generation: nft_generation::current()?,
            digest: self.digest(),
        })
    }

    /// Whether the calling thread's network namespace still holds exactly
    /// what the `apply` or `create` that gave `seal` left: the same netns, no commit
    /// since, and this very table. `false` says "list it to know".
    pub fn sealed(&self, seal: Option<&TableSeal>) -> Result<bool> {
        let Some(seal) = seal else {
            return Ok(false);
        };
        Ok(seal.digest == self.digest()
            && seal.netns == current_netns_inode()?
            && seal.generation == nft_generation::current()?)
    }

    /// [`survey`](Self::survey), skipped when `seal` still holds.
    pub fn survey_sealed(&self, seal: Option<&TableSeal>) -> Result<TableState> {
        if self.sealed(seal)? {
            return Ok(TableState::Intact);
        }
        self.survey()
    }

    /// FNV-1a of the batch [`apply`](Self::apply) sends.
    fn digest(&self) -> u64 {
        let mut hasher = fnv::FnvHasher::default();
        hasher.write(&serde_json::to_vec(&self.batch()).unwrap_or_default());
        hasher.finish()
    }

    /// How the table in the calling thread's network namespace compares
    /// with this one.
    pub fn survey(&self) -> Result<TableState> {
        let context = format!("could not list the nftables table `inet {TABLE}` in the gate netns");
        let Some(listing) = Session::open(&context)?.list_table()? else {
            return Ok(TableState::Missing);
        };
        let same_sets = [ALLOW4_SET, ALLOW6_SET, LISTEN_SET]
            .into_iter()
            .all(|name| set_elements(&listing, name) == self.elements(name));
        let wanted = batch_as_listing(&self.batch());
        let same_rules = [INPUT_CHAIN, OUTPUT_CHAIN, FORWARD_CHAIN]
            .into_iter()
            .all(|chain| rules_of(&listing, chain).count() == rules_of(&wanted, chain).count());
        let chains: Vec<&Chain> = listed(&listing)
            .filter_map(|o| match o {
                NfListObject::Chain(c) if c.table == TABLE => Some(c),
                _ => None,
            })
            .collect();
        let policies_drop = chains.len() == 3 && chains.iter().all(|c| c.policy == Some(NfChainPolicy::Drop));
        Ok(if same_sets && same_rules && policies_drop {
            TableState::Intact
        } else {
            TableState::Differs
        })
    }

    /// What the table in the calling thread's network namespace (a thread
    /// that joined the gate netns) denied so far, from its named counters,
    /// and the destinations tried within the last hour, from its `tried`
    /// sets; `None` when it has no table.
    pub fn denied() -> Result<Option<(Denied, Tried)>> {
        let context = format!("could not list the nftables table `inet {TABLE}` in the gate netns");
        let Some(listing) = Session::open(&context)?.list_table()? else {
            return Ok(None);
        };
        Ok(Some((denied_in(&listing), tried_in(&listing))))
    }

    /// The elements of set `name` as this table holds them.
    fn elements(&self, name: &str) -> BTreeSet<String> {
        match name {
            LISTEN_SET => self.listen_ports.iter().map(u16::to_string).collect(),
            ALLOW4_SET => self
                .allowed
                .iter()
                .filter(|p| p.is_ipv4())
                .map(|p| format!("{} . {}", p.ip(), p.port()))
                .collect(),
            _ => self
                .allowed
                .iter()
                .filter(|p| p.is_ipv6())
                .map(|p| format!("{} . {}", p.ip(), p.port()))
                .collect(),
        }
    }

    /// The commands of [`GateTable::apply`]: add the table (so the delete
    /// cannot fail), delete it, and build it anew.
    fn batch(&self) -> Nftables<'static> {
        let mut batch = Batch::new();
        batch.add(table());
        batch.delete(table());
        batch.add(table());
        self.contents(batch)
    }

    /// The commands of [`GateTable::create`]: create the table, which
    /// fails if it exists, and build it.
    fn create_batch(&self) -> Nftables<'static> {
        let mut batch = Batch::new();
        batch.add_cmd(NfCmd::Create(table()));
        self.contents(batch)
    }

    /// `batch` followed by the commands that fill the (empty) table.
    fn contents(&self, mut batch: Batch<'static>) -> Nftables<'static> {
        let pair = |addr: IpAddr, port: u16| {
            Expression::Named(NamedExpression::Concat(vec![
                string(addr.to_string()),
                Expression::Number(u32::from(port)),
            ]))
        };
        let v4: Vec<Expression<'static>> = self
            .allowed
            .iter()
            .filter(|p| p.is_ipv4())
            .map(|p| pair(p.ip(), p.port()))
            .collect();
        let v6: Vec<Expression<'static>> = self
            .allowed
            .iter()
            .filter(|p| p.is_ipv6())
            .map(|p| pair(p.ip(), p.port()))
            .collect();
        let ports: Vec<Expression<'static>> = self
            .listen_ports
            .iter()
            .map(|p| Expression::Number(u32::from(*p)))
            .collect();
        let sets = [
            (
                ALLOW4_SET,
                SetTypeValue::Concatenated(vec![SetType::Ipv4Addr, SetType::InetService].into()),
                v4,
            ),
            (
                ALLOW6_SET,
                SetTypeValue::Concatenated(vec![SetType::Ipv6Addr, SetType::InetService].into()),
                v6,
            ),
            (LISTEN_SET, SetTypeValue::Single(SetType::InetService), ports),
        ];
        for (name, set_type, elem) in sets {
            batch.add(NfListObject::Set(Box::new(Set {
                family: FAMILY,
                table: TABLE.into(),
                name: name.into(),
                set_type,
                elem: (!elem.is_empty()).then(|| elem.into()),
                ..Set::default()
            })));
        }
        let tried = [
            (TRIED_PORTS_SET, SetTypeValue::Single(SetType::InetService)),
            (
                TRIED4_SET,
                SetTypeValue::Concatenated(vec![SetType::Ipv4Addr, SetType::InetService].into()),
            ),
            (
                TRIED6_SET,
                SetTypeValue::Concatenated(vec![SetType::Ipv6Addr, SetType::InetService].into()),
            ),
        ];
        for (name, set_type) in tried {
            batch.add(NfListObject::Set(Box::new(Set {
                family: FAMILY,
                table: TABLE.into(),
                name: name.into(),
                set_type,
                flags: Some([SetFlag::Timeout].into()),
                timeout: Some(TRIED_SECS),
                size: Some(TRIED_SIZE as u32),
                ..Set::default()
            })));
        }
        for (name, hook) in [
            (INPUT_CHAIN, NfHook::Input),
            (OUTPUT_CHAIN, NfHook::Output),
            (FORWARD_CHAIN, NfHook::Forward),
        ] {
            batch.add(NfListObject::Chain(Chain {
                family: FAMILY,
                table: TABLE.into(),
                name: name.into(),
                _type: Some(NfChainType::Filter),
                hook: Some(hook),
                prio: Some(PRIO_FILTER),
                policy: Some(NfChainPolicy::Drop),
                ..Chain::default()
            }));
        }
        for name in [DENIED_AGENT, DENIED_EGRESS] {
            batch.add(NfListObject::Counter(Counter {
                family: FAMILY,
                table: TABLE.into(),
                name: name.into(),
                handle: None,
                packets: None,
                bytes: None,
            }));
        }
        let counted = |name: &'static str| Statement::Counter(NamedCounter::Named(name.into()));
        let ifname = |key, name: &'static str| matches(meta(key), Operator::EQ, string(name));
        let tcp = || matches(meta(MetaKey::L4proto), Operator::EQ, string("tcp"));
        let add_to = |set: &'static str, elem| {
            Statement::Set(SetStatement {
                op: SetOp::Add,
                elem,
                set: format!("@{set}").into(),
            })
        };

        batch.add(rule(INPUT_CHAIN, vec![ifname(MetaKey::Iifname, "lo"), accept()]));
        batch.add(rule(INPUT_CHAIN, vec![replies(), accept()]));
        let discovery = |key, mut statements: Vec<Statement<'static>>| {
            statements.insert(0, ifname(key, GATE_EGRESS_LINK));
            statements.push(accept());
            statements
        };
        batch.add(rule(
            INPUT_CHAIN,
            discovery(MetaKey::Iifname, neighbour_discovery().to_vec()),
        ));
        batch.add(rule(
            INPUT_CHAIN,
            vec![
                ifname(MetaKey::Iifname, GATE_INTERNAL_LINK),
                matches(
                    payload("ip", "saddr"),
                    Operator::EQ,
                    string(self.agent.to_string()),
                ),
                matches(payload("tcp", "dport"), Operator::EQ, set_ref(LISTEN_SET)),
                accept(),
            ],
        ));
        batch.add(rule(
            INPUT_CHAIN,
            vec![
                ifname(MetaKey::Iifname, GATE_INTERNAL_LINK),
                tcp(),
                add_to(TRIED_PORTS_SET, payload("tcp", "dport")),
            ],
        ));
        batch.add(rule(
            INPUT_CHAIN,
            vec![
                ifname(MetaKey::Iifname, GATE_INTERNAL_LINK),
                counted(DENIED_AGENT),
            ],
        ));
        batch.add(rule(
            INPUT_CHAIN,
            vec![
                ifname(MetaKey::Iifname, GATE_INTERNAL_LINK),
                tcp(),
                Statement::Reject(Some(Reject::new(Some(RejectType::TCPReset), None))),
            ],
        ));
        batch.add(rule(INPUT_CHAIN, vec![counter(), drop()]));

        batch.add(rule(OUTPUT_CHAIN, vec![ifname(MetaKey::Oifname, "lo"), accept()]));
        batch.add(rule(OUTPUT_CHAIN, vec![replies(), accept()]));
        batch.add(rule(
            OUTPUT_CHAIN,
            discovery(MetaKey::Oifname, neighbour_discovery().to_vec()),
        ));
        for (l3, set) in [("ip", ALLOW4_SET), ("ip6", ALLOW6_SET)] {
            let key = Expression::Named(NamedExpression::Concat(vec![
                payload(l3, "daddr"),
                payload("tcp", "dport"),
            ]));
            batch.add(rule(
                OUTPUT_CHAIN,
                vec![
                    ifname(MetaKey::Oifname, GATE_EGRESS_LINK),
                    matches(key, Operator::EQ, set_ref(set)),
                    accept(),
                ],
            ));
        }
        for (l3, family, set) in [("ip", "ipv4", TRIED4_SET), ("ip6", "ipv6", TRIED6_SET)] {
            let pair = Expression::Named(NamedExpression::Concat(vec![
                payload(l3, "daddr"),
                payload("tcp", "dport"),
            ]));
            batch.add(rule(
                OUTPUT_CHAIN,
                vec![
                    matches(meta(MetaKey::Nfproto), Operator::EQ, string(family)),
                    tcp(),
                    add_to(set, pair),
                ],
            ));
        }
        batch.add(rule(OUTPUT_CHAIN, vec![counted(DENIED_EGRESS)]));
        batch.add(rule(OUTPUT_CHAIN, vec![counter(), drop()]));
        batch.to_nftables()
    }
}

/// The values of the table's named counters in a listing (0 for one that
/// is missing).
fn denied_in(listing: &Nftables<'static>) -> Denied {
    let mut denied = Denied::default();
    for object in listed(listing) {
        let NfListObject::Counter(c) = object else {
            continue;
        };
        let packets = u64::from(c.packets.unwrap_or(0));
        match (c.table.as_ref(), c.name.as_ref()) {
            (TABLE, DENIED_AGENT) => denied.agent = packets,
            (TABLE, DENIED_EGRESS) => denied.egress = packets,
            _ => {}
        }
    }
    denied
}

/// The destinations in the table's `tried` sets in a listing; an element
/// that does not parse is left out.
fn tried_in(listing: &Nftables<'static>) -> Tried {
    let agent_ports = set_elements(listing, TRIED_PORTS_SET)
        .iter()
        .filter_map(|port| port.parse().ok())
        .collect();
    let egress = [TRIED4_SET, TRIED6_SET]
        .into_iter()
        .flat_map(|set| set_elements(listing, set))
        .filter_map(|pair| {
            let (address, port) = pair.split_once(" . ")?;
            Some(SocketAddr::new(address.parse().ok()?, port.parse().ok()?))
        })
        .collect();
    Tried { agent_ports, egress }
}

/// The elements of set `name` of gatectl's table in a listing, as text
/// (`192.0.2.10 . 22`, `30000`).
fn set_elements(listing: &Nftables<'static>, name: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for object in listed(listing) {
        let NfListObject::Set(set) = object else {
            continue;
        };
        if set.table != TABLE || set.name != name {
            continue;
        }
        for elem in set.elem.iter().flat_map(|e| e.iter()) {
            out.insert(element_text(elem));
        }
    }
    out
}

/// An element as text: numbers and strings as they are, a concatenation
/// joined by ` . `.
fn element_text(elem: &Expression<'static>) -> String {
    match elem {
        Expression::Number(n) => n.to_string(),
        Expression::String(s) => s.to_string(),
        Expression::Named(NamedExpression::Concat(parts)) => {
            parts.iter().map(element_text).collect::<Vec<_>>().join(" . ")
        }
        Expression::Named(NamedExpression::Elem(e)) => element_text(&e.val),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn table() -> GateTable {
        GateTable {
            agent: Ipv4Addr::new(10, 231, 0, 2),
            listen_ports: [30000, 30001].into(),
            allowed: [
                "192.0.2.10:22".parse().unwrap(),
                "[2001:db8::1]:2222".parse().unwrap(),
            ]
            .into(),
        }
    }

    fn commands(batch: &Nftables<'static>) -> Vec<Value> {
        serde_json::to_value(batch).unwrap()["nftables"]
            .as_array()
            .unwrap()
            .clone()
    }

    fn rules_in(cmds: &[Value], chain: &str) -> Vec<Value> {
        cmds.iter()
            .filter_map(|c| c.get("add")?.get("rule"))
            .filter(|r| r["chain"] == chain)
            .map(|r| r["expr"].clone())
            .collect()
    }

    #[test]
    fn the_table_is_replaced_atomically_with_drop_policies_and_the_gates_own_sets() {
        let cmds = commands(&table().batch());
        let t = json!({"table": {"family": "inet", "name": "gatectl"}});
        assert_eq!(cmds[0], json!({"add": t}));
        assert_eq!(cmds[1], json!({"delete": t}));
        assert_eq!(cmds[2], json!({"add": t}));
        assert_eq!(
            cmds[3],
            json!({"add": {"set": {"family": "inet", "table": "gatectl", "name": "allow4",
                "type": ["ipv4_addr", "inet_service"], "elem": [{"concat": ["192.0.2.10", 22]}]}}})
        );
        assert_eq!(
            cmds[4]["add"]["set"]["elem"],
            json!([{"concat": ["2001:db8::1", 2222]}])
        );
        assert_eq!(
            cmds[5],
            json!({"add": {"set": {"family": "inet", "table": "gatectl", "name": "listen",
                "type": "inet_service", "elem": [30000, 30001]}}})
        );
        // The tried sets: dynamic, an hour per entry, 64 at most, empty.
        for (i, (name, set_type)) in [
            ("tried_ports", json!("inet_service")),
            ("tried4", json!(["ipv4_addr", "inet_service"])),
            ("tried6", json!(["ipv6_addr", "inet_service"])),
        ]
        .into_iter()
        .enumerate()
        {
            let mut set = cmds[6 + i]["add"]["set"].clone();
            let mut flags: Vec<String> = serde_json::from_value(set["flags"].take()).unwrap();
            flags.sort();
            assert_eq!(flags, ["timeout"]);
            assert_eq!(
                set,
                json!({"family": "inet", "table": "gatectl", "name": name, "type": set_type,
                    "flags": null, "timeout": 3600, "size": 64})
            );
        }
        for (i, hook) in ["input", "output", "forward"].iter().enumerate() {
            let chain = &cmds[9 + i]["add"]["chain"];
            assert_eq!(chain["hook"], *hook);
            assert_eq!(chain["policy"], "drop");
        }
    }

    #[test]
    fn output_reaches_only_the_declared_pairs_and_input_only_the_listen_ports() {
        let cmds = commands(&table().batch());
        let output = rules_in(&cmds, "output");
        assert_eq!(output.len(), 9);
        let discovery = |key| {
            json!([{"match": {"op": "==", "left": {"meta": {"key": key}}, "right": "ext0"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}},
                    "right": {"set": ["nd-neighbor-solicit", "nd-neighbor-advert"]}}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "hoplimit"}},
                    "right": 255}},
                {"accept": null}])
        };
        assert_eq!(output[2], discovery("oifname"));
        assert_eq!(
            output[3],
            json!([{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "ext0"}},
                {"match": {"op": "==", "left": {"concat": [
                    {"payload": {"protocol": "ip", "field": "daddr"}},
                    {"payload": {"protocol": "tcp", "field": "dport"}}]}, "right": "@allow4"}},
                {"accept": null}])
        );
        assert_eq!(
            output[4],
            json!([{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "ext0"}},
                {"match": {"op": "==", "left": {"concat": [
                    {"payload": {"protocol": "ip6", "field": "daddr"}},
                    {"payload": {"protocol": "tcp", "field": "dport"}}]}, "right": "@allow6"}},
                {"accept": null}])
        );
        // What is denied next is added to a tried set, in a rule of its own.
        for (i, (l3, family)) in [("ip", "ipv4"), ("ip6", "ipv6")].into_iter().enumerate() {
            assert_eq!(
                output[5 + i],
                json!([{"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": family}},
                    {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
                    {"set": {"op": "add", "set": if l3 == "ip" { "@tried4" } else { "@tried6" },
                        "elem": {"concat": [{"payload": {"protocol": l3, "field": "daddr"}},
                            {"payload": {"protocol": "tcp", "field": "dport"}}]}}}])
            );
        }
        assert_eq!(output[7], json!([{"counter": "denied_egress"}]));
        assert_eq!(output[8], json!([{"counter": null}, {"drop": null}]));
        let input = rules_in(&cmds, "input");
        assert_eq!(input.len(), 8);
        assert_eq!(input[2], discovery("iifname"));
        assert_eq!(
            input[3],
            json!([{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "int0"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                    "right": "10.231.0.2"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                    "right": "@listen"}},
                {"accept": null}])
        );
        assert_eq!(
            input[4],
            json!([{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "int0"}},
                {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
                {"set": {"op": "add", "set": "@tried_ports",
                    "elem": {"payload": {"protocol": "tcp", "field": "dport"}}}}])
        );
        assert_eq!(
            input[5],
            json!([{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "int0"}},
                {"counter": "denied_agent"}])
        );
        assert_eq!(input[6][2], json!({"reject": {"type": "tcp reset"}}));
        for (i, name) in ["denied_agent", "denied_egress"].iter().enumerate() {
            assert_eq!(
                cmds[12 + i],
                json!({"add": {"counter": {"family": "inet", "table": "gatectl", "name": name, "bytes": null}}})
            );
        }
        assert!(rules_in(&cmds, "forward").is_empty());
    }

    #[test]
    fn reads_the_denied_counters_from_a_listing() {
        let listing: Nftables<'static> = serde_json::from_value(json!({"nftables": [
            {"counter": {"family": "inet", "name": "denied_agent", "table": "gatectl",
                "handle": 7, "packets": 35, "bytes": 2100}},
            {"counter": {"family": "inet", "name": "denied_egress", "table": "gatectl",
                "handle": 8, "packets": 2, "bytes": 120}},
            {"counter": {"family": "inet", "name": "denied_agent", "table": "other",
                "handle": 9, "packets": 99, "bytes": 1}}
        ]}))
        .unwrap();
        assert_eq!(denied_in(&listing), Denied { agent: 35, egress: 2 });
    }

    #[test]
    fn listed_elements_compare_with_the_tables_own() {
        let listing: Nftables<'static> = serde_json::from_value(json!({"nftables": [
            {"set": {"family": "inet", "name": "allow4", "table": "gatectl",
                "type": ["ipv4_addr", "inet_service"], "handle": 1,
                "elem": [{"concat": ["192.0.2.10", 22]}]}},
            {"set": {"family": "inet", "name": "listen", "table": "gatectl",
                "type": "inet_service", "handle": 2, "elem": [30000, 30001]}}
        ]}))
        .unwrap();
        let t = table();
        assert_eq!(set_elements(&listing, ALLOW4_SET), t.elements(ALLOW4_SET));
        assert_eq!(set_elements(&listing, LISTEN_SET), t.elements(LISTEN_SET));
        assert_ne!(set_elements(&listing, ALLOW6_SET), t.elements(ALLOW6_SET));
    }
}
