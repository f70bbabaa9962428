//! Advisory locks (flock) under the state directory: the work slots that
//! bound how many start, stop and reload commands work at once, one lock per
//! slug, one held while a gate index is allocated, and the host lock held by
//! whatever reads or changes host-wide state (see `crate::host`).
//!
//! Order: a process holding the host lock takes no other lock, so the order
//! is always work slot, then slug, then allocation, then host, and two
//! gatectl commands never wait for each other in a circle. A command that
//! waits for another gatectl (a `stop` of a gate that `gatectl@SLUG` runs
//! waits for the unit's `ExecStop=`) lets its slot go first.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, Flock, FlockArg};

use crate::error::{Context, Result};
use crate::slug::Slug;

/// A held lock; released when dropped (or when the process dies).
pub struct LockGuard {
    _flock: Flock<File>,
}

fn lock(path: &Path) -> Result<LockGuard> {
    take(path, FlockArg::LockExclusive)?
        .ok_or_else(|| crate::Error::failed(format!("lock {} is busy", path.display())))
}

/// Takes the lock at `path`; with a non-blocking `arg`, `None` if it is held.
fn take(path: &Path, arg: FlockArg) -> Result<Option<LockGuard>> {
    take_open(open_lock_file(path)?, path, arg)
}

/// Opens (creating it and its directory if need be) the lock file `path`.
fn open_lock_file(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open lock {}; gatectl must run as root", path.display()))
}

/// Takes the lock of the open lock file `file` (at `path`); with a
/// non-blocking `arg`, `None` if it is held.
fn take_open(file: File, path: &Path, arg: FlockArg) -> Result<Option<LockGuard>> {
    match Flock::lock(file, arg) {
        Ok(flock) => Ok(Some(LockGuard { _flock: flock })),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(errno).with_context(|| format!("cannot take lock {}", path.display())),
    }
}

/// Serialises every operation on one slug's gate.
pub fn lock_slug(state_dir: &Path, slug: &Slug) -> Result<LockGuard> {
    lock(&slug_lock_path(state_dir, slug))
}

/// Takes the lock of one slug if nobody holds it: `None` means a gatectl
/// is starting or stopping that gate right now.
pub fn try_lock_slug(state_dir: &Path, slug: &Slug) -> Result<Option<LockGuard>> {
    take(&slug_lock_path(state_dir, slug), FlockArg::LockExclusiveNonblock)
}

/// Whether a gatectl holds the lock of `slug` right now (starting or
/// stopping that gate). Only looks: creates no lock file, holds nothing.
pub fn slug_busy(state_dir: &Path, slug: &Slug) -> bool {
    let path = slug_lock_path(state_dir, slug);
    File::open(&path)
        .is_ok_and(|file| matches!(take_open(file, &path, FlockArg::LockExclusiveNonblock), Ok(None)))
}

fn slug_lock_path(state_dir: &Path, slug: &Slug) -> std::path::PathBuf {
    state_dir.join("locks").join(format!("{slug}.lock"))
}

/// Serialises every read-decide-change of host-wide state: IPv4
/// forwarding, gatectl's forwarding rules and marker, and the base chains
/// of the host table. Taken last, held briefly.
pub fn lock_host(state_dir: &Path) -> Result<LockGuard> {
    lock(&state_dir.join("locks").join("host.lock"))
}

/// How many `start`, `stop` and `reload` commands do their work at once on a
/// host; the others wait for a slot before they read a manifest, resolve a
/// name or connect to D-Bus.
///
/// At boot systemd starts every enabled `gatectl@` unit at the same moment.
/// Unbounded, 2,000 of them open 2,000 connections to the system bus, whose
/// dbus-daemon accepts 256 per user (`max_connections_per_user`): the rest
/// fail with `LimitsExceeded`, and systemd's own connection, refused as
/// well, never takes its bus name, so even the admitted ones time out. Each
/// connection also receives every other start's `JobRemoved` signals (a
/// cost that grows with the square of the starts at once). 16 is far below
/// the bus's limit, leaving room for systemd and other root clients; it is
/// not tuned further (BENCHMARKS.md, the boot rows: the boot of 2,000 gates
/// is bound by CPU, systemd's share included).
pub const WORK_SLOTS: usize = 16;

/// While a command waits for a work slot under systemd (`gatectl@`'s
/// `ExecStart=`, `ExecStop=`, `ExecReload=`, with `NotifyAccess=all`), it
/// tells systemd every [`WAIT_NOTICE`] that the job is alive
/// (`EXTEND_TIMEOUT_USEC`): the time a unit waits for its turn at boot grows
/// with the number of gates and must not count against its start timeout.
const WAIT_NOTICE: Duration = Duration::from_secs(10);

/// The time a command's work has, under systemd, once it holds its slot: as
/// long as systemd's default start timeout.
const WORK_TIME: Duration = Duration::from_secs(90);

/// A held work slot; released when dropped (or when the process dies).
pub struct WorkSlot {
    _file: File,
}

/// Takes one of the [`WORK_SLOTS`] host-wide work slots, waiting for one if
/// all are taken: tries each once, starting at a slot chosen by the process
/// id (so waiters spread over the slots), then waits for that first one.
///
/// The slots are the first bytes of one file, `locks/work.lock`, each locked
/// with an open file description lock (`F_OFD_SETLK`): no file per slot,
/// so after the first command the state directory looks the same whichever
/// slots are in use.
pub fn take_work_slot(state_dir: &Path) -> Result<WorkSlot> {
    let path = state_dir.join("locks").join("work.lock");
    let file = open_lock_file(&path)?;
    let first = std::process::id() as usize % WORK_SLOTS;
    for i in 0..WORK_SLOTS {
        if lock_byte(&file, &path, (first + i) % WORK_SLOTS, false)? {
            return Ok(WorkSlot { _file: file });
        }
    }
    // A caller under systemd (a `gatectl@` unit) has its job kept alive
    // below; any other caller is told why nothing happens yet.
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        eprintln!(
            "gatectl: note: {WORK_SLOTS} gatectl commands are starting, stopping or reloading gates on \
             this host; waiting until one of them is done"
        );
    }
    let (taken, notices) = mpsc::channel::<()>();
    let extend = |by: Duration| {
        let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
        let _ = sd_notify::notify(&[sd_notify::NotifyState::ExtendTimeoutUsec(usec)]);
    };
    let notifier = std::env::var_os("NOTIFY_SOCKET").map(|_| {
        thread::spawn(move || loop {
            extend(WAIT_NOTICE * 3);
            // until the slot is taken (the sender dropped)
            if notices.recv_timeout(WAIT_NOTICE) != Err(RecvTimeoutError::Timeout) {
                break;
            }
        })
    });
    let locked = lock_byte(&file, &path, first, true);
    drop(taken);
    if let Some(notifier) = notifier {
        let _ = notifier.join();
        extend(WORK_TIME);
    }
    locked?;
    Ok(WorkSlot { _file: file })
}

/// Locks byte `slot` of `file` (at `path`) for writing with an open file
/// description lock, waiting if `wait`; without `wait`, `false` if another
/// holds it.
fn lock_byte(file: &File, path: &Path, slot: usize, wait: bool) -> Result<bool> {
    // SAFETY: flock is a plain C struct; all-zero is a valid value.
    let mut range: libc::flock = unsafe { std::mem::zeroed() };
    range.l_type = libc::F_WRLCK as libc::c_short;
    range.l_whence = libc::SEEK_SET as libc::c_short;
    range.l_start = slot as libc::off_t;
    range.l_len = 1;
    loop {
        let arg = if wait {
            FcntlArg::F_OFD_SETLKW(&range)
        } else {
            FcntlArg::F_OFD_SETLK(&range)
        };
        match fcntl(file, arg) {
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN | Errno::EACCES) if !wait => return Ok(false),
            Err(errno) => {
                return Err(errno)
                    .with_context(|| format!("cannot take work slot {slot} of {}", path.display()))
            }
        }
    }
}

/// Serialises the allocation of gate indexes across all slugs.
pub fn lock_allocation(state_dir: &Path) -> Result<LockGuard> {
    lock(&state_dir.join("locks").join("allocation.lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_past_the_work_slots_waits_until_one_is_free() {
        let dir = std::env::temp_dir().join(format!("gatectl-lock-slots-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Each take opens the lock file anew: flock excludes across open
        // files, in one process too.
        let mut held: Vec<WorkSlot> = (0..WORK_SLOTS).map(|_| take_work_slot(&dir).unwrap()).collect();
        let waiter = {
            let dir = dir.clone();
            thread::spawn(move || take_work_slot(&dir).map(|_| ()))
        };
        thread::sleep(Duration::from_millis(200));
        assert!(!waiter.is_finished(), "a command took a slot beyond {WORK_SLOTS}");
        // The waiter waits for the slot its pid picks: the first one taken.
        drop(held.remove(0));
        waiter.join().unwrap().unwrap();
        drop(held);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
