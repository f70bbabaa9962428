//! gatectl's nftables tables: the host's `inet gatectl` (masquerade and a
//! per-gate allowlist, matched by gatectl's link group: [`host`]) and one
//! table of the same name inside each gate netns, where a host `flush
//! ruleset` cannot reach it (the gate's own allowlist: [`gate`]).
//!
//! gatectl owns exactly these tables and never touches any other. Every
//! change is one atomic batch built from the `nftables` crate's JSON schema
//! types: names and addresses travel as JSON values, never formatted into
//! nft's text syntax. Batches and listings go through libnftables in process
//! (`super::nftlib`), exactly as `nft -j` would send them, with no `nft`
//! child process; each operation uses one libnftables context, in the
//! network namespace of the calling thread. Listings are read back into the
//! same schema types.

pub mod gate;
pub mod host;

use std::borrow::Cow;

use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, CT};
use nftables::schema::{NfCmd, NfListObject, NfObject, Nftables, Rule};
use nftables::stmt::{Counter, Match, Operator, Statement};
use nftables::types::NfFamily;

use super::nftlib;
use crate::error::{Error, Result};

pub use host::{Firewall, GateRules, Survey};

/// Name of gatectl's tables (family `inet`), on the host and in each gate
/// netns.
pub const TABLE: &str = "gatectl";
/// The set of allowed upstream pairs for IPv4.
pub const ALLOW4_SET: &str = "allow4";
/// The set of allowed upstream pairs for IPv6.
pub const ALLOW6_SET: &str = "allow6";

const FAMILY: NfFamily = NfFamily::INet;
/// nft's `priority filter`.
const PRIO_FILTER: i32 = 0;

/// A libnftables context for one operation in the calling thread's network
/// namespace, with what gatectl is doing for messages.
struct Session {
    nft: nftlib::Context,
}

impl Session {
    /// Opens a context; `context` says what gatectl was doing, should
    /// libnftables be unusable. Without root it refuses at once: libnftables
    /// would print "Operation not permitted (you must be root)" straight to
    /// stderr, unprefixed, before gatectl could word the problem.
    fn open(context: &str) -> Result<Session> {
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::Firewall {
                context: context.to_string(),
                message: "reading or changing nftables needs root (CAP_NET_ADMIN); run gatectl as root"
                    .into(),
            });
        }
        nftlib::Context::new()
            .map(|nft| Session { nft })
            .map_err(|message| Error::Firewall {
                context: context.to_string(),
                message,
            })
    }

    /// Applies `batch` as one atomic transaction (what `nft -j -f -` does).
    fn apply(&mut self, batch: &Nftables<'_>, context: String) -> Result<()> {
        let payload = serde_json::to_string(batch).map_err(|e| Error::Firewall {
            context: context.clone(),
            message: format!("could not encode the nft batch: {e}"),
        })?;
        self.nft
            .run(&payload)
            .map(|_| ())
            .map_err(|stderr| Error::Firewall {
                context,
                message: refusal(&stderr),
            })
    }

    /// Lists gatectl's table (`nft -j list table inet gatectl`), or `None`
    /// when it does not exist.
    fn list_table(&mut self) -> Result<Option<Nftables<'static>>> {
        match self.nft.run(&format!("list table inet {TABLE}")) {
            Ok(out) => parse_listing(&out).map(Some).map_err(|message| Error::Firewall {
                context: list_table_context(),
                message,
            }),
            Err(stderr) => {
                // nft fails the same way for "no such table" and for real
                // trouble; tell them apart by listing the table names.
                if self.table_exists()? {
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
    fn table_exists(&mut self) -> Result<bool> {
        let firewall_error = |message| Error::Firewall {
            context: LIST_TABLES_CONTEXT.to_string(),
            message,
        };
        let out = self
            .nft
            .run("list tables inet")
            .map_err(|stderr| firewall_error(refusal(&stderr)))?;
        let listing = parse_listing(&out).map_err(firewall_error)?;
        let exists = listed(&listing)
            .any(|o| matches!(o, NfListObject::Table(t) if t.family == FAMILY && t.name == TABLE));
        Ok(exists)
    }
}

/// What gatectl was doing when listing its table failed.
fn list_table_context() -> String {
    format!("could not list the nftables table `inet {TABLE}`")
}

/// What gatectl was doing when listing the table names failed.
const LIST_TABLES_CONTEXT: &str = "could not list the nftables tables of family inet";

/// Reads what libnftables printed into the schema types.
fn parse_listing(out: &str) -> Result<Nftables<'static>, String> {
    serde_json::from_str(out).map_err(|e| {
        format!(
            "libnftables printed JSON gatectl cannot read ({e}); check that the libnftables1 package is \
             installed and working"
        )
    })
}

/// The ruleset objects of a listing (metainfo and commands left out).
fn listed<'l>(listing: &'l Nftables<'static>) -> impl Iterator<Item = &'l NfListObject<'static>> {
    listing.objects.iter().filter_map(|o| match o {
        NfObject::ListObject(object) => Some(object),
        NfObject::CmdObject(_) => None,
    })
}

/// The listed rules of chain `chain` of gatectl's table.
fn rules_of<'l>(listing: &'l Nftables<'static>, chain: &'l str) -> impl Iterator<Item = &'l Rule<'static>> {
    listed(listing).filter_map(move |o| match o {
        NfListObject::Rule(r) if r.family == FAMILY && r.table == TABLE && r.chain == chain => Some(r),
        _ => None,
    })
}

/// The objects a batch adds, as a listing of them would hold them (to
/// compare a listing with what gatectl applies).
fn batch_as_listing(batch: &Nftables<'static>) -> Nftables<'static> {
    let objects: Vec<NfObject<'static>> = batch
        .objects
        .iter()
        .filter_map(|o| match o {
            NfObject::CmdObject(NfCmd::Add(object)) => Some(NfObject::ListObject(object.clone())),
            _ => None,
        })
        .collect();
    Nftables {
        objects: objects.into(),
    }
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

/// A rule of `chain` in gatectl's table.
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

/// `ct state established,related`.
fn replies() -> Statement<'static> {
    let ct_state = Expression::Named(NamedExpression::CT(CT {
        key: "state".into(),
        family: None,
        dir: None,
    }));
    let established = Expression::List(vec![string("established"), string("related")]);
    matches(ct_state, Operator::IN, established)
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

fn string(s: impl Into<Cow<'static, str>>) -> Expression<'static> {
    Expression::String(s.into())
}

/// A reference to the named set `set` (`@set`).
fn set_ref(set: &str) -> Expression<'static> {
    string(format!("@{set}"))
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
