//! Readiness and live counters for systemd (`sd_notify`): `READY=1` once
//! every listener is bound, then `STATUS=` as the counters change, shown by
//! `systemctl status`. Without `NOTIFY_SOCKET` every call is a no-op.

use std::convert::Infallible;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;

use super::accept::Forwarder;

/// How often the status line is refreshed, at most.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Connection counters of a forwarder.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Connections open now.
    pub active: usize,
    /// Connections accepted and served since the start.
    pub total: u64,
    /// Connections closed at once because the limit was reached.
    pub refused: u64,
}

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
pub fn ready(shown: &Shown, counters: Counters) {
    notify(&[
        NotifyState::Ready,
        NotifyState::Status(&status_line(shown, counters)),
    ]);
}

/// Sends the status line now (after a reload).
pub fn show(shown: &Shown, counters: Counters) {
    notify(&[NotifyState::Status(&status_line(shown, counters))]);
}

/// Tells systemd the forwarder is stopping.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Sends the status line whenever the counters have changed, checking once
/// per [`STATUS_INTERVAL`], with what `shown` holds then. Never returns.
pub async fn report(forwarder: &Forwarder, shown: watch::Receiver<Shown>) -> Infallible {
    let mut counted = forwarder.counters();
    let mut ticks = tokio::time::interval(STATUS_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = forwarder.counters();
        if now != counted {
            show(&shown.borrow(), now);
            counted = now;
        }
    }
}

/// The `STATUS=` text, e.g. `serving 2 routes (generation 3), 1 active, 5
/// total connections`. `gatectl reload` waits for `(generation N)` to learn
/// that the forwarder applied routes file N, and reports a `reload failed:`
/// reason.
fn status_line(shown: &Shown, counters: Counters) -> String {
    let routes = shown.routes;
    let plural = if routes == 1 { "" } else { "s" };
    let mut line = format!("serving {routes} route{plural}");
    if let Some(generation) = shown.generation {
        line.push_str(&format!(" (generation {generation})"));
    }
    line.push_str(&format!(
        ", {} active, {} total connections",
        counters.active, counters.total
    ));
    if counters.refused > 0 {
        line.push_str(&format!(", {} refused at the limit", counters.refused));
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
    fn status_line_counts_routes_and_connections() {
        let shown = |routes, generation, reload_error: Option<&str>| Shown {
            routes,
            generation,
            reload_error: reload_error.map(String::from),
        };
        assert_eq!(
            status_line(&shown(2, None, None), Counters::default()),
            "serving 2 routes, 0 active, 0 total connections"
        );
        let counters = Counters {
            active: 1,
            total: 7,
            refused: 3,
        };
        assert_eq!(
            status_line(&shown(1, Some(4), None), counters),
            "serving 1 route (generation 4), 1 active, 7 total connections, 3 refused at the limit"
        );
        assert_eq!(
            status_line(&shown(1, None, Some("bad file")), Counters::default()),
            "serving 1 route, 0 active, 0 total connections; reload failed: bad file"
        );
    }
}
