//! The D-Bus client for systemd: start and stop a gate's transient units,
//! wait for their jobs, and read unit states.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use crate::error::{Context, Error, Result};
use crate::plan;
use crate::slug::Slug;
use crate::unit::Property;

/// How long a start or stop job of a gate's units may take.
const JOB_TIMEOUT: Duration = Duration::from_secs(30);

/// How long systemd may take to answer one D-Bus call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

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

    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;

    fn set_unit_properties(
        &self,
        name: &str,
        runtime: bool,
        properties: &[(&str, Value<'_>)],
    ) -> zbus::Result<()>;

    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;

    fn get_unit_file_state(&self, name: &str) -> zbus::Result<String>;

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

    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;

    #[zbus(signal)]
    fn job_removed(&self, id: u32, job: OwnedObjectPath, unit: String, result: String) -> zbus::Result<()>;
}

/// A unit's `ActiveState`, as systemd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActiveState {
    /// Started (a socket listening, a service running).
    Active,
    /// Reloading its configuration.
    Reloading,
    /// Stopped, or never started.
    Inactive,
    /// Stopped after a failure.
    Failed,
    /// On its way up.
    Activating,
    /// On its way down.
    Deactivating,
    /// A state this gatectl does not know.
    Other(String),
}

impl ActiveState {
    /// Parses systemd's word for the state.
    pub fn parse(word: &str) -> ActiveState {
        match word {
            "active" => ActiveState::Active,
            "reloading" => ActiveState::Reloading,
            "inactive" => ActiveState::Inactive,
            "failed" => ActiveState::Failed,
            "activating" => ActiveState::Activating,
            "deactivating" => ActiveState::Deactivating,
            other => ActiveState::Other(other.to_string()),
        }
    }

    /// systemd's word for the state.
    pub fn as_str(&self) -> &str {
        match self {
            ActiveState::Active => "active",
            ActiveState::Reloading => "reloading",
            ActiveState::Inactive => "inactive",
            ActiveState::Failed => "failed",
            ActiveState::Activating => "activating",
            ActiveState::Deactivating => "deactivating",
            ActiveState::Other(word) => word,
        }
    }
}

impl std::fmt::Display for ActiveState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ActiveState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A unit as systemd reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct UnitState {
    /// The unit name.
    pub name: String,
    /// systemd's `ActiveState`: `active`, `reloading`, `inactive`,
    /// `failed`, `activating`, `deactivating`, or a newer word systemd may
    /// add.
    #[schemars(with = "String")]
    pub active: ActiveState,
    /// `SubState`, which depends on the unit type (`listening`, `running`,
    /// `dead`, `auto-restart`, …): shown, never decided on.
    pub sub: String,
}

impl UnitState {
    /// How a unit systemd has not loaded is reported: inactive/dead.
    pub fn not_loaded(name: String) -> UnitState {
        UnitState {
            name,
            active: ActiveState::Inactive,
            sub: "dead".into(),
        }
    }

    /// Whether the unit is active or on its way there (a start must not
    /// replace it).
    pub fn is_up(&self) -> bool {
        matches!(
            self.active,
            ActiveState::Active | ActiveState::Activating | ActiveState::Reloading
        )
    }

    /// Whether the unit is active: a socket unit listening (or running its
    /// service), a service running.
    pub fn is_active(&self) -> bool {
        self.active == ActiveState::Active
    }

    /// Whether the unit has failed.
    pub fn has_failed(&self) -> bool {
        self.active == ActiveState::Failed
    }
}

/// A gate's two units as systemd reports them; `None` where systemd has no
/// such unit loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GateUnits {
    /// `gate-<slug>.socket`, holding the listening sockets.
    pub socket: Option<UnitState>,
    /// `gate-<slug>.service`, the forwarder, started at the first
    /// connection.
    pub service: Option<UnitState>,
}

impl GateUnits {
    /// Picks the units of `slug` out of `units`.
    pub fn of(slug: &Slug, units: &[UnitState]) -> GateUnits {
        let find = |name: String| units.iter().find(|u| u.name == name).cloned();
        GateUnits {
            socket: find(plan::socket_unit_name(slug)),
            service: find(plan::unit_name(slug)),
        }
    }

    /// The units that are loaded.
    pub fn loaded(&self) -> impl Iterator<Item = &UnitState> {
        self.socket.iter().chain(&self.service)
    }

    /// Whether either unit is active or on its way there.
    pub fn is_up(&self) -> bool {
        self.loaded().any(UnitState::is_up)
    }
}

/// A unit to start without waiting for it, after a transient unit's start
/// (see [`Systemd::start_transient`]).
#[derive(Debug, Clone, Copy)]
pub struct Prestart<'a> {
    /// The unit to start.
    pub unit: &'a str,
    /// Skip the start while a unit matching this pattern is activating:
    /// starts in a row would otherwise compete with each other's unit for
    /// systemd's time and the CPU.
    pub unless_activating: &'a str,
}

/// The D-Bus object path systemd gives unit `unit`
/// (`/org/freedesktop/systemd1/unit/` and the name with every byte but
/// an ASCII letter, or a digit after the first byte, as `_` and two lower
/// hex digits: systemd's `bus_label_escape`).
fn unit_object_path(unit: &str) -> Result<OwnedObjectPath> {
    let mut path = String::from("/org/freedesktop/systemd1/unit/");
    for (i, byte) in unit.bytes().enumerate() {
        if byte.is_ascii_alphabetic() || (i > 0 && byte.is_ascii_digit()) {
            path.push(char::from(byte));
        } else {
            path.push_str(&format!("_{byte:02x}"));
        }
    }
    OwnedObjectPath::try_from(path)
        .map_err(|e| Error::failed(format!("no D-Bus object path for {unit}: {e}")))
}

/// A connection to systemd's manager on the system bus.
pub struct Systemd {
    manager: ManagerProxy<'static>,
}

fn is_error(e: &zbus::Error, name: &str) -> bool {
    matches!(e, zbus::Error::MethodError(n, _, _) if n.as_str() == name)
}

const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";

/// The results of systemd jobs, read from systemd's `JobRemoved` signals.
///
/// zbus queues at most 64 signals per stream, and with that queue full it
/// reads nothing more from the bus, the reply to a pending call included.
/// Every job that finishes on the host is signalled to every subscriber, so
/// a stream left unpolled while a call waits for its reply deadlocks the
/// call under a burst of other units' jobs. A watch therefore reads the
/// signals during each call ([`JobWatch::during`]) as well as while waiting
/// ([`JobWatch::wait`]).
struct JobWatch {
    removed: JobRemovedStream,
    /// Jobs seen finishing while calls were in flight, with their results.
    finished: HashMap<OwnedObjectPath, String>,
}

impl JobWatch {
    /// Starts reading `JobRemoved` signals; create the watch before the
    /// call that creates the jobs, so none of their signals is missed.
    async fn new(manager: &ManagerProxy<'static>) -> Result<JobWatch> {
        let removed = manager
            .receive_job_removed()
            .await
            .context("cannot listen for systemd job signals")?;
        Ok(JobWatch {
            removed,
            finished: HashMap::new(),
        })
    }

    /// Runs `call` to its end, recording the jobs that finish meanwhile.
    async fn during<T>(&mut self, call: impl Future<Output = T>) -> Result<T> {
        tokio::pin!(call);
        loop {
            tokio::select! {
                biased;
                out = &mut call => return Ok(out),
                signal = self.removed.next() => {
                    let (job, result) = job_result(signal)?;
                    self.finished.insert(job, result);
                }
            }
        }
    }

    /// Waits until every job of `jobs` has finished and returns their
    /// results (`done`, `failed`, …) in the same order, or `None` after
    /// [`JOB_TIMEOUT`]. The watch ends here: a stream kept after its last
    /// poll would stall later calls the same way.
    async fn wait(mut self, jobs: &[OwnedObjectPath]) -> Result<Option<Vec<String>>> {
        let mut results: Vec<Option<String>> = jobs.iter().map(|job| self.finished.remove(job)).collect();
        let removed = &mut self.removed;
        let wait = async {
            while results.iter().any(Option::is_none) {
                let (job, result) = job_result(removed.next().await)?;
                if let Some(i) = jobs.iter().position(|j| *j == job) {
                    results[i] = Some(result);
                }
            }
            Ok(())
        };
        match tokio::time::timeout(JOB_TIMEOUT, wait).await {
            Ok(Ok(())) => Ok(Some(results.into_iter().flatten().collect())),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(None),
        }
    }
}

/// The job and result a `JobRemoved` signal carries; `None` (the end of the
/// stream) means the connection closed.
fn job_result(signal: Option<JobRemoved>) -> Result<(OwnedObjectPath, String)> {
    let signal = signal
        .ok_or_else(|| Error::failed("the D-Bus connection to systemd closed while waiting for a job"))?;
    let args = signal
        .args()
        .context("cannot decode a systemd JobRemoved signal")?;
    Ok((args.job, args.result))
}

/// Checks how the stop jobs of units ended, given as (unit, job result)
/// pairs: `Ok` if every job is `done` (the unit is stopped, or already was).
/// Otherwise the error names each unit whose job ended another way, what
/// that result means, and where to look before stopping the gate again.
fn stop_outcome(stopped: &[(&str, &str)]) -> Result<()> {
    let not_stopped: Vec<(&str, &str)> = stopped
        .iter()
        .copied()
        .filter(|(_, result)| *result != "done")
        .collect();
    if not_stopped.is_empty() {
        return Ok(());
    }
    let reasons: Vec<String> = not_stopped
        .iter()
        .map(|(unit, result)| {
            let meaning = match *result {
                "canceled" => "another job replaced the stop, so something started the unit again",
                "timeout" => "systemd's job timeout ran out",
                "failed" => "the unit failed while stopping",
                _ => "systemd did not carry out the stop",
            };
            format!("{unit} did not stop (job result: {result}: {meaning})")
        })
        .collect();
    let units: Vec<&str> = not_stopped.iter().map(|(unit, _)| *unit).collect();
    Err(Error::failed(format!(
        "{}; see `systemctl status {}` and `journalctl -u {}`, then stop the gate again",
        reasons.join("; "),
        units.join(" "),
        units.join(" -u ")
    )))
}

/// Waits for the start job `job` of `unit`; fails, naming the unit and the
/// job's result, unless it is `done`.
async fn started(watch: JobWatch, unit: &str, job: OwnedObjectPath) -> Result<()> {
    let results = watch.wait(std::slice::from_ref(&job)).await?.ok_or_else(|| {
        Error::failed(format!(
            "{unit} did not start within {}s; see `journalctl -u {unit}`",
            JOB_TIMEOUT.as_secs()
        ))
    })?;
    match results[0].as_str() {
        "done" => Ok(()),
        result => Err(Error::failed(format!(
            "{unit} failed to start (job result: {result}); see `journalctl -u {unit}`"
        ))),
    }
}

/// How long [`Systemd::connect`] keeps trying while the bus refuses a
/// connection for a passing reason (see [`refused_for_now`]).
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

/// Whether the bus refused a connection for a reason that passes: its
/// connections per user are used up (`LimitsExceeded`: dbus-daemon's
/// `max_connections_per_user`, 256 on the system bus), or it dropped the
/// connection during the handshake (beyond `max_incomplete_connections`, 64).
/// A bus that is not there (no socket, refused) is no such reason.
fn refused_for_now(e: &zbus::Error) -> bool {
    const LIMITS_EXCEEDED: &str = "org.freedesktop.DBus.Error.LimitsExceeded";
    match e {
        zbus::Error::MethodError(name, _, _) => name.as_str() == LIMITS_EXCEEDED,
        zbus::Error::FDO(e) => matches!(**e, zbus::fdo::Error::LimitsExceeded(_)),
        zbus::Error::InputOutput(io) => matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::BrokenPipe
        ),
        zbus::Error::Handshake(_) => true,
        _ => false,
    }
}

/// A connection to the system bus, tried again for up to
/// [`CONNECT_PATIENCE`] while the bus refuses it for a passing reason.
async fn system_bus() -> std::result::Result<zbus::Connection, zbus::Error> {
    let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
    let mut pause = Duration::from_millis(50);
    loop {
        let attempt = async {
            zbus::connection::Builder::system()?
                .method_timeout(CALL_TIMEOUT)
                .build()
                .await
        };
        match attempt.await {
            Err(e) if refused_for_now(&e) && tokio::time::Instant::now() + pause < deadline => {
                // spread the retries of many refused commands apart
                let jitter = Duration::from_millis(u64::from(std::process::id() % 50));
                tokio::time::sleep(pause + jitter).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

impl Systemd {
    /// Connects to the system bus. One connection serves every call.
    pub async fn connect() -> Result<Systemd> {
        let unreachable =
            "cannot connect to systemd over the system D-Bus; is systemd running as PID 1 and dbus up?";
        let connection = system_bus().await.context(unreachable)?;
        // No property cache: its PropertiesChanged stream is one more
        // queue that could fill; gatectl asks for what it needs.
        let manager = ManagerProxy::builder(&connection)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .context("cannot reach systemd's manager over D-Bus")?;
        manager
            .subscribe()
            .await
            .context("cannot subscribe to systemd job signals")?;
        Ok(Systemd { manager })
    }

    /// Starts transient unit `unit` with `properties`, defining the
    /// auxiliary units `aux` (name, properties) in the same call, and waits
    /// until the start job of `unit` finishes. For a socket unit that is
    /// when it listens; its service is started at the first connection,
    /// or, given as `then`, right away: its start is queued (see
    /// [`Systemd::queue_start`]) while the socket's job runs, and systemd
    /// runs it once the socket listens (a service is ordered after its
    /// socket). A failure to queue it is returned as the `Ok` value's
    /// error, for the caller to report: the socket starts it at the first
    /// connection anyway.
    pub async fn start_transient(
        &self,
        unit: &str,
        properties: &[Property],
        aux: &[(&str, &[Property])],
        then: Option<Prestart<'_>>,
    ) -> Result<Option<Error>> {
        let values = |props: &[Property]| -> Vec<(&'static str, Value<'static>)> {
            props.iter().map(|p| (p.name, p.value.to_value())).collect()
        };
        let main = values(properties);
        let aux_values: Vec<(&str, Vec<(&str, Value<'_>)>)> =
            aux.iter().map(|(name, props)| (*name, values(props))).collect();
        let aux_refs: Vec<(&str, &[(&str, Value<'_>)])> =
            aux_values.iter().map(|(name, v)| (*name, v.as_slice())).collect();
        // A failed unit of the same name would block the start with UnitExists.
        for name in std::iter::once(unit).chain(aux.iter().map(|(name, _)| *name)) {
            let _ = self.manager.reset_failed_unit(name).await;
        }
        let mut watch = JobWatch::new(&self.manager).await?;
        let job = watch
            .during(self.manager.start_transient_unit(unit, "fail", &main, &aux_refs))
            .await?
            .with_context(|| format!("cannot start {unit}"))?;
        let mut queued = None;
        if let Some(then) = then {
            let busy = watch.during(self.any_activating(then.unless_activating)).await?;
            queued = match busy {
                Ok(true) => None,
                Ok(false) => watch.during(self.queue_start(then.unit)).await?.err(),
                Err(e) => Some(e),
            };
        }
        started(watch, unit, job).await.map(|()| queued)
    }

    /// Whether a unit matching `pattern` is activating.
    async fn any_activating(&self, pattern: &str) -> Result<bool> {
        let units = self
            .manager
            .list_units_by_patterns(&["activating"], &[pattern])
            .await
            .context("cannot list units from systemd")?;
        Ok(!units.is_empty())
    }

    /// Stops `units` at once and waits for them all; a unit that does not
    /// exist is success. Fails, naming the unit, if a stop job ends other
    /// than `done` (see `stop_outcome`). Then clears failed states so the
    /// names are free again.
    pub async fn stop(&self, units: &[&str]) -> Result<()> {
        let mut watch = JobWatch::new(&self.manager).await?;
        let mut jobs = Vec::new();
        for unit in units {
            match watch.during(self.manager.stop_unit(unit, "replace")).await? {
                Ok(job) => jobs.push((*unit, job)),
                Err(e) if is_error(&e, NO_SUCH_UNIT) => {}
                Err(e) => return Err(e).with_context(|| format!("cannot stop {unit}")),
            }
        }
        let paths: Vec<OwnedObjectPath> = jobs.iter().map(|(_, job)| job.clone()).collect();
        let names: Vec<&str> = jobs.iter().map(|(unit, _)| *unit).collect();
        let Some(results) = watch.wait(&paths).await? else {
            return Err(Error::failed(format!(
                "{} did not stop within {}s; see `journalctl -u {}`",
                names.join(" and "),
                JOB_TIMEOUT.as_secs(),
                names.join(" -u ")
            )));
        };
        let stopped: Vec<(&str, &str)> = names
            .into_iter()
            .zip(results.iter().map(String::as_str))
            .collect();
        stop_outcome(&stopped)?;
        for unit in units {
            match self.manager.reset_failed_unit(unit).await {
                Ok(()) => {}
                Err(e) if is_error(&e, NO_SUCH_UNIT) => {}
                Err(e) => return Err(e).with_context(|| format!("cannot reset the failed state of {unit}")),
            }
        }
        Ok(())
    }

    /// Starts unit `name` and waits for its start job; fails, naming the
    /// unit and the job's result, unless it is `done`.
    pub async fn start(&self, name: &str) -> Result<()> {
        let mut watch = JobWatch::new(&self.manager).await?;
        let job = watch
            .during(self.manager.start_unit(name, "replace"))
            .await?
            .with_context(|| format!("cannot start {name}"))?;
        started(watch, name, job).await
    }

    /// Asks systemd to start unit `name` and returns once the job is queued,
    /// without waiting for it. Mode `fail`: a stop job queued for the unit
    /// is not replaced.
    pub async fn queue_start(&self, name: &str) -> Result<()> {
        self.manager
            .start_unit(name, "fail")
            .await
            .map(drop)
            .with_context(|| format!("cannot start {name}"))
    }

    /// Sends `signal` to the main process of unit `name`.
    pub async fn signal_main(&self, name: &str, signal: i32) -> Result<()> {
        self.manager
            .kill_unit(name, "main", signal)
            .await
            .with_context(|| format!("cannot signal {name}"))
    }

    /// Sets `properties` of unit `name` at run time (as `systemctl
    /// set-property --runtime` does: a list property is added to).
    pub async fn set_runtime_properties(&self, name: &str, properties: &[Property]) -> Result<()> {
        let values: Vec<(&str, Value<'static>)> =
            properties.iter().map(|p| (p.name, p.value.to_value())).collect();
        self.manager
            .set_unit_properties(name, true, &values)
            .await
            .with_context(|| format!("cannot change the properties of {name}"))
    }

    /// The state of unit `name` (inactive/dead when systemd has not
    /// loaded it).
    pub async fn unit_state(&self, name: &str) -> Result<UnitState> {
        Ok(self
            .units(name)
            .await?
            .into_iter()
            .find(|u| u.name == name)
            .unwrap_or_else(|| UnitState::not_loaded(name.to_string())))
    }

    /// The loaded `gatectl@<slug>.service` units (an enabled one is loaded,
    /// since a target wants it), each with its unit file state (`enabled`,
    /// `disabled`, `static`, …).
    pub async fn manager_units(&self) -> Result<Vec<(UnitState, String)>> {
        let mut units = Vec::new();
        for unit in self.units("gatectl@*.service").await? {
            let file_state = match self.manager.get_unit_file_state(&unit.name).await {
                Ok(state) => state,
                Err(e) if is_error(&e, NO_SUCH_UNIT) => "unknown".to_string(),
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot read the unit file state of {}", unit.name))
                }
            };
            units.push((unit, file_state));
        }
        Ok(units)
    }

    /// systemd's version, e.g. `252.30-1~deb12u2`.
    pub async fn version(&self) -> Result<String> {
        self.manager
            .version()
            .await
            .context("cannot read systemd's version over D-Bus")
    }

    /// Loaded units matching the glob `pattern`, with their states.
    async fn units(&self, pattern: &str) -> Result<Vec<UnitState>> {
        let units = self
            .manager
            .list_units_by_patterns(&[], &[pattern])
            .await
            .context("cannot list units from systemd")?;
        Ok(units
            .into_iter()
            .map(|u| UnitState {
                name: u.0,
                active: ActiveState::parse(&u.3),
                sub: u.4,
            })
            .collect())
    }

    /// Every property of service unit `unit` (the `Service` interface,
    /// which includes its execution and cgroup settings), as systemd holds
    /// them now.
    pub async fn service_properties(&self, unit: &str) -> Result<HashMap<String, OwnedValue>> {
        self.service_properties_as(unit).await
    }

    /// The properties of service unit `unit` as systemd holds them now, read
    /// into `T` straight from systemd's answer (an `a{sv}`): a `T` that
    /// keeps a few of the unit's ~300 properties skips the rest unparsed.
    pub async fn service_properties_as<T>(&self, unit: &str) -> Result<T>
    where
        T: for<'d> serde::Deserialize<'d> + zbus::zvariant::Type,
    {
        // The unit's object path, without a LoadUnit call first: systemd
        // loads a unit when its object is asked for, as LoadUnit would (it
        // may have unloaded a forwarder that has not run yet, and loading
        // reads what its next start would run with: its transient file and
        // the drop-ins). One call per unit instead of two.
        let path = unit_object_path(unit)?;
        let reply = self
            .manager
            .inner()
            .connection()
            .call_method(
                Some("org.freedesktop.systemd1"),
                path,
                Some("org.freedesktop.DBus.Properties"),
                "GetAll",
                &("org.freedesktop.systemd1.Service",),
            )
            .await
            .with_context(|| format!("cannot read the properties of {unit}"))?;
        reply
            .body()
            .deserialize()
            .with_context(|| format!("cannot decode the properties of {unit}"))
    }

    /// The units of the gate of `slug`, in one call.
    pub async fn gate_units(&self, slug: &Slug) -> Result<GateUnits> {
        let units = self.units(&format!("{}{slug}.*", plan::GATE_PREFIX)).await?;
        Ok(GateUnits::of(slug, &units))
    }

    /// Every loaded unit of every gate.
    pub async fn all_gate_units(&self) -> Result<Vec<UnitState>> {
        self.units(&format!("{}*", plan::GATE_PREFIX)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_units_object_path_escapes_as_systemd_does() {
        for (unit, path) in [
            ("gate-alice.service", "gate_2dalice_2eservice"),
            ("gate-a1_b.socket", "gate_2da1_5fb_2esocket"),
            ("1st.service", "_31st_2eservice"),
            ("gatectl@alice.service", "gatectl_40alice_2eservice"),
        ] {
            assert_eq!(
                unit_object_path(unit).unwrap().as_str(),
                format!("/org/freedesktop/systemd1/unit/{path}")
            );
        }
    }

    /// Units with the results of their stop jobs.
    type Stopped<'a> = &'a [(&'a str, &'a str)];

    #[test]
    fn only_a_full_or_busy_bus_is_tried_again() {
        use std::io::{Error as IoError, ErrorKind};
        use std::sync::Arc;
        let limits = zbus::Error::FDO(Box::new(zbus::fdo::Error::LimitsExceeded(
            "The maximum number of active connections for UID 0 has been reached".into(),
        )));
        assert!(refused_for_now(&limits));
        let reset = zbus::Error::InputOutput(Arc::new(IoError::from(ErrorKind::ConnectionReset)));
        assert!(refused_for_now(&reset));
        let absent = zbus::Error::InputOutput(Arc::new(IoError::from(ErrorKind::NotFound)));
        assert!(!refused_for_now(&absent));
        let refused = zbus::Error::InputOutput(Arc::new(IoError::from(ErrorKind::ConnectionRefused)));
        assert!(!refused_for_now(&refused));
        let denied = zbus::Error::FDO(Box::new(zbus::fdo::Error::AccessDenied("no".into())));
        assert!(!refused_for_now(&denied));
    }

    #[test]
    fn a_stop_succeeds_only_when_every_job_is_done() {
        let ok: [Stopped; 3] = [
            &[],
            &[("gate-a.socket", "done")],
            &[("gate-a.socket", "done"), ("gate-a.service", "done")],
        ];
        for stopped in ok {
            assert!(stop_outcome(stopped).is_ok(), "{stopped:?}");
        }
        let refused: [(Stopped, &[&str]); 5] = [
            (
                &[("gate-a.socket", "done"), ("gate-a.service", "canceled")],
                &["gate-a.service did not stop (job result: canceled: another job replaced the stop"],
            ),
            (
                &[("gate-a.socket", "timeout")],
                &["gate-a.socket did not stop (job result: timeout: systemd's job timeout ran out)"],
            ),
            (
                &[("gate-a.socket", "failed")],
                &["gate-a.socket did not stop (job result: failed: the unit failed while stopping)"],
            ),
            (
                &[("gate-a.socket", "dependency")],
                &["(job result: dependency: systemd did not carry out the stop)"],
            ),
            (
                &[("gate-a.socket", "failed"), ("gate-a.service", "canceled")],
                &[
                    "gate-a.socket did not stop (job result: failed",
                    "; gate-a.service did not stop (job result: canceled",
                    "see `systemctl status gate-a.socket gate-a.service` and \
                     `journalctl -u gate-a.socket -u gate-a.service`, then stop the gate again",
                ],
            ),
        ];
        for (stopped, wants) in refused {
            let message = stop_outcome(stopped).unwrap_err().to_string();
            for want in wants {
                assert!(message.contains(want), "{stopped:?}: {message}");
            }
            assert!(
                message.contains("then stop the gate again"),
                "{stopped:?}: {message}"
            );
            for (unit, result) in stopped {
                assert_eq!(
                    message.contains(&format!("{unit} did not stop")),
                    *result != "done",
                    "{stopped:?}: {message}"
                );
            }
        }
    }
}
