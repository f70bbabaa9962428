//! Exiting when idle: a forwarder that systemd started from the gate's
//! socket unit exits after a period with no connection, and systemd starts
//! it again at the next one (the socket unit keeps listening meanwhile), so
//! an idle gate costs no process even though `gatectl start` starts its
//! forwarder right away.
//!
//! Idle means: no connection open (nor a refusal being written), none
//! accepted or refused since the last check, for the whole period. Only a
//! forwarder all of whose listeners systemd passed may exit: one that bound
//! a port itself (an entry `gatectl reload` added) would take that port
//! away until the next start, so it stays (see `Served::binds_its_own`).
//!
//! A connection that arrives while the forwarder exits is not lost: the
//! forwarder stops accepting without an `.await` after its last check (on
//! its one-thread runtime nothing else runs in between), so whatever is
//! not accepted yet waits in the listening socket's queue, which systemd
//! holds. The exit is clean (status 0), so `Restart=on-failure` leaves the
//! unit inactive and the socket unit, listening again, sees the waiting
//! connection and starts the forwarder for it.

use std::time::{Duration, Instant};

use super::accept::Forwarder;

/// The shortest and the longest time between two checks.
const CHECK_BOUNDS: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// Returns once `forwarder` has been idle for `after` (checked a few times
/// per period, so it may return up to a check later). Pending forever if
/// it never is.
pub async fn expired(forwarder: &Forwarder, after: Duration) {
    let mut ticks = tokio::time::interval((after / 4).clamp(CHECK_BOUNDS.0, CHECK_BOUNDS.1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = forwarder.activity();
    let mut quiet_since = Instant::now();
    loop {
        ticks.tick().await;
        let now = forwarder.activity();
        if now != seen || !forwarder.is_quiet() {
            seen = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= after {
            return;
        }
    }
}
