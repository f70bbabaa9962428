//! Pipes for the zero-copy data path: `splice(2)` moves bytes from a socket
//! into a pipe and from the pipe into the other socket without copying them
//! through user space (as systemd-socket-proxyd and pasta do).
//!
//! A direction of a connection holds a pipe only while bytes are in flight:
//! it takes one from the forwarder's [`PipePool`] when its source has data
//! and gives it back once the pipe is empty again. An idle ssh session holds
//! no pipe, so a forwarder with many quiet connections needs few pipes, and
//! the pipes of a burst are reused instead of created per connection.
//!
//! The pool never creates more pipes than the file-descriptor limit leaves
//! room for once every allowed connection has its two sockets, so accepting
//! never fails for want of descriptors before `--max-connections` is reached.
//! When the pool is empty, or `splice` is unavailable, the relay copies that
//! chunk through a buffer instead (see `relay`).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use nix::sys::resource::{getrlimit, Resource};

/// Capacity asked for each pipe (`F_SETPIPE_SZ`), unless `gatectl forward
/// --pipe-size` says otherwise. Measured in BENCHMARKS.md: 256 KiB
/// gives all of the throughput of 1 MiB pipes at a quarter of the kernel
/// memory a busy connection can pin.
pub const DEFAULT_PIPE_SIZE: usize = 256 * 1024;

/// File descriptors kept free for everything but connections and pipes:
/// listeners, the journal and notify sockets, epoll, eventfd, stdio.
const RESERVED_FDS: u64 = 32;

/// The flags of every `splice` call: never block (readiness comes from
/// tokio), and move pages rather than copy them where the kernel can.
fn flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK
}

/// The pipes of one forwarder, shared by all its connections.
#[derive(Debug)]
pub struct PipePool {
    /// Capacity asked for each new pipe.
    size: usize,
    /// Most pipes that may exist at once.
    limit: usize,
    /// Pipes that exist now, in use or free.
    created: AtomicUsize,
    /// Empty pipes ready for reuse.
    free: Mutex<Vec<Pipe>>,
    /// Set once `pipe2` or `splice` turned out not to work here.
    disabled: AtomicBool,
}

impl PipePool {
    /// A pool of pipes of `size` bytes, at most `limit` of them.
    pub fn new(size: usize, limit: usize) -> PipePool {
        PipePool {
            size,
            limit,
            created: AtomicUsize::new(0),
            free: Mutex::new(Vec::new()),
            disabled: AtomicBool::new(false),
        }
    }

    /// The pool of a forwarder allowing `max_connections` connections: pipes
    /// of `size` bytes, as many as the file-descriptor limit leaves room for
    /// (two per connection at most).
    pub fn for_forwarder(size: usize, max_connections: u32) -> PipePool {
        let limit = pipe_budget(open_files_limit(), max_connections);
        if limit < 2 * max_connections as usize {
            tracing::debug!(
                pipes = limit,
                "the file-descriptor limit allows {limit} splice pipes for {max_connections} connections; \
                 the rest of the traffic is copied"
            );
        }
        PipePool::new(size, limit)
    }

    /// Takes a pipe: a free one, else a new one while the limit allows.
    /// `None` means the caller copies this chunk instead.
    pub fn take(&self) -> Option<Lease<'_>> {
        if self.disabled.load(Ordering::Relaxed) {
            return None;
        }
        let reused = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let pipe = match reused {
            Some(pipe) => pipe,
            None => {
                let reserved = self
                    .created
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        (n < self.limit).then_some(n + 1)
                    });
                if reserved.is_err() {
                    return None;
                }
                match Pipe::new(self.size) {
                    Ok(pipe) => pipe,
                    Err(e) => {
                        self.created.fetch_sub(1, Ordering::Relaxed);
                        if e != Errno::EMFILE && e != Errno::ENFILE {
                            self.disable(&format!("creating a pipe failed: {e}"));
                        }
                        return None;
                    }
                }
            }
        };
        Some(Lease {
            pool: self,
            pipe: Some(pipe),
            pending: 0,
        })
    }

    /// Stops handing out pipes: the data path copies from now on.
    pub fn disable(&self, why: &str) {
        if !self.disabled.swap(true, Ordering::Relaxed) {
            tracing::warn!("splice(2) is unavailable ({why}); relaying by copying instead");
        }
    }

    /// Pipes that exist now, in use or free.
    #[cfg(test)]
    pub fn created(&self) -> usize {
        self.created.load(Ordering::Relaxed)
    }

    /// Pipes that are free for reuse now.
    #[cfg(test)]
    pub fn free(&self) -> usize {
        self.free.lock().unwrap().len()
    }

    fn give_back(&self, pipe: Pipe) {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).push(pipe);
    }

    fn discard(&self, pipe: Pipe) {
        drop(pipe);
        self.created.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Pipes that `nofile` descriptors leave room for once `max_connections`
/// connections have their two sockets each and [`RESERVED_FDS`] are set
/// aside; two per connection at most.
pub fn pipe_budget(nofile: u64, max_connections: u32) -> usize {
    let sockets = 2 * u64::from(max_connections);
    let spare = nofile.saturating_sub(sockets + RESERVED_FDS);
    usize::try_from((spare / 2).min(sockets)).unwrap_or(usize::MAX)
}

/// This process's soft `RLIMIT_NOFILE`, or 1024 (the usual soft limit) if
/// it cannot be read.
fn open_files_limit() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _hard)| soft)
}

/// One pipe: its two ends and its capacity.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    /// A non-blocking pipe, resized to `size` bytes where the kernel allows
    /// it (an unprivileged process is held to `/proc/sys/fs/pipe-max-size`
    /// and its user's pipe quota; then the default size is kept).
    fn new(size: usize) -> nix::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let asked = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        let capacity = fcntl(&write, FcntlArg::F_SETPIPE_SZ(asked))
            .or_else(|_| fcntl(&write, FcntlArg::F_GETPIPE_SZ))
            .map_or(64 * 1024, |n| usize::try_from(n).unwrap_or(64 * 1024));
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }
}

/// A pipe taken from a [`PipePool`] by one direction of a connection, with
/// the count of bytes in it. Dropped empty, the pipe goes back to the pool;
/// dropped with bytes still in it (the connection failed or was aborted), it
/// is closed.
#[derive(Debug)]
pub struct Lease<'a> {
    pool: &'a PipePool,
    pipe: Option<Pipe>,
    pending: usize,
}

impl Lease<'_> {
    fn pipe(&self) -> &Pipe {
        self.pipe.as_ref().expect("a lease holds its pipe until dropped")
    }

    /// Bytes in the pipe, not yet written out.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Whether the pipe has room for more bytes.
    pub fn has_room(&self) -> bool {
        self.pending < self.pipe().capacity
    }

    /// Moves up to the pipe's free room from `from` into the pipe; returns
    /// the bytes moved, 0 at end of file.
    pub fn fill(&mut self, from: impl AsFd) -> io::Result<usize> {
        let pipe = self.pipe.as_ref().expect("a lease holds its pipe until dropped");
        let room = pipe.capacity - self.pending;
        let n = splice(from, None, &pipe.write, None, room, flags())?;
        self.pending += n;
        Ok(n)
    }

    /// Moves bytes from the pipe into `to`; returns the bytes moved.
    pub fn drain(&mut self, to: impl AsFd) -> io::Result<usize> {
        let pipe = self.pipe.as_ref().expect("a lease holds its pipe until dropped");
        let n = splice(&pipe.read, None, to, None, self.pending, flags())?;
        self.pending -= n;
        Ok(n)
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            if self.pending == 0 {
                self.pool.give_back(pipe);
            } else {
                self.pool.discard(pipe);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_leaves_two_descriptors_per_allowed_connection() {
        // The unit's LimitNOFILE of 2 * 256 + 64: room for 16 pipes.
        assert_eq!(pipe_budget(576, 256), 16);
        // Room for every connection's two pipes: capped at two each.
        assert_eq!(pipe_budget(6 * 256 + 64, 256), 512);
        assert_eq!(pipe_budget(1 << 20, 8), 16);
        // Too few descriptors: no pipe at all, everything is copied.
        assert_eq!(pipe_budget(100, 256), 0);
    }

    #[test]
    fn pipes_are_reused_and_limited() {
        let pool = PipePool::new(DEFAULT_PIPE_SIZE, 2);
        let first = pool.take().unwrap();
        let second = pool.take().unwrap();
        assert!(pool.take().is_none(), "the limit is two pipes");
        assert_eq!(pool.created(), 2);
        drop(first);
        assert_eq!(pool.free(), 1);
        let again = pool.take().unwrap();
        assert_eq!((pool.created(), pool.free()), (2, 0));
        drop((again, second));
        assert_eq!((pool.created(), pool.free()), (2, 2));
    }

    #[test]
    fn a_pipe_dropped_with_bytes_in_it_is_closed_not_reused() {
        let pool = PipePool::new(DEFAULT_PIPE_SIZE, 1);
        let mut lease = pool.take().unwrap();
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        nix::unistd::write(&write, b"stuck").unwrap();
        drop(write);
        assert_eq!(lease.fill(&read).unwrap(), 5);
        assert_eq!(lease.pending(), 5);
        drop(lease);
        assert_eq!((pool.created(), pool.free()), (0, 0));
        assert!(pool.take().is_some(), "its slot is free again");
    }

    #[test]
    fn a_disabled_pool_hands_out_nothing() {
        let pool = PipePool::new(DEFAULT_PIPE_SIZE, 4);
        pool.disable("test");
        assert!(pool.take().is_none());
    }

    #[test]
    fn pipes_get_the_size_asked_for() {
        let pool = PipePool::new(1024 * 1024, 1);
        let lease = pool.take().unwrap();
        // Root may exceed pipe-max-size; others get at most it, or the default.
        assert!(lease.pipe().capacity >= 64 * 1024, "{}", lease.pipe().capacity);
        assert!(lease.has_room());
    }
}
