//! `gatectl forward`: the forwarder's entrypoint, run by systemd inside a
//! gate's network namespace (hidden from help; `gatectl start` builds its
//! arguments).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Context, Result};
use crate::forward::{ForwardConfig, ForwardRoute, DEFAULT_PIPE_SIZE};

/// Arguments of `gatectl forward`.
#[derive(clap::Args, Debug)]
pub struct ForwardArgs {
    /// The gate's slug, for the logs.
    #[arg(long, value_name = "SLUG")]
    pub slug: String,
    /// The gate's internal address, the only address listened on.
    #[arg(long, value_name = "IPADDR")]
    pub listen: IpAddr,
    /// A route, PORT,ALIAS,ADDR:PORT[,ADDR:PORT...]; repeat for each host.
    #[arg(long = "route", value_name = "ROUTE", required_unless_present = "routes_file")]
    pub routes: Vec<ForwardRoute>,
    /// Read the routes from this file instead (what `gatectl start` writes),
    /// and read it again at each SIGHUP.
    #[arg(long, value_name = "PATH", conflicts_with = "routes")]
    pub routes_file: Option<PathBuf>,
    /// Connections open at once, across all routes; the excess is closed.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_connections: usize,
    /// Seconds allowed for each connect attempt to an upstream address.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub connect_timeout: u64,
    /// Bytes asked for each splice pipe; the kernel rounds it up to a
    /// power-of-two count of pages, and may refuse sizes above
    /// /proc/sys/fs/pipe-max-size. For benchmarks; `gatectl start` keeps
    /// the default.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_PIPE_SIZE)]
    pub pipe_size: usize,
    /// Exit after this many seconds without a connection, if every listener
    /// came from systemd (socket activation starts it again); 0: never.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub idle_exit: u64,
}

impl From<ForwardArgs> for ForwardConfig {
    fn from(args: ForwardArgs) -> Self {
        ForwardConfig {
            slug: args.slug,
            listen: args.listen,
            routes: args.routes,
            routes_file: args.routes_file,
            generation: None,
            max_connections: args.max_connections,
            connect_timeout: Duration::from_secs(args.connect_timeout),
            pipe_size: args.pipe_size,
            stats_socket: Some(crate::forward::stats::SOCKET.to_string()),
            idle_exit: (args.idle_exit > 0).then(|| Duration::from_secs(args.idle_exit)),
        }
    }
}

/// Runs the forwarder until SIGTERM or SIGINT.
pub fn run(args: ForwardArgs) -> Result<()> {
    crate::logging::init(false);
    // One thread: a gate serves one agent's ssh sessions, where a thread
    // keeps up with the traffic; the cost per byte is the copy, which
    // splice(2) will move into the kernel, not the scheduling. A single
    // thread also keeps each of the host's many sandboxed forwarders to one
    // task (TasksMax) and the least memory.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the forwarder's async runtime")?;
    runtime.block_on(crate::forward::run(args.into()))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Command {
        #[command(flatten)]
        args: ForwardArgs,
    }

    fn parse(argv: &[&str]) -> std::result::Result<ForwardArgs, clap::Error> {
        Command::try_parse_from(std::iter::once("forward").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn parses_repeated_routes_and_defaults() {
        let args = parse(&[
            "--slug",
            "alice",
            "--listen",
            "10.231.0.1",
            "--route",
            "30000,github,192.0.2.10:22,[2001:db8::10]:22",
            "--route",
            "30001,gitlab,192.0.2.11:22",
        ])
        .unwrap();
        let config = ForwardConfig::from(args);
        assert_eq!(config.slug, "alice");
        assert_eq!(config.listen, "10.231.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(config.routes.len(), 2);
        assert_eq!(
            config.routes[0].to_string(),
            "30000,github,192.0.2.10:22,[2001:db8::10]:22"
        );
        assert_eq!(config.max_connections, 256);
        assert_eq!(config.connect_timeout, Duration::from_secs(10));
        assert_eq!(config.pipe_size, DEFAULT_PIPE_SIZE);
        config.validate().unwrap();
    }

    #[test]
    fn takes_a_pipe_size_and_refuses_zero() {
        let argv = |size: &'static str| {
            [
                "--slug",
                "alice",
                "--listen",
                "10.231.0.1",
                "--route",
                "30000,github,192.0.2.10:22",
                "--pipe-size",
                size,
            ]
        };
        let config = ForwardConfig::from(parse(&argv("65536")).unwrap());
        assert_eq!(config.pipe_size, 65536);
        config.validate().unwrap();
        let error = ForwardConfig::from(parse(&argv("0")).unwrap())
            .validate()
            .unwrap_err()
            .to_string();
        assert!(error.contains("--pipe-size must be at least 1 byte"), "{error}");
        assert!(parse(&argv("-1")).is_err());
    }

    #[test]
    fn requires_a_route_and_refuses_a_bad_one() {
        assert!(parse(&["--slug", "alice", "--listen", "10.231.0.1"]).is_err());
        let error = parse(&[
            "--slug",
            "a",
            "--listen",
            "10.231.0.1",
            "--route",
            "30000,a,github.com:22",
        ])
        .unwrap_err()
        .to_string();
        assert!(error.contains("not an IP address"), "{error}");
    }
}
