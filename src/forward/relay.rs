//! The data path of one connection: connect to an upstream, then relay bytes
//! both ways with half-close until both directions have ended.
//!
//! [`relay`] is the only function that moves bytes; a zero-copy variant
//! (`splice(2)` through a pipe) can replace its body without touching callers.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, IntoContextError, Result};

/// Size of the buffer of each direction of a relayed connection.
const BUFFER_SIZE: usize = 64 * 1024;

/// Bytes relayed so far in each direction of one connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ByteCounts {
    /// Bytes read from the client and written to the upstream.
    pub to_upstream: u64,
    /// Bytes read from the upstream and written to the client.
    pub from_upstream: u64,
}

/// Connects to the first of `upstreams` that accepts within `timeout` per
/// attempt, trying them in order, and sets `TCP_NODELAY` on the connection.
///
/// Returns the connection and the address it went to, or an error listing
/// every attempt and why it failed.
pub async fn connect(upstreams: &[SocketAddr], timeout: Duration) -> Result<(TcpStream, SocketAddr)> {
    let mut failures = Vec::with_capacity(upstreams.len());
    for &addr in upstreams {
        let attempt = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(attempt) => attempt,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {timeout:?}"),
            )),
        };
        match attempt {
            Ok(stream) => {
                set_nodelay(&stream);
                return Ok((stream, addr));
            }
            Err(e) => failures.push(e.into_error(format!("upstream {addr}"))),
        }
    }
    Err(match failures.len() {
        0 => Error::failed("no upstream address to connect to"),
        1 => failures.remove(0),
        _ => Error::List(failures),
    })
}

/// Sets `TCP_NODELAY` (ssh is interactive); a failure only costs latency, so
/// it is logged and otherwise ignored.
pub fn set_nodelay(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
}

/// Relays bytes between `client` and `upstream` until both directions have
/// ended, counting them into `counts` as they go (so the counts stay right
/// if the relay is cancelled or fails).
///
/// End of file on one side shuts down the write side of the other and the
/// opposite direction goes on until it ends too (git over ssh depends on
/// this half-close). An I/O error in either direction ends both. There is no
/// idle timeout.
pub async fn relay(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    counts: &mut ByteCounts,
) -> io::Result<()> {
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let ByteCounts {
        to_upstream,
        from_upstream,
    } = counts;
    tokio::try_join!(
        pump(&mut client_read, &mut upstream_write, to_upstream),
        pump(&mut upstream_read, &mut client_write, from_upstream),
    )?;
    Ok(())
}

/// Copies `from` into `to` until end of file, then shuts down `to`'s write
/// side.
async fn pump<R, W>(from: &mut R, to: &mut W, count: &mut u64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0; BUFFER_SIZE];
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buffer[..n]).await?;
        *count += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::net::{TcpListener, TcpSocket};
    use tokio::task::JoinHandle;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    async fn listener() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").await.unwrap()
    }

    /// A port on 127.0.0.1 that nothing listens on.
    async fn closed_port() -> SocketAddr {
        let listener = listener().await;
        listener.local_addr().unwrap()
    }

    /// Accepts one client on a fresh port and relays it to `upstreams` the
    /// way the forwarder does; the task yields the relay's result.
    async fn forwarder(
        upstreams: Vec<SocketAddr>,
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
                    let result = relay(&mut client, &mut upstream, &mut counts).await;
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
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let full = socket.listen(0).unwrap();
        let full_addr = full.local_addr().unwrap();
        let _queued = TcpStream::connect(full_addr).await.unwrap();

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
}
