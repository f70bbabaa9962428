//! The D-Bus client for systemd: start and stop the forwarder's transient
//! unit, wait for its job, and read unit states.

use std::time::Duration;

use futures::StreamExt;
use zbus::zvariant::{OwnedObjectPath, Value};
use zbus::Connection;

use crate::error::{Context, Error, Result};
use crate::unit::Property;

/// How long `start` waits for the forwarder to report `READY=1`.
const JOB_TIMEOUT: Duration = Duration::from_secs(30);

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn subscribe(&self) -> zbus::Result<()>;

    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Value<'_>)],
        aux: &[(&str, &[(&str, Value<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;

    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;

    #[allow(clippy::type_complexity)]
    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<
        Vec<(
            String,
            String,
            String,
            String,
            String,
            String,
            OwnedObjectPath,
            u32,
            String,
            OwnedObjectPath,
        )>,
    >;

    #[zbus(signal)]
    fn job_removed(&self, id: u32, job: OwnedObjectPath, unit: String, result: String) -> zbus::Result<()>;
}

/// A unit as systemd reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnitState {
    /// The unit name.
    pub name: String,
    /// `ActiveState`: active, activating, failed, inactive, …
    pub active: String,
    /// `SubState`: running, start, dead, …
    pub sub: String,
}

impl UnitState {
    /// Whether the unit is active or on its way there (a start must not
    /// replace it).
    pub fn is_up(&self) -> bool {
        matches!(self.active.as_str(), "active" | "activating" | "reloading")
    }

    /// Whether the forwarder is running.
    pub fn is_running(&self) -> bool {
        self.active == "active" && self.sub == "running"
    }
}

/// A connection to systemd's manager on the system bus.
pub struct Systemd {
    manager: ManagerProxy<'static>,
}

fn is_error(e: &zbus::Error, name: &str) -> bool {
    matches!(e, zbus::Error::MethodError(n, _, _) if n.as_str() == name)
}

const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";

impl Systemd {
    /// Connects to the system bus. One connection serves every call.
    pub async fn connect() -> Result<Systemd> {
        let connection = Connection::system().await.context(
            "cannot connect to systemd over the system D-Bus; is systemd running as PID 1 and dbus up?",
        )?;
        let manager = ManagerProxy::new(&connection)
            .await
            .context("cannot reach systemd's manager over D-Bus")?;
        manager
            .subscribe()
            .await
            .context("cannot subscribe to systemd job signals")?;
        Ok(Systemd { manager })
    }

    /// Starts a transient unit and waits until its start job finishes. For
    /// `Type=notify` that is when the service sent `READY=1`.
    pub async fn start_transient(&self, unit: &str, properties: &[Property]) -> Result<()> {
        let values: Vec<(&str, Value<'_>)> =
            properties.iter().map(|p| (p.name, p.value.to_value())).collect();
        // A failed unit of the same name would block the start with UnitExists.
        let _ = self.manager.reset_failed_unit(unit).await;
        let mut removed = self
            .manager
            .receive_job_removed()
            .await
            .context("cannot listen for systemd job signals")?;
        let job = self
            .manager
            .start_transient_unit(unit, "fail", &values, &[])
            .await
            .with_context(|| format!("systemd refused to start {unit}"))?;
        let result = tokio::time::timeout(JOB_TIMEOUT, async {
            while let Some(signal) = removed.next().await {
                let args = signal
                    .args()
                    .context("cannot decode a systemd JobRemoved signal")?;
                if args.job == job {
                    return Ok(args.result);
                }
            }
            Err(Error::failed(
                "the D-Bus connection to systemd closed while waiting for a job",
            ))
        })
        .await
        .map_err(|_| {
            Error::failed(format!(
                "{unit} did not become ready within {}s; see `journalctl -u {unit}`",
                JOB_TIMEOUT.as_secs()
            ))
        })??;
        if result == "done" {
            Ok(())
        } else {
            Err(Error::failed(format!(
                "{unit} failed to start (job result: {result}); see `journalctl -u {unit}`"
            )))
        }
    }

    /// Stops `unit` and waits for it; a unit that does not exist is success.
    /// Then clears a failed state so the name is free again.
    pub async fn stop(&self, unit: &str) -> Result<()> {
        let mut removed = self
            .manager
            .receive_job_removed()
            .await
            .context("cannot listen for systemd job signals")?;
        match self.manager.stop_unit(unit, "replace").await {
            Ok(job) => {
                let wait = async {
                    while let Some(signal) = removed.next().await {
                        if signal.args().is_ok_and(|a| a.job == job) {
                            break;
                        }
                    }
                };
                tokio::time::timeout(JOB_TIMEOUT, wait).await.map_err(|_| {
                    Error::failed(format!("{unit} did not stop within {}s", JOB_TIMEOUT.as_secs()))
                })?;
            }
            Err(e) if is_error(&e, NO_SUCH_UNIT) => {}
            Err(e) => return Err(e).with_context(|| format!("cannot stop {unit}")),
        }
        match self.manager.reset_failed_unit(unit).await {
            Ok(()) => Ok(()),
            Err(e) if is_error(&e, NO_SUCH_UNIT) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot reset the failed state of {unit}")),
        }
    }

    /// Loaded units matching the glob `pattern`, with their states.
    pub async fn units(&self, pattern: &str) -> Result<Vec<UnitState>> {
        let units = self
            .manager
            .list_units_by_patterns(&[], &[pattern])
            .await
            .context("cannot list units from systemd")?;
        Ok(units
            .into_iter()
            .map(|u| UnitState {
                name: u.0,
                active: u.3,
                sub: u.4,
            })
            .collect())
    }

    /// The state of `unit`, or `None` if systemd has no such unit loaded.
    pub async fn unit(&self, unit: &str) -> Result<Option<UnitState>> {
        Ok(self.units(unit).await?.into_iter().find(|u| u.name == unit))
    }
}
