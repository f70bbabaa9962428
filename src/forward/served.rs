//! The routes a running forwarder serves, by listen port, and how a reload
//! changes them in place: an added route gets a listener (bound here, since
//! the socket unit's listeners are fixed when the gate starts), a changed
//! one serves new connections with its new upstreams, an unchanged one is
//! left alone with its sessions, and a removed one stops accepting and has
//! its sessions cut. A listener is kept for the forwarder's life once it is
//! held (systemd keeps its copy of a passed one anyway), so a port removed
//! and added again is served by the same socket; the gate netns's table
//! refuses connections to a port that is not a route.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{Id, JoinSet};

use super::accept::{accept_loop, Ends, Forwarder};
use super::route::ForwardRoute;
use crate::error::{Context, Error, Result};

/// One served route: what its accept loop and connections watch, and the
/// loop's task.
struct ServedRoute {
    route: watch::Sender<Arc<ForwardRoute>>,
    revoked: watch::Sender<bool>,
    task: Id,
}

/// The served routes of one forwarder and their accept loops.
pub struct Served {
    slug: String,
    listen: IpAddr,
    forwarder: Arc<Forwarder>,
    stop: watch::Receiver<bool>,
    routes: BTreeMap<u16, ServedRoute>,
    listeners: BTreeMap<u16, Arc<TcpListener>>,
    /// Ports whose listener was bound here rather than passed by systemd.
    bound_here: usize,
    loops: JoinSet<u16>,
}

impl Served {
    /// Nothing served yet; `stop` turns true when the forwarder stops.
    pub fn new(slug: &str, listen: IpAddr, forwarder: Arc<Forwarder>, stop: watch::Receiver<bool>) -> Served {
        Served {
            slug: slug.to_string(),
            listen,
            forwarder,
            stop,
            routes: BTreeMap::new(),
            listeners: BTreeMap::new(),
            bound_here: 0,
            loops: JoinSet::new(),
        }
    }

    /// How many routes are served.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Keeps `listener` (a socket systemd passed) for a route that may come
    /// later; a route on its port is served by it.
    pub fn hold(&mut self, listener: TcpListener) -> Result<()> {
        let port = listener
            .local_addr()
            .context("reading a listener's address")?
            .port();
        self.listeners.insert(port, Arc::new(listener));
        Ok(())
    }

    /// Serves `route`, on the listener held for its port or on a new one.
    /// Fails, naming the address, if the port cannot be bound.
    pub async fn serve(&mut self, route: ForwardRoute) -> Result<()> {
        let listener = self.listener(&route).await?;
        self.spawn(listener, route);
        Ok(())
    }

    /// The listener held for `route`'s port, or a new one bound to it.
    async fn listener(&mut self, route: &ForwardRoute) -> Result<Arc<TcpListener>> {
        if let Some(listener) = self.listeners.get(&route.listen_port) {
            return Ok(Arc::clone(listener));
        }
        let addr = SocketAddr::new(self.listen, route.listen_port);
        let listener = Arc::new(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr} for route {}", route.alias))?,
        );
        self.listeners.insert(route.listen_port, Arc::clone(&listener));
        self.bound_here += 1;
        Ok(listener)
    }

    /// Whether a listener was bound here (a route the socket unit has no
    /// socket for): only this process listens on that port, so it must not
    /// exit while the gate runs.
    pub fn binds_its_own(&self) -> bool {
        self.bound_here > 0
    }

    /// Starts the accept loop of `route` on `listener`.
    fn spawn(&mut self, listener: Arc<TcpListener>, route: ForwardRoute) {
        let upstreams: Vec<String> = route.upstreams.iter().map(ToString::to_string).collect();
        let addr = SocketAddr::new(self.listen, route.listen_port);
        tracing::info!(
            slug = self.slug,
            alias = route.alias.as_str(),
            listen = %addr,
            "listening on {addr} for {}, forwarding to {}",
            route.alias,
            upstreams.join(" or "),
        );
        self.forwarder.count_entry(route.alias.as_str());
        let port = route.listen_port;
        let (route_tx, route_rx) = watch::channel(Arc::new(route));
        let (revoked_tx, revoked_rx) = watch::channel(false);
        let ends = Ends {
            stop: self.stop.clone(),
            revoked: revoked_rx,
        };
        let task = self
            .loops
            .spawn(accept_loop(listener, route_rx, Arc::clone(&self.forwarder), ends))
            .id();
        self.routes.insert(
            port,
            ServedRoute {
                route: route_tx,
                revoked: revoked_tx,
                task,
            },
        );
    }

    /// Makes `routes` the served routes. Every added route is bound before
    /// anything changes, so a port that cannot be bound leaves the old
    /// routes served and fails naming it. Returns one line per change.
    pub async fn apply(&mut self, routes: &[ForwardRoute]) -> Result<Vec<String>> {
        let mut added = Vec::new();
        for route in routes {
            if !self.routes.contains_key(&route.listen_port) {
                added.push((self.listener(route).await?, route.clone()));
            }
        }
        let mut changes = Vec::new();
        let wanted: BTreeMap<u16, &ForwardRoute> = routes.iter().map(|r| (r.listen_port, r)).collect();
        let removed: Vec<u16> = self
            .routes
            .keys()
            .filter(|port| !wanted.contains_key(port))
            .copied()
            .collect();
        for port in removed {
            let served = self.routes.remove(&port).expect("listed above");
            let alias = served.route.borrow().alias.clone();
            served.revoked.send_replace(true);
            changes.push(format!(
                "removed {alias} (port {port}): stopped listening, its sessions cut"
            ));
        }
        for (port, served) in &self.routes {
            let new = wanted[port];
            if **served.route.borrow() != *new {
                let old = Arc::clone(&served.route.borrow());
                served.route.send_replace(Arc::new(new.clone()));
                changes.push(format!(
                    "changed {} (port {port}): {} -> {}",
                    new.alias,
                    upstream_list(&old),
                    upstream_list(new)
                ));
            }
        }
        for (listener, route) in added {
            changes.push(format!(
                "added {} (port {}): forwarding to {}",
                route.alias,
                route.listen_port,
                upstream_list(&route)
            ));
            self.spawn(listener, route);
        }
        Ok(changes)
    }

    /// Waits for an accept loop to end. One of a revoked route is expected
    /// and waited past; any other (or a panic) is returned as an error, so
    /// that systemd restarts the forwarder. Pending forever when no loop runs.
    pub async fn loop_ended(&mut self) -> Error {
        loop {
            let current = |port: u16, id: Id| self.routes.get(&port).is_some_and(|r| r.task == id);
            match self.loops.join_next_with_id().await {
                Some(Ok((id, port))) if !current(port, id) || *self.stop.borrow() => continue,
                Some(ended) => {
                    return Error::failed(format!(
                        "an accept loop of the forwarder ended unexpectedly: {ended:?}"
                    ))
                }
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Stops every accept loop where it is, without accepting again
    /// (connections not accepted yet stay queued in the listening sockets).
    /// Synchronous: on the forwarder's one-thread runtime no accept happens
    /// between the caller's last check and this.
    pub fn stop_accepting(&mut self) {
        self.loops.abort_all();
    }

    /// Waits until every accept loop has returned (after stop).
    pub async fn join(&mut self) {
        while self.loops.join_next().await.is_some() {}
    }
}

/// A route's upstreams as `a or b`.
fn upstream_list(route: &ForwardRoute) -> String {
    let upstreams: Vec<String> = route.upstreams.iter().map(ToString::to_string).collect();
    upstreams.join(" or ")
}
