//! Named network namespaces, compatible with iproute2's `ip netns`: a bind
//! mount of the namespace under `/run/netns/<name>`.
//!
//! Namespace switches happen only on short-lived dedicated threads, never on
//! a tokio worker, so the rest of the process stays in the root namespace.

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::error::{Context, Error, Result};
use crate::plan::NETNS_DIR;

/// Opens a network namespace file (a `/run/netns` entry or `/proc/PID/ns/net`)
/// for use with `setns` or as a netlink `IFLA_NET_NS_FD`.
pub fn open(path: &Path) -> Result<OwnedFd> {
    // Refuse anything that is not a namespace before opening it: opening a
    // FIFO would hang and opening a device can have side effects.
    if !is_nsfs(path) {
        return Err(Error::invalid(format!(
            "{} is not a network namespace (a /run/netns entry or /proc/PID/ns/net)",
            path.display()
        )));
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("cannot open network namespace {}", path.display()))?;
    Ok(file.into())
}

/// Whether a named namespace is mounted under `/run/netns`.
pub fn exists(name: &str) -> bool {
    let path = Path::new(NETNS_DIR).join(name);
    path.exists() && is_nsfs(&path)
}

fn is_nsfs(path: &Path) -> bool {
    // NSFS_MAGIC: the file is a bind mount of a namespace, not a leftover.
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == NSFS_MAGIC)
        .unwrap_or(false)
}

/// Creates the named namespace `name`, like `ip netns add`, and returns an
/// open handle to it. Fails if the name is taken.
pub fn create(name: &str) -> Result<OwnedFd> {
    prepare_netns_dir()?;
    let path = Path::new(NETNS_DIR).join(name);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::failed(format!(
                "network namespace {} already exists; run `gatectl stop` for its gate",
                path.display()
            )),
            _ => Error::Io {
                context: format!("cannot create {}", path.display()),
                source: e,
            },
        })?;
    let target = path.clone();
    let result = std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).context("cannot create a network namespace (unshare)")?;
        mount(
            Some(Path::new("/proc/thread-self/ns/net")),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("cannot bind-mount the new namespace on {}", target.display()))
    })
    .join()
    .unwrap_or_else(|_| Err(Error::failed("the namespace thread panicked")));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    open(&path)
}

/// Makes `/run/netns` exist and be a shared mount point, as iproute2 does, so
/// namespace mounts propagate to every mount namespace (systemd units too).
fn prepare_netns_dir() -> Result<()> {
    let dir = Path::new(NETNS_DIR);
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            // Not a mount point yet: bind it onto itself, then share it.
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .with_context(|| format!("cannot bind-mount {} onto itself", dir.display()))?;
            shared().with_context(|| format!("cannot make {} a shared mount", dir.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot make {} a shared mount", dir.display())),
    }
}

/// Deletes the named namespace, like `ip netns del`. A namespace that is
/// already gone is success. The namespace itself lives on while a process
/// or descriptor still holds it.
pub fn delete(name: &str) -> Result<()> {
    let path: PathBuf = Path::new(NETNS_DIR).join(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::ENOENT) | Err(Errno::EINVAL) => {}
        Err(e) => return Err(e).with_context(|| format!("cannot unmount {}", path.display())),
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// Names of the namespaces under `/run/netns` that start with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Runs `f` once for each `(namespace, item)` of `work`, in order, on one
/// fresh thread that joins each namespace in turn (one thread for all of
/// them, where [`run_in`] costs one per namespace), and returns the results
/// in the same order. The calling thread never changes namespace.
pub fn run_in_each<W: Send + 'static, T: Send + 'static>(
    work: Vec<(OwnedFd, W)>,
    f: impl Fn(W) -> Result<T> + Send + 'static,
) -> Vec<Result<T>> {
    let count = work.len();
    std::thread::spawn(move || {
        work.into_iter()
            .map(|(ns, item)| {
                setns(&ns, CloneFlags::CLONE_NEWNET).context("cannot enter the network namespace (setns)")?;
                f(item)
            })
            .collect()
    })
    .join()
    .unwrap_or_else(|_| {
        (0..count)
            .map(|_| Err(Error::failed("a namespace thread panicked")))
            .collect()
    })
}

/// Runs `f` on a fresh thread that has joined the namespace `ns`, and
/// returns its result. The calling thread never changes namespace.
pub fn run_in<T: Send + 'static>(ns: &OwnedFd, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let ns = ns
        .try_clone()
        .context("cannot duplicate a namespace descriptor")?;
    std::thread::spawn(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET).context("cannot enter the network namespace (setns)")?;
        f()
    })
    .join()
    .unwrap_or_else(|_| Err(Error::failed("a namespace thread panicked")))
}
