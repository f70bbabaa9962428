//! Links, addresses and routes over rtnetlink, in-process (no `ip`).
//!
//! A netlink socket stays in the namespace it was opened in, so a
//! [`Netlink`] for a gate or agent namespace is opened on a dedicated thread
//! that joined that namespace, then driven from the caller's runtime.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net};
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

/// The errno of a netlink error answer, if it is one.
pub(crate) fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
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

/// One end of a veth pair to create: its name, its device group and, if not
/// the current namespace, the namespace it goes into.
pub struct VethEnd<'a> {
    /// Interface name.
    pub name: &'a str,
    /// Device group (`ip link … group N`), set in the creating message
    /// itself, so the link never exists without it.
    pub group: u32,
    /// Target namespace, or `None` for the namespace of the [`Netlink`].
    pub netns: Option<&'a OwnedFd>,
}

/// A link as [`Netlink::links_in_groups`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface name.
    pub name: String,
    /// Its alias (`IFLA_IFALIAS`), if any.
    pub alias: Option<String>,
    /// Its device group.
    pub group: u32,
}

/// What [`Netlink::create_veth`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The pair exists now.
    Yes,
    /// A link of one of the two names exists already; nothing was created.
    NameTaken,
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

    /// The rtnetlink handle, for requests of other modules (`super::rule`).
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Creates a veth pair `a` ↔ `b`, each end in its namespace and device
    /// group.
    pub async fn create_veth(&self, a: VethEnd<'_>, b: VethEnd<'_>) -> Result<Created> {
        let mut peer = LinkUnspec::new_with_name(b.name).link_group(b.group);
        if let Some(ns) = b.netns {
            peer = peer.setns_by_fd(ns.as_raw_fd());
        }
        let mut builder: LinkMessageBuilder<LinkVeth> = LinkVeth::new(a.name, b.name).link_group(a.group);
        builder = builder.set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
        if let Some(ns) = a.netns {
            builder = builder.setns_by_fd(ns.as_raw_fd());
        }
        match self.handle.link().add(builder.build()).execute().await {
            Ok(()) => Ok(Created::Yes),
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => Ok(Created::NameTaken),
            Err(e) => Err(e).with_context(|| format!("cannot create veth pair {} / {}", a.name, b.name)),
        }
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

    async fn index_of(&self, name: &str) -> Result<u32> {
        self.find(name)
            .await?
            .map(|l| l.header.index)
            .ok_or_else(|| Error::failed(format!("link {name} vanished while it was being set up")))
    }

    /// Sets link `name` up, after giving it `address` if one is given, and
    /// the alias `alias` if one is given.
    pub async fn configure(
        &self,
        name: &str,
        address: Option<(Ipv4Addr, u8)>,
        alias: Option<&str>,
    ) -> Result<()> {
        let index = self.index_of(name).await?;
        if let Some((addr, prefix)) = address {
            self.handle
                .address()
                .add(index, IpAddr::V4(addr), prefix)
                .execute()
                .await
                .with_context(|| format!("cannot add address {addr}/{prefix} to {name}"))?;
        }
        let mut link = LinkUnspec::new_with_index(index).up();
        if let Some(alias) = alias {
            link = link.alias(alias);
        }
        self.handle
            .link()
            .set(link.build())
            .execute()
            .await
            .with_context(|| format!("cannot set link {name} up"))
    }

    /// Adds the IPv6 address `address`/`prefix` to link `name` (duplicate
    /// address detection is off on gatectl's links, see `net::sysctl`).
    pub async fn add_address6(&self, name: &str, address: Ipv6Addr, prefix: u8) -> Result<()> {
        let index = self.index_of(name).await?;
        self.handle
            .address()
            .add(index, IpAddr::V6(address), prefix)
            .execute()
            .await
            .with_context(|| format!("cannot add address {address}/{prefix} to {name}"))
    }

    /// Adds the default IPv6 route via `gateway`, on link `name`.
    pub async fn add_default_route6(&self, name: &str, gateway: Ipv6Addr) -> Result<()> {
        let index = self.index_of(name).await?;
        let route = RouteMessageBuilder::<Ipv6Addr>::new()
            .gateway(gateway)
            .output_interface(index)
            .build();
        self.handle
            .route()
            .add(route)
            .execute()
            .await
            .with_context(|| format!("cannot add the IPv6 default route via {gateway}"))
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

    /// Every link of this namespace, with its index.
    async fn all_links(&self) -> Result<Vec<(u32, LinkInfo)>> {
        let mut links = self.handle.link().get().execute();
        let mut found = Vec::new();
        while let Some(link) = links.try_next().await.context("cannot list links")? {
            let index = link.header.index;
            if let Some(info) = link_info(link) {
                found.push((index, info));
            }
        }
        Ok(found)
    }

    /// The links in any of the device groups `groups`.
    pub async fn links_in_groups(&self, groups: &[u32]) -> Result<Vec<LinkInfo>> {
        Ok(self
            .all_links()
            .await?
            .into_iter()
            .map(|(_, info)| info)
            .filter(|info| groups.contains(&info.group))
            .collect())
    }

    /// Link `name` as [`Netlink::links_in_groups`] would list it, or `None`
    /// if there is no such link.
    pub async fn info(&self, name: &str) -> Result<Option<LinkInfo>> {
        Ok(self.find(name).await?.and_then(link_info))
    }

    /// The first route of this namespace, of `pool`'s address family, that
    /// overlaps `pool`, other than a default route or one through a link in
    /// a device group of `own_groups` (gatectl's own links). Reads every
    /// route and link.
    pub async fn route_overlapping(&self, pool: IpNet, own_groups: &[u32]) -> Result<Option<IpNet>> {
        let request = match pool {
            IpNet::V4(_) => RouteMessageBuilder::<Ipv4Addr>::new().build(),
            IpNet::V6(_) => RouteMessageBuilder::<Ipv6Addr>::new().build(),
        };
        let mut routes = self.handle.route().get(request).execute();
        let mut dump = Vec::new();
        while let Some(route) = routes.try_next().await.context("cannot list the host's routes")? {
            dump.push(route);
        }
        // Links are listed after the routes: a route through a link that a
        // concurrent start just created is recognised as a gate's, and one
        // through a link deleted since is stale.
        let links = self.all_links().await?;
        let is_own_or_gone = |oif: u32| match links.iter().find(|(i, _)| *i == oif) {
            Some((_, info)) => own_groups.contains(&info.group),
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
                return Ok(Some(net));
            }
        }
        Ok(None)
    }

    /// What [`Netlink::route_overlapping`] would find of `pool`, looking
    /// only at the routes that cover one of `addresses` (taken from `pool`):
    /// one FIB lookup per address, not a dump, so the cost does not grow
    /// with the number of routes. A lookup that ends in an unreachable,
    /// prohibit or blackhole route, whose extent the kernel does not
    /// report, falls back to the dump.
    pub async fn route_covering(
        &self,
        pool: Ipv4Net,
        addresses: &[Ipv4Addr],
        own_groups: &[u32],
    ) -> Result<Option<IpNet>> {
        for &address in addresses {
            let route = match self.fib_match(address).await? {
                FibMatch::Nothing => continue,
                FibMatch::Unreported => return self.route_overlapping(pool.into(), own_groups).await,
                FibMatch::Route(route) => route,
            };
            let Some((net, oif)) = destination(&route) else {
                continue;
            };
            if let Some(oif) = oif {
                let own_or_gone = match self.group_of(oif).await? {
                    Some(group) => own_groups.contains(&group),
                    None => true,
                };
                if own_or_gone {
                    continue;
                }
            }
            return Ok(Some(net));
        }
        Ok(None)
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

    /// The device group of the link with index `index`, or `None` if there
    /// is no such link.
    async fn group_of(&self, index: u32) -> Result<Option<u32>> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(link) => Ok(link.and_then(link_info).map(|info| info.group)),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot look up link {index}")),
        }
    }
}

/// Name, alias and group of a link message; `None` without a name.
fn link_info(link: LinkMessage) -> Option<LinkInfo> {
    let mut name = None;
    let mut alias = None;
    let mut group = 0;
    for attr in link.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n),
            LinkAttribute::IfAlias(a) => alias = Some(a),
            LinkAttribute::Group(g) => group = g,
            _ => {}
        }
    }
    Some(LinkInfo {
        name: name?,
        alias,
        group,
    })
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
fn destination(route: &RouteMessage) -> Option<(IpNet, Option<u32>)> {
    let len = route.header.destination_prefix_length;
    let mut dest = None;
    let mut oif = None;
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dest = Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dest = Some(IpAddr::V6(*a)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let net = IpNet::new(dest?, len).ok().filter(|_| len > 0)?;
    Some((net, oif))
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

    const OURS: u32 = 232;

    /// What [`Netlink::route_covering`] finds for `addr` in the pool
    /// 10.232.0.0/16, with gatectl's links in group [`OURS`].
    async fn covering(netlink: &Netlink, addr: [u8; 4]) -> Option<String> {
        let pool: Ipv4Net = "10.232.0.0/16".parse().unwrap();
        netlink
            .route_covering(pool, &[Ipv4Addr::from(addr)], &[OURS])
            .await
            .unwrap()
            .map(|net| net.to_string())
    }

    #[test]
    fn address_lookups_find_what_the_pool_dump_finds_and_only_gatectls_links_are_its_own() {
        in_private_netns("address_lookups", |netlink| async move {
            // No route at all.
            assert_eq!(covering(&netlink, [10, 232, 0, 6]).await, None);

            let veth = |name, group| VethEnd {
                name,
                group,
                netns: None,
            };
            let created = netlink
                .create_veth(veth("eth0", 0), veth("eth1", 0))
                .await
                .unwrap();
            assert_eq!(created, Created::Yes);
            assert_eq!(
                netlink
                    .create_veth(veth("eth0", 0), veth("eth9", 0))
                    .await
                    .unwrap(),
                Created::NameTaken
            );
            netlink
                .configure("eth0", Some((Ipv4Addr::new(192, 168, 5, 1), 24)), None)
                .await
                .unwrap();
            netlink
                .add_default_route(Ipv4Addr::new(192, 168, 5, 2))
                .await
                .unwrap();
            assert_eq!(covering(&netlink, [10, 232, 0, 6]).await, None);

            // gatectl's link (its group, set at creation), and a foreign
            // link whose name looks like one of gatectl's.
            netlink
                .create_veth(veth("gte3", OURS), veth("peer3", 0))
                .await
                .unwrap();
            netlink
                .configure(
                    "gte3",
                    Some((Ipv4Addr::new(10, 232, 0, 6), 31)),
                    Some("gatectl:alice"),
                )
                .await
                .unwrap();
            let gte3 = netlink.info("gte3").await.unwrap().unwrap();
            assert_eq!(
                gte3,
                LinkInfo {
                    name: "gte3".into(),
                    alias: Some("gatectl:alice".into()),
                    group: OURS
                }
            );
            assert_eq!(covering(&netlink, [10, 232, 0, 7]).await, None);
            netlink
                .create_veth(veth("gtether0", 0), veth("peer4", 0))
                .await
                .unwrap();
            netlink
                .configure("gtether0", Some((Ipv4Addr::new(10, 232, 9, 0), 24)), None)
                .await
                .unwrap();
            assert_eq!(
                covering(&netlink, [10, 232, 9, 1]).await.as_deref(),
                Some("10.232.9.0/24")
            );
            let listed = netlink.links_in_groups(&[OURS]).await.unwrap();
            assert_eq!(listed, [gte3]);

            // A foreign route.
            let eth0 = netlink.index_of("eth0").await.unwrap();
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(Ipv4Addr::new(10, 232, 7, 0), 24)
                .output_interface(eth0)
                .build();
            add_route(&netlink, route).await;
            assert_eq!(
                covering(&netlink, [10, 232, 7, 9]).await.as_deref(),
                Some("10.232.7.0/24")
            );
            assert_eq!(covering(&netlink, [10, 232, 0, 8]).await, None);

            // The kernel reports no route for an unreachable one: the whole
            // pool is checked instead.
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(Ipv4Addr::new(10, 232, 8, 0), 24)
                .kind(RouteType::Unreachable)
                .build();
            add_route(&netlink, route).await;
            assert!(covering(&netlink, [10, 232, 8, 1]).await.is_some());
            let pool = "10.232.0.0/16".parse().unwrap();
            assert!(netlink.route_overlapping(pool, &[OURS]).await.unwrap().is_some());

            // IPv6: a foreign route overlaps the pool, gatectl's own does not.
            let pool6: IpNet = "fd23:1:2::/48".parse().unwrap();
            netlink
                .add_address6("gte3", "fd23:1:2::6".parse().unwrap(), 127)
                .await
                .unwrap();
            netlink.configure("gte3", None, None).await.unwrap();
            assert_eq!(netlink.route_overlapping(pool6, &[OURS]).await.unwrap(), None);
            let route = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix("fd23:1:2:9::".parse().unwrap(), 64)
                .output_interface(eth0)
                .build();
            add_route(&netlink, route).await;
            assert_eq!(
                netlink.route_overlapping(pool6, &[OURS]).await.unwrap(),
                Some("fd23:1:2:9::/64".parse().unwrap())
            );
        });
    }
}
