//! Tests of the whole forwarder on 127.0.0.1 ephemeral ports (no root).

use std::io;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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
        max_connections,
        connect_timeout: TIMEOUT,
        pipe_size: DEFAULT_PIPE_SIZE,
    }
}

/// A running forwarder: where its single route listens, how to stop it, and
/// its result.
struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<()>>,
}

impl Running {
    async fn start(max_connections: usize, upstreams: Vec<SocketAddr>) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let route = ForwardRoute {
            listen_port: addr.port(),
            alias: "echo".parse().unwrap(),
            upstreams,
        };
        let config = config(max_connections, vec![route]);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            serve(&config, vec![listener], stopped).await
        });
        Running { addr, stop, task }
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
    assert!(closed_by_forwarder(&mut excess).await.is_empty());
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
async fn a_connect_failure_closes_the_client_promptly() {
    let forwarder = Running::start(8, vec![closed_port().await, closed_port().await]).await;
    let mut client = TcpStream::connect(forwarder.addr).await.unwrap();
    let started = Instant::now();
    assert!(closed_by_forwarder(&mut client).await.is_empty());
    assert!(started.elapsed() < Duration::from_secs(1));
    forwarder.stop().await.unwrap();
}

#[tokio::test]
async fn bind_names_the_address_it_could_not_listen_on() {
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = taken.local_addr().unwrap().port();
    let route = ForwardRoute {
        listen_port: port,
        alias: "busy".parse().unwrap(),
        upstreams: vec![closed_port().await],
    };
    let error = bind(&config(8, vec![route])).await.unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("listening on 127.0.0.1:{port} for route busy: ")),
        "{error}"
    );
}

#[tokio::test]
async fn passed_sockets_are_paired_with_routes_by_port() {
    let sockets: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = sockets.iter().map(|s| s.local_addr().unwrap().port()).collect();
    let route = |port: u16, alias: &str| ForwardRoute {
        listen_port: port,
        alias: alias.parse().unwrap(),
        upstreams: vec!["127.0.0.1:22".parse().unwrap()],
    };
    // Routes in another order than the sockets: each gets its own port.
    let routes = vec![route(ports[2], "c"), route(ports[0], "a"), route(ports[1], "b")];
    let listeners = match_listeners(&config(8, routes.clone()), sockets).unwrap();
    let got: Vec<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
    assert_eq!(got, [ports[2], ports[0], ports[1]]);

    let one = || vec![std::net::TcpListener::bind("127.0.0.1:0").unwrap()];
    let mut two = one();
    two.extend(one());
    let port = two[0].local_addr().unwrap().port();
    let error = match_listeners(&config(8, vec![route(port, "a")]), two)
        .unwrap_err()
        .to_string();
    assert!(error.contains("which no route listens on"), "{error}");
    let socket = one();
    let port = socket[0].local_addr().unwrap().port();
    let error = match_listeners(&config(8, vec![route(port, "a"), route(1, "gone")]), socket)
        .unwrap_err()
        .to_string();
    assert!(error.contains("no socket for port 1 (route gone)"), "{error}");
}

#[test]
fn validate_refuses_bad_settings() {
    let route = |port| ForwardRoute {
        listen_port: port,
        alias: "a".parse().unwrap(),
        upstreams: vec!["127.0.0.1:22".parse().unwrap()],
    };
    let good = config(8, vec![route(30000), route(30001)]);
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
