//! The data path of one connection: connect to an upstream, then relay bytes
//! both ways with half-close until both directions have ended.
//!
//! [`relay`] moves bytes with `splice(2)` through a pipe from the forwarder's
//! [`PipePool`] (zero-copy: the bytes never enter user space), driven by
//! tokio's readiness events. A chunk for which no pipe is free, or every
//! chunk once `splice` turned out to be unavailable, is copied through a
//! buffer instead; both ways keep the order of the bytes, the half-close and
//! the byte counts.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use nix::errno::Errno;
use nix::sys::socket::Shutdown;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::pipe::PipePool;
use crate::error::{Error, IntoContextError, Result};

/// Size of the buffer of a direction that copies a chunk (allocated on the
/// first such chunk only).
const BUFFER_SIZE: usize = 64 * 1024;

/// Bytes relayed so far in each direction of one connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ByteCounts {
    /// Bytes read from the client and written to the upstream.
    pub to_upstream: u64,
    /// Bytes read from the upstream and written to the client.
    pub from_upstream: u64,
}

/// How long a connection attempt runs alone before the next one starts
/// beside it (RFC 8305's Connection Attempt Delay, its recommended value).
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// The order in which [`connect`] tries `upstreams` (RFC 8305, section 4):
/// IPv6 first, then the families alternate, each in the order given.
pub fn attempt_order(upstreams: &[SocketAddr]) -> Vec<SocketAddr> {
    let (v6, v4): (Vec<SocketAddr>, Vec<SocketAddr>) = upstreams.iter().partition(|a| a.is_ipv6());
    let mut order = Vec::with_capacity(upstreams.len());
    let (mut v6, mut v4) = (v6.into_iter(), v4.into_iter());
    loop {
        match (v6.next(), v4.next()) {
            (None, None) => return order,
            (a, b) => order.extend(a.into_iter().chain(b)),
        }
    }
}

/// Connects to `upstreams` as Happy Eyeballs (RFC 8305) does: attempts
/// start in [`attempt_order`], each [`ATTEMPT_DELAY`] after the one before
/// or at once when all running ones have failed, and run side by side; the
/// first to connect wins and the others are dropped. Each attempt is
/// limited to `timeout`. Sets `TCP_NODELAY` on the connection.
///
/// Returns the connection and the address it went to, or an error listing
/// every attempt and why it failed.
pub async fn connect(upstreams: &[SocketAddr], timeout: Duration) -> Result<(TcpStream, SocketAddr)> {
    let mut next = attempt_order(upstreams).into_iter().peekable();
    let mut running = FuturesUnordered::new();
    let mut failures = Vec::with_capacity(upstreams.len());
    if let Some(addr) = next.next() {
        running.push(attempt(addr, timeout));
    }
    while !running.is_empty() {
        tokio::select! {
            Some((addr, result)) = running.next() => match result {
                Ok(stream) => {
                    set_nodelay(&stream);
                    return Ok((stream, addr));
                }
                Err(e) => {
                    failures.push(e.into_error(format!("upstream {addr}")));
                    if running.is_empty() {
                        running.extend(next.next().map(|addr| attempt(addr, timeout)));
                    }
                }
            },
            () = tokio::time::sleep(ATTEMPT_DELAY), if next.peek().is_some() => {
                running.extend(next.next().map(|addr| attempt(addr, timeout)));
            }
        }
    }
    Err(match failures.len() {
        0 => Error::failed("no upstream address to connect to"),
        1 => failures.remove(0),
        _ => Error::List(failures),
    })
}

/// One connection attempt to `addr`, limited to `timeout`.
async fn attempt(addr: SocketAddr, timeout: Duration) -> (SocketAddr, io::Result<TcpStream>) {
    let result = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(attempt) => attempt,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("timed out after {timeout:?}"),
        )),
    };
    (addr, result)
}

/// Sets `TCP_NODELAY` (ssh is interactive); a failure only costs latency, so
/// it is logged and otherwise ignored.
pub fn set_nodelay(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
}

/// Relays bytes between `client` and `upstream` until both directions have
/// ended, counting them into `counts` as they are written (so the counts stay
/// right if the relay is cancelled or fails). Pipes come from `pipes`.
///
/// End of file on one side shuts down the write side of the other and the
/// opposite direction goes on until it ends too (git over ssh depends on
/// this half-close). An I/O error in either direction ends both. There is no
/// idle timeout.
pub async fn relay(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    counts: &mut ByteCounts,
    pipes: &PipePool,
) -> io::Result<()> {
    let (client, upstream) = (&*client, &*upstream);
    let ByteCounts {
        to_upstream,
        from_upstream,
    } = counts;
    tokio::try_join!(
        pump(client, upstream, to_upstream, pipes),
        pump(upstream, client, from_upstream, pipes),
    )?;
    Ok(())
}

/// Moves bytes from `from` to `to` until end of file, then shuts down `to`'s
/// write side.
///
/// Each round takes a pipe once `from` is readable, splices into it while it
/// has room and out of it while `to` takes bytes, and gives it back once it
/// is empty and `from` has nothing more for now. Readiness is cleared (by
/// `try_io`) only on an `EAGAIN` that can only be the socket's: a fill into
/// an empty pipe, or a drain of a non-empty one.
async fn pump(from: &TcpStream, to: &TcpStream, count: &mut u64, pipes: &PipePool) -> io::Result<()> {
    let mut buffer = Vec::new();
    let mut end_of_file = false;
    loop {
        if end_of_file {
            return shutdown_write(to);
        }
        from.readable().await?;
        let Some(mut lease) = pipes.take() else {
            end_of_file = copy_chunk(from, to, &mut buffer, count).await?;
            continue;
        };
        loop {
            tokio::task::coop::consume_budget().await;
            if !end_of_file && lease.has_room() {
                let filled = if lease.pending() == 0 {
                    from.try_io(Interest::READABLE, || lease.fill(from))
                } else {
                    lease.fill(from)
                };
                match filled {
                    Ok(0) => end_of_file = true,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if lease.pending() == 0 {
                            break; // nothing to read now: give the pipe back
                        }
                    }
                    Err(e) if lease.pending() == 0 && splice_unsupported(&e) => {
                        pipes.disable(&format!("splice from a socket failed: {e}"));
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if lease.pending() > 0 {
                match to.try_io(Interest::WRITABLE, || lease.drain(to)) {
                    Ok(n) => *count += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
                    Err(e) => return Err(e),
                }
            } else if end_of_file {
                break;
            }
        }
    }
}

/// Copies one chunk from `from` to `to` through `buffer` (allocated on first
/// use); returns whether `from` reached end of file.
async fn copy_chunk(
    from: &TcpStream,
    to: &TcpStream,
    buffer: &mut Vec<u8>,
    count: &mut u64,
) -> io::Result<bool> {
    if buffer.is_empty() {
        buffer.resize(BUFFER_SIZE, 0);
    }
    let n = match from.try_read(buffer) {
        Ok(0) => return Ok(true),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut written = 0;
    while written < n {
        to.writable().await?;
        match to.try_write(&buffer[written..n]) {
            Ok(m) => {
                written += m;
                *count += m as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Whether a `splice` error means splicing cannot work here at all (an old
/// or restricted kernel, a seccomp filter) rather than a connection failure.
fn splice_unsupported(e: &io::Error) -> bool {
    [Errno::EINVAL, Errno::ENOSYS, Errno::EPERM]
        .iter()
        .any(|&errno| e.raw_os_error() == Some(errno as i32))
}

/// Shuts down the write side of `stream`: the peer reads end of file.
fn shutdown_write(stream: &TcpStream) -> io::Result<()> {
    nix::sys::socket::shutdown(stream.as_raw_fd(), Shutdown::Write).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket};
    use tokio::task::JoinHandle;

    use super::*;
    use crate::forward::pipe::DEFAULT_PIPE_SIZE;

    const TIMEOUT: Duration = Duration::from_secs(5);

    async fn listener() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").await.unwrap()
    }

    /// A port on 127.0.0.1 that nothing listens on.
    async fn closed_port() -> SocketAddr {
        let listener = listener().await;
        listener.local_addr().unwrap()
    }

    /// A port on ::1 that nothing listens on.
    async fn closed_port6() -> SocketAddr {
        let listener = TcpListener::bind("[::1]:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    /// Accepts one client on a fresh port and relays it to `upstreams` the
    /// way the forwarder does, with pipes from a pool of at most
    /// `pipe_limit`; the task yields the relay's result.
    async fn forwarder(
        upstreams: Vec<SocketAddr>,
    ) -> (
        SocketAddr,
        JoinHandle<(Option<SocketAddr>, io::Result<()>, ByteCounts)>,
    ) {
        forwarder_with(upstreams, Arc::new(PipePool::new(DEFAULT_PIPE_SIZE, 2))).await
    }

    async fn forwarder_with(
        upstreams: Vec<SocketAddr>,
        pipes: Arc<PipePool>,
    ) -> (
        SocketAddr,
        JoinHandle<(Option<SocketAddr>, io::Result<()>, ByteCounts)>,
    ) {
        let listener = listener().await;
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut client, _) = listener.accept().await.unwrap();
            let mut counts = ByteCounts::default();
            match connect(&upstreams, TIMEOUT).await {
                Ok((mut upstream, used)) => {
                    let result = relay(&mut client, &mut upstream, &mut counts, &pipes).await;
                    (Some(used), result, counts)
                }
                Err(e) => (None, Err(io::Error::other(e.to_string())), counts),
            }
        });
        (addr, task)
    }

    async fn finish<T>(task: JoinHandle<T>) -> T {
        tokio::time::timeout(TIMEOUT, task)
            .await
            .expect("relay hung")
            .unwrap()
    }

    #[tokio::test]
    async fn relays_an_interactive_exchange_both_ways() {
        let upstream = listener().await;
        let upstream_addr = upstream.local_addr().unwrap();
        let echo = tokio::spawn(async move {
            let (mut stream, _) = upstream.accept().await.unwrap();
            let (mut read, mut write) = stream.split();
            tokio::io::copy(&mut read, &mut write).await.unwrap();
        });
        let (addr, task) = forwarder(vec![upstream_addr]).await;

        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut reply = [0; 5];
        for message in [b"hello", b"again"] {
            client.write_all(message).await.unwrap();
            client.read_exact(&mut reply).await.unwrap();
            assert_eq!(&reply, message);
        }
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());

        let (used, result, counts) = finish(task).await;
        result.unwrap();
        echo.await.unwrap();
        assert_eq!(used, Some(upstream_addr));
        assert_eq!(
            counts,
            ByteCounts {
                to_upstream: 10,
                from_upstream: 10
            }
        );
    }

    #[tokio::test]
    async fn half_close_lets_the_upstream_answer_after_end_of_file() {
        const REQUEST: usize = 300_000;
        const REPLY: usize = 200_000;
        let upstream = listener().await;
        let upstream_addr = upstream.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = upstream.accept().await.unwrap();
            let mut request = Vec::new();
            stream.read_to_end(&mut request).await.unwrap();
            stream.write_all(&vec![7; REPLY]).await.unwrap();
            request.len()
        });
        let (addr, task) = forwarder(vec![upstream_addr]).await;

        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(&vec![1; REQUEST]).await.unwrap();
        client.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();

        assert_eq!(
            server.await.unwrap(),
            REQUEST,
            "upstream saw end of file after the whole request"
        );
        assert_eq!(reply, vec![7; REPLY]);
        let (_, result, counts) = finish(task).await;
        result.unwrap();
        assert_eq!(
            counts,
            ByteCounts {
                to_upstream: REQUEST as u64,
                from_upstream: REPLY as u64
            }
        );
    }

    #[tokio::test]
    async fn tries_upstreams_in_order() {
        let closed = closed_port().await;
        let open = listener().await;
        let open_addr = open.local_addr().unwrap();
        let (_stream, used) = connect(&[closed, open_addr], TIMEOUT).await.unwrap();
        assert_eq!(used, open_addr);
    }

    #[test]
    fn attempts_prefer_ipv6_then_alternate_families() {
        let addrs = |list: &[&str]| -> Vec<SocketAddr> { list.iter().map(|a| a.parse().unwrap()).collect() };
        let given = addrs(&[
            "192.0.2.1:22",
            "192.0.2.2:22",
            "[2001:db8::1]:22",
            "[2001:db8::2]:22",
            "[2001:db8::3]:22",
        ]);
        assert_eq!(
            attempt_order(&given),
            addrs(&[
                "[2001:db8::1]:22",
                "192.0.2.1:22",
                "[2001:db8::2]:22",
                "192.0.2.2:22",
                "[2001:db8::3]:22"
            ])
        );
        let v4 = addrs(&["192.0.2.2:22", "192.0.2.1:22"]);
        assert_eq!(attempt_order(&v4), v4);
        assert!(attempt_order(&[]).is_empty());
    }

    /// A listener whose backlog is full: a connect to it hangs like one
    /// to a blackholed host. Keep both until the test ends.
    async fn silent_upstream(ip: &str) -> (TcpListener, TcpStream, SocketAddr) {
        let addr: SocketAddr = format!("{ip}:0").parse().unwrap();
        let socket = if addr.is_ipv6() {
            TcpSocket::new_v6()
        } else {
            TcpSocket::new_v4()
        }
        .unwrap();
        socket.bind(addr).unwrap();
        let full = socket.listen(0).unwrap();
        let full_addr = full.local_addr().unwrap();
        let queued = TcpStream::connect(full_addr).await.unwrap();
        (full, queued, full_addr)
    }

    #[tokio::test]
    async fn ipv6_is_tried_first_and_a_silent_one_gives_way_to_ipv4_after_the_attempt_delay() {
        let v4 = listener().await;
        let v4_addr = v4.local_addr().unwrap();
        let v6 = TcpListener::bind("[::1]:0").await.unwrap();
        let v6_addr = v6.local_addr().unwrap();
        // Both answer: IPv6 wins, though listed last.
        let (_stream, used) = connect(&[v4_addr, v6_addr], TIMEOUT).await.unwrap();
        assert_eq!(used, v6_addr);
        // IPv6 blackholed: IPv4 starts after the delay and wins long before
        // the IPv6 attempt's timeout.
        let (_full, _queued, silent) = silent_upstream("[::1]").await;
        let started = Instant::now();
        let (_stream, used) = connect(&[v4_addr, silent], TIMEOUT).await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(used, v4_addr);
        assert!(
            elapsed >= ATTEMPT_DELAY && elapsed < ATTEMPT_DELAY * 4,
            "{elapsed:?}"
        );
        // A refused IPv6 attempt starts IPv4 at once.
        let refused = closed_port6().await;
        let started = Instant::now();
        let (_stream, used) = connect(&[v4_addr, refused], TIMEOUT).await.unwrap();
        assert_eq!(used, v4_addr);
        assert!(started.elapsed() < ATTEMPT_DELAY, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_refused_connect_fails_fast_naming_every_attempt() {
        let (first, second) = (closed_port().await, closed_port().await);
        let started = Instant::now();
        let error = connect(&[first, second], TIMEOUT).await.unwrap_err().to_string();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(error.contains(&format!("upstream {first}: ")), "{error}");
        assert!(error.contains(&format!("upstream {second}: ")), "{error}");
        assert!(error.contains("refused"), "{error}");
    }

    #[tokio::test]
    async fn a_silent_upstream_times_out_after_the_connect_timeout() {
        // A listener with a zero backlog and one queued connection drops
        // further SYNs, so the next connect hangs like a blackholed host.
        let (_full, _queued, full_addr) = silent_upstream("127.0.0.1").await;

        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        let error = connect(&[full_addr], timeout).await.unwrap_err().to_string();
        let elapsed = started.elapsed();
        assert!(elapsed >= timeout && elapsed < TIMEOUT, "{elapsed:?}");
        assert_eq!(error, format!("upstream {full_addr}: timed out after 300ms"));
    }

    #[tokio::test]
    async fn a_reset_ends_the_relay_with_an_error() {
        let upstream = listener().await;
        let upstream_addr = upstream.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = upstream.accept().await.unwrap();
            let abort = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &abort).unwrap();
            drop(stream);
        });
        let (addr, task) = forwarder(vec![upstream_addr]).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        server.await.unwrap();
        let (_, result, _) = finish(task).await;
        assert!(result.is_err());
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest).await;
    }

    /// A deterministic pseudo-random byte stream (xorshift), so that a
    /// reordered or dropped chunk cannot go unnoticed.
    fn pattern(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Sends `up` bytes through a relay with `pipes` to an upstream that
    /// reads all of it, then answers with `down` bytes (half-close both
    /// ways); checks both streams byte for byte and the counts.
    async fn bulk_both_ways(pipes: Arc<PipePool>, up: usize, down: usize) {
        let upstream = listener().await;
        let upstream_addr = upstream.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = upstream.accept().await.unwrap();
            let mut request = Vec::new();
            stream.read_to_end(&mut request).await.unwrap();
            stream.write_all(&pattern(2, down)).await.unwrap();
            request
        });
        let (addr, task) = forwarder_with(vec![upstream_addr], Arc::clone(&pipes)).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut read, mut write) = client.split();
        let send = async {
            write.write_all(&pattern(1, up)).await.unwrap();
            write.shutdown().await.unwrap();
        };
        let receive = async {
            let mut reply = Vec::new();
            read.read_to_end(&mut reply).await.unwrap();
            reply
        };
        let ((), reply) =
            tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(send, receive) })
                .await
                .expect("bulk transfer hung");
        assert!(
            server.await.unwrap() == pattern(1, up),
            "the upstream got other bytes"
        );
        assert!(reply == pattern(2, down), "the client got other bytes");
        let (_, result, counts) = finish(task).await;
        result.unwrap();
        assert_eq!(
            counts,
            ByteCounts {
                to_upstream: up as u64,
                from_upstream: down as u64
            }
        );
    }

    #[tokio::test]
    async fn splices_a_large_transfer_both_ways_and_gives_the_pipes_back() {
        let pipes = Arc::new(PipePool::new(DEFAULT_PIPE_SIZE, 2));
        bulk_both_ways(Arc::clone(&pipes), 48 << 20, 24 << 20).await;
        assert!(pipes.created() > 0, "the transfer used splice");
        assert_eq!(pipes.free(), pipes.created(), "every pipe came back empty");
    }

    #[tokio::test]
    async fn copies_when_no_pipe_is_available() {
        let pipes = Arc::new(PipePool::new(DEFAULT_PIPE_SIZE, 0));
        bulk_both_ways(Arc::clone(&pipes), 8 << 20, 3 << 20).await;
        assert_eq!(pipes.created(), 0);
    }

    #[tokio::test]
    async fn mixes_splice_and_copy_when_pipes_run_short() {
        // One pipe for two directions: whichever lacks it copies that chunk.
        let pipes = Arc::new(PipePool::new(64 * 1024, 1));
        bulk_both_ways(Arc::clone(&pipes), 16 << 20, 16 << 20).await;
        assert_eq!((pipes.created(), pipes.free()), (1, 1));
    }

    #[tokio::test]
    async fn a_disabled_pool_falls_back_to_copying() {
        let pipes = Arc::new(PipePool::new(DEFAULT_PIPE_SIZE, 2));
        pipes.disable("test");
        bulk_both_ways(Arc::clone(&pipes), 1 << 20, 1 << 20).await;
        assert_eq!(pipes.created(), 0);
    }

    #[tokio::test]
    async fn an_empty_transfer_half_closes_both_ways() {
        bulk_both_ways(Arc::new(PipePool::new(DEFAULT_PIPE_SIZE, 2)), 0, 0).await;
    }

    #[tokio::test]
    async fn an_aborted_relay_closes_pipes_that_still_hold_bytes() {
        // The upstream never reads: bytes pile up in the relay's pipe, then
        // the relay is cancelled the way a stopping forwarder cancels it.
        let upstream = listener().await;
        let upstream_addr = upstream.local_addr().unwrap();
        let _server = tokio::spawn(async move {
            let (stream, _) = upstream.accept().await.unwrap();
            tokio::time::sleep(TIMEOUT).await;
            drop(stream);
        });
        let pipes = Arc::new(PipePool::new(DEFAULT_PIPE_SIZE, 2));
        let (addr, task) = forwarder_with(vec![upstream_addr], Arc::clone(&pipes)).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        let flood = vec![0; 16 << 20];
        // Long enough for the socket buffers to fill on a loaded machine,
        // so that the pipe holds bytes when the relay is cancelled.
        let _ = tokio::time::timeout(Duration::from_secs(2), client.write_all(&flood)).await;
        assert!(pipes.created() >= 1);
        task.abort();
        let _ = task.await;
        assert_eq!(
            (pipes.created(), pipes.free()),
            (0, 0),
            "the pipe holding bytes was closed, not reused"
        );
    }
}
