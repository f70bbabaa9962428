//! Accepting connections: the shared connection limit, one accept loop per
//! listener, and the task that serves one connection and audits it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::audit::{AuditLog, ConnectionLog, Outcome};
use super::pipe::PipePool;
use super::refuse::{self, Refusal};
use super::relay;
use super::route::ForwardRoute;
use super::stats::{EntryLive, ForwarderStats, Live};

/// How long an accept loop pauses after an error such as `EMFILE`, so it
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The shortest time between two warnings about refused connections.
const REFUSAL_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Connections refused at the limit that may be told so at once; beyond
/// them (a flood), the excess is closed without a word.
const MAX_REFUSING: usize = 32;

/// State shared by every accept loop and connection of one forwarder.
#[derive(Debug)]
pub struct Forwarder {
    slug: String,
    connect_timeout: Duration,
    max_connections: u32,
    limit: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
    live: Arc<Live>,
    pipes: PipePool,
    audit: AuditLog,
}

impl Forwarder {
    /// A forwarder for `slug` allowing `max_connections` open connections at
    /// once, each connect attempt to an upstream limited to `connect_timeout`,
    /// with the splice pipes of `pipe_size` bytes that the file-descriptor
    /// limit leaves room for, writing each connection's record to `audit`.
    pub fn new(
        slug: String,
        max_connections: u32,
        connect_timeout: Duration,
        pipe_size: usize,
        audit: AuditLog,
    ) -> Self {
        Forwarder {
            slug,
            connect_timeout,
            max_connections,
            limit: Arc::new(Semaphore::new(max_connections as usize)),
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
            live: Arc::default(),
            pipes: PipePool::for_forwarder(pipe_size, max_connections),
            audit,
        }
    }

    /// Where the connections' records go.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The counters right now.
    pub fn stats(&self) -> ForwarderStats {
        self.live.snapshot()
    }

    /// The live counters, for the task that serves them.
    pub fn live(&self) -> Arc<Live> {
        Arc::clone(&self.live)
    }

    /// Makes the entry `alias` show in the counters from now on, even
    /// before its first connection.
    pub fn count_entry(&self, alias: &str) {
        self.live.entry(alias);
    }

    /// Whether no connection is open and no refusal is being written.
    pub fn is_quiet(&self) -> bool {
        self.limit.available_permits() == self.max_connections as usize
            && self.refusing.available_permits() == MAX_REFUSING
    }

    /// A count that changes whenever a connection is accepted or refused.
    pub fn activity(&self) -> (u64, u64) {
        let stats = self.live.snapshot();
        (stats.total, stats.refused.total())
    }

    /// Waits until no connection is open, or for `grace` at most. Returns
    /// whether every connection ended.
    pub async fn drained(&self, grace: Duration) -> bool {
        let all = self.limit.acquire_many(self.max_connections);
        matches!(tokio::time::timeout(grace, all).await, Ok(Ok(_)))
    }
}

/// Why the connections of one route end early: the forwarder stops, or a
/// reload removed the route (its sessions are cut: revocation takes effect).
#[derive(Debug, Clone)]
pub struct Ends {
    /// Turns true when the forwarder stops.
    pub stop: watch::Receiver<bool>,
    /// Turns true when a reload removes the route.
    pub revoked: watch::Receiver<bool>,
}

impl Ends {
    /// Waits until the forwarder stops or the route is revoked, and says
    /// which, as the outcome of a connection cut by it.
    async fn reached(&mut self) -> Outcome {
        tokio::select! {
            _ = self.stop.wait_for(|stopping| *stopping) => Outcome::Aborted,
            _ = self.revoked.wait_for(|revoked| *revoked) => Outcome::Revoked,
        }
    }
}

/// Accepts connections on `listener` until the forwarder stops or the route
/// is revoked (see [`Ends`]), serving each with the route as `route` holds
/// it at that moment (a reload may change its upstreams), in its own task
/// while the connection limit allows, and closing the excess at once.
/// Accept errors (`EMFILE`, ...) are logged and retried. Returns the
/// listen port.
pub async fn accept_loop(
    listener: Arc<TcpListener>,
    route: watch::Receiver<Arc<ForwardRoute>>,
    forwarder: Arc<Forwarder>,
    mut ends: Ends,
) -> u16 {
    let port = route.borrow().listen_port;
    let mut refusals = RefusalWarnings::default();
    loop {
        let accepted = tokio::select! {
            _ = ends.reached() => return port,
            accepted = listener.accept() => accepted,
        };
        let current = Arc::clone(&route.borrow());
        match accepted {
            Ok((client, peer)) => match Arc::clone(&forwarder.limit).try_acquire_owned() {
                Ok(permit) => {
                    let entry = forwarder.live.entry(current.alias.as_str());
                    entry.opened();
                    let (forwarder, ends) = (Arc::clone(&forwarder), ends.clone());
                    let connection = Connection {
                        peer,
                        route: current,
                        entry,
                    };
                    tokio::spawn(serve_connection(client, connection, forwarder, ends, permit));
                }
                Err(_) => {
                    refusals.refused(&forwarder, &current, peer);
                    refuse_at_limit(client, &forwarder, &current);
                }
            },
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
                tracing::debug!(alias = current.alias.as_str(), error = %e, "a client went away before it was accepted");
            }
            Err(e) => {
                tracing::warn!(
                    slug = forwarder.slug,
                    alias = current.alias.as_str(),
                    port,
                    error = %e,
                    "accepting a connection failed; retrying in {} ms",
                    ACCEPT_BACKOFF.as_millis(),
                );
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Tells `client`, refused at the connection limit, why (in a task of its
/// own, while fewer than [`MAX_REFUSING`] refusals are being written), or
/// closes it at once.
fn refuse_at_limit(client: TcpStream, forwarder: &Forwarder, route: &ForwardRoute) {
    let description = refuse::at_limit(&forwarder.slug, forwarder.max_connections);
    forwarder.live.refused(Refusal::Limit);
    forwarder
        .live
        .error(&forwarder.live.entry(route.alias.as_str()), &description);
    let Ok(permit) = Arc::clone(&forwarder.refusing).try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        refuse::refuse(client, Refusal::Limit, &description).await;
        drop(permit);
    });
}

/// An accepted connection: who, to which route, and its entry's counters
/// (already counted as opened).
struct Connection {
    peer: SocketAddr,
    route: Arc<ForwardRoute>,
    entry: Arc<EntryLive>,
}

/// Serves one accepted connection until it ends or one of `ends` is
/// reached, then counts and logs it and gives back `permit` (its slot of
/// the limit). A connection that ends before any upstream answered (no
/// upstream byte reached the client) is told why as an SSH server would
/// (see [`refuse`]); once an upstream answered, nothing is ever added.
async fn serve_connection(
    mut client: TcpStream,
    connection: Connection,
    forwarder: Arc<Forwarder>,
    mut ends: Ends,
    permit: OwnedSemaphorePermit,
) {
    let Connection { peer, route, entry } = connection;
    let alias = route.alias.as_str();
    let mut log = ConnectionLog::new(&forwarder.slug, alias, peer);
    let outcome = tokio::select! {
        outcome = forward(&mut client, &route, &forwarder, &mut log) => outcome,
        outcome = ends.reached() => outcome,
    };
    let refusal = match log.upstream {
        None => refuse::for_outcome(&forwarder.slug, alias, &outcome),
        Some(_) => None,
    };
    match (&refusal, &outcome) {
        (Some((why, description)), _) => {
            forwarder.live.refused(*why);
            if *why == Refusal::Upstream {
                forwarder.live.error(&entry, description);
            }
        }
        (None, Outcome::Failed(e)) => forwarder
            .live
            .error(&entry, &format!("{alias}: relaying failed: {e}")),
        _ => {}
    }
    entry.closed(log.bytes.to_upstream, log.bytes.from_upstream);
    log.finish(outcome, &forwarder.audit);
    if let Some((why, description)) = refusal {
        refuse::refuse(client, why, &description).await;
    }
    drop(permit);
}

/// Connects `client` to the first upstream of `route` that answers and relays
/// until the connection ends, recording what happens in `log`.
async fn forward(
    client: &mut TcpStream,
    route: &ForwardRoute,
    forwarder: &Forwarder,
    log: &mut ConnectionLog<'_>,
) -> Outcome {
    relay::set_nodelay(client);
    let mut upstream = match relay::connect(&route.upstreams, forwarder.connect_timeout).await {
        Ok((upstream, addr)) => {
            log.upstream = Some(addr);
            upstream
        }
        Err(e) => return Outcome::ConnectFailed(e),
    };
    match relay::relay(client, &mut upstream, &mut log.bytes, &forwarder.pipes).await {
        Ok(()) => Outcome::Closed,
        Err(e) => Outcome::Failed(e),
    }
}

/// Rate limits the warnings about connections refused at the limit.
#[derive(Debug, Default)]
struct RefusalWarnings {
    last: Option<Instant>,
    suppressed: u64,
}

impl RefusalWarnings {
    /// Notes a refused connection from `peer`, warning at most once per
    /// [`REFUSAL_WARNING_INTERVAL`].
    fn refused(&mut self, forwarder: &Forwarder, route: &ForwardRoute, peer: SocketAddr) {
        tracing::debug!(alias = route.alias.as_str(), peer = %peer, "refused a connection: the connection limit is reached");
        if self
            .last
            .is_some_and(|last| last.elapsed() < REFUSAL_WARNING_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        let earlier = match self.suppressed {
            0 => String::new(),
            n => format!(" ({n} more refused since the last warning)"),
        };
        tracing::warn!(
            slug = forwarder.slug,
            alias = route.alias.as_str(),
            peer = %peer,
            limit = forwarder.max_connections,
            also_refused = self.suppressed,
            "refused a connection from {peer} to {}: {} connections are open, the \
             --max-connections limit{earlier}",
            route.alias,
            forwarder.max_connections,
        );
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}
