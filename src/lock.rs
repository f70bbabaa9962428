//! Advisory locks (flock) under the state directory: one per slug, and one
//! global lock held while a gate index is allocated.

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
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open lock {}; gatectl must run as root", path.display()))?;
    let flock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .with_context(|| format!("cannot take lock {}", path.display()))?;
    Ok(LockGuard { _flock: flock })
}

/// Serialises every operation on one slug's gate.
pub fn lock_slug(state_dir: &Path, slug: &Slug) -> Result<LockGuard> {
    lock(&state_dir.join("locks").join(format!("{slug}.lock")))
}

/// Serialises the allocation of gate indexes across all slugs.
pub fn lock_allocation(state_dir: &Path) -> Result<LockGuard> {
    lock(&state_dir.join("locks").join("allocation.lock"))
}
