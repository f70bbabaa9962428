//! The forwarder: the body of `gatectl forward`, one process per gate, run by
//! systemd inside the gate's network namespace.
//!
//! It serves the listening sockets systemd passes from the gate's socket
//! unit (or binds them itself when run by hand): the gate's internal address
//! only, one port per route. It relays each connection to that route's
//! upstream (see `relay`), logging one audit event per connection (see
//! `audit`). It tells systemd it is ready once it serves every listener (see
//! `status`).
//!
//! On SIGTERM or SIGINT it stops accepting and closes the connections still
//! open at once, logging each as aborted, then exits successfully: a gate is
//! stopped when its agent is done, and an ssh session would not end by itself
//! within any grace period worth waiting for.

mod accept;
mod audit;
mod pipe;
mod relay;
mod route;
mod status;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;

use self::accept::Forwarder;
pub use self::pipe::DEFAULT_PIPE_SIZE;
pub use self::route::ForwardRoute;
use crate::error::{Context, Error, Result};
use crate::slug::Slug;

/// How long a stopping forwarder waits for its aborted connections to be
/// logged and closed.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Everything the forwarder needs to run; built from `gatectl forward`'s
/// arguments.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// The gate's slug, for the logs.
    pub slug: String,
    /// The gate's internal address: the only address listened on.
    pub listen: IpAddr,
    /// One listener per route.
    pub routes: Vec<ForwardRoute>,
    /// Connections open at once, across all routes; the excess is closed.
    pub max_connections: usize,
    /// Time allowed for each connect attempt to an upstream address.
    pub connect_timeout: Duration,
    /// Capacity, in bytes, asked for each splice pipe; the kernel may round
    /// it up to a power-of-two count of pages, or refuse it and keep its
    /// default.
    pub pipe_size: usize,
}

impl ForwardConfig {
    /// Checks the settings before anything is bound.
    pub fn validate(&self) -> Result<()> {
        Slug::parse(&self.slug)?;
        if self.listen.is_unspecified() {
            return Err(Error::invalid(format!(
                "refusing to listen on {}: the forwarder listens only on the gate's internal address",
                self.listen
            )));
        }
        if self.routes.is_empty() {
            return Err(Error::invalid("the forwarder needs at least one --route"));
        }
        let mut ports = HashSet::new();
        for route in &self.routes {
            if !ports.insert(route.listen_port) {
                return Err(Error::invalid(format!(
                    "two routes listen on port {}; give each route its own port",
                    route.listen_port
                )));
            }
            if route.upstreams.is_empty() {
                return Err(Error::invalid(format!(
                    "route {} has no upstream address",
                    route.alias
                )));
            }
        }
        self.connection_limit()?;
        if self.connect_timeout.is_zero() {
            return Err(Error::invalid("--connect-timeout must be at least 1 second"));
        }
        if self.pipe_size == 0 {
            return Err(Error::invalid(format!(
                "--pipe-size must be at least 1 byte (the default is {DEFAULT_PIPE_SIZE})"
            )));
        }
        Ok(())
    }

    /// `max_connections` as a semaphore size, if it is one.
    fn connection_limit(&self) -> Result<u32> {
        match u32::try_from(self.max_connections) {
            Ok(0) | Err(_) => Err(Error::invalid(format!(
                "--max-connections must be from 1 to {}, not {}",
                u32::MAX,
                self.max_connections
            ))),
            Ok(limit) => Ok(limit),
        }
    }
}

/// Runs the forwarder until SIGTERM or SIGINT: binds every listener, tells
/// systemd it is ready, serves connections, and returns `Ok` once stopped.
///
/// Fails if the settings are invalid or a listener cannot be bound (the error
/// names the address).
pub async fn run(config: ForwardConfig) -> Result<()> {
    config.validate()?;
    let listeners = match inherited_sockets()? {
        Some(sockets) => match_listeners(&config, sockets)?,
        None => bind(&config).await?,
    };
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let slug = config.slug.clone();
    let stop = async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(slug, "received {name}; stopping");
    };
    serve(&config, listeners, stop).await
}

/// The listening sockets systemd passed (socket activation: `LISTEN_FDS`
/// for this process), or `None` when it passed none.
fn inherited_sockets() -> Result<Option<Vec<std::net::TcpListener>>> {
    let fds: Vec<RawFd> = sd_notify::listen_fds()
        .context("reading the sockets systemd passed (LISTEN_FDS)")?
        .collect();
    if fds.is_empty() {
        return Ok(None);
    }
    let sockets = fds
        .into_iter()
        // SAFETY: LISTEN_PID names this process, so systemd passed these
        // descriptors to it and nothing else in it owns them; each is taken
        // over exactly once, here.
        .map(|fd| std::net::TcpListener::from(unsafe { OwnedFd::from_raw_fd(fd) }))
        .collect();
    Ok(Some(sockets))
}

/// Pairs passed listening `sockets` with `config`'s routes by their port,
/// in the order of the routes. Fails, naming the socket or route, unless
/// each route has exactly one socket on the internal address.
pub fn match_listeners(
    config: &ForwardConfig,
    sockets: Vec<std::net::TcpListener>,
) -> Result<Vec<TcpListener>> {
    let mut by_port = HashMap::new();
    for socket in sockets {
        let addr = socket
            .local_addr()
            .context("reading the address of a socket systemd passed")?;
        if addr.ip() != config.listen || by_port.insert(addr.port(), socket).is_some() {
            return Err(Error::invalid(format!(
                "systemd passed a socket on {addr}, which no route listens on; \
                 the socket unit does not match the forwarder's routes: restart the gate"
            )));
        }
    }
    let mut listeners = Vec::with_capacity(config.routes.len());
    for route in &config.routes {
        let socket = by_port.remove(&route.listen_port).ok_or_else(|| {
            Error::invalid(format!(
                "systemd passed no socket for port {} (route {}); restart the gate",
                route.listen_port, route.alias
            ))
        })?;
        socket
            .set_nonblocking(true)
            .context("making a passed socket non-blocking")?;
        listeners.push(TcpListener::from_std(socket).context("registering a passed socket")?);
    }
    if let Some(port) = by_port.keys().next() {
        return Err(Error::invalid(format!(
            "systemd passed a socket on port {port}, which no route listens on; restart the gate"
        )));
    }
    Ok(listeners)
}

/// Binds one listener per route of `config`, on the internal address only,
/// in the order of the routes. Used when systemd passed no sockets, e.g.
/// when `gatectl forward` is run by hand.
pub async fn bind(config: &ForwardConfig) -> Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(config.routes.len());
    for route in &config.routes {
        let addr = SocketAddr::new(config.listen, route.listen_port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} for route {}", route.alias))?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Serves `config`'s routes on `listeners` (one per route, in order, as
/// [`bind`] returns them) until `stop` completes, then closes every
/// connection and returns.
///
/// Sends `READY=1` to systemd at once: the listeners are already bound. Fails
/// if an accept loop ends unexpectedly, so that systemd restarts the unit.
pub async fn serve(
    config: &ForwardConfig,
    listeners: Vec<TcpListener>,
    stop: impl Future<Output = ()>,
) -> Result<()> {
    config.validate()?;
    if listeners.len() != config.routes.len() {
        return Err(Error::failed(format!(
            "the forwarder got {} listeners for {} routes",
            listeners.len(),
            config.routes.len()
        )));
    }
    let forwarder = Arc::new(Forwarder::new(
        config.slug.clone(),
        config.connection_limit()?,
        config.connect_timeout,
        config.pipe_size,
    ));
    let (stopping, stop_rx) = watch::channel(false);
    let mut accept_loops = JoinSet::new();
    for (listener, route) in listeners.into_iter().zip(&config.routes) {
        let addr = listener.local_addr().context("reading a listener's address")?;
        let upstreams: Vec<String> = route.upstreams.iter().map(ToString::to_string).collect();
        tracing::info!(
            slug = config.slug,
            alias = route.alias.as_str(),
            listen = %addr,
            "listening on {addr} for {}, forwarding to {}",
            route.alias,
            upstreams.join(" or "),
        );
        let forwarder = Arc::clone(&forwarder);
        accept_loops.spawn(accept::accept_loop(
            listener,
            route.clone(),
            forwarder,
            stop_rx.clone(),
        ));
    }
    status::ready(config.routes.len(), forwarder.counters());
    tracing::info!(
        slug = config.slug,
        routes = config.routes.len(),
        "forwarder ready"
    );

    let result = tokio::select! {
        () = stop => Ok(()),
        never = status::report(&forwarder, config.routes.len()) => match never {},
        Some(ended) = accept_loops.join_next() => Err(Error::failed(format!(
            "an accept loop of the forwarder ended unexpectedly: {ended:?}"
        ))),
    };

    status::stopping();
    stopping.send_replace(true);
    while accept_loops.join_next().await.is_some() {}
    if !forwarder.drained(STOP_GRACE).await {
        tracing::warn!(
            slug = config.slug,
            "some connections were still closing after {STOP_GRACE:?}"
        );
    }
    let counters = forwarder.counters();
    tracing::info!(
        slug = config.slug,
        total = counters.total,
        refused = counters.refused,
        "forwarder stopped"
    );
    result
}
