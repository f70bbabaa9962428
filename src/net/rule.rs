//! gatectl's policy-routing rules (`ip rule`, `ip -6 rule`), which confine
//! the host's forwarding to gate traffic when gatectl is the one that turned
//! forwarding on: one set per address family, for that family's egress pool
//! (`egress_pool`, `egress_pool6`).
//!
//! They live in the kernel's routing policy database, not in nftables, so no
//! firewall reload, `nft flush ruleset` or stop of nftables.service removes
//! them. Five rules, tagged with protocol [`RULE_PROTOCOL`]:
//!
//! ```text
//! 1300: from all iif lo goto 1304        locally sent: as if the rules were not there
//! 1301: from <egress_pool> goto 1304     a gate's traffic
//! 1302: from all to <egress_pool> goto 1304   replies to a gate (after de-NAT)
//! 1303: from all unreachable             any other forwarded packet
//! 1304: from all nop                     where the rules above jump to
//! ```
//!
//! Packets for the host itself match the `local` table (priority 0) first,
//! so only forwarded traffic reaches rule 1303. They are added target first
//! and `unreachable` last, and removed in the opposite order, so locally
//! sent traffic is never caught in between.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::route::RouteProtocol;
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::IpVersion;

use super::link::Netlink;
use crate::error::{Context, Result};

/// The protocol tag of gatectl's rules (`ip rule` shows `proto 231`): it,
/// not the priority, proves a rule is gatectl's.
pub const RULE_PROTOCOL: u8 = 231;
/// Priority of the first rule; the five rules take this and the next four.
pub const FIRST_PRIORITY: u32 = 1300;

/// What a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Selector {
    /// Everything.
    All,
    /// Locally sent packets (`iif lo`).
    Local,
    /// Packets from this network.
    From(IpNet),
    /// Packets to this network.
    To(IpNet),
}

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Continue at the rule of this priority.
    Goto(u32),
    /// Refuse the route: the packet is dropped, its sender told the network
    /// is unreachable.
    Unreachable,
    /// Nothing: a target to jump to.
    Nop,
}

/// One of gatectl's rules, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    priority: u32,
    selector: Selector,
    action: Action,
}

/// The rules that confine forwarding of one address family to the gates of
/// `egress_pool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardingRules {
    /// The egress pool of the family (`egress_pool` or `egress_pool6`): a
    /// gate's traffic comes from it, replies go to it.
    pub egress_pool: IpNet,
}

/// What [`ForwardingRules::survey`] found of gatectl's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RulesSurvey {
    /// How many rules carry gatectl's protocol tag.
    pub present: usize,
    /// Whether they are exactly the rules gatectl installs.
    pub complete: bool,
}

impl ForwardingRules {
    /// The rules, in the order they are added.
    fn wanted(&self) -> [Rule; 5] {
        let target = FIRST_PRIORITY + 4;
        let rule = |offset, selector, action| Rule {
            priority: FIRST_PRIORITY + offset,
            selector,
            action,
        };
        [
            rule(4, Selector::All, Action::Nop),
            rule(0, Selector::Local, Action::Goto(target)),
            rule(1, Selector::From(self.egress_pool), Action::Goto(target)),
            rule(2, Selector::To(self.egress_pool), Action::Goto(target)),
            rule(3, Selector::All, Action::Unreachable),
        ]
    }

    /// Installs the rules; those already there stay, and gatectl's rules
    /// that differ (an egress pool changed since) are replaced.
    pub async fn install(&self, netlink: &Netlink) -> Result<()> {
        let found = self.ours(netlink).await?;
        let wanted = self.wanted();
        for (message, rule) in &found {
            if !rule.is_some_and(|r| wanted.contains(&r)) {
                delete(netlink, message.clone()).await?;
            }
        }
        for rule in wanted {
            if !found.iter().any(|(_, r)| *r == Some(rule)) {
                add(netlink, rule, self.family()).await?;
            }
        }
        Ok(())
    }

    /// Removes every rule of the family carrying gatectl's protocol tag,
    /// `unreachable` first; success when there is none.
    pub async fn remove(&self, netlink: &Netlink) -> Result<()> {
        let mut found = self.ours(netlink).await?;
        found.sort_by_key(|(_, rule)| rule.is_none_or(|r| r.action != Action::Unreachable));
        for (message, _) in found {
            delete(netlink, message).await?;
        }
        Ok(())
    }

    /// How many of gatectl's rules exist, and whether they are all there.
    pub async fn survey(&self, netlink: &Netlink) -> Result<RulesSurvey> {
        let found: Vec<Option<Rule>> = self.ours(netlink).await?.into_iter().map(|(_, r)| r).collect();
        let wanted = self.wanted();
        Ok(RulesSurvey {
            present: found.len(),
            complete: found.len() == wanted.len() && wanted.iter().all(|r| found.contains(&Some(*r))),
        })
    }
}

impl ForwardingRules {
    /// The address family of the rules.
    fn family(&self) -> AddressFamily {
        match self.egress_pool {
            IpNet::V4(_) => AddressFamily::Inet,
            IpNet::V6(_) => AddressFamily::Inet6,
        }
    }

    /// gatectl's rules of the family (by protocol tag), with what each
    /// does (`None`: tagged as gatectl's, but not a rule gatectl makes;
    /// removed as stale).
    async fn ours(&self, netlink: &Netlink) -> Result<Vec<(RuleMessage, Option<Rule>)>> {
        let (version, name) = match self.egress_pool {
            IpNet::V4(_) => (IpVersion::V4, "IPv4"),
            IpNet::V6(_) => (IpVersion::V6, "IPv6"),
        };
        let mut rules = netlink.handle().rule().get(version).execute();
        let mut found = Vec::new();
        while let Some(message) = rules
            .try_next()
            .await
            .with_context(|| format!("cannot list the host's {name} routing rules"))?
        {
            let tagged = message
                .attributes
                .contains(&RuleAttribute::Protocol(RouteProtocol::Other(RULE_PROTOCOL)));
            if tagged && message.header.family == self.family() {
                let rule = parse(&message);
                found.push((message, rule));
            }
        }
        Ok(found)
    }
}

/// The rule a kernel message describes, if gatectl could have made it.
fn parse(message: &RuleMessage) -> Option<Rule> {
    let mut priority = 0;
    let mut source = None;
    let mut destination = None;
    let mut iif = None;
    let mut goto = None;
    for attribute in &message.attributes {
        match attribute {
            RuleAttribute::Priority(p) => priority = *p,
            RuleAttribute::Source(a) => source = Some(*a),
            RuleAttribute::Destination(a) => destination = Some(*a),
            RuleAttribute::Iifname(name) => iif = Some(name.as_str()),
            RuleAttribute::Goto(target) => goto = Some(*target),
            _ => {}
        }
    }
    let net = |address: IpAddr, len: u8| IpNet::new(address, len).ok();
    let selector = match (iif, source, destination) {
        (None, None, None) => Selector::All,
        (Some("lo"), None, None) => Selector::Local,
        (None, Some(a), None) => Selector::From(net(a, message.header.src_len)?),
        (None, None, Some(a)) => Selector::To(net(a, message.header.dst_len)?),
        _ => return None,
    };
    let action = match (message.header.action, goto) {
        (RuleAction::Goto, Some(target)) => Action::Goto(target),
        (RuleAction::Unreachable, None) => Action::Unreachable,
        (RuleAction::Nop, None) => Action::Nop,
        _ => return None,
    };
    Some(Rule {
        priority,
        selector,
        action,
    })
}

/// The kernel message adding `rule`, of address `family`.
fn message(rule: Rule, family: AddressFamily) -> RuleMessage {
    let mut message = RuleMessage::default();
    message.header.family = family;
    message.header.action = match rule.action {
        Action::Goto(_) => RuleAction::Goto,
        Action::Unreachable => RuleAction::Unreachable,
        Action::Nop => RuleAction::Nop,
    };
    let attributes = &mut message.attributes;
    attributes.push(RuleAttribute::Priority(rule.priority));
    attributes.push(RuleAttribute::Protocol(RouteProtocol::Other(RULE_PROTOCOL)));
    match rule.selector {
        Selector::All => {}
        Selector::Local => attributes.push(RuleAttribute::Iifname("lo".into())),
        Selector::From(net) => {
            message.header.src_len = net.prefix_len();
            attributes.push(RuleAttribute::Source(net.network()));
        }
        Selector::To(net) => {
            message.header.dst_len = net.prefix_len();
            attributes.push(RuleAttribute::Destination(net.network()));
        }
    }
    if let Action::Goto(target) = rule.action {
        attributes.push(RuleAttribute::Goto(target));
    }
    message
}

async fn add(netlink: &Netlink, rule: Rule, family: AddressFamily) -> Result<()> {
    let mut request = netlink.handle().rule().add();
    *request.message_mut() = message(rule, family);
    request.execute().await.with_context(|| {
        format!(
            "cannot add gatectl's routing rule {} (ip rule); gatectl must run as root",
            rule.priority
        )
    })
}

async fn delete(netlink: &Netlink, message: RuleMessage) -> Result<()> {
    let priority = message.attributes.iter().find_map(|a| match a {
        RuleAttribute::Priority(p) => Some(*p),
        _ => None,
    });
    match netlink.handle().rule().del(message).execute().await {
        Ok(()) => Ok(()),
        Err(e) if super::link::errno_of(&e) == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e).with_context(|| {
            format!(
                "cannot delete gatectl's routing rule {} (ip rule)",
                priority.unwrap_or_default()
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_reads_back_as_itself_and_the_jump_target_comes_first() {
        let rules = ForwardingRules {
            egress_pool: "10.232.0.0/16".parse().unwrap(),
        };
        let wanted = rules.wanted();
        assert_eq!(wanted[0].action, Action::Nop, "the goto target is added first");
        assert_eq!(wanted[4].action, Action::Unreachable, "unreachable is added last");
        for rule in wanted {
            assert_eq!(parse(&message(rule, AddressFamily::Inet)), Some(rule));
        }
        let priorities: Vec<u32> = wanted.iter().map(|r| r.priority).collect();
        assert_eq!(priorities, [1304, 1300, 1301, 1302, 1303]);
        assert!(wanted[1..4]
            .iter()
            .all(|r| r.action == Action::Goto(FIRST_PRIORITY + 4)));
    }

    #[test]
    fn rules_gatectl_does_not_make_are_not_read_as_its_own() {
        // A source and an iif at once, and a table lookup: neither is gatectl's.
        let mut both = message(
            Rule {
                priority: 1301,
                selector: Selector::From("10.232.0.0/16".parse().unwrap()),
                action: Action::Nop,
            },
            AddressFamily::Inet,
        );
        both.attributes.push(RuleAttribute::Iifname("eth0".into()));
        assert_eq!(parse(&both), None);
        let mut lookup = message(
            Rule {
                priority: 1303,
                selector: Selector::All,
                action: Action::Nop,
            },
            AddressFamily::Inet,
        );
        lookup.header.action = RuleAction::ToTable;
        assert_eq!(parse(&lookup), None);
    }

    #[test]
    fn ipv6_rules_confine_the_ipv6_egress_pool_in_an_ipv6_message() {
        let rules = ForwardingRules {
            egress_pool: "fd23:1:2::/48".parse().unwrap(),
        };
        assert_eq!(rules.family(), AddressFamily::Inet6);
        let wanted = rules.wanted();
        for rule in wanted {
            let m = message(rule, rules.family());
            assert_eq!(m.header.family, AddressFamily::Inet6);
            assert_eq!(parse(&m), Some(rule));
        }
        let from = message(wanted[2], rules.family());
        assert_eq!(from.header.src_len, 48);
        assert!(from
            .attributes
            .contains(&RuleAttribute::Source("fd23:1:2::".parse().unwrap())));
        assert_eq!(wanted[4].action, Action::Unreachable);
        assert_eq!(wanted[3].selector, Selector::To(rules.egress_pool));
    }
}
