//! The forwarder: the body of `gatectl forward`, one process per gate, run by
//! systemd inside the gate's network namespace.
//!
//! It serves the listening sockets systemd passes from the gate's socket
//! unit (or binds them itself when run by hand, or for a route added since
//! the gate started): the gate's internal address only, one port per route.
//! Its routes come from the gate's routes file (see [`routes_file`]), read
//! again at SIGHUP and applied in place (see `served`), or from the command
//! line. It relays each connection to that route's upstream (see `relay`),
//! writing one audit record per connection (see `audit`; to the journal in
//! batches, see `journal_batch`). It tells systemd it is ready once it
//! serves every route (see `status`).
//!
//! Given an idle period, a forwarder whose listeners all came from systemd
//! exits after that long without connections, and systemd starts it again
//! at the next one (see `idle`).
//!
//! On SIGTERM or SIGINT it stops accepting and closes the connections still
//! open at once, recording each as aborted, writes out the audit records
//! not written yet, then exits successfully: a gate is stopped when its
//! agent is done, and an ssh session would not end by itself within any
//! grace period worth waiting for.

mod accept;
mod audit;
mod disconnect;
mod idle;
mod journal_batch;
mod pipe;
mod refuse;
mod relay;
mod route;
pub mod routes_file;
mod served;
pub mod stats;
mod status;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::future::Future;
use std::net::IpAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};

use self::accept::Forwarder;
use self::audit::AuditLog;
pub use self::pipe::DEFAULT_PIPE_SIZE;
pub use self::route::ForwardRoute;
pub use self::routes_file::RoutesFile;
use self::served::Served;
use self::status::Shown;
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
    /// Where the routes come from instead, re-read at SIGHUP (see
    /// [`routes_file`]).
    pub routes_file: Option<PathBuf>,
    /// The generation of the routes file read, shown in the status line.
    pub generation: Option<u64>,
    /// Connections open at once, across all routes; the excess is closed.
    pub max_connections: usize,
    /// Time allowed for each connect attempt to an upstream address.
    pub connect_timeout: Duration,
    /// Capacity, in bytes, asked for each splice pipe; the kernel may round
    /// it up to a power-of-two count of pages, or refuse it and keep its
    /// default.
    pub pipe_size: usize,
    /// The abstract Unix socket the counters are served on (see
    /// [`stats`]), if any.
    pub stats_socket: Option<String>,
    /// Exit after this long without connections, if set (see `idle`).
    pub idle_exit: Option<Duration>,
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
        if self.idle_exit.is_some_and(|idle| idle.is_zero()) {
            return Err(Error::invalid("--idle-exit must be at least 1 second"));
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

/// Runs the forwarder until SIGTERM or SIGINT: reads its routes file (if
/// it has one), serves every route, tells systemd it is ready, re-reads the
/// routes file at each SIGHUP, and returns `Ok` once stopped.
///
/// Fails if the settings are invalid or a listener cannot be bound (the error
/// names the address).
pub async fn run(mut config: ForwardConfig) -> Result<()> {
    if let Some(path) = &config.routes_file {
        let file = RoutesFile::read(path)?;
        config.routes = file.routes;
        config.generation = Some(file.generation);
    }
    config.validate()?;
    let passed = inherited_sockets()?;
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let slug = config.slug.clone();
    let stop = async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(slug, "received {name}; stopping");
    };
    let (reload_tx, reloads) = mpsc::channel(1);
    if let Some(path) = config.routes_file.clone() {
        tokio::spawn(read_at_hangup(hangup, path, reload_tx));
    }
    serve(&config, passed, stop, reloads).await
}

/// Reads the routes file at `path` at every SIGHUP and sends what it read
/// (or why it could not) to the serving loop.
async fn read_at_hangup(mut hangup: Signal, path: PathBuf, reloads: mpsc::Sender<Result<RoutesFile>>) {
    while hangup.recv().await.is_some() {
        tracing::info!(path = %path.display(), "received SIGHUP; reading the routes file again");
        if reloads.send(RoutesFile::read(&path)).await.is_err() {
            return;
        }
    }
}

/// The listening sockets systemd passed (socket activation: `LISTEN_FDS`
/// for this process); none when it passed none.
fn inherited_sockets() -> Result<Vec<std::net::TcpListener>> {
    let fds: Vec<RawFd> = sd_notify::listen_fds()
        .context("reading the sockets systemd passed (LISTEN_FDS)")?
        .collect();
    Ok(fds
        .into_iter()
        // SAFETY: LISTEN_PID names this process, so systemd passed these
        // descriptors to it and nothing else in it owns them; each is taken
        // over exactly once, here.
        .map(|fd| std::net::TcpListener::from(unsafe { OwnedFd::from_raw_fd(fd) }))
        .collect())
}

/// Serves `config`'s routes until `stop` completes, then closes every
/// connection and returns; or, given `idle_exit`, until it has been idle
/// that long while serving only passed sockets, then returns at once (no
/// connection is open then). A route is served on the `passed` socket of its
/// port (socket activation), or on one bound here; a passed socket of no
/// route is kept for a route a reload may add. Each routes file from
/// `reloads` replaces the routes in place (see [`served`]).
///
/// Sends `READY=1` to systemd once every route is served. Fails if a passed
/// socket is not on the internal address, if a port cannot be bound, or if
/// an accept loop ends unexpectedly, so that systemd restarts the unit.
pub async fn serve(
    config: &ForwardConfig,
    passed: Vec<std::net::TcpListener>,
    stop: impl Future<Output = ()>,
    mut reloads: mpsc::Receiver<Result<RoutesFile>>,
) -> Result<()> {
    config.validate()?;
    let forwarder = Arc::new(Forwarder::new(
        config.slug.clone(),
        config.connection_limit()?,
        config.connect_timeout,
        config.pipe_size,
        AuditLog::for_this_process(),
    ));
    let counters = config
        .stats_socket
        .clone()
        .map(|name| tokio::spawn(stats::serve(name, forwarder.live())));
    let (stopping, stop_rx) = watch::channel(false);
    let mut served = Served::new(&config.slug, config.listen, Arc::clone(&forwarder), stop_rx);
    for socket in passed {
        let addr = socket
            .local_addr()
            .context("reading the address of a socket systemd passed")?;
        if addr.ip() != config.listen {
            return Err(Error::invalid(format!(
                "systemd passed a socket on {addr}, not on the gate's internal address {};                  the socket unit does not match the forwarder: restart the gate",
                config.listen
            )));
        }
        socket
            .set_nonblocking(true)
            .context("making a passed socket non-blocking")?;
        served.hold(TcpListener::from_std(socket).context("registering a passed socket")?)?;
    }
    for route in &config.routes {
        served.serve(route.clone()).await?;
    }
    let (shown_tx, shown) = watch::channel(Shown {
        routes: served.len(),
        generation: config.generation,
        reload_error: None,
    });
    status::ready(&shown.borrow(), &forwarder.stats());
    tracing::info!(
        slug = config.slug,
        routes = served.len(),
        generation = config.generation,
        "forwarder ready"
    );

    let mut reloading = true;
    let result = {
        tokio::pin!(stop);
        loop {
            let may_idle = config.idle_exit.filter(|_| !served.binds_its_own());
            tokio::select! {
                () = &mut stop => break Ok(false),
                () = idle::expired(&forwarder, may_idle.unwrap_or_default()), if may_idle.is_some() => {
                    // No `.await` between the last idle check and this.
                    served.stop_accepting();
                    break Ok(true);
                }
                never = status::report(&forwarder, shown.clone()) => match never {},
                error = served.loop_ended() => break Err(error),
                reload = reloads.recv(), if reloading => match reload {
                    None => reloading = false,
                    Some(file) => {
                        let now = reload_routes(config, &mut served, file).await;
                        shown_tx.send_replace(now);
                        status::show(&shown.borrow(), &forwarder.stats());
                    }
                },
            }
        }
    };

    status::stopping();
    let idle = matches!(result, Ok(true));
    if idle {
        served.join().await;
        // Only a runtime with more threads could have accepted meanwhile:
        // serve that connection to its end.
        while !forwarder.drained(STOP_GRACE).await {}
        tracing::info!(
            slug = config.slug,
            "no connection for {:?}; exiting until systemd starts me again at the next one",
            config.idle_exit.unwrap_or_default()
        );
    }
    stopping.send_replace(true);
    served.join().await;
    if !forwarder.drained(STOP_GRACE).await {
        tracing::warn!(
            slug = config.slug,
            "some connections were still closing after {STOP_GRACE:?}"
        );
    }
    forwarder.audit().close().await;
    if let Some(task) = counters {
        task.abort();
    }
    let stats = forwarder.stats();
    tracing::info!(
        slug = config.slug,
        total = stats.total,
        refused = stats.refused.total(),
        bytes_to_upstream = stats.bytes_up,
        bytes_from_upstream = stats.bytes_down,
        "forwarder stopped"
    );
    result.map(|_| ())
}

/// Applies one routes file read at SIGHUP, or keeps the routes served when
/// it is unreadable or invalid; returns what the status line shows then.
async fn reload_routes(config: &ForwardConfig, served: &mut Served, file: Result<RoutesFile>) -> Shown {
    let applied = async {
        let file = file?;
        let wanted = ForwardConfig {
            routes: file.routes.clone(),
            ..config.clone()
        };
        wanted.validate()?;
        let changes = served.apply(&file.routes).await?;
        Ok::<_, Error>((file.generation, changes))
    };
    match applied.await {
        Ok((generation, changes)) => {
            for change in &changes {
                tracing::info!(slug = config.slug, generation, "reload: {change}");
            }
            tracing::info!(
                slug = config.slug,
                generation,
                routes = served.len(),
                "reloaded the routes file: {} change(s)",
                changes.len()
            );
            Shown {
                routes: served.len(),
                generation: Some(generation),
                reload_error: None,
            }
        }
        Err(e) => {
            tracing::error!(slug = config.slug, error = %e, "reload failed; still serving the routes I had: {e}");
            Shown {
                routes: served.len(),
                generation: None,
                reload_error: Some(e.to_string()),
            }
        }
    }
}
