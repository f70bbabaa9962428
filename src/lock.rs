//! Advisory locks (flock) under the state directory: one per slug, one held
//! while a gate index is allocated, and the host lock held by whatever reads
//! or changes host-wide state (see `crate::host`).
//!
//! Order: a process holding the host lock takes no other lock, so the order
//! is always slug, then allocation, then host, and two gatectl commands
//! never wait for each other in a circle.

use std::fs::{File, OpenOptions};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

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
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open lock {}; gatectl must run as root", path.display()))?;
    take_open(file, path, arg)
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

/// Serialises the allocation of gate indexes across all slugs.
pub fn lock_allocation(state_dir: &Path) -> Result<LockGuard> {
    lock(&state_dir.join("locks").join("allocation.lock"))
}
