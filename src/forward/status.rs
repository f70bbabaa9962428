//! Readiness and live counters for systemd (`sd_notify`): `READY=1` once
//! every listener is bound, then `STATUS=` as the counters change, shown by
//! `systemctl status`. Without `NOTIFY_SOCKET` every call is a no-op.

use std::convert::Infallible;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;

use super::accept::Forwarder;
use super::stats::{bytes, ForwarderStats};

/// How often the status line is refreshed, at most.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// What the status line says besides the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    /// Routes served.
    pub routes: usize,
    /// The generation of the routes file served, if the routes came from one.
    pub generation: Option<u64>,
    /// Why the last reload failed, until one succeeds.
    pub reload_error: Option<String>,
}

/// Tells systemd the forwarder is ready, with its first status line.
pub fn ready(shown: &Shown, counters: &ForwarderStats) {
    notify(&[
        NotifyState::Ready,
        NotifyState::Status(&status_line(shown, counters)),
    ]);
}

/// Sends the status line now (after a reload).
pub fn show(shown: &Shown, counters: &ForwarderStats) {
    notify(&[NotifyState::Status(&status_line(shown, counters))]);
}

/// Tells systemd the forwarder is stopping.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Sends the status line whenever the counters have changed, checking once
/// per [`STATUS_INTERVAL`], with what `shown` holds then. Never returns.
pub async fn report(forwarder: &Forwarder, shown: watch::Receiver<Shown>) -> Infallible {
    let mut counted = forwarder.stats();
    let mut ticks = tokio::time::interval(STATUS_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = forwarder.stats();
        if now != counted {
            show(&shown.borrow(), &now);
            counted = now;
        }
    }
}

/// The `STATUS=` text, e.g. `serving 2 routes (generation 3), 1 active, 5
/// total connections, 1.5 KiB up, 20.0 MiB down, 2 refused (upstream 1,
/// limit 1)`. `gatectl reload` waits for `(generation N)` to learn that the
/// forwarder applied routes file N, and reports a `reload failed:` reason.
fn status_line(shown: &Shown, counters: &ForwarderStats) -> String {
    let routes = shown.routes;
    let plural = if routes == 1 { "" } else { "s" };
    let mut line = format!("serving {routes} route{plural}");
    if let Some(generation) = shown.generation {
        line.push_str(&format!(" (generation {generation})"));
    }
    line.push_str(&format!(
        ", {} active, {} total connections, {} up, {} down",
        counters.active,
        counters.total,
        bytes(counters.bytes_up),
        bytes(counters.bytes_down)
    ));
    let refused = counters.refused.total();
    if refused > 0 {
        line.push_str(&format!(", {refused} refused ({})", counters.refused.summary()));
    }
    if let Some(error) = &shown.reload_error {
        line.push_str(&format!("; reload failed: {error}"));
    }
    line
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_counts_routes_connections_bytes_and_refusals() {
        let shown = |routes, generation, reload_error: Option<&str>| Shown {
            routes,
            generation,
            reload_error: reload_error.map(String::from),
        };
        let none = ForwarderStats::default();
        assert_eq!(
            status_line(&shown(2, None, None), &none),
            "serving 2 routes, 0 active, 0 total connections, 0 B up, 0 B down"
        );
        let mut counters = ForwarderStats {
            active: 1,
            total: 7,
            bytes_up: 1536,
            bytes_down: 20 << 20,
            ..ForwarderStats::default()
        };
        counters.refused.limit = 3;
        counters.refused.upstream = 1;
        assert_eq!(
            status_line(&shown(1, Some(4), None), &counters),
            "serving 1 route (generation 4), 1 active, 7 total connections, 1.5 KiB up, 20.0 MiB down, \
             4 refused (upstream 1, limit 3)"
        );
        assert_eq!(
            status_line(&shown(1, None, Some("bad file")), &none),
            "serving 1 route, 0 active, 0 total connections, 0 B up, 0 B down; reload failed: bad file"
        );
    }
}
