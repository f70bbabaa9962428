//! Live counters of a forwarder, per gate and per entry, and the channel
//! `gatectl status` reads them through.
//!
//! The forwarder keeps the counters in atomics (a connection costs a few
//! relaxed increments and one short lock to find its entry). It answers
//! every connection to the abstract Unix socket [`SOCKET`] with one JSON
//! document of them and closes it; it reads nothing. Abstract sockets
//! belong to a network namespace, so only a process in the gate netns
//! reaches it: the forwarder itself, and root entering the netns (as
//! `gatectl status` does). The agent, in its own netns or in the host's,
//! cannot; the forwarder needs no file, no privilege and no address family
//! beyond the `AF_UNIX` it has for `sd_notify`.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::linux::net::SocketAddrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::refuse::Refusal;
use crate::error::{Context, Error, Result};

/// The abstract socket name (`@gatectl-forward-stats`) a forwarder serves
/// its counters on, in its gate netns.
pub const SOCKET: &str = "gatectl-forward-stats";

/// How long a reader of the counters may take, each way.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The most bytes of counters a reader accepts.
const MAX_DOCUMENT: u64 = 4 << 20;

/// The last error met, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LastError {
    /// When it happened, in seconds since the Unix epoch.
    pub at: u64,
    /// What happened: the refusal the agent got, or why a relay failed.
    pub message: String,
}

/// Connections refused since the forwarder started, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Refusals {
    /// No upstream address accepted the connection (refused, timed out,
    /// unreachable).
    pub upstream: u64,
    /// The connection limit (`max_connections`) was reached.
    pub limit: u64,
    /// A reload removed the entry while the connection waited for its
    /// upstream.
    pub revoked: u64,
    /// The forwarder stopped while the connection waited for its upstream.
    pub stopping: u64,
}

impl Refusals {
    /// Every reason with its count, in a fixed order.
    pub fn by_reason(&self) -> [(&'static str, u64); 4] {
        [
            ("upstream", self.upstream),
            ("limit", self.limit),
            ("revoked", self.revoked),
            ("stopping", self.stopping),
        ]
    }

    /// All refusals.
    pub fn total(&self) -> u64 {
        self.by_reason().iter().map(|(_, n)| n).sum()
    }

    /// The reasons that occurred with their counts, e.g. `upstream 2, limit 1`.
    pub fn summary(&self) -> String {
        let each: Vec<String> = self
            .by_reason()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(why, n)| format!("{why} {n}"))
            .collect();
        each.join(", ")
    }
}

/// The counters of one entry (by alias) since the forwarder started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EntryStats {
    /// The entry's alias (`Host` in the manifest).
    pub alias: String,
    /// Connections open now.
    pub active: u64,
    /// Connections accepted and served (refused at the limit not included).
    pub total: u64,
    /// Bytes relayed from the agent to the upstream, by connections that
    /// have closed.
    pub bytes_up: u64,
    /// Bytes relayed from the upstream to the agent, by connections that
    /// have closed.
    pub bytes_down: u64,
    /// The last error of a connection to this entry, if any.
    pub last_error: Option<LastError>,
}

/// The live counters of one gate's forwarder since it started: the sums
/// over its entries, its refusals by reason, and each entry's own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ForwarderStats {
    /// Connections open now.
    pub active: u64,
    /// Connections accepted and served (refused at the limit not included).
    pub total: u64,
    /// Bytes from the agent to the upstreams, by connections that have
    /// closed.
    pub bytes_up: u64,
    /// Bytes from the upstreams to the agent, by connections that have
    /// closed.
    pub bytes_down: u64,
    /// Connections refused, by reason; each got an SSH disconnect message
    /// saying why.
    pub refused: Refusals,
    /// The last error of any connection, if any.
    pub last_error: Option<LastError>,
    /// Each entry served since the forwarder started, by alias.
    pub entries: Vec<EntryStats>,
}

/// The live counters of one entry.
#[derive(Debug, Default)]
pub struct EntryLive {
    active: AtomicU64,
    total: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    last_error: Mutex<Option<LastError>>,
}

impl EntryLive {
    /// Counts a connection that opens.
    pub fn opened(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection that closed after relaying `up` and `down` bytes.
    pub fn closed(&self, up: u64, down: u64) {
        self.bytes_up.fetch_add(up, Ordering::Relaxed);
        self.bytes_down.fetch_add(down, Ordering::Relaxed);
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The live counters of one forwarder.
#[derive(Debug, Default)]
pub struct Live {
    entries: Mutex<BTreeMap<String, Arc<EntryLive>>>,
    refused: [AtomicU64; 4],
    last_error: Mutex<Option<LastError>>,
}

impl Live {
    /// The counters of the entry `alias`, created at its first use.
    pub fn entry(&self, alias: &str) -> Arc<EntryLive> {
        let mut entries = self.entries.lock().expect("stats lock");
        if let Some(entry) = entries.get(alias) {
            return Arc::clone(entry);
        }
        Arc::clone(entries.entry(alias.to_string()).or_default())
    }

    /// Counts a refusal of `why`.
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Notes `message` as the last error of the gate, and of `entry`.
    pub fn error(&self, entry: &EntryLive, message: &str) {
        let error = LastError {
            at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            message: message.to_string(),
        };
        *entry.last_error.lock().expect("stats lock") = Some(error.clone());
        *self.last_error.lock().expect("stats lock") = Some(error);
    }

    /// The counters now.
    pub fn snapshot(&self) -> ForwarderStats {
        let count = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let entries: Vec<EntryStats> = self
            .entries
            .lock()
            .expect("stats lock")
            .iter()
            .map(|(alias, e)| EntryStats {
                alias: alias.clone(),
                active: count(&e.active),
                total: count(&e.total),
                bytes_up: count(&e.bytes_up),
                bytes_down: count(&e.bytes_down),
                last_error: e.last_error.lock().expect("stats lock").clone(),
            })
            .collect();
        let refused = |why: Refusal| count(&self.refused[why as usize]);
        ForwarderStats {
            active: entries.iter().map(|e| e.active).sum(),
            total: entries.iter().map(|e| e.total).sum(),
            bytes_up: entries.iter().map(|e| e.bytes_up).sum(),
            bytes_down: entries.iter().map(|e| e.bytes_down).sum(),
            refused: Refusals {
                upstream: refused(Refusal::Upstream),
                limit: refused(Refusal::Limit),
                revoked: refused(Refusal::Revoked),
                stopping: refused(Refusal::Stopping),
            },
            last_error: self.last_error.lock().expect("stats lock").clone(),
            entries,
        }
    }
}

/// Answers every connection to the abstract socket `name` with the
/// counters of `live` as JSON, one reader at a time, until the forwarder
/// exits. A socket that cannot be bound is logged and the forwarder goes on
/// without it.
pub async fn serve(name: String, live: Arc<Live>) {
    let listener = match bind(&name) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!(error = %e, "gatectl status cannot show this gate's counters: {e}");
            return;
        }
    };
    loop {
        let Ok((mut reader, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let document = serde_json::to_vec(&live.snapshot()).expect("counters serialize");
        let _ = tokio::time::timeout(TIMEOUT, async {
            reader.write_all(&document).await?;
            reader.shutdown().await
        })
        .await;
    }
}

/// `n` bytes in a short form: `512 B`, `1.5 KiB`, `20.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `secs` since the Unix epoch as a UTC time, `2026-12-07T05:50:01Z`.
pub fn utc(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 >= 0.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The listener on the abstract socket `name`.
fn bind(name: &str) -> Result<tokio::net::UnixListener> {
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)
        .with_context(|| format!("naming the abstract socket @{name}"))?;
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr)
        .with_context(|| format!("listening on the abstract socket @{name}"))?;
    listener
        .set_nonblocking(true)
        .context("making the counters socket non-blocking")?;
    tokio::net::UnixListener::from_std(listener).context("registering the counters socket")
}

/// Reads the counters served on the abstract socket `name` of the calling
/// thread's network namespace (blocking, at most [`TIMEOUT`] each way).
pub fn read(name: &str) -> Result<ForwarderStats> {
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)
        .with_context(|| format!("naming the abstract socket @{name}"))?;
    let stream = std::os::unix::net::UnixStream::connect_addr(&addr)
        .with_context(|| format!("connecting to the forwarder's counters (@{name})"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .context("setting a read timeout")?;
    let mut document = Vec::new();
    stream
        .take(MAX_DOCUMENT)
        .read_to_end(&mut document)
        .context("reading the forwarder's counters")?;
    serde_json::from_slice(&document)
        .map_err(|e| Error::failed(format!("the forwarder's counters are not valid: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_entries_and_keeps_the_last_error() {
        let live = Live::default();
        let github = live.entry("github");
        github.opened();
        github.opened();
        github.closed(10, 20);
        let gitlab = live.entry("gitlab");
        gitlab.opened();
        gitlab.closed(1, 2);
        live.error(&gitlab, "refused");
        live.refused(Refusal::Upstream);
        live.refused(Refusal::Limit);
        live.refused(Refusal::Limit);
        let stats = live.snapshot();
        assert_eq!(
            (stats.active, stats.total, stats.bytes_up, stats.bytes_down),
            (1, 3, 11, 22)
        );
        assert_eq!(
            stats.refused.by_reason(),
            [("upstream", 1), ("limit", 2), ("revoked", 0), ("stopping", 0)]
        );
        assert_eq!(stats.refused.total(), 3);
        assert_eq!(stats.last_error.as_ref().unwrap().message, "refused");
        assert_eq!(stats.entries.len(), 2);
        assert_eq!(stats.entries[0].alias, "github");
        assert_eq!((stats.entries[0].active, stats.entries[0].total), (1, 2));
        assert_eq!(stats.entries[0].last_error, None);
        assert_eq!(stats.entries[1].last_error, stats.last_error);
    }

    #[test]
    fn bytes_are_short() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
        assert_eq!(bytes(u64::MAX), "16777216.0 TiB");
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_622_601), "2026-12-07T05:50:01Z");
        assert_eq!(utc(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[tokio::test]
    async fn serves_the_counters_on_an_abstract_socket() {
        let name = format!("gatectl-test-stats-{}", std::process::id());
        let live = Arc::new(Live::default());
        live.entry("github").opened();
        let server = tokio::spawn(serve(name.clone(), Arc::clone(&live)));
        let read = loop {
            let name = name.clone();
            match tokio::task::spawn_blocking(move || read(&name)).await.unwrap() {
                Ok(stats) => break stats,
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(read, live.snapshot());
        assert_eq!(read.active, 1);
        server.abort();
    }
}
