//! Readiness and live counters for systemd (`sd_notify`): `READY=1` once
//! every listener is bound, then `STATUS=` as the counters change, shown by
//! `systemctl status`. Without `NOTIFY_SOCKET` every call is a no-op.

use std::convert::Infallible;
use std::time::Duration;

use sd_notify::NotifyState;

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

/// Tells systemd the forwarder is ready, with its first status line.
pub fn ready(routes: usize, counters: Counters) {
    notify(&[
        NotifyState::Ready,
        NotifyState::Status(&status_line(routes, counters)),
    ]);
}

/// Tells systemd the forwarder is stopping.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Sends the status line whenever the counters have changed, checking once
/// per [`STATUS_INTERVAL`]. Never returns.
pub async fn report(forwarder: &Forwarder, routes: usize) -> Infallible {
    let mut shown = forwarder.counters();
    let mut ticks = tokio::time::interval(STATUS_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = forwarder.counters();
        if now != shown {
            notify(&[NotifyState::Status(&status_line(routes, now))]);
            shown = now;
        }
    }
}

/// The `STATUS=` text, e.g. `serving 2 routes, 1 active, 5 total connections`.
fn status_line(routes: usize, counters: Counters) -> String {
    let plural = if routes == 1 { "" } else { "s" };
    let mut line = format!(
        "serving {routes} route{plural}, {} active, {} total connections",
        counters.active, counters.total
    );
    if counters.refused > 0 {
        line.push_str(&format!(", {} refused at the limit", counters.refused));
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
        assert_eq!(
            status_line(2, Counters::default()),
            "serving 2 routes, 0 active, 0 total connections"
        );
        let counters = Counters {
            active: 1,
            total: 7,
            refused: 3,
        };
        assert_eq!(
            status_line(1, counters),
            "serving 1 route, 1 active, 7 total connections, 3 refused at the limit"
        );
    }
}
