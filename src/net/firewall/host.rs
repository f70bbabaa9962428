//! The host's table `inet gatectl`: masquerade for the gates' egress links
//! (NAT66 too, unless the IPv6 egress pool is routed), a per-gate allowlist
//! of upstream address:port pairs, and, for each address family whose
//! forwarding gatectl turned on, a final drop of all other forwarded
//! traffic of that family.
//!
//! Gate traffic is recognised by the device group of gatectl's egress links
//! ([`HOST_EGRESS_GROUP`], set when the link is created), never by a name
//! pattern a foreign interface could share. Its shape:
//!
//! ```text
//! table inet gatectl {
//!   set allow4 { type ifname . ipv4_addr . inet_service; }   # "gte3" . 192.0.2.10 . 22
//!   set allow6 { type ifname . ipv6_addr . inet_service; }
//!   chain forward { type filter hook forward priority filter; policy accept;
//!     ct state established,related accept
//!     meta iifgroup 232 meta nfproto ipv4 iifname . ip daddr . tcp dport @allow4 accept
//!     meta iifgroup 232 meta nfproto ipv6 iifname . ip6 daddr . tcp dport @allow6 accept
//!     meta iifgroup 232 counter drop
//!     counter drop                      # with both `block_other_forwarding*`;
//!     meta nfproto ipv4 counter drop    # or with one of them, for its family
//!   }
//!   chain input { type filter hook input priority filter; policy accept;
//!     meta iifgroup 232 ct state established,related accept
//!     meta iifgroup 232 icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept
//!     meta iifgroup 232 meta nfproto ipv4 iifname . ip daddr . tcp dport @allow4 accept
//!     meta iifgroup 232 meta nfproto ipv6 iifname . ip6 daddr . tcp dport @allow6 accept
//!     meta iifgroup 232 counter drop
//!   }
//!   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr <egress pool> meta oifgroup != 232 masquerade
//!     ip6 saddr <egress pool6> meta oifgroup != 232 masquerade   # with nat66
//!   }
//! }
//! ```
//!
//! The input chain uses the same allowlist: an upstream that is one of the
//! host's own addresses (a git server on this machine) is reachable when a
//! gate declares it, and nothing else of the host is. Neighbour discovery
//! (solicitations and advertisements, hop limit 255: never routed) is what
//! a gate needs of the host to reach its IPv6 gateway; Router Solicitations,
//! MLD and everything else stop at the drop.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use ipnet::{Ipv4Net, Ipv6Net};
use nftables::batch::Batch;
use nftables::expr::{Expression, MetaKey, NamedExpression, Prefix, SetItem};
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, Nftables, Set, SetType, SetTypeValue, Table,
};
use nftables::stmt::{Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfHook};

use super::{
    accept, batch_as_listing, counter, drop, listed, matches, meta, payload, replies, rule, rules_of,
    set_ref, string, Session, ALLOW4_SET, ALLOW6_SET, FAMILY, PRIO_FILTER, TABLE,
};
use crate::error::{Error, Result};
use crate::plan::{HOST_EGRESS_GROUP, HOST_EGRESS_PREFIX};

const FORWARD_CHAIN: &str = "forward";
const INPUT_CHAIN: &str = "input";
const POSTROUTING_CHAIN: &str = "postrouting";
/// nft's `priority srcnat`.
const PRIO_SRCNAT: i32 = 100;
/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// One gate's allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateRules {
    /// The host end of the gate's egress link (`gte<k>`): traffic entering the
    /// host on it is the gate's.
    pub egress_if: String,
    /// The upstream address:port pairs the gate may open TCP connections to.
    pub allowed: Vec<SocketAddr>,
}

/// gatectl's nftables table on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firewall {
    /// The pool the gates' egress /31s come from; its sources are masqueraded
    /// when leaving through any interface that is not a gate's.
    pub egress_pool: Ipv4Net,
    /// The IPv6 egress pool when the host masquerades it (NAT66); `None`
    /// when it is a routed prefix.
    pub masquerade6: Option<Ipv6Net>,
    /// Drop forwarded IPv4 traffic that neither comes from a gate nor
    /// replies to a gate's connection: set when the host did not forward
    /// before gatectl turned `ip_forward` on.
    pub block_other_forwarding: bool,
    /// The same for IPv6, when gatectl turned
    /// `net.ipv6.conf.all.forwarding` on.
    pub block_other_forwarding6: bool,
}

/// What [`Firewall::survey`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Survey {
    /// Whether the table `inet gatectl` exists.
    pub present: bool,
    /// The distinct interface names with allowlist elements, sorted.
    pub interfaces: Vec<String>,
    /// Base chains short of gatectl's rules, as `forward (2 of 5 rules)`.
    pub short_chains: Vec<String>,
}

impl Firewall {
    /// The table for a host with `settings`, with the final drop of each
    /// family whose forwarding gatectl turned on.
    pub fn of(settings: &crate::config::Settings, block4: bool, block6: bool) -> Firewall {
        Firewall {
            egress_pool: settings.egress_pool,
            masquerade6: settings.nat66.then_some(settings.egress_pool6),
            block_other_forwarding: block4,
            block_other_forwarding6: block6,
        }
    }

    /// Creates or refreshes the table, its sets and base chains in one atomic
    /// nft batch: adds table, sets and chains (a no-op when they exist),
    /// flushes the three base chains and re-adds their rules. The sets are not
    /// flushed: they hold the gates' allowlists. Call it under the host lock.
    pub fn ensure_base(&self) -> Result<()> {
        let context = format!("could not set up the nftables table `inet {TABLE}`");
        Session::open(&context)?.apply(&self.base_batch().to_nftables(), context)
    }

    /// Does [`Firewall::ensure_base`] and adds this gate's allowlist, in one
    /// atomic nft batch. Adding elements that already exist is not an error.
    /// Call it under the host lock.
    pub fn add_gate(&self, gate: &GateRules) -> Result<()> {
        let mut batch = self.base_batch();
        add_elements(&mut batch, gate)?;
        Session::open(&gate_context(gate))?.apply(&batch.to_nftables(), gate_context(gate))
    }

    /// Adds these gates' allowlists to the existing table in one atomic
    /// batch, leaving the base chains alone (no host lock needed). Fails if
    /// the table or its sets are missing. Nothing to add is success.
    pub fn add_elements(&self, gates: &[GateRules]) -> Result<()> {
        let mut batch = Batch::new();
        for gate in gates {
            add_elements(&mut batch, gate)?;
        }
        let context = match gates {
            [] => return Ok(()),
            [gate] => gate_context(gate),
            _ => format!(
                "could not add the allowlists of {} gate links to the nftables table `inet {TABLE}`",
                gates.len()
            ),
        };
        Session::open(&context)?.apply(&batch.to_nftables(), context)
    }

    /// Removes every element of the allowlist sets whose interface is
    /// `egress_if`, in one atomic batch. Success when the table, the sets or
    /// the elements are already gone. The sets are listed first (in the same
    /// libnftables context): deleting an element that does not exist would
    /// fail the whole batch.
    pub fn remove_gate(&self, egress_if: &str) -> Result<()> {
        let context = format!(
            "could not remove the allowlist of gate link {egress_if} from the nftables table `inet {TABLE}`"
        );
        let mut session = Session::open(&context)?;
        let Some(listing) = session.list_table()? else {
            return Ok(());
        };
        let mut batch = Batch::new();
        if delete_elements(&mut batch, &set_elements(&listing), egress_if) {
            session.apply(&batch.to_nftables(), context)
        } else {
            Ok(())
        }
    }

    /// Removes exactly `gate`'s pairs from the allowlist sets in one atomic
    /// batch, without listing the sets: a listing reads every gate's
    /// elements, and its cost grows with the gates (at 2,000 gates it was
    /// most of a `stop`). Pairs already gone are success. `gate` must hold
    /// every pair the table may have for its link (the plan's, and those of
    /// a change that did not finish); prune sweeps the elements of links
    /// that no longer exist. When the table or a set is missing, this is
    /// [`Firewall::remove_gate`], which succeeds on a table that is gone.
    pub fn remove_pairs(&self, gate: &GateRules) -> Result<()> {
        let context = format!(
            "could not remove the allowlist of gate link {} from the nftables table `inet {TABLE}`",
            gate.egress_if
        );
        let mut batch = Batch::new();
        remove_elements(&mut batch, gate)?;
        if gate.allowed.is_empty() {
            return Ok(()); // no pair was ever added for it
        }
        // (The session, which holds libnftables, ends before the fallback.)
        let removed = Session::open(&context)?.apply(&batch.to_nftables(), context);
        removed.or_else(|_| self.remove_gate(&gate.egress_if))
    }

    /// Makes `gate`'s allowlist exactly its pairs, in one atomic batch that
    /// deletes the elements its egress link has and adds the new ones: a
    /// packet sees the old allowlist or the new one, never a mix or none.
    /// Fails if the table or its sets are missing.
    pub fn replace_gate(&self, gate: &GateRules) -> Result<()> {
        let mut session = Session::open(&gate_context(gate))?;
        let listing = session
            .list_table()?
            .ok_or_else(|| Error::failed(format!("{}: the table is missing", gate_context(gate))))?;
        let mut batch = Batch::new();
        delete_elements(&mut batch, &set_elements(&listing), &gate.egress_if);
        add_elements(&mut batch, gate)?;
        session.apply(&batch.to_nftables(), gate_context(gate))
    }

    /// Deletes the whole table `inet gatectl`; success when it is gone.
    /// Only for a host with no gate left, under the host lock.
    pub fn remove_table(&self) -> Result<()> {
        let context = format!("could not delete the nftables table `inet {TABLE}`");
        let mut session = Session::open(&context)?;
        if !session.table_exists()? {
            return Ok(());
        }
        let mut batch = Batch::new();
        batch.delete(NfListObject::Table(Table {
            family: FAMILY,
            name: TABLE.into(),
            ..Table::default()
        }));
        session.apply(&batch.to_nftables(), context)
    }

    /// What the table holds, in one listing: whether it exists, the
    /// interfaces with allowlist elements, and each base chain that has
    /// fewer rules than [`Firewall::ensure_base`] puts there (someone
    /// flushed or deleted them).
    pub fn survey(&self) -> Result<Survey> {
        let mut session = Session::open(&super::list_table_context())?;
        let Some(listing) = session.list_table()? else {
            return Ok(Survey::default());
        };
        let names: BTreeSet<String> = set_elements(&listing).into_iter().map(|e| e.ifname).collect();
        Ok(Survey {
            present: true,
            interfaces: names.into_iter().collect(),
            short_chains: self.short_chains(&listing),
        })
    }

    /// The base chains with fewer rules in `listing` than the base batch
    /// adds to them, as `forward (2 of 5 rules)`.
    fn short_chains(&self, listing: &Nftables<'static>) -> Vec<String> {
        let batch = self.base_batch().to_nftables();
        [FORWARD_CHAIN, INPUT_CHAIN, POSTROUTING_CHAIN]
            .into_iter()
            .filter_map(|chain| {
                let want = rules_of(&batch_as_listing(&batch), chain).count();
                let have = rules_of(listing, chain).count();
                (have < want).then(|| format!("{chain} ({have} of {want} rules)"))
            })
            .collect()
    }

    /// The commands of [`Firewall::ensure_base`].
    fn base_batch(&self) -> Batch<'static> {
        let mut batch = Batch::new();
        batch.add(NfListObject::Table(Table {
            family: FAMILY,
            name: TABLE.into(),
            handle: None,
        }));
        for (name, addr_type) in [(ALLOW4_SET, SetType::Ipv4Addr), (ALLOW6_SET, SetType::Ipv6Addr)] {
            batch.add(NfListObject::Set(Box::new(Set {
                family: FAMILY,
                table: TABLE.into(),
                name: name.into(),
                set_type: SetTypeValue::Concatenated(
                    vec![SetType::Ifname, addr_type, SetType::InetService].into(),
                ),
                ..Set::default()
            })));
        }
        let chains = [
            (FORWARD_CHAIN, NfChainType::Filter, NfHook::Forward, PRIO_FILTER),
            (INPUT_CHAIN, NfChainType::Filter, NfHook::Input, PRIO_FILTER),
            (
                POSTROUTING_CHAIN,
                NfChainType::NAT,
                NfHook::Postrouting,
                PRIO_SRCNAT,
            ),
        ];
        for (name, kind, hook, prio) in chains {
            batch.add(NfListObject::Chain(Chain {
                family: FAMILY,
                table: TABLE.into(),
                name: name.into(),
                _type: Some(kind),
                hook: Some(hook),
                prio: Some(prio),
                policy: Some(NfChainPolicy::Accept),
                ..Chain::default()
            }));
        }
        for (name, ..) in chains {
            batch.add_cmd(NfCmd::Flush(FlushObject::Chain(Chain {
                family: FAMILY,
                table: TABLE.into(),
                name: name.into(),
                ..Chain::default()
            })));
        }

        // forward: replies, then each gate's allowlist, then drop the rest
        // coming from a gate.
        batch.add(rule(FORWARD_CHAIN, vec![replies(), accept()]));
        for allowed in allowlist_matches() {
            batch.add(rule(FORWARD_CHAIN, allowed));
        }
        batch.add(rule(FORWARD_CHAIN, vec![from_gate(), counter(), drop()]));
        let family = |f: &'static str| matches(meta(MetaKey::Nfproto), Operator::EQ, string(f));
        match (self.block_other_forwarding, self.block_other_forwarding6) {
            (true, true) => batch.add(rule(FORWARD_CHAIN, vec![counter(), drop()])),
            (true, false) => batch.add(rule(FORWARD_CHAIN, vec![family("ipv4"), counter(), drop()])),
            (false, true) => batch.add(rule(FORWARD_CHAIN, vec![family("ipv6"), counter(), drop()])),
            (false, false) => {}
        }

        // input: a gate reaches the host itself only at a declared
        // address:port (an upstream on this host), and its IPv6 gateway by
        // neighbour discovery.
        batch.add(rule(INPUT_CHAIN, vec![from_gate(), replies(), accept()]));
        let mut discovery = vec![from_gate()];
        discovery.extend(neighbour_discovery());
        discovery.push(accept());
        batch.add(rule(INPUT_CHAIN, discovery));
        for allowed in allowlist_matches() {
            batch.add(rule(INPUT_CHAIN, allowed));
        }
        batch.add(rule(INPUT_CHAIN, vec![from_gate(), counter(), drop()]));

        // postrouting: the gates' egress addresses leave the host masqueraded.
        let pool = Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(string(self.egress_pool.network().to_string())),
            len: u32::from(self.egress_pool.prefix_len()),
        }));
        batch.add(rule(
            POSTROUTING_CHAIN,
            vec![
                matches(payload("ip", "saddr"), Operator::EQ, pool),
                matches(meta(MetaKey::Oifgroup), Operator::NEQ, gate_group()),
                Statement::Masquerade(None),
            ],
        ));
        if let Some(pool6) = self.masquerade6 {
            let pool6 = Expression::Named(NamedExpression::Prefix(Prefix {
                addr: Box::new(string(pool6.network().to_string())),
                len: u32::from(pool6.prefix_len()),
            }));
            batch.add(rule(
                POSTROUTING_CHAIN,
                vec![
                    matches(payload("ip6", "saddr"), Operator::EQ, pool6),
                    matches(meta(MetaKey::Oifgroup), Operator::NEQ, gate_group()),
                    Statement::Masquerade(None),
                ],
            ));
        }
        batch
    }
}

/// `icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit
/// 255`: neighbour discovery, which a router never forwards, and nothing
/// else of ICMPv6.
pub(super) fn neighbour_discovery() -> [Statement<'static>; 2] {
    let types = ["nd-neighbor-solicit", "nd-neighbor-advert"]
        .map(|t| SetItem::Element(string(t)))
        .to_vec();
    [
        matches(
            payload("icmpv6", "type"),
            Operator::EQ,
            Expression::Named(NamedExpression::Set(types)),
        ),
        matches(payload("ip6", "hoplimit"), Operator::EQ, Expression::Number(255)),
    ]
}

/// What gatectl was doing when a gate's batch failed.
fn gate_context(gate: &GateRules) -> String {
    format!(
        "could not add the allowlist of gate link {} to the nftables table `inet {TABLE}`",
        gate.egress_if
    )
}

/// The two allowlist rules (IPv4, IPv6): traffic from a gate to a declared
/// `address . port` of that gate's link is accepted.
fn allowlist_matches() -> [Vec<Statement<'static>>; 2] {
    [("ipv4", "ip", ALLOW4_SET), ("ipv6", "ip6", ALLOW6_SET)].map(|(nfproto, l3, set)| {
        let key = Expression::Named(NamedExpression::Concat(vec![
            meta(MetaKey::Iifname),
            payload(l3, "daddr"),
            payload("tcp", "dport"),
        ]));
        vec![
            from_gate(),
            matches(meta(MetaKey::Nfproto), Operator::EQ, string(nfproto)),
            matches(key, Operator::EQ, set_ref(set)),
            accept(),
        ]
    })
}

/// Adds the allowlist of `gate` to `batch`, one command per address family.
fn add_elements(batch: &mut Batch<'static>, gate: &GateRules) -> Result<()> {
    for element in gate_elements(gate)? {
        batch.add(NfListObject::Element(element));
    }
    Ok(())
}

/// Adds to `batch` the removal of exactly `gate`'s pairs: each is added,
/// then deleted. Adding a pair that is there is no error, and deleting one
/// the same batch added cannot fail, so pairs already gone are no error.
fn remove_elements(batch: &mut Batch<'static>, gate: &GateRules) -> Result<()> {
    let elements = gate_elements(gate)?;
    for element in &elements {
        batch.add(NfListObject::Element(element.clone()));
    }
    for element in elements {
        batch.delete(NfListObject::Element(element));
    }
    Ok(())
}

/// The allowlist elements of `gate`, one per address family it has pairs of.
fn gate_elements(gate: &GateRules) -> Result<Vec<Element<'static>>> {
    validate_egress_if(&gate.egress_if)?;
    let mut v4 = BTreeSet::new();
    let mut v6 = BTreeSet::new();
    for addr in &gate.allowed {
        match addr.ip().to_canonical() {
            ip @ IpAddr::V4(_) => v4.insert((ip, addr.port())),
            ip @ IpAddr::V6(_) => v6.insert((ip, addr.port())),
        };
    }
    Ok([(ALLOW4_SET, v4), (ALLOW6_SET, v6)]
        .into_iter()
        .filter(|(_, pairs)| !pairs.is_empty())
        .map(|(set, pairs)| {
            let elem: Vec<Expression<'static>> = pairs
                .into_iter()
                .map(|(ip, port)| {
                    Expression::Named(NamedExpression::Concat(vec![
                        string(gate.egress_if.clone()),
                        string(ip.to_string()),
                        Expression::Number(u32::from(port)),
                    ]))
                })
                .collect();
            Element {
                family: FAMILY,
                table: TABLE.into(),
                name: set.into(),
                elem: elem.into(),
            }
        })
        .collect())
}

/// Refuses names that are not a gate's egress link: an element for any
/// other name would grant nothing while its gate ran unfenced.
fn validate_egress_if(name: &str) -> Result<()> {
    let suffix_ok = name
        .strip_prefix(HOST_EGRESS_PREFIX)
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()));
    if suffix_ok && name.len() <= IFNAME_MAX {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{name:?} is not a gate egress link name: it must be \"{HOST_EGRESS_PREFIX}\" followed by \
             digits, at most {IFNAME_MAX} characters in all"
        )))
    }
}

/// `meta iifgroup <gatectl's egress group>`.
fn from_gate() -> Statement<'static> {
    matches(meta(MetaKey::Iifgroup), Operator::EQ, gate_group())
}

fn gate_group() -> Expression<'static> {
    Expression::Number(HOST_EGRESS_GROUP)
}

/// One element of an allowlist set, as nft listed it.
#[derive(Debug, Clone, PartialEq)]
struct SetElement {
    /// `allow4` or `allow6`.
    set: String,
    /// The element's interface name.
    ifname: String,
    /// The element's key exactly as listed (a `concat` expression).
    key: Expression<'static>,
}

/// The elements of gatectl's allowlist sets in a `list table` listing.
fn set_elements(listing: &Nftables<'static>) -> Vec<SetElement> {
    let mut out = Vec::new();
    for object in listed(listing) {
        let NfListObject::Set(set) = object else {
            continue;
        };
        let ours = set.family == FAMILY && set.table == TABLE;
        if !ours || (set.name != ALLOW4_SET && set.name != ALLOW6_SET) {
            continue;
        }
        for elem in set.elem.iter().flat_map(|e| e.iter()) {
            // An element with extra properties is listed as {"elem": {"val": KEY, ...}}.
            let key = match elem {
                Expression::Named(NamedExpression::Elem(e)) => e.val.as_ref(),
                other => other,
            };
            let Expression::Named(NamedExpression::Concat(parts)) = key else {
                continue;
            };
            if let Some(Expression::String(ifname)) = parts.first() {
                out.push(SetElement {
                    set: set.name.to_string(),
                    ifname: ifname.to_string(),
                    key: key.clone(),
                });
            }
        }
    }
    out
}

/// Adds to `batch` the deletion of `egress_if`'s `elements`; returns
/// whether it has any.
fn delete_elements(batch: &mut Batch<'static>, elements: &[SetElement], egress_if: &str) -> bool {
    let mut any = false;
    for set in [ALLOW4_SET, ALLOW6_SET] {
        let elem: Vec<Expression<'static>> = elements
            .iter()
            .filter(|e| e.set == set && e.ifname == egress_if)
            .map(|e| e.key.clone())
            .collect();
        if elem.is_empty() {
            continue;
        }
        any = true;
        batch.delete(NfListObject::Element(Element {
            family: FAMILY,
            table: TABLE.into(),
            name: set.into(),
            elem: elem.into(),
        }));
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn firewall(block: bool) -> Firewall {
        Firewall {
            egress_pool: "10.232.0.0/16".parse().unwrap(),
            masquerade6: None,
            block_other_forwarding: block,
            block_other_forwarding6: false,
        }
    }

    fn gate() -> GateRules {
        GateRules {
            egress_if: "gte3".into(),
            allowed: vec![
                "192.0.2.10:22".parse().unwrap(),
                "[2001:db8::1]:2222".parse().unwrap(),
                "192.0.2.10:22".parse().unwrap(),
                "[::ffff:198.51.100.7]:443".parse().unwrap(),
            ],
        }
    }

    /// The batch `add_gate` applies, as JSON.
    fn gate_json(fw: &Firewall, gate: &GateRules) -> Value {
        let mut batch = fw.base_batch();
        add_elements(&mut batch, gate).unwrap();
        serde_json::to_value(batch.to_nftables()).unwrap()
    }

    fn commands(v: &Value) -> &Vec<Value> {
        v["nftables"].as_array().unwrap()
    }

    fn rules_in<'v>(v: &'v Value, chain: &str) -> Vec<&'v Value> {
        commands(v)
            .iter()
            .filter_map(|c| c.get("add")?.get("rule"))
            .filter(|r| r["chain"] == chain)
            .map(|r| &r["expr"])
            .collect()
    }

    /// Every string in the batch, keys and values.
    fn strings(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            Value::Object(o) => o.iter().for_each(|(k, x)| {
                out.push(k.clone());
                strings(x, out);
            }),
            _ => {}
        }
    }

    fn listed_rules(chains: &[(&str, usize)]) -> Nftables<'static> {
        let mut objects = vec![json!({"table": {"family": "inet", "name": "gatectl", "handle": 1}})];
        for (chain, n) in chains {
            for _ in 0..*n {
                objects.push(
                    json!({"rule": {"family": "inet", "table": "gatectl", "chain": chain,
                    "handle": 4, "expr": [{"accept": null}]}}),
                );
            }
        }
        serde_json::from_value(json!({ "nftables": objects })).unwrap()
    }

    #[test]
    fn short_chains_are_those_with_fewer_rules_than_the_base_batch_adds() {
        let fw = firewall(true);
        let whole = listed_rules(&[("forward", 5), ("input", 5), ("postrouting", 1)]);
        assert_eq!(fw.short_chains(&whole), Vec::<String>::new());
        // `nft flush chain inet gatectl forward`, and input deleted.
        let cut = listed_rules(&[("postrouting", 1)]);
        assert_eq!(
            fw.short_chains(&cut),
            ["forward (0 of 5 rules)", "input (0 of 5 rules)"]
        );
        // Without the marker, forward holds one rule less.
        let fewer = listed_rules(&[("forward", 4), ("input", 5), ("postrouting", 1)]);
        assert_eq!(firewall(false).short_chains(&fewer), Vec::<String>::new());
    }

    #[test]
    fn add_gate_batch_creates_table_sets_and_chains_then_flushes_chains() {
        let v = gate_json(&firewall(false), &gate());
        let cmds = commands(&v);
        assert_eq!(
            cmds[0],
            json!({"add": {"table": {"family": "inet", "name": "gatectl"}}})
        );
        assert_eq!(
            cmds[1],
            json!({"add": {"set": {"family": "inet", "table": "gatectl", "name": "allow4",
                "type": ["ifname", "ipv4_addr", "inet_service"]}}})
        );
        assert_eq!(
            cmds[2]["add"]["set"]["type"],
            json!(["ifname", "ipv6_addr", "inet_service"])
        );
        assert_eq!(
            cmds[3],
            json!({"add": {"chain": {"family": "inet", "table": "gatectl", "name": "forward",
                "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}})
        );
        assert_eq!(cmds[4]["add"]["chain"]["hook"], "input");
        assert_eq!(cmds[5]["add"]["chain"]["type"], "nat");
        assert_eq!(cmds[5]["add"]["chain"]["hook"], "postrouting");
        assert_eq!(cmds[5]["add"]["chain"]["prio"], 100);
        for (i, chain) in ["forward", "input", "postrouting"].iter().enumerate() {
            assert_eq!(
                cmds[6 + i],
                json!({"flush": {"chain": {"family": "inet", "table": "gatectl", "name": chain}}})
            );
        }
        // Sets hold every gate's allowlist: never flushed.
        assert!(!cmds
            .iter()
            .any(|c| c.get("flush").and_then(|f| f.get("set")).is_some()));
        // Nothing but add and flush.
        assert!(cmds
            .iter()
            .all(|c| c.get("add").is_some() || c.get("flush").is_some()));
    }

    #[test]
    fn add_gate_batch_adds_deduplicated_elements_per_family() {
        let v = gate_json(&firewall(false), &gate());
        let elements: Vec<&Value> = commands(&v)
            .iter()
            .filter_map(|c| c.get("add")?.get("element"))
            .collect();
        assert_eq!(elements.len(), 2);
        assert_eq!(
            *elements[0],
            json!({"family": "inet", "table": "gatectl", "name": "allow4", "elem": [
                {"concat": ["gte3", "192.0.2.10", 22]},
                {"concat": ["gte3", "198.51.100.7", 443]},
            ]})
        );
        assert_eq!(
            elements[1]["elem"],
            json!([{"concat": ["gte3", "2001:db8::1", 2222]}])
        );
        assert_eq!(elements[1]["name"], "allow6");
    }

    #[test]
    fn empty_allowlist_adds_no_elements() {
        let g = GateRules {
            egress_if: "gte0".into(),
            allowed: vec![],
        };
        let v = gate_json(&firewall(false), &g);
        assert!(!commands(&v)
            .iter()
            .any(|c| c.get("add").and_then(|a| a.get("element")).is_some()));
    }

    #[test]
    fn gate_traffic_is_matched_by_link_group_never_by_name_pattern() {
        let v = gate_json(&firewall(false), &gate());
        let group = json!({"match": {"op": "==", "left": {"meta": {"key": "iifgroup"}}, "right": 232}});
        let rules = rules_in(&v, "forward");
        assert_eq!(rules.len(), 4);
        assert_eq!(
            *rules[0],
            json!([{"match": {"op": "in", "left": {"ct": {"key": "state"}},
                "right": ["established", "related"]}}, {"accept": null}])
        );
        let allow4 = json!([group,
            {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}},
            {"match": {"op": "==", "left": {"concat": [
                {"meta": {"key": "iifname"}},
                {"payload": {"protocol": "ip", "field": "daddr"}},
                {"payload": {"protocol": "tcp", "field": "dport"}}]}, "right": "@allow4"}},
            {"accept": null}]);
        assert_eq!(*rules[1], allow4);
        assert_eq!(rules[2][1]["match"]["right"], "ipv6");
        assert_eq!(
            rules[2][2]["match"]["left"]["concat"][1],
            json!({"payload": {"protocol": "ip6", "field": "daddr"}})
        );
        assert_eq!(rules[2][2]["match"]["right"], "@allow6");
        assert_eq!(*rules[3], json!([group, {"counter": null}, {"drop": null}]));
        // input: replies and the allowlist (an upstream on the host itself),
        // then drop.
        let input = rules_in(&v, "input");
        assert_eq!(input.len(), 5);
        assert_eq!(input[0][0], group);
        assert_eq!(input[0][2], json!({"accept": null}));
        // Neighbour discovery from the gate, nothing else of ICMPv6.
        assert_eq!(
            *input[1],
            json!([group,
                {"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}},
                    "right": {"set": ["nd-neighbor-solicit", "nd-neighbor-advert"]}}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "hoplimit"}},
                    "right": 255}},
                {"accept": null}])
        );
        assert_eq!(*input[2], allow4);
        assert_eq!(*input[4], json!([group, {"counter": null}, {"drop": null}]));
        // No name pattern anywhere: a foreign `gtether0` is not a gate.
        let mut all = Vec::new();
        strings(&v, &mut all);
        assert!(!all.iter().any(|s| s.contains('*')), "{all:?}");
    }

    #[test]
    fn block_other_forwarding_adds_a_final_drop_of_each_family_gatectl_forwards() {
        let both = Firewall {
            block_other_forwarding6: true,
            ..firewall(true)
        };
        let v = gate_json(&both, &gate());
        let rules = rules_in(&v, "forward");
        assert_eq!(rules.len(), 5);
        assert_eq!(*rules[4], json!([{"counter": null}, {"drop": null}]));
        let family = |f| json!({"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": f}});
        for (block4, block6, want) in [
            (true, false, Some(family("ipv4"))),
            (false, true, Some(family("ipv6"))),
            (false, false, None),
        ] {
            let fw = Firewall {
                block_other_forwarding: block4,
                block_other_forwarding6: block6,
                ..firewall(false)
            };
            let v = gate_json(&fw, &gate());
            let rules = rules_in(&v, "forward");
            match want {
                Some(family) => {
                    assert_eq!(rules.len(), 5);
                    assert_eq!(*rules[4], json!([family, {"counter": null}, {"drop": null}]));
                }
                None => assert_eq!(rules.len(), 4),
            }
        }
    }

    #[test]
    fn postrouting_masquerades_the_egress_pool_leaving_through_non_gate_links() {
        let fw = Firewall {
            egress_pool: "10.232.7.9/16".parse().unwrap(),
            masquerade6: None,
            block_other_forwarding: false,
            block_other_forwarding6: false,
        };
        let v = serde_json::to_value(fw.base_batch().to_nftables()).unwrap();
        assert_eq!(
            rules_in(&v, "postrouting"),
            vec![&json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                    "right": {"prefix": {"addr": "10.232.0.0", "len": 16}}}},
                {"match": {"op": "!=", "left": {"meta": {"key": "oifgroup"}}, "right": 232}},
                {"masquerade": null}])]
        );
    }

    #[test]
    fn nat66_masquerades_the_ipv6_egress_pool_and_a_routed_pool_is_left_alone() {
        let fw = Firewall {
            masquerade6: Some("fd23:1:2::/48".parse().unwrap()),
            ..firewall(false)
        };
        let v = serde_json::to_value(fw.base_batch().to_nftables()).unwrap();
        let rules = rules_in(&v, "postrouting");
        assert_eq!(rules.len(), 2);
        assert_eq!(
            *rules[1],
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}},
                    "right": {"prefix": {"addr": "fd23:1:2::", "len": 48}}}},
                {"match": {"op": "!=", "left": {"meta": {"key": "oifgroup"}}, "right": 232}},
                {"masquerade": null}])
        );
        let routed = serde_json::to_value(firewall(false).base_batch().to_nftables()).unwrap();
        assert_eq!(rules_in(&routed, "postrouting").len(), 1);
    }

    #[test]
    fn batch_carries_values_not_nft_syntax() {
        let v = gate_json(&firewall(true), &gate());
        let mut all = Vec::new();
        strings(&v, &mut all);
        for s in &all {
            assert!(
                !s.chars().any(|c| c.is_whitespace() || "{};\"'".contains(c)),
                "string {s:?} looks like nft syntax"
            );
        }
    }

    #[test]
    fn refuses_names_that_are_not_gate_egress_links() {
        for bad in [
            "eth0",
            "gte",
            "gte*",
            "gtether0",
            "gte1\" ; flush ruleset",
            "gte1 . 10.0.0.1",
            "gte1234567890123",
            "",
        ] {
            let g = GateRules {
                egress_if: bad.into(),
                allowed: vec!["192.0.2.1:22".parse().unwrap()],
            };
            let err = add_elements(&mut Batch::new(), &g).unwrap_err();
            assert!(matches!(err, Error::Invalid(_)), "{bad:?}: {err}");
        }
        assert!(validate_egress_if("gte123456789012").is_ok());
    }

    fn listing() -> Nftables<'static> {
        serde_json::from_value(json!({"nftables": [
            {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
            {"table": {"family": "inet", "name": "gatectl", "handle": 1}},
            {"set": {"family": "inet", "name": "allow4", "table": "gatectl",
                "type": ["ifname", "ipv4_addr", "inet_service"], "handle": 1,
                "elem": [{"concat": ["gte1", "192.0.2.10", 22]},
                         {"concat": ["gte2", "192.0.2.11", 2222]},
                         {"elem": {"val": {"concat": ["gte1", "192.0.2.12", 22]}, "comment": "x"}}]}},
            {"set": {"family": "inet", "name": "allow6", "table": "gatectl",
                "type": ["ifname", "ipv6_addr", "inet_service"], "handle": 2,
                "elem": [{"concat": ["gte1", "2001:db8::1", 22]}]}},
            {"set": {"family": "inet", "name": "allow4", "table": "other",
                "type": ["ifname", "ipv4_addr", "inet_service"], "handle": 9,
                "elem": [{"concat": ["gte7", "192.0.2.99", 22]}]}},
            {"chain": {"family": "inet", "table": "gatectl", "name": "forward", "handle": 3}}
        ]}))
        .unwrap()
    }

    #[test]
    fn reads_elements_of_our_sets_only() {
        let names: BTreeSet<String> = set_elements(&listing()).into_iter().map(|e| e.ifname).collect();
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["gte1", "gte2"]);
    }

    /// The commands deleting `egress_if`'s listed elements, if any.
    fn removal(egress_if: &str) -> Option<Nftables<'static>> {
        let mut batch = Batch::new();
        delete_elements(&mut batch, &set_elements(&listing()), egress_if).then(|| batch.to_nftables())
    }

    #[test]
    fn removal_deletes_exactly_the_listed_elements_of_one_gate() {
        let v = serde_json::to_value(removal("gte1").unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"nftables": [
                {"delete": {"element": {"family": "inet", "table": "gatectl", "name": "allow4", "elem": [
                    {"concat": ["gte1", "192.0.2.10", 22]},
                    {"concat": ["gte1", "192.0.2.12", 22]}]}}},
                {"delete": {"element": {"family": "inet", "table": "gatectl", "name": "allow6", "elem": [
                    {"concat": ["gte1", "2001:db8::1", 22]}]}}}
            ]})
        );
    }

    #[test]
    fn removal_of_a_gates_pairs_adds_each_then_deletes_it_so_a_missing_one_is_no_error() {
        let mut batch = Batch::new();
        remove_elements(&mut batch, &gate()).unwrap();
        let v = serde_json::to_value(batch.to_nftables()).unwrap();
        let cmds = commands(&v);
        let verbs: Vec<(&str, &str)> = cmds
            .iter()
            .map(|c| {
                let verb = c.as_object().unwrap().keys().next().unwrap().as_str();
                (verb, c[verb]["element"]["name"].as_str().unwrap())
            })
            .collect();
        assert_eq!(
            verbs,
            [
                ("add", "allow4"),
                ("add", "allow6"),
                ("delete", "allow4"),
                ("delete", "allow6")
            ]
        );
        for set in 0..2 {
            assert_eq!(cmds[set]["add"]["element"], cmds[set + 2]["delete"]["element"]);
        }
        assert!(remove_elements(
            &mut Batch::new(),
            &GateRules {
                egress_if: "eth0".into(),
                allowed: vec![]
            }
        )
        .is_err());
    }

    #[test]
    fn removal_of_a_gate_without_elements_is_nothing_to_do() {
        assert!(removal("gte9").is_none());
        assert!(!delete_elements(&mut Batch::new(), &[], "gte1"));
    }
}
