//! The command line: one file per subcommand. [`main`] parses arguments,
//! runs the subcommand and maps the outcome to an exit code.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::{Error, Result};
use crate::slug::Slug;

pub mod check;
pub mod format_pages;
pub mod forward;
pub mod generate;
pub mod json;
pub mod list;
pub mod log;
pub mod metrics;
pub mod output;
pub mod plan;
pub mod prune;
pub mod reconcile;
pub mod refresh;
pub mod reload;
mod render;
pub mod schema;
pub mod slug_completion;
pub mod ssh_config;
pub mod start;
pub mod status;
pub mod stop;

/// Exit code of `status` for a gate that is not running.
pub const EXIT_NOT_RUNNING: u8 = 3;

/// gatectl: per-agent SSH egress gates. Each agent reaches only the SSH
/// hosts its manifest declares, through a forwarder in its own network
/// namespace.
#[derive(Parser, Debug)]
#[command(name = "gatectl", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start the gate of an agent.
    ///
    /// Validates everything before it changes anything, and rolls back what
    /// it created when a step fails. A gate already running with the same
    /// manifest and upstream addresses is left as it is (exit 0); one
    /// running with another manifest is refused: reload it instead.
    Start(start::StartArgs),
    /// Apply a changed manifest to a running gate, keeping its sessions.
    ///
    /// Reads and validates the manifest and resolves its upstreams as start
    /// does; a manifest that fails changes nothing. Then an added entry
    /// starts listening, a changed entry forwards new connections to its new
    /// upstream, an unchanged entry keeps its port and its sessions, and a
    /// removed entry stops listening and has its sessions cut. Ports stay
    /// numbered by entry order: a reorder moves entries, and reload says
    /// which. `systemctl reload gatectl@SLUG` runs it.
    Reload(reload::ReloadArgs),
    /// Re-resolve the upstream names of running gates whose answers expired.
    ///
    /// For each running gate whose last answer's TTL ran out (held between
    /// dns_refresh_min_secs and dns_refresh_max_secs), resolves its names
    /// with the host's resolvers and moves the gate to new addresses in
    /// place, as reload does: new connections use them, sessions to an
    /// address no longer returned go on. A failed or unusable answer keeps
    /// the last good addresses, with a warning. gatectl-refresh.timer runs
    /// it; prints one line per changed name.
    Refresh(refresh::RefreshArgs),
    /// Stop a gate and remove everything it created (idempotent).
    ///
    /// A gate that gatectl@SLUG.service manages is stopped through that
    /// unit. What its gate netns's firewall denied since the last `gatectl
    /// metrics` is recorded in the journal on the way. The last gate to stop
    /// restores the host's IPv4 forwarding, and removes gatectl's routing
    /// rules and nftables table.
    Stop(stop::StopArgs),
    /// Show the state of one gate, or of all (exit 3 if it is not running).
    ///
    /// Reads systemd, the kernel and the gate's record: the socket and
    /// forwarder units, the gate netns, the addresses and the upstream
    /// table, and for a broken gate what is wrong with it and the fix.
    /// Changes nothing.
    Status(status::StatusArgs),
    /// List the gates on this host.
    ///
    /// One line per gate that has a record, a unit or a netns: its state,
    /// address, ports and upstream aliases. Changes nothing.
    List(list::ListArgs),
    /// Show the gates' records: each connection and the denied attempts.
    ///
    /// Reads gatectl's records from the journal (journalctl -o json,
    /// matched on gatectl's fields): each connection a gate accepted, with
    /// its alias, the agent's address, the upstream, the bytes each way, its
    /// duration and how it ended (closed, or refused and why), and the
    /// attempts the gate netns's firewall denied. For one gate or all of
    /// them; needs root or the systemd-journal group. Changes nothing.
    Log(log::LogArgs),
    /// Print every gate's metrics for Prometheus, or write them for node_exporter.
    ///
    /// Per gate: its state, and from its forwarder (when it runs) the open
    /// and total connections, the bytes each way and the refusals by reason
    /// per entry; from its gate netns's firewall the denied packets. In the
    /// Prometheus text format, on stdout or with --write into the file
    /// metrics_path names (gatectl-metrics.timer runs that every minute).
    /// As root it also records in the journal what each gate denied since
    /// the last run: one record per gate, however many packets. Reading the
    /// counters needs root.
    Metrics(metrics::MetricsArgs),
    /// Show what `start` would create, creating nothing.
    ///
    /// Reads and validates the manifest and resolves its upstreams as start
    /// does, then prints the names, addresses and upstreams the gate would
    /// get and what start would change on the host and in the gate netns.
    Plan(plan::PlanArgs),
    /// Remove what gates that are gone left behind (never a running gate).
    ///
    /// Network namespaces without a running unit, failed units, gatectl's
    /// links that no gate owns, allowlists of vanished links and stale
    /// records; and, once no gate is left, the host's forwarding, routing
    /// rules and table as the host had them. Twice is harmless.
    Prune(prune::PruneArgs),
    /// Re-apply the firewall rules of every running gate (after an nftables reload).
    ///
    /// gatectl's routing rules, the host table inet gatectl, each running
    /// gate's allowlist in it and each gate netns's own table, from the
    /// gates' records. gatectl-reconcile.service runs it whenever
    /// nftables.service starts, reloads or restarts.
    Reconcile(reconcile::ReconcileArgs),
    /// Check that this host can run gates, and the state of what gatectl changes on it.
    ///
    /// One line per check: settings, the forwarder binary, systemd, the
    /// gates and their gatectl@ units, each forwarder's sandbox, the host
    /// table, IPv4 forwarding and its confinement, each gate netns's table,
    /// and the address pools against the host's routes. Each problem comes
    /// with its fix; exit 1 if a check fails. Changes nothing.
    Check(check::CheckArgs),
    /// Print the ssh_config Host blocks an agent uses to reach its upstreams.
    ///
    /// One Host block per manifest entry: HostName is the gate's address,
    /// Port the entry's listen port, HostKeyAlias the real upstream (so
    /// known_hosts keeps matching it), and User if the manifest sets one.
    /// With --include, the path of the file that holds these blocks while
    /// the gate runs (start writes it, stop removes it), for an Include
    /// line in the agent's ~/.ssh/config that never goes stale.
    SshConfig(ssh_config::SshConfigArgs),
    /// Print the JSON Schema of a kind of --json output, or list the kinds.
    ///
    /// Every --json output is one object whose "schema" field names its kind
    /// and version (gatectl.status/1); this prints that kind's JSON Schema
    /// (draft 2020-12), the same as /usr/share/gatectl/schema/gatectl.KIND-1.json.
    /// Adding a field keeps the version; removing or renaming one bumps it.
    /// Under --json, a failed command prints a gatectl.error/1 object on
    /// stdout (code, message, fix) instead of its error line on stderr, with
    /// the same exit status.
    Schema(schema::SchemaArgs),
    /// Run the forwarder (the gate unit's entrypoint).
    #[command(hide = true)]
    Forward(forward::ForwardArgs),
    /// Write the man pages and shell completions into a directory (packaging).
    #[command(hide = true)]
    Generate(generate::GenerateArgs),
}

/// What a subcommand ended with, when it did not fail.
pub enum Outcome {
    /// Exit 0.
    Ok,
    /// Exit [`EXIT_NOT_RUNNING`].
    NotRunning,
    /// Exit 1, the output having said why (`check --json` with a failed
    /// check).
    Failed,
}

/// The arguments that name a gate and its manifest, shared by `start` and
/// `plan`.
#[derive(clap::Args, Debug)]
pub struct GateArgs {
    /// The agent's slug: 1-32 of a-z, 0-9 and '-'.
    #[arg(value_parser = parse_slug)]
    pub slug: Slug,
    /// Manifest to read instead of /etc/gatectl/bottles/SLUG.toml (or .json).
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<std::path::PathBuf>,
    /// Put the agent's end of the gate in this network namespace (a name
    /// under /run/netns or a path); overrides the manifest's agent_netns.
    #[arg(long, value_name = "NAME|PATH")]
    pub agent_netns: Option<String>,
}

/// Parses a slug argument.
pub fn parse_slug(raw: &str) -> Result<Slug, String> {
    Slug::parse(raw).map_err(|e| e.to_string())
}

/// Runs a future to completion on a single-threaded runtime. Namespace
/// switches happen on dedicated threads, so one thread serves the rest.
pub fn block_on<T>(future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io {
            context: "cannot start the async runtime".into(),
            source: e,
        })?
        .block_on(future)
}

/// Runs the parsed command. A command that changes the host refuses to run
/// without root before it reads anything, so the one problem it names is
/// the one that matters.
pub fn run(cli: Cli) -> Result<Outcome> {
    let changes_the_host = match &cli.command {
        Command::Start(_) => Some("start"),
        Command::Stop(_) => Some("stop"),
        Command::Reload(_) => Some("reload"),
        Command::Refresh(_) => Some("refresh"),
        Command::Reconcile(_) => Some("reconcile"),
        Command::Prune(args) if !args.dry_run => Some("prune"),
        _ => None,
    };
    if let Some(command) = changes_the_host.filter(|_| !nix::unistd::geteuid().is_root()) {
        return Err(Error::invalid(format!(
            "gatectl {command} needs root: it changes network namespaces, links, firewall rules and \
             systemd units; run it as root (e.g. with sudo)"
        )));
    }
    match cli.command {
        Command::Start(args) => start::run(args),
        Command::Stop(args) => stop::run(args),
        Command::Reload(args) => reload::run(args),
        Command::Refresh(args) => refresh::run(args),
        Command::Status(args) => status::run(args),
        Command::List(args) => list::run(args),
        Command::Log(args) => log::run(args),
        Command::Metrics(args) => metrics::run(args),
        Command::Plan(args) => plan::run(args),
        Command::SshConfig(args) => ssh_config::run(args),
        Command::Reconcile(args) => reconcile::run(args),
        Command::Prune(args) => prune::run(args),
        Command::Check(args) => check::run(args),
        Command::Schema(args) => schema::run(args),
        Command::Forward(args) => forward::run(args).map(|()| Outcome::Ok),
        Command::Generate(args) => generate::run(args),
    }
}

/// Lets a closed stdout end the command quietly, as for any Unix filter
/// (`gatectl status | head -1`), instead of a panic in `println!`: SIGPIPE
/// goes back to its default action. The forwarder keeps it ignored, since
/// it writes to sockets whose peers may close at any time.
fn quiet_on_closed_stdout() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_DFL installs no handler code; this runs before any thread
    // is started.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

impl Command {
    /// Whether the command was asked for JSON (`--json`).
    pub fn json(&self) -> bool {
        match self {
            Command::Status(args) => args.json,
            Command::List(args) => args.json,
            Command::Log(args) => args.json,
            Command::Plan(args) => args.json,
            Command::Prune(args) => args.json,
            Command::Check(args) => args.json,
            _ => false,
        }
    }
}

/// Exit code of a usage error, as clap exits.
const EXIT_USAGE: u8 = 2;

/// Prints the error object of `error` (with `code`) on stdout, where the
/// output would have been.
fn print_error(error: output::ErrorOutput) {
    if json::print(json::Kind::Error, &error).is_err() {
        eprintln!("gatectl: error: {}", error.message);
    }
}

/// A usage error under `--json`: the error object, exit 2. Help and
/// version requests, and usage errors without `--json`, go to clap.
fn usage_error(e: clap::Error) -> ExitCode {
    let asked_for_json = std::env::args_os().skip(1).any(|a| a == "--json");
    if !asked_for_json || !e.use_stderr() {
        e.exit();
    }
    let rendered = e.render().to_string();
    let line = rendered.lines().next().unwrap_or_default();
    let message = line.strip_prefix("error: ").unwrap_or(line).to_string();
    print_error(output::ErrorOutput {
        code: crate::error::ErrorCode::Usage,
        fix: crate::error::last_clause(&message).or_else(|| Some("see `gatectl --help`".into())),
        message,
    });
    ExitCode::from(EXIT_USAGE)
}

/// The whole program: parse, run, report. Usage errors exit 2; under
/// `--json` every error is a `gatectl.error/1` object on stdout.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    if !matches!(cli.command, Command::Forward(_)) {
        quiet_on_closed_stdout();
    }
    let json = cli.command.json();
    match run(cli) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::NotRunning) => ExitCode::from(EXIT_NOT_RUNNING),
        Ok(Outcome::Failed) => ExitCode::FAILURE,
        Err(e) if json => {
            print_error(output::ErrorOutput::of(&e));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("gatectl: error: {e}");
            ExitCode::FAILURE
        }
    }
}
