//! Links, addresses and routes over rtnetlink, in-process (no `ip`).
//!
//! A netlink socket stays in the namespace it was opened in, so a
//! [`Netlink`] for a gate or agent namespace is opened on a dedicated thread
//! that joined that namespace, then driven from the caller's runtime.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::error::{Context, Error, Result};
use crate::net::netns;

/// A netlink connection bound to one network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

fn spawn_connection() -> Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection().context("cannot open a netlink socket")?;
    tokio::spawn(connection);
    Ok(handle)
}

/// How [`Netlink::configure`] marks a link as a gate's.
#[derive(Debug, Clone, Copy)]
pub enum Mark<'a> {
    /// Not marked.
    None,
    /// The link alias (`IFLA_IFALIAS`, shown by `ip link`).
    Alias(&'a str),
    /// The device group (`ip link … group N`), for [`Netlink::delete_group`].
    Group(u32),
}

/// One end of a veth pair to create: its name and, if not the current
/// namespace, the namespace it goes into.
pub struct VethEnd<'a> {
    /// Interface name.
    pub name: &'a str,
    /// Target namespace, or `None` for the namespace of the [`Netlink`].
    pub netns: Option<&'a OwnedFd>,
}

impl Netlink {
    /// A connection in the caller's (root) namespace. Needs a tokio runtime.
    pub fn current() -> Result<Netlink> {
        Ok(Netlink {
            handle: spawn_connection()?,
        })
    }

    /// A connection inside the namespace `ns`, opened on a short-lived
    /// thread that joined it. Needs a tokio runtime.
    pub fn in_netns(ns: &OwnedFd) -> Result<Netlink> {
        let runtime = tokio::runtime::Handle::current();
        let (connection, handle) = netns::run_in(ns, move || {
            let _guard = runtime.enter();
            let (connection, handle, _) =
                rtnetlink::new_connection().context("cannot open a netlink socket in the namespace")?;
            Ok((connection, handle))
        })?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// Creates a veth pair `a` ↔ `b`, each end in its namespace.
    pub async fn create_veth(&self, a: VethEnd<'_>, b: VethEnd<'_>) -> Result<()> {
        let mut peer = LinkUnspec::new_with_name(b.name);
        if let Some(ns) = b.netns {
            peer = peer.setns_by_fd(ns.as_raw_fd());
        }
        let mut builder: LinkMessageBuilder<LinkVeth> = LinkVeth::new(a.name, b.name);
        builder = builder.set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
        if let Some(ns) = a.netns {
            builder = builder.setns_by_fd(ns.as_raw_fd());
        }
        self.handle
            .link()
            .add(builder.build())
            .execute()
            .await
            .map_err(|e| match errno_of(&e) {
                Some(libc::EEXIST) => Error::failed(format!(
                    "cannot create veth pair {} / {}: a link of that name already exists; \
                     find its owner with `ip -d link show` (gatectl's links carry the alias gatectl:<slug>) and stop that gate",
                    a.name, b.name
                )),
                _ => Error::Netlink {
                    context: format!("cannot create veth pair {} / {}", a.name, b.name),
                    source: Box::new(e),
                },
            })
    }

    /// The message of link `name`, or `None` if there is no such link.
    pub async fn find(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot look up link {name}")),
        }
    }

    /// The alias of link `name`: `None` if there is no such link,
    /// `Some(None)` if it has no alias.
    pub async fn alias_of(&self, name: &str) -> Result<Option<Option<String>>> {
        Ok(self.find(name).await?.map(|link| {
            link.attributes.into_iter().find_map(|attr| match attr {
                LinkAttribute::IfAlias(alias) => Some(alias),
                _ => None,
            })
        }))
    }

    async fn index_of(&self, name: &str) -> Result<u32> {
        self.find(name)
            .await?
            .map(|l| l.header.index)
            .ok_or_else(|| Error::failed(format!("link {name} vanished while it was being set up")))
    }

    /// Sets link `name` up, after giving it `address` if one is given, and
    /// marks it with `mark`.
    pub async fn configure(&self, name: &str, address: Option<(Ipv4Addr, u8)>, mark: Mark<'_>) -> Result<()> {
        let index = self.index_of(name).await?;
        if let Some((addr, prefix)) = address {
            self.handle
                .address()
                .add(index, IpAddr::V4(addr), prefix)
                .execute()
                .await
                .with_context(|| format!("cannot add address {addr}/{prefix} to {name}"))?;
        }
        let link = LinkUnspec::new_with_index(index).up();
        self.handle
            .link()
            .set(match mark {
                Mark::Alias(alias) => link.alias(alias).build(),
                Mark::Group(group) => link.link_group(group).build(),
                Mark::None => link.build(),
            })
            .execute()
            .await
            .with_context(|| format!("cannot set link {name} up"))
    }

    /// Adds the default IPv4 route via `gateway`.
    pub async fn add_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).build();
        self.handle
            .route()
            .add(route)
            .execute()
            .await
            .with_context(|| format!("cannot add the default route via {gateway}"))
    }

    /// Deletes link `name` (and with it its veth peer). A link that is
    /// already gone is success.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let Some(link) = self.find(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot delete link {name}")),
        }
    }

    /// Deletes every link in device group `group` (and their veth peers, in
    /// whatever namespace) in one request: the kernel unregisters them in
    /// one batch, waiting for RCU once instead of once per link.
    pub async fn delete_group(&self, group: u32) -> Result<()> {
        let mut request = self.handle.link().del(0);
        request.message_mut().attributes.push(LinkAttribute::Group(group));
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot delete the links of device group {group}")),
        }
    }

    /// Every link of this namespace: index, name and alias.
    async fn all_links(&self) -> Result<Vec<(u32, String, Option<String>)>> {
        let mut links = self.handle.link().get().execute();
        let mut found = Vec::new();
        while let Some(link) = links.try_next().await.context("cannot list links")? {
            let mut name = None;
            let mut alias = None;
            for attr in link.attributes {
                match attr {
                    LinkAttribute::IfName(n) => name = Some(n),
                    LinkAttribute::IfAlias(a) => alias = Some(a),
                    _ => {}
                }
            }
            if let Some(name) = name {
                found.push((link.header.index, name, alias));
            }
        }
        Ok(found)
    }

    /// Names and aliases of the links whose name starts with `prefix`.
    pub async fn links_with_prefix(&self, prefix: &str) -> Result<Vec<(String, Option<String>)>> {
        Ok(self
            .all_links()
            .await?
            .into_iter()
            .filter(|(_, name, _)| name.starts_with(prefix))
            .map(|(_, name, alias)| (name, alias))
            .collect())
    }

    /// Refuses `pool` if an IPv4 route of this namespace (other than a
    /// default route, or one through a link named with an `own_prefixes`
    /// prefix) overlaps it. Reads every route and link.
    pub async fn check_pool_free(&self, setting: &str, pool: Ipv4Net, own_prefixes: &[&str]) -> Result<()> {
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut dump = Vec::new();
        while let Some(route) = routes.try_next().await.context("cannot list the host's routes")? {
            dump.push(route);
        }
        // Links are listed after the routes: a route through a link that a
        // concurrent start just created is recognised as a gate's, and one
        // through a link deleted since is stale.
        let links = self.all_links().await?;
        let is_own_or_gone = |oif: u32| match links.iter().find(|(i, _, _)| *i == oif) {
            Some((_, name, _)) => own_prefixes.iter().any(|p| name.starts_with(p)),
            None => true,
        };
        for route in dump {
            let Some((net, oif)) = destination(&route) else {
                continue;
            };
            if oif.is_some_and(is_own_or_gone) {
                continue;
            }
            if pool.contains(&net) || net.contains(&pool) {
                return Err(overlap(setting, pool, net));
            }
        }
        Ok(())
    }

    /// Refuses `pool` if a route that [`Netlink::check_pool_free`] would
    /// refuse it for covers one of `addresses` (taken from `pool`): one FIB
    /// lookup per address, not a dump, so the cost does not grow with the
    /// number of routes. A lookup that ends in an unreachable, prohibit or
    /// blackhole route, whose extent the kernel does not report, falls back
    /// to [`Netlink::check_pool_free`].
    pub async fn check_addresses_free(
        &self,
        setting: &str,
        pool: Ipv4Net,
        addresses: &[Ipv4Addr],
        own_prefixes: &[&str],
    ) -> Result<()> {
        for &address in addresses {
            let route = match self.fib_match(address).await? {
                FibMatch::Nothing => continue,
                FibMatch::Unreported => return self.check_pool_free(setting, pool, own_prefixes).await,
                FibMatch::Route(route) => route,
            };
            let Some((net, oif)) = destination(&route) else {
                continue;
            };
            if let Some(oif) = oif {
                let own_or_gone = match self.name_of(oif).await? {
                    Some(name) => own_prefixes.iter().any(|p| name.starts_with(p)),
                    None => true,
                };
                if own_or_gone {
                    continue;
                }
            }
            return Err(overlap(setting, pool, net));
        }
        Ok(())
    }

    /// The route the kernel's FIB matches for `address`, like `ip route get
    /// fibmatch`: a lookup, not a dump.
    async fn fib_match(&self, address: Ipv4Addr) -> Result<FibMatch> {
        let mut request = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(address, 32)
            .build();
        request.header.flags = RouteFlags::FibMatch;
        let mut answer = self.handle.route().get(request).execute();
        match answer.try_next().await {
            Ok(Some(route)) => Ok(FibMatch::Route(route)),
            Ok(None) => Ok(FibMatch::Unreported),
            Err(e) => match errno_of(&e) {
                Some(libc::ENETUNREACH) => Ok(FibMatch::Nothing),
                Some(libc::EHOSTUNREACH | libc::EACCES | libc::EINVAL) => Ok(FibMatch::Unreported),
                _ => Err(e).with_context(|| format!("cannot look up the host's route to {address}")),
            },
        }
    }

    /// The name of the link with index `index`, or `None` if there is none.
    async fn name_of(&self, index: u32) -> Result<Option<String>> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(link) => Ok(link.and_then(|link| {
                link.attributes.into_iter().find_map(|attr| match attr {
                    LinkAttribute::IfName(name) => Some(name),
                    _ => None,
                })
            })),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot look up link {index}")),
        }
    }
}

/// What the FIB matches for one address.
enum FibMatch {
    /// No route at all.
    Nothing,
    /// A route the kernel does not report: an unreachable, prohibit or
    /// blackhole route (answered with an error, not the route).
    Unreported,
    /// This route.
    Route(RouteMessage),
}

/// The destination of `route` unless it is a default route, and the index
/// of its output link if it has one.
fn destination(route: &RouteMessage) -> Option<(Ipv4Net, Option<u32>)> {
    let len = route.header.destination_prefix_length;
    let mut dest = None;
    let mut oif = None;
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dest = Some(*a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let net = Ipv4Net::new(dest?, len).ok().filter(|_| len > 0)?;
    Some((net, oif))
}

/// The refusal of `pool`, the value of `setting`, for overlapping `net`.
fn overlap(setting: &str, pool: Ipv4Net, net: Ipv4Net) -> Error {
    Error::invalid(format!(
        "{setting} {pool} overlaps the host route {net}; choose a free range for {setting} in /etc/gatectl/gatectl.toml"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::route::RouteType;

    /// Runs `body` with a [`Netlink`] in a fresh network namespace of its
    /// own thread (root only: skipped otherwise, failing under `CI`).
    fn in_private_netns<F: std::future::Future<Output = ()>>(
        name: &str,
        body: impl FnOnce(Netlink) -> F + Send + 'static,
    ) {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var_os("CI").is_none(),
                "{name} needs root; CI requires it"
            );
            eprintln!("skipping {name}: not root");
            return;
        }
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move { body(Netlink::current().unwrap()).await });
        })
        .join()
        .unwrap();
    }

    async fn add_route(netlink: &Netlink, route: RouteMessage) {
        netlink.handle.route().add(route).execute().await.unwrap();
    }

    /// What [`Netlink::check_addresses_free`] says of `addr` in the pool
    /// 10.232.0.0/16.
    async fn check(netlink: &Netlink, addr: [u8; 4], own: &[&str]) -> std::result::Result<(), String> {
        let pool: Ipv4Net = "10.232.0.0/16".parse().unwrap();
        netlink
            .check_addresses_free("egress_pool", pool, &[Ipv4Addr::from(addr)], own)
            .await
            .map_err(|e| e.to_string())
    }

    #[test]
    fn address_lookups_refuse_what_the_pool_dump_refuses() {
        in_private_netns("address_lookups", |netlink| async move {
            // No route at all.
            assert_eq!(check(&netlink, [10, 232, 0, 6], &["gte"]).await, Ok(()));

            let veth = |name| VethEnd { name, netns: None };
            netlink.create_veth(veth("eth0"), veth("eth1")).await.unwrap();
            netlink
                .configure("eth0", Some((Ipv4Addr::new(192, 168, 5, 1), 24)), Mark::None)
                .await
                .unwrap();
            netlink
                .add_default_route(Ipv4Addr::new(192, 168, 5, 2))
                .await
                .unwrap();
            assert_eq!(check(&netlink, [10, 232, 0, 6], &["gte"]).await, Ok(()));

            // A gate's own link, and a foreign route.
            netlink.create_veth(veth("gte3"), veth("peer3")).await.unwrap();
            netlink
                .configure("gte3", Some((Ipv4Addr::new(10, 232, 0, 6), 31)), Mark::None)
                .await
                .unwrap();
            assert_eq!(check(&netlink, [10, 232, 0, 7], &["gte"]).await, Ok(()));
            let eth0 = netlink.index_of("eth0").await.unwrap();
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(Ipv4Addr::new(10, 232, 7, 0), 24)
                .output_interface(eth0)
                .build();
            add_route(&netlink, route).await;
            let overlap = "egress_pool 10.232.0.0/16 overlaps the host route 10.232.7.0/24; \
                           choose a free range for egress_pool in /etc/gatectl/gatectl.toml";
            assert_eq!(
                check(&netlink, [10, 232, 7, 9], &["gte"]).await,
                Err(overlap.into())
            );
            assert_eq!(check(&netlink, [10, 232, 0, 8], &["gte"]).await, Ok(()));
            // Only the gate's own prefixes count as its own.
            let err = check(&netlink, [10, 232, 0, 7], &["gti"]).await.unwrap_err();
            assert!(err.contains("overlaps the host route 10.232.0.6/31"), "{err}");

            // The kernel reports no route for an unreachable one: the whole
            // pool is checked instead.
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(Ipv4Addr::new(10, 232, 8, 0), 24)
                .kind(RouteType::Unreachable)
                .build();
            add_route(&netlink, route).await;
            let err = check(&netlink, [10, 232, 8, 1], &["gte"]).await.unwrap_err();
            assert!(err.contains("overlaps the host route 10.232."), "{err}");
            let pool = "10.232.0.0/16".parse().unwrap();
            let dump = netlink
                .check_pool_free("egress_pool", pool, &["gte"])
                .await
                .unwrap_err();
            assert!(
                dump.to_string().contains("overlaps the host route 10.232."),
                "{dump}"
            );
        });
    }
}
