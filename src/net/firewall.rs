//! The host's nftables table `inet gatectl`: masquerade for the gates' egress
//! links and a per-gate allowlist of upstream address:port pairs.
//!
//! gatectl owns exactly one table and never touches any other. Its shape:
//!
//! ```text
//! table inet gatectl {
//!   set allow4 { type ifname . ipv4_addr . inet_service; }   # "gte3" . 192.0.2.10 . 22
//!   set allow6 { type ifname . ipv6_addr . inet_service; }
//!   chain forward { type filter hook forward priority filter; policy accept;
//!     ct state established,related accept
//!     iifname "gte*" meta nfproto ipv4 iifname . ip daddr . tcp dport @allow4 accept
//!     iifname "gte*" meta nfproto ipv6 iifname . ip6 daddr . tcp dport @allow6 accept
//!     iifname "gte*" counter drop
//!     counter drop                      # only with `block_other_forwarding`
//!   }
//!   chain input { type filter hook input priority filter; policy accept;
//!     iifname "gte*" counter drop
//!   }
//!   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr <egress pool> oifname != "gte*" masquerade
//!   }
//! }
//! ```
//!
//! Every change is one atomic batch built from the `nftables` crate's JSON
//! schema types: names and addresses travel as JSON values, never formatted
//! into nft's text syntax. Batches and listings go through libnftables in
//! process (`super::nftlib`), exactly as `nft -j` would send them, with no
//! `nft` child process; each operation uses one libnftables context.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::Ipv4Net;
use nftables::batch::Batch;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, CT};
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, Nftables, Rule, Set, SetType, SetTypeValue, Table,
};
use nftables::stmt::{Counter, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde_json::Value;

use super::nftlib;
use crate::error::{Error, Result};
use crate::plan::HOST_EGRESS_PREFIX;

/// Name of gatectl's table (family `inet`).
pub const TABLE: &str = "gatectl";
/// The set of allowed `ifname . ipv4_addr . inet_service` triples.
pub const ALLOW4_SET: &str = "allow4";
/// The set of allowed `ifname . ipv6_addr . inet_service` triples.
pub const ALLOW6_SET: &str = "allow6";

const FAMILY: NfFamily = NfFamily::INet;
const FORWARD_CHAIN: &str = "forward";
const INPUT_CHAIN: &str = "input";
const POSTROUTING_CHAIN: &str = "postrouting";
/// nft's `priority filter`.
const PRIO_FILTER: i32 = 0;
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
    /// Drop forwarded traffic that neither comes from a gate nor replies to a
    /// gate's connection: set when the host did not forward before gatectl
    /// turned `ip_forward` on.
    pub block_other_forwarding: bool,
}

impl Firewall {
    /// Creates or refreshes the table, its sets and base chains in one atomic
    /// nft batch: adds table, sets and chains (a no-op when they exist),
    /// flushes the three base chains and re-adds their rules. The sets are not
    /// flushed: they hold the gates' allowlists.
    pub fn ensure_base(&self) -> Result<()> {
        let context = format!("could not set up the nftables table `inet {TABLE}`");
        apply(&mut open(&context)?, &self.base_batch().to_nftables(), context)
    }

    /// Does [`Firewall::ensure_base`] and adds this gate's allowlist, in one
    /// atomic nft batch. Adding elements that already exist is not an error.
    pub fn add_gate(&self, gate: &GateRules) -> Result<()> {
        let batch = self.gate_batch(gate)?;
        let context = format!(
            "could not add the allowlist of gate link {} to the nftables table `inet {TABLE}`",
            gate.egress_if
        );
        apply(&mut open(&context)?, &batch, context)
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
        let mut nft = open(&context)?;
        let Some(listing) = list_table(&mut nft)? else {
            return Ok(());
        };
        let elements = set_elements(&listing);
        match removal_batch(&elements, egress_if)? {
            Some(batch) => apply(&mut nft, &batch, context),
            None => Ok(()),
        }
    }

    /// Whether the table `inet gatectl` exists.
    pub fn table_present(&self) -> Result<bool> {
        table_exists(&mut open(LIST_TABLES_CONTEXT)?)
    }

    /// Deletes the whole table `inet gatectl`; success when it is gone.
    /// Only for a host with no gate left (see `gatectl prune`).
    pub fn remove_table(&self) -> Result<()> {
        let context = format!("could not delete the nftables table `inet {TABLE}`");
        let mut nft = open(&context)?;
        if !table_exists(&mut nft)? {
            return Ok(());
        }
        let mut batch = Batch::new();
        batch.delete(NfListObject::Table(Table {
            family: FAMILY,
            name: TABLE.into(),
            ..Table::default()
        }));
        apply(&mut nft, &batch.to_nftables(), context)
    }

    /// The distinct interface names that have elements in the allowlist sets,
    /// sorted. Empty when the table does not exist.
    pub fn gate_interfaces(&self) -> Result<Vec<String>> {
        Ok(self.survey()?.interfaces)
    }

    /// What the table holds, in one listing: whether it exists, the
    /// interfaces with allowlist elements, and each base chain that has
    /// fewer rules than [`Firewall::ensure_base`] puts there (someone
    /// flushed or deleted them).
    pub fn survey(&self) -> Result<Survey> {
        let mut nft = open(&list_table_context())?;
        let Some(listing) = list_table(&mut nft)? else {
            return Ok(Survey::default());
        };
        let names: BTreeSet<String> = set_elements(&listing).into_iter().map(|e| e.ifname).collect();
        let expected =
            serde_json::to_value(self.base_batch().to_nftables()).map_err(|e| Error::Firewall {
                context: list_table_context(),
                message: format!("could not encode the nft batch: {e}"),
            })?;
        Ok(Survey {
            present: true,
            interfaces: names.into_iter().collect(),
            short_chains: short_chains(&expected, &listing),
        })
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
        let ct_state = Expression::Named(NamedExpression::CT(CT {
            key: "state".into(),
            family: None,
            dir: None,
        }));
        let established = Expression::List(vec![
            Expression::String("established".into()),
            Expression::String("related".into()),
        ]);
        batch.add(rule(
            FORWARD_CHAIN,
            vec![matches(ct_state, Operator::IN, established), accept()],
        ));
        for (nfproto, l3, set) in [("ipv4", "ip", ALLOW4_SET), ("ipv6", "ip6", ALLOW6_SET)] {
            let key = Expression::Named(NamedExpression::Concat(vec![
                meta(MetaKey::Iifname),
                payload(l3, "daddr"),
                payload("tcp", "dport"),
            ]));
            batch.add(rule(
                FORWARD_CHAIN,
                vec![
                    from_gate(),
                    matches(meta(MetaKey::Nfproto), Operator::EQ, string(nfproto)),
                    matches(key, Operator::EQ, string(format!("@{set}"))),
                    accept(),
                ],
            ));
        }
        batch.add(rule(FORWARD_CHAIN, vec![from_gate(), counter(), drop()]));
        if self.block_other_forwarding {
            batch.add(rule(FORWARD_CHAIN, vec![counter(), drop()]));
        }

        // input: a gate cannot reach services on the host itself.
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
                matches(meta(MetaKey::Oifname), Operator::NEQ, gate_wildcard()),
                Statement::Masquerade(None),
            ],
        ));
        batch
    }

    /// The commands of [`Firewall::add_gate`].
    fn gate_batch(&self, gate: &GateRules) -> Result<Nftables<'static>> {
        validate_egress_if(&gate.egress_if)?;
        let mut batch = self.base_batch();
        let mut v4 = BTreeSet::new();
        let mut v6 = BTreeSet::new();
        for addr in &gate.allowed {
            match addr.ip().to_canonical() {
                ip @ IpAddr::V4(_) => v4.insert((ip, addr.port())),
                ip @ IpAddr::V6(_) => v6.insert((ip, addr.port())),
            };
        }
        for (set, pairs) in [(ALLOW4_SET, v4), (ALLOW6_SET, v6)] {
            if pairs.is_empty() {
                continue;
            }
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
            batch.add(NfListObject::Element(Element {
                family: FAMILY,
                table: TABLE.into(),
                name: set.into(),
                elem: elem.into(),
            }));
        }
        Ok(batch.to_nftables())
    }
}

/// Refuses names that are not a gate's egress link: the rules only fence
/// interfaces matching `gte*`, so an element for any other name would grant
/// nothing while its gate ran unfenced.
fn validate_egress_if(name: &str) -> Result<()> {
    let suffix_ok = name
        .strip_prefix(HOST_EGRESS_PREFIX)
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()));
    if suffix_ok && name.len() <= IFNAME_MAX {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{name:?} is not a gate egress link name: it must be \"{HOST_EGRESS_PREFIX}\" followed by \
             letters or digits, at most {IFNAME_MAX} characters in all"
        )))
    }
}

fn rule(chain: &'static str, expr: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: FAMILY,
        table: TABLE.into(),
        chain: chain.into(),
        expr: expr.into(),
        ..Rule::default()
    })
}

fn matches(left: Expression<'static>, op: Operator, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

/// `iifname "gte*"`.
fn from_gate() -> Statement<'static> {
    matches(meta(MetaKey::Iifname), Operator::EQ, gate_wildcard())
}

/// The interface-name wildcard matching every gate egress link.
fn gate_wildcard() -> Expression<'static> {
    string(format!("{HOST_EGRESS_PREFIX}*"))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: protocol.into(),
        field: field.into(),
    })))
}

fn string(s: impl Into<String>) -> Expression<'static> {
    Expression::String(s.into().into())
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

fn drop() -> Statement<'static> {
    Statement::Drop(None)
}

fn counter() -> Statement<'static> {
    Statement::Counter(Counter::Anonymous(None))
}

/// One element of an allowlist set, as nft listed it.
#[derive(Debug, Clone, PartialEq)]
struct SetElement {
    /// `allow4` or `allow6`.
    set: String,
    /// The element's interface name.
    ifname: String,
    /// The element's key exactly as listed (a `concat` expression).
    key: Value,
}

/// The elements of gatectl's allowlist sets in a `nft -j list table` output.
fn set_elements(listing: &Value) -> Vec<SetElement> {
    let mut out = Vec::new();
    for set in objects(listing).iter().filter_map(|o| o.get("set")) {
        let ours = set.get("family").and_then(Value::as_str) == Some("inet")
            && set.get("table").and_then(Value::as_str) == Some(TABLE);
        let Some(name) = set.get("name").and_then(Value::as_str) else {
            continue;
        };
        if !ours || (name != ALLOW4_SET && name != ALLOW6_SET) {
            continue;
        }
        let elems = set
            .get("elem")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for elem in elems {
            // An element with extra properties is listed as {"elem": {"val": KEY, ...}}.
            let key = elem.get("elem").and_then(|e| e.get("val")).unwrap_or(elem);
            let ifname = key.get("concat").and_then(|c| c.get(0)).and_then(Value::as_str);
            if let Some(ifname) = ifname {
                out.push(SetElement {
                    set: name.to_string(),
                    ifname: ifname.to_string(),
                    key: key.clone(),
                });
            }
        }
    }
    out
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

/// The objects of an nft JSON document (`{"nftables": [...]}`).
fn objects(document: &Value) -> &[Value] {
    document
        .get("nftables")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The base chains with fewer rules in `listing` (`list table`) than the
/// batch `expected` adds to them.
fn short_chains(expected: &Value, listing: &Value) -> Vec<String> {
    let chain_of = |rule: &Value| rule.get("chain").and_then(Value::as_str).map(str::to_string);
    let mut wanted: BTreeMap<String, usize> = BTreeMap::new();
    for chain in objects(expected)
        .iter()
        .filter_map(|o| o.get("add")?.get("rule"))
        .filter_map(chain_of)
    {
        *wanted.entry(chain).or_default() += 1;
    }
    let mut found: BTreeMap<String, usize> = BTreeMap::new();
    for chain in objects(listing)
        .iter()
        .filter_map(|o| o.get("rule"))
        .filter_map(chain_of)
    {
        *found.entry(chain).or_default() += 1;
    }
    wanted
        .into_iter()
        .filter_map(|(chain, want)| {
            let have = found.get(&chain).copied().unwrap_or(0);
            (have < want).then(|| format!("{chain} ({have} of {want} rules)"))
        })
        .collect()
}

/// The batch deleting `egress_if`'s elements, or `None` when it has none.
fn removal_batch(elements: &[SetElement], egress_if: &str) -> Result<Option<Nftables<'static>>> {
    let mut batch = Batch::new();
    let mut any = false;
    for set in [ALLOW4_SET, ALLOW6_SET] {
        let elem = elements
            .iter()
            .filter(|e| e.set == set && e.ifname == egress_if)
            .map(|e| {
                serde_json::from_value::<Expression<'static>>(e.key.clone()).map_err(|err| {
                    Error::Firewall {
                        context: format!(
                            "could not remove the allowlist of gate link {egress_if} from the nftables table `inet {TABLE}`"
                        ),
                        message: format!(
                            "nft listed an element gatectl cannot read ({}): {err}; delete it by hand with \
                             `nft delete element inet {TABLE} {set} {{ ... }}`",
                            e.key
                        ),
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;
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
    Ok(any.then(|| batch.to_nftables()))
}

/// What gatectl was doing when listing its table failed.
fn list_table_context() -> String {
    format!("could not list the nftables table `inet {TABLE}`")
}

/// What gatectl was doing when listing the table names failed.
const LIST_TABLES_CONTEXT: &str = "could not list the nftables tables of family inet";

/// A libnftables context for one operation; `context` says what gatectl was
/// doing, should libnftables be unusable.
fn open(context: &str) -> Result<nftlib::Context> {
    nftlib::Context::new().map_err(|message| Error::Firewall {
        context: context.to_string(),
        message,
    })
}

/// Lists gatectl's table as JSON (`nft -j list table inet gatectl`), or
/// `None` when it does not exist.
fn list_table(nft: &mut nftlib::Context) -> Result<Option<Value>> {
    match nft.run(&format!("list table inet {TABLE}")) {
        Ok(out) => parse_json(&out).map(Some).map_err(|message| Error::Firewall {
            context: list_table_context(),
            message,
        }),
        Err(stderr) => {
            // nft fails the same way for "no such table" and for real trouble;
            // tell them apart by listing the table names.
            if table_exists(nft)? {
                Err(Error::Firewall {
                    context: list_table_context(),
                    message: refusal(&stderr),
                })
            } else {
                Ok(None)
            }
        }
    }
}

/// Whether `inet gatectl` exists (`nft -j list tables inet`).
fn table_exists(nft: &mut nftlib::Context) -> Result<bool> {
    let firewall_error = |message| Error::Firewall {
        context: LIST_TABLES_CONTEXT.to_string(),
        message,
    };
    let out = nft
        .run("list tables inet")
        .map_err(|stderr| firewall_error(refusal(&stderr)))?;
    let listing = parse_json(&out).map_err(firewall_error)?;
    Ok(objects(&listing).iter().filter_map(|o| o.get("table")).any(|t| {
        t.get("family").and_then(Value::as_str) == Some("inet")
            && t.get("name").and_then(Value::as_str) == Some(TABLE)
    }))
}

fn parse_json(out: &str) -> Result<Value, String> {
    serde_json::from_str(out).map_err(|e| {
        format!(
            "libnftables printed JSON gatectl cannot read ({e}); check that the libnftables1 package is \
             installed and working"
        )
    })
}

/// Applies `batch` as one atomic transaction (what `nft -j -f -` does).
fn apply(nft: &mut nftlib::Context, batch: &Nftables<'_>, context: String) -> Result<()> {
    let payload = serde_json::to_string(batch).map_err(|e| Error::Firewall {
        context: context.clone(),
        message: format!("could not encode the nft batch: {e}"),
    })?;
    nft.run(&payload).map(|_| ()).map_err(|stderr| Error::Firewall {
        context,
        message: refusal(&stderr),
    })
}

/// The message for a refused nft run: what nft said (its stderr), then what
/// to do.
fn refusal(stderr: &str) -> String {
    let said = stderr
        .lines()
        .map(|line| {
            // Errors about JSON input carry a meaningless "internal:0:0-0: " location.
            let line = line.trim();
            match line.split_once(": ") {
                Some((loc, rest)) if loc.starts_with("internal:") => rest,
                _ => line,
            }
        })
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ");
    let said = if said.is_empty() {
        "`nft` failed without a message".to_string()
    } else {
        format!("`nft` said: {said}")
    };
    let hint = if stderr.contains("Operation not permitted") {
        "run gatectl as root (it needs CAP_NET_ADMIN)".to_string()
    } else {
        format!(
            "either the table `inet {TABLE}` holds a chain or set that differs from what gatectl \
             creates (changed by hand? compare `nft list table inet {TABLE}`), or the kernel lacks \
             nf_tables conntrack or NAT support (`modprobe nft_ct nft_nat nft_masq`)"
        )
    };
    format!("{said}; {hint}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn firewall(block: bool) -> Firewall {
        Firewall {
            egress_pool: "10.232.0.0/16".parse().unwrap(),
            block_other_forwarding: block,
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

    fn gate_json(fw: &Firewall, gate: &GateRules) -> Value {
        serde_json::to_value(fw.gate_batch(gate).unwrap()).unwrap()
    }

    fn commands(v: &Value) -> &Vec<Value> {
        v["nftables"].as_array().unwrap()
    }

    fn rules_of<'v>(v: &'v Value, chain: &str) -> Vec<&'v Value> {
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

    #[test]
    fn short_chains_are_those_with_fewer_rules_than_the_base_batch_adds() {
        let expected = serde_json::to_value(firewall(true).base_batch().to_nftables()).unwrap();
        let rule = |chain: &str| json!({"rule": {"family": "inet", "table": "gatectl", "chain": chain}});
        let mut listed = vec![json!({"table": {"family": "inet", "name": "gatectl"}})];
        listed.extend((0..5).map(|_| rule("forward")));
        listed.push(rule("input"));
        listed.push(rule("postrouting"));
        assert_eq!(
            short_chains(&expected, &json!({ "nftables": listed })),
            Vec::<String>::new()
        );

        // `nft flush chain inet gatectl forward`, and input deleted.
        let listed = vec![rule("postrouting")];
        assert_eq!(
            short_chains(&expected, &json!({ "nftables": listed })),
            ["forward (0 of 5 rules)", "input (0 of 1 rules)"]
        );
        // Without the marker, forward holds one rule less.
        let expected = serde_json::to_value(firewall(false).base_batch().to_nftables()).unwrap();
        let listed: Vec<Value> = (0..4)
            .map(|_| rule("forward"))
            .chain([rule("input"), rule("postrouting")])
            .collect();
        assert_eq!(
            short_chains(&expected, &json!({ "nftables": listed })),
            Vec::<String>::new()
        );
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
    fn forward_chain_accepts_replies_and_allowlist_then_drops_gate_traffic() {
        let v = gate_json(&firewall(false), &gate());
        let rules = rules_of(&v, "forward");
        assert_eq!(rules.len(), 4);
        assert_eq!(
            *rules[0],
            json!([{"match": {"op": "in", "left": {"ct": {"key": "state"}},
                "right": ["established", "related"]}}, {"accept": null}])
        );
        let iif = json!({"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "gte*"}});
        assert_eq!(
            *rules[1],
            json!([iif,
                {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}},
                {"match": {"op": "==", "left": {"concat": [
                    {"meta": {"key": "iifname"}},
                    {"payload": {"protocol": "ip", "field": "daddr"}},
                    {"payload": {"protocol": "tcp", "field": "dport"}}]}, "right": "@allow4"}},
                {"accept": null}])
        );
        assert_eq!(rules[2][1]["match"]["right"], "ipv6");
        assert_eq!(
            rules[2][2]["match"]["left"]["concat"][1],
            json!({"payload": {"protocol": "ip6", "field": "daddr"}})
        );
        assert_eq!(rules[2][2]["match"]["right"], "@allow6");
        assert_eq!(*rules[3], json!([iif, {"counter": null}, {"drop": null}]));
        assert_eq!(
            rules_of(&v, "input"),
            vec![&json!([iif, {"counter": null}, {"drop": null}])]
        );
    }

    #[test]
    fn block_other_forwarding_adds_a_final_unconditional_drop() {
        let v = gate_json(&firewall(true), &gate());
        let rules = rules_of(&v, "forward");
        assert_eq!(rules.len(), 5);
        assert_eq!(*rules[4], json!([{"counter": null}, {"drop": null}]));
    }

    #[test]
    fn postrouting_masquerades_the_egress_pool_leaving_through_non_gate_links() {
        let fw = Firewall {
            egress_pool: "10.232.7.9/16".parse().unwrap(),
            block_other_forwarding: false,
        };
        let v = serde_json::to_value(fw.base_batch().to_nftables()).unwrap();
        assert_eq!(
            rules_of(&v, "postrouting"),
            vec![&json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                    "right": {"prefix": {"addr": "10.232.0.0", "len": 16}}}},
                {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "gte*"}},
                {"masquerade": null}])]
        );
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
            "gte1\" ; flush ruleset",
            "gte1 . 10.0.0.1",
            "gte123456789abcd",
            "",
        ] {
            let g = GateRules {
                egress_if: bad.into(),
                allowed: vec!["192.0.2.1:22".parse().unwrap()],
            };
            let err = firewall(false).gate_batch(&g).unwrap_err();
            assert!(matches!(err, Error::Invalid(_)), "{bad:?}: {err}");
        }
        assert!(validate_egress_if("gte123456789abc").is_ok());
    }

    fn listing() -> Value {
        json!({"nftables": [
            {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
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
        ]})
    }

    #[test]
    fn refusal_says_what_nft_said_and_what_to_do() {
        let m = refusal("internal:0:0-0: Error: Could not process rule: Operation not supported\n\n");
        assert!(
            m.starts_with("`nft` said: Error: Could not process rule: Operation not supported; "),
            "{m}"
        );
        assert!(m.contains("nft list table inet gatectl"), "{m}");
        let m = refusal("Error: Could not process rule: Operation not permitted\n");
        assert!(m.ends_with("run gatectl as root (it needs CAP_NET_ADMIN)"), "{m}");
        let m = refusal("");
        assert!(m.starts_with("`nft` failed without a message; "), "{m}");
    }

    #[test]
    fn reads_elements_of_our_sets_only() {
        let names: BTreeSet<String> = set_elements(&listing()).into_iter().map(|e| e.ifname).collect();
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["gte1", "gte2"]);
    }

    #[test]
    fn removal_deletes_exactly_the_listed_elements_of_one_gate() {
        let batch = removal_batch(&set_elements(&listing()), "gte1").unwrap().unwrap();
        let v = serde_json::to_value(batch).unwrap();
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
    fn removal_of_a_gate_without_elements_is_nothing_to_do() {
        assert!(removal_batch(&set_elements(&listing()), "gte9")
            .unwrap()
            .is_none());
        assert!(removal_batch(&set_elements(&json!({"nftables": []})), "gte1")
            .unwrap()
            .is_none());
    }
}
