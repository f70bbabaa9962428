//! Tests of the whole forwarder on 127.0.0.1 ephemeral ports (no root).

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::disconnect::{refusal, Reason};
use super::*;

const TIMEOUT: Duration = Duration::from_secs(5);

/// An upstream that echoes every connection until end of file.
async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

/// A port on 127.0.0.1 that nothing listens on.
async fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

fn config(max_connections: usize, routes: Vec<ForwardRoute>) -> ForwardConfig {
    ForwardConfig {
        slug: "test".to_string(),
        listen: "127.0.0.1".parse().unwrap(),
        routes,
        routes_file: None,
        generation: None,
        max_connections,
        connect_timeout: TIMEOUT,
        pipe_size: DEFAULT_PIPE_SIZE,
        stats_socket: None,
        idle_exit: None,
    }
}

/// An upstream that sends `tag` on every connection, then echoes until end
/// of file: which upstream a connection reached shows in its first bytes.
async fn tagged_upstream(tag: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                stream.write_all(tag).await.unwrap();
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

/// A free port on 127.0.0.1 (bound and let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn route(port: u16, alias: &str, upstreams: Vec<SocketAddr>) -> ForwardRoute {
    ForwardRoute {
        listen_port: port,
        alias: alias.parse().unwrap(),
        upstreams,
    }
}

/// A running forwarder: where its first route listens, how to reload and
/// stop it, and its result.
struct Running {
    addr: SocketAddr,
    reload: mpsc::Sender<Result<RoutesFile>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<()>>,
}

impl Running {
    async fn start(max_connections: usize, upstreams: Vec<SocketAddr>) -> Running {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        Running::serve(
            config(max_connections, vec![route(port, "echo", upstreams)]),
            vec![listener],
        )
    }

    fn serve(config: ForwardConfig, passed: Vec<std::net::TcpListener>) -> Running {
        let addr = SocketAddr::new(config.listen, config.routes[0].listen_port);
        let (stop, stopped) = oneshot::channel::<()>();
        let (reload, reloads) = mpsc::channel(1);
        let task = tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            serve(&config, passed, stopped, reloads).await
        });
        Running {
            addr,
            reload,
            stop,
            task,
        }
    }

    /// Hands the forwarder routes file `generation` with `routes`, as a
    /// SIGHUP would.
    async fn reload_to(&self, generation: u64, routes: Vec<ForwardRoute>) {
        self.reload
            .send(Ok(RoutesFile { generation, routes }))
            .await
            .unwrap();
    }

    async fn stop(self) -> Result<()> {
        self.stop.send(()).unwrap();
        tokio::time::timeout(TIMEOUT, self.task)
            .await
            .expect("forwarder hung")
            .unwrap()
    }
}

async fn round_trip(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).await.unwrap();
    let mut reply = vec![0; message.len()];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut reply))
        .await
        .expect("no echo")
        .unwrap();
    assert_eq!(reply, message);
}

/// Reads until the forwarder closes `stream`, returning what it read; a
/// reset counts as closed.
async fn closed_by_forwarder(stream: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    match tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut rest)).await {
        Ok(Ok(_)) => rest,
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => rest,
        Ok(Err(e)) => panic!("reading failed: {e}"),
        Err(_) => panic!("the forwarder did not close the connection"),
    }
}

#[tokio::test]
async fn relays_with_half_close_and_stops_on_request() {
    let forwarder = Running::start(8, vec![echo_upstream().await]).await;
    let mut client = TcpStream::connect(forwarder.addr).await.unwrap();
    round_trip(&mut client, b"SSH-2.0-test\r\n").await;
    client.write_all(b"last words").await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(closed_by_forwarder(&mut client).await, b"last words");

    let mut idle = TcpStream::connect(forwarder.addr).await.unwrap();
    round_trip(&mut idle, b"ping").await;
    let started = Instant::now();
    forwarder.stop().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(closed_by_forwarder(&mut idle).await.is_empty());
}

#[tokio::test]
async fn the_connection_limit_refuses_the_excess_and_keeps_the_first() {
    let forwarder = Running::start(1, vec![echo_upstream().await]).await;
    let mut first = TcpStream::connect(forwarder.addr).await.unwrap();
    round_trip(&mut first, b"one").await;

    let mut excess = TcpStream::connect(forwarder.addr).await.unwrap();
    excess.write_all(b"SSH-2.0-OpenSSH_9.2p1\r\n").await.unwrap();
    assert_eq!(
        closed_by_forwarder(&mut excess).await,
        refusal(
            Reason::TooManyConnections,
            "gatectl gate test: too many connections (the limit is 1); try again later"
        )
    );
    round_trip(&mut first, b"still here").await;

    first.shutdown().await.unwrap();
    closed_by_forwarder(&mut first).await;
    // The slot is given back when the connection's task ends, just after
    // the client saw the close.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let attempt = async {
            let mut next = TcpStream::connect(forwarder.addr).await?;
            next.write_all(b"two").await?;
            let mut reply = [0; 3];
            next.read_exact(&mut reply).await?;
            io::Result::Ok(reply)
        };
        match attempt.await {
            Ok(reply) => {
                assert_eq!(&reply, b"two");
                break;
            }
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("the limit was not released: {e}"),
        }
    }
    forwarder.stop().await.unwrap();
}

#[tokio::test]
async fn a_connect_failure_is_refused_as_an_ssh_server_would_promptly() {
    let (a, b) = (closed_port().await, closed_port().await);
    let forwarder = Running::start(8, vec![a, b]).await;
    let mut client = TcpStream::connect(forwarder.addr).await.unwrap();
    client.write_all(b"SSH-2.0-OpenSSH_9.2p1\r\n").await.unwrap();
    let started = Instant::now();
    let description =
        format!("gatectl gate test: upstream echo: {a} refused the connection, {b} refused the connection");
    assert_eq!(
        closed_by_forwarder(&mut client).await,
        refusal(Reason::ConnectionLost, &description)
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    forwarder.stop().await.unwrap();
}

/// An address whose connect attempts hang: a listener with a zero backlog
/// and one queued connection drops further SYNs (the returned stream keeps
/// the queue full).
async fn silent_upstream() -> (SocketAddr, std::net::TcpListener, std::net::TcpStream) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(0).unwrap();
    let addr = full.local_addr().unwrap();
    let queued = std::net::TcpStream::connect(addr).unwrap();
    (addr, full.into_std().unwrap(), queued)
}

#[tokio::test]
async fn a_route_revoked_while_connecting_is_refused_as_not_allowed() {
    let (silent, _full, _queued) = silent_upstream().await;
    let port = free_port();
    let forwarder = Running::serve(config(8, vec![route(port, "slow", vec![silent])]), Vec::new());
    let mut client = loop {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(client) => break client,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    client.write_all(b"SSH-2.0-OpenSSH_9.2p1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let routes = vec![route(free_port(), "other", vec![silent])];
    forwarder.reload_to(2, routes).await;
    assert_eq!(
        closed_by_forwarder(&mut client).await,
        refusal(
            Reason::HostNotAllowedToConnect,
            "gatectl gate test: slow is no longer declared for this agent (a reload removed it)"
        )
    );
    forwarder.stop().await.unwrap();
}

#[tokio::test]
async fn a_port_it_cannot_bind_is_named() {
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = config(8, vec![route(port, "busy", vec![closed_port().await])]);
    let error = serve(&config, Vec::new(), std::future::pending(), mpsc::channel(1).1)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with(&format!("listening on 127.0.0.1:{port} for route busy: ")),
        "{error}"
    );
}

/// Connects to `port` on 127.0.0.1 and reads the upstream's tag.
async fn tagged_session(port: u16, tag: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut got = vec![0; tag.len()];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut got))
        .await
        .expect("no tag from the upstream")
        .unwrap();
    assert_eq!(got, tag, "reached another upstream");
    stream
}

/// Waits until a new connection to `port` reaches the upstream tagged `tag`
/// (a reload is applied by the serving loop, a moment after it is sent).
async fn reaches(port: u16, tag: &[u8]) -> TcpStream {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let attempt = async {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
            let mut got = vec![0; tag.len()];
            stream.read_exact(&mut got).await?;
            io::Result::Ok((stream, got))
        };
        match tokio::time::timeout(Duration::from_millis(500), attempt).await {
            Ok(Ok((stream, got))) if got == tag => return stream,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!(
                "port {port} does not reach {tag:?}: {:?}",
                other.map(|r| r.map(|(_, got)| got))
            ),
        }
    }
}

#[tokio::test]
async fn passed_sockets_serve_their_routes_by_port_and_one_of_no_route_is_kept() {
    let one = tagged_upstream(b"one").await;
    let sockets: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = sockets.iter().map(|s| s.local_addr().unwrap().port()).collect();
    // Routes in another order than the sockets, and none for the third.
    let routes = vec![route(ports[1], "b", vec![one]), route(ports[0], "a", vec![one])];
    let forwarder = Running::serve(config(8, routes), sockets);
    tagged_session(ports[0], b"one").await;
    tagged_session(ports[1], b"one").await;
    forwarder.stop().await.unwrap();

    let elsewhere = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let port = elsewhere.local_addr().unwrap().port();
    let config = config(8, vec![route(port, "a", vec![one])]);
    let error = serve(
        &config,
        vec![elsewhere],
        std::future::pending(),
        mpsc::channel(1).1,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("not on the gate's internal address 127.0.0.1"),
        "{error}"
    );
}

#[tokio::test]
async fn a_reload_adds_changes_and_revokes_routes_in_place() {
    let (one, two) = (tagged_upstream(b"one").await, tagged_upstream(b"two").await);
    let (kept, revoked, added) = (free_port(), free_port(), free_port());
    let forwarder = Running::serve(
        config(
            8,
            vec![route(kept, "kept", vec![one]), route(revoked, "gone", vec![one])],
        ),
        Vec::new(),
    );
    let mut old_session = reaches(kept, b"one").await;
    let mut revoked_session = tagged_session(revoked, b"one").await;

    let routes = vec![route(kept, "kept", vec![two]), route(added, "added", vec![one])];
    forwarder.reload_to(2, routes).await;
    // The changed route takes new connections to its new upstream...
    reaches(kept, b"two").await;
    // ...while its established session goes on; the added route serves; the
    // removed route's session is cut.
    round_trip(&mut old_session, b"still here").await;
    reaches(added, b"one").await;
    assert!(closed_by_forwarder(&mut revoked_session).await.is_empty());

    // A file that cannot be read changes nothing; a port removed and added
    // again is served by the socket kept for it.
    forwarder
        .reload
        .send(Err(Error::invalid("unreadable")))
        .await
        .unwrap();
    let routes = vec![route(kept, "kept", vec![two]), route(revoked, "back", vec![two])];
    forwarder.reload_to(3, routes).await;
    reaches(revoked, b"two").await;
    round_trip(&mut old_session, b"and still").await;
    forwarder.stop().await.unwrap();
}

#[test]
fn validate_refuses_bad_settings() {
    let upstream = || vec!["127.0.0.1:22".parse().unwrap()];
    let good = config(
        8,
        vec![route(30000, "a", upstream()), route(30001, "a", upstream())],
    );
    good.validate().unwrap();
    type Change = fn(&mut ForwardConfig);
    let cases: [(&str, Change); 7] = [
        ("invalid slug", |c| c.slug = "Bad Slug".to_string()),
        ("refusing to listen on 0.0.0.0", |c| {
            c.listen = "0.0.0.0".parse().unwrap()
        }),
        ("refusing to listen on ::", |c| c.listen = "::".parse().unwrap()),
        ("at least one --route", |c| c.routes.clear()),
        ("two routes listen on port 30000", |c| {
            c.routes[1].listen_port = 30000
        }),
        ("--max-connections must be from 1", |c| c.max_connections = 0),
        ("--connect-timeout must be at least", |c| {
            c.connect_timeout = Duration::ZERO
        }),
    ];
    for (expected, change) in cases {
        let mut bad = good.clone();
        change(&mut bad);
        let error = bad.validate().unwrap_err().to_string();
        assert!(error.contains(expected), "{expected:?} not in {error:?}");
    }
}

/// The counters the forwarder serves on the abstract socket `name`, once
/// `ready` holds for them (they change a moment after a client sees its
/// connection close).
async fn counters_when(name: &str, ready: impl Fn(&stats::ForwarderStats) -> bool) -> stats::ForwarderStats {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let socket = name.to_string();
        let read = tokio::task::spawn_blocking(move || stats::read(&socket))
            .await
            .unwrap();
        match read {
            Ok(counters) if ready(&counters) => return counters,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("the counters never got there: {other:?}"),
        }
    }
}

#[tokio::test]
async fn counts_connections_bytes_and_refusals_per_entry() {
    let name = format!("gatectl-test-forwarder-{}", std::process::id());
    let (echo, closed) = (echo_upstream().await, closed_port().await);
    let (port, dead) = (free_port(), free_port());
    let mut config = config(
        8,
        vec![route(port, "echo", vec![echo]), route(dead, "dead", vec![closed])],
    );
    config.stats_socket = Some(name.clone());
    let forwarder = Running::serve(config, Vec::new());

    let mut client = loop {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(client) => break client,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    round_trip(&mut client, &[7; 1000]).await;
    let open = counters_when(&name, |c| c.active == 1).await;
    assert_eq!((open.total, open.bytes_up), (1, 0), "bytes count at close");
    client.write_all(&[8; 234]).await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(closed_by_forwarder(&mut client).await.len(), 234);
    let mut refused = TcpStream::connect(("127.0.0.1", dead)).await.unwrap();
    closed_by_forwarder(&mut refused).await;

    let counters = counters_when(&name, |c| c.active == 0 && c.refused.upstream == 1).await;
    assert_eq!(
        (counters.total, counters.bytes_up, counters.bytes_down),
        (2, 1234, 1234)
    );
    let [dead_entry, echo_entry] = counters.entries.as_slice() else {
        panic!("two entries: {counters:?}");
    };
    assert_eq!(
        (
            echo_entry.alias.as_str(),
            echo_entry.total,
            echo_entry.bytes_up,
            echo_entry.bytes_down
        ),
        ("echo", 1, 1234, 1234)
    );
    assert_eq!(echo_entry.last_error, None);
    let error = dead_entry.last_error.as_ref().expect("the dead entry's error");
    assert_eq!(
        error.message,
        format!("gatectl gate test: upstream dead ({closed}) refused the connection")
    );
    assert_eq!(counters.last_error.as_ref(), Some(error));
    forwarder.stop().await.unwrap();
}

/// A forwarder of passed sockets (as systemd passes them) that exits after
/// `idle` without connections; the test keeps its own copy of each socket,
/// as systemd does.
fn idle_forwarder(idle: Duration, upstream: SocketAddr) -> (Running, std::net::TcpListener) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = listener.try_clone().unwrap();
    let config = ForwardConfig {
        idle_exit: Some(idle),
        ..config(8, vec![route(port, "echo", vec![upstream])])
    };
    (Running::serve(config, vec![listener]), held)
}

/// Whether the forwarder of `running` is still serving after `wait`.
async fn still_runs(running: &mut Running, wait: Duration) -> bool {
    tokio::time::timeout(wait, &mut running.task).await.is_err()
}

#[tokio::test]
async fn an_idle_forwarder_exits_and_a_connection_meanwhile_waits_in_the_socket() {
    let upstream = echo_upstream().await;
    let idle = Duration::from_millis(300);
    let (mut running, held) = idle_forwarder(idle, upstream);
    let mut stream = TcpStream::connect(running.addr).await.unwrap();
    round_trip(&mut stream, b"before").await;
    drop(stream);
    let quiet = Instant::now();
    let ended = tokio::time::timeout(TIMEOUT, &mut running.task)
        .await
        .expect("an idle forwarder did not exit");
    ended.unwrap().unwrap();
    assert!(quiet.elapsed() >= idle, "exited after {:?}", quiet.elapsed());

    // Nothing accepts now, but the socket (systemd's copy) queues the
    // connection; the next forwarder, started for it, serves it.
    let mut waiting = TcpStream::connect(running.addr).await.unwrap();
    let config = ForwardConfig {
        idle_exit: Some(idle),
        ..config(8, vec![route(running.addr.port(), "echo", vec![upstream])])
    };
    let again = Running::serve(config, vec![held]);
    round_trip(&mut waiting, b"queued meanwhile").await;
    drop(waiting);
    again.stop().await.unwrap();
}

#[tokio::test]
async fn an_open_connection_keeps_an_idle_forwarder_running() {
    let upstream = echo_upstream().await;
    let (mut running, _held) = idle_forwarder(Duration::from_millis(200), upstream);
    let mut stream = TcpStream::connect(running.addr).await.unwrap();
    round_trip(&mut stream, b"hello").await;
    assert!(
        still_runs(&mut running, Duration::from_millis(1000)).await,
        "exited with a connection open"
    );
    round_trip(&mut stream, b"still relayed").await;
    drop(stream);
    assert!(
        !still_runs(&mut running, TIMEOUT).await,
        "did not exit once the connection closed"
    );
}

#[tokio::test]
async fn a_forwarder_listening_on_a_port_of_its_own_never_exits_for_idleness() {
    let upstream = echo_upstream().await;
    let idle = Duration::from_millis(200);
    let (mut running, _held) = idle_forwarder(idle, upstream);
    // A reload adds a route on a port systemd passed no socket for.
    let added = free_port();
    let routes = vec![
        route(running.addr.port(), "echo", vec![upstream]),
        route(added, "added", vec![upstream]),
    ];
    running.reload_to(2, routes).await;
    assert!(
        still_runs(&mut running, Duration::from_millis(1000)).await,
        "exited while it alone listens on port {added}"
    );
    let mut stream = TcpStream::connect(("127.0.0.1", added)).await.unwrap();
    round_trip(&mut stream, b"added").await;
    drop(stream);
    running.stop().await.unwrap();

    // One run by hand binds every port itself: it stays as well.
    let config = ForwardConfig {
        idle_exit: Some(idle),
        ..config(8, vec![route(free_port(), "echo", vec![upstream])])
    };
    let mut by_hand = Running::serve(config, Vec::new());
    assert!(still_runs(&mut by_hand, Duration::from_millis(800)).await);
    by_hand.stop().await.unwrap();
}
