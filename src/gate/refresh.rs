//! The DNS refresh: running gates follow their upstream names. Run by
//! `gatectl refresh` (from `gatectl-refresh.timer`, one short process for
//! the whole host, none per gate), it re-resolves the names of each running
//! gate whose last answer expired (its TTL, held between
//! `dns_refresh_min_secs` and `dns_refresh_max_secs`) and moves the gate to
//! new addresses in place, through the same steps as a reload: the
//! allowlists and the forwarder's routes change together, new connections
//! use the new addresses, and sessions to an address that is no longer
//! returned go on until they end.
//!
//! A failed resolution, or an answer gatectl would refuse at start (an
//! address the policy refuses, or none a gate can reach), keeps the last
//! good addresses and warns: the refresh never empties an allowlist.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use super::reload::apply_in_place;
use super::Host;
use crate::error::{Error, Result};
use crate::lock;
use crate::plan::GatePlan;
use crate::policy;
use crate::resolve::{self, Answer};
use crate::slug::Slug;
use crate::systemd::Systemd;

/// How long one name may take to resolve; a refresh is one short run for
/// every gate of the host.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The answers of one refresh run by name (an error as its message).
type Answers = HashMap<String, std::result::Result<Answer, String>>;

/// What the refresh did to one gate.
#[derive(Debug)]
pub struct Refreshed {
    /// The gate.
    pub slug: Slug,
    /// One line per name whose addresses changed: `name: old -> new`.
    pub changes: Vec<String>,
    /// One line per name whose answer was not used, and why.
    pub warnings: Vec<String>,
}

/// The addresses `host` gets from `answer`: the answer's, less those the
/// policy refuses and, for a gate without IPv6 egress (`ipv6` false), its
/// IPv6 ones (the gate stays IPv4 until restarted), unless nothing usable
/// is left, then `old`. The second value says why an answer (or part of
/// it) was not used.
pub fn addresses_from(
    host: &str,
    old: &[IpAddr],
    answer: &Result<Answer>,
    ipv6: bool,
    refused: impl Fn(IpAddr) -> Option<String>,
) -> (Vec<IpAddr>, Vec<String>) {
    let shown = |addresses: &[IpAddr]| {
        addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let keep = |why: String| (old.to_vec(), vec![format!("{why}; keeping {}", shown(old))]);
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => return keep(e.to_string()),
    };
    let mut warnings = Vec::new();
    let mut usable = Vec::new();
    for address in answer.addresses.iter().filter(|a| ipv6 || a.is_ipv4()) {
        match refused(*address) {
            Some(reason) => warnings.push(format!("{host} resolves to {address}, which {reason}; not used")),
            None => usable.push(*address),
        }
    }
    if usable.is_empty() {
        return keep(format!(
            "{host} resolves to no address a gate can use ({})",
            shown(&answer.addresses)
        ));
    }
    (usable, warnings)
}

impl Host {
    /// Refreshes the names of every running gate whose answers expired (or
    /// of every running gate with `force`). Gates that failed are reported
    /// in their [`Refreshed`] warnings; the others are refreshed still.
    pub async fn refresh(&self, force: bool) -> Result<Vec<Refreshed>> {
        let systemd = Systemd::connect().await?;
        let resolver = resolve::system_resolver()?;
        // One answer per name and run, however many gates use the name.
        let mut answers = Answers::new();
        let mut done = Vec::new();
        for slug in self.records.slugs() {
            let now = SystemTime::now();
            if !force && self.records.refresh_due(&slug).is_some_and(|due| due > now) {
                continue;
            }
            let _slug_lock = lock::lock_slug(&self.settings.state_dir, &slug)?;
            let Some(record) = self.records.load(&slug).ok().flatten().filter(|r| r.complete) else {
                continue;
            };
            if !self.running(&systemd, &record.plan).await? {
                continue;
            }
            let mut refreshed = Refreshed {
                slug: slug.clone(),
                changes: Vec::new(),
                warnings: Vec::new(),
            };
            let (new, ttl) = self
                .resolved(&resolver, &mut answers, &record.plan, &mut refreshed)
                .await;
            if let Some(ttl) = ttl {
                self.records
                    .set_refresh_due(&slug, now + self.settings.dns_refresh_after(ttl))?;
            }
            if new != record.plan {
                if let Err(e) = apply_in_place(self, &systemd, &record, &new).await {
                    refreshed.warnings.push(e.to_string());
                    refreshed.changes.clear();
                }
            }
            if !refreshed.changes.is_empty() || !refreshed.warnings.is_empty() {
                done.push(refreshed);
            }
        }
        Ok(done)
    }

    /// Schedules the first refresh of `slug`'s names, which `start` or
    /// `reload` just resolved (without a TTL): after the floor.
    pub(crate) fn schedule_refresh(&self, slug: &Slug) -> Result<()> {
        let floor = Duration::from_secs(self.settings.dns_refresh_min_secs.into());
        self.records.set_refresh_due(slug, SystemTime::now() + floor)
    }

    /// `plan` with each named upstream's addresses resolved again, and the
    /// smallest TTL of the answers (`None` when the plan names no host).
    async fn resolved(
        &self,
        resolver: &hickory_resolver::TokioResolver,
        answers: &mut Answers,
        plan: &GatePlan,
        refreshed: &mut Refreshed,
    ) -> (GatePlan, Option<Duration>) {
        let mut new = plan.clone();
        let mut ttl: Option<Duration> = None;
        for upstream in &mut new.upstreams {
            if upstream.host.parse::<IpAddr>().is_ok() {
                continue;
            }
            if !answers.contains_key(&upstream.host) {
                let lookup = resolve::resolve_with_ttl(resolver, &upstream.host);
                let answer = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
                    Ok(answer) => answer.map_err(|e| e.to_string()),
                    Err(_) => Err(format!(
                        "cannot resolve upstream {:?}: no answer within {}s",
                        upstream.host,
                        LOOKUP_TIMEOUT.as_secs()
                    )),
                };
                answers.insert(upstream.host.clone(), answer);
            }
            let answer = answers[&upstream.host].clone().map_err(Error::failed);
            let ipv6 = plan.egress6.is_some();
            let (addresses, warnings) =
                addresses_from(&upstream.host, &upstream.addresses, &answer, ipv6, |a| {
                    policy::refusal(a, &self.settings)
                });
            let expires = answer.as_ref().map_or(Duration::ZERO, |a| a.ttl);
            ttl = Some(ttl.map_or(expires, |t| t.min(expires)));
            for warning in warnings {
                if !refreshed.warnings.contains(&warning) {
                    refreshed.warnings.push(warning);
                }
            }
            if addresses != upstream.addresses {
                let change = format!(
                    "{}: {} -> {}",
                    upstream.host,
                    listed(&upstream.addresses),
                    listed(&addresses)
                );
                if !refreshed.changes.contains(&change) {
                    refreshed.changes.push(change);
                }
                upstream.addresses = addresses;
            }
        }
        (new, ttl)
    }
}

/// Addresses as `a, b`.
fn listed(addresses: &[IpAddr]) -> String {
    addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn answer(list: &[&str]) -> Result<Answer> {
        Ok(Answer {
            addresses: ips(list),
            ttl: Duration::from_secs(60),
        })
    }

    fn no_refusal(_: IpAddr) -> Option<String> {
        None
    }

    #[test]
    fn a_new_answer_replaces_the_addresses() {
        let old = ips(&["192.0.2.1"]);
        assert_eq!(
            addresses_from("h", &old, &answer(&["192.0.2.2", "192.0.2.3"]), false, no_refusal),
            (ips(&["192.0.2.2", "192.0.2.3"]), vec![])
        );
    }

    #[test]
    fn a_failed_or_unusable_answer_keeps_the_last_good_addresses() {
        let old = ips(&["192.0.2.1"]);
        let failed = Err(Error::failed("cannot resolve upstream \"h\": timed out"));
        assert_eq!(
            addresses_from("h", &old, &failed, false, no_refusal),
            (
                old.clone(),
                vec!["cannot resolve upstream \"h\": timed out; keeping 192.0.2.1".to_string()]
            )
        );
        assert_eq!(
            addresses_from("h", &old, &answer(&["2001:db8::1"]), false, no_refusal),
            (
                old.clone(),
                vec!["h resolves to no address a gate can use (2001:db8::1); keeping 192.0.2.1".to_string()]
            )
        );
        let loopback = |a: IpAddr| a.is_loopback().then(|| "is a loopback address".to_string());
        assert_eq!(
            addresses_from("h", &old, &answer(&["127.0.0.1"]), false, loopback),
            (
                old.clone(),
                vec!["h resolves to no address a gate can use (127.0.0.1); keeping 192.0.2.1".to_string()]
            )
        );
    }

    #[test]
    fn a_gate_with_ipv6_egress_takes_ipv6_answers_and_one_without_leaves_them_out() {
        let old = ips(&["192.0.2.1"]);
        let dual = answer(&["192.0.2.2", "2001:db8::2"]);
        assert_eq!(
            addresses_from("h", &old, &dual, true, no_refusal),
            (ips(&["192.0.2.2", "2001:db8::2"]), vec![])
        );
        assert_eq!(
            addresses_from("h", &old, &dual, false, no_refusal),
            (ips(&["192.0.2.2"]), vec![])
        );
        assert_eq!(
            addresses_from("h", &old, &answer(&["2001:db8::2"]), true, no_refusal),
            (ips(&["2001:db8::2"]), vec![])
        );
    }

    #[test]
    fn a_refused_address_is_left_out_of_an_answer_that_has_others() {
        let old = ips(&["192.0.2.1"]);
        let loopback = |a: IpAddr| a.is_loopback().then(|| "is a loopback address".to_string());
        assert_eq!(
            addresses_from("h", &old, &answer(&["127.0.0.1", "192.0.2.9"]), false, loopback),
            (
                ips(&["192.0.2.9"]),
                vec!["h resolves to 127.0.0.1, which is a loopback address; not used".to_string()]
            )
        );
    }
}
