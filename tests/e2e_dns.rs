//! End to end, in a throwaway systemd host whose resolver is a real DNS
//! server (dnsmasq, answering from a hosts file with a chosen TTL): a
//! running gate follows its upstream's name. `gatectl refresh` (what
//! `gatectl-refresh.timer` runs) moves new connections to the new address
//! while a session to the old one goes on; it honours the TTL between the
//! floor and ceiling of the settings; a failed or refused answer keeps the
//! last good address and says so.
//!
//! Needs root and dnsmasq (scripts/install-deps); skipped without root
//! (fails under `CI`).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use common::gatectl::{gatectl, gatectl_ok, install_unit, leftovers, setup, text};
use common::{require_root, ssh_args, SshFixture, TestHost};

const KNOWN_HOSTS: &str = "/root/agent/known_hosts";
const SSH_CONFIG: &str = "/root/agent/alice.ssh_config";
/// The hosts file dnsmasq answers from.
const DNS_HOSTS: &str = "/etc/gatectl-test/dns-hosts";
/// The TTL dnsmasq gives its answers, in seconds.
const TTL: u64 = 3;

/// Points `moving.test` at `address` in the DNS server, at once.
fn set_dns(host: &TestHost, address: &str) {
    host.write_file(DNS_HOSTS, format!("{address} moving.test\n").as_bytes(), 0o644);
    host.run_ok(&["systemctl", "kill", "--signal=HUP", "test-dns.service"]);
    // dnsmasq reads the file again at SIGHUP; wait until it answers so.
    for _ in 0..50 {
        let out = host.exec(&["getent", "ahostsv4", "moving.test"]);
        if String::from_utf8_lossy(&out.stdout).starts_with(address) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("dnsmasq does not answer {address} for moving.test");
}

/// A DNS server on 127.0.0.1 for the host's resolver, answering from
/// [`DNS_HOSTS`] with TTL [`TTL`], and nothing else.
fn start_dns(host: &TestHost, address: &str) {
    host.write_file(DNS_HOSTS, format!("{address} moving.test\n").as_bytes(), 0o644);
    let ttl = format!("--local-ttl={TTL}");
    let hosts = format!("--addn-hosts={DNS_HOSTS}");
    host.run_ok(&[
        "systemd-run",
        "--unit=test-dns",
        "--quiet",
        "/usr/sbin/dnsmasq",
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        &hosts,
        &ttl,
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--user=root",
        "--pid-file",
    ]);
    host.run_ok(&["rm", "-f", "/etc/resolv.conf"]);
    host.write_file("/etc/resolv.conf", b"nameserver 127.0.0.1\n", 0o644);
    set_dns(host, address);
}

/// The server address and port of a new ssh session to alias `mv` from
/// the agent netns, as sshd sees them.
fn server_of(host: &TestHost, sshd: &SshFixture) -> Result<String, String> {
    let argv = ssh_args(
        Some("agent"),
        Some(SSH_CONFIG),
        &sshd.identity,
        KNOWN_HOSTS,
        "mv",
        "set -- $SSH_CONNECTION; echo $3:$4",
    );
    let out = host.exec(&argv);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(text(&out))
    }
}

/// A held ssh session running `cat` upstream.
struct Session {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Session {
    fn open(host: &TestHost, sshd: &SshFixture) -> Session {
        let argv = ssh_args(
            Some("agent"),
            Some(SSH_CONFIG),
            &sshd.identity,
            KNOWN_HOSTS,
            "mv",
            "cat",
        );
        let mut child = host
            .command(&argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run ssh");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut session = Session { child, stdin, lines };
        session.echo("hello").unwrap();
        session
    }

    fn echo(&mut self, line: &str) -> Result<(), String> {
        writeln!(self.stdin, "{line}").map_err(|e| format!("the session is closed: {e}"))?;
        match self.lines.recv_timeout(Duration::from_secs(10)) {
            Ok(got) if got == line => Ok(()),
            Ok(got) => Err(format!("got {got:?} back instead of {line:?}")),
            Err(e) => Err(format!("no echo: {e}")),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `gatectl refresh` with `args`: its stdout and stderr.
fn refresh(host: &TestHost, args: &[&str]) -> (String, String) {
    let mut argv = vec!["refresh"];
    argv.extend_from_slice(args);
    let out = gatectl(host, &argv);
    assert!(out.status.success(), "{}", text(&out));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_running_gate_follows_its_upstream_name_and_keeps_old_sessions() {
    if !require_root() {
        return;
    }
    let (host, sshd) = setup("e2e-dns");
    // A second address of the upstream, with its own sshd (the same client
    // key; known_hosts vouches for both host keys under the name).
    host.add_netns_with_link("upstream2", "up2", "10.99.3.0/31", "10.99.3.1/31");
    let second = host.start_sshd("upstream2", "10.99.3.1", 22);
    host.run_ok(&["cp", &format!("{}.pub", sshd.identity), &second.authorized_keys]);
    let known = sshd.known_hosts_for("moving.test") + &second.known_hosts_for("moving.test");
    host.write_file(KNOWN_HOSTS, known.as_bytes(), 0o600);
    start_dns(&host, "10.99.2.1");
    host.write_file(
        "/etc/gatectl/gatectl.toml",
        b"dns_refresh_min_secs = 1\ndns_refresh_max_secs = 30\n",
        0o644,
    );
    host.write_file(
        "/etc/gatectl/bottles/alice.toml",
        b"agent_netns = \"agent\"\n[[ssh]]\nHost = \"mv\"\nHostname = \"moving.test\"\nUser = \"root\"\n",
        0o644,
    );
    gatectl_ok(&host, &["start", "alice"]);
    let config = gatectl_ok(&host, &["ssh-config", "alice"]);
    host.write_file(SSH_CONFIG, config.as_bytes(), 0o600);
    assert_eq!(server_of(&host, &sshd), Ok("10.99.2.1:22".into()));
    let mut old = Session::open(&host, &sshd);

    // The name moves: a refresh moves new connections, the old session
    // goes on.
    set_dns(&host, "10.99.3.1");
    let (out, err) = refresh(&host, &["--force"]);
    assert_eq!(out, "gate alice: moving.test: 10.99.2.1 -> 10.99.3.1\n");
    assert_eq!(err, "");
    assert_eq!(server_of(&host, &sshd), Ok("10.99.3.1:22".into()));
    old.echo("after the move").unwrap();

    // The answer holds for its TTL: a refresh before it runs out does
    // nothing, one after it moves the gate again.
    set_dns(&host, "10.99.2.1");
    assert_eq!(refresh(&host, &[]), (String::new(), String::new()));
    assert_eq!(server_of(&host, &sshd), Ok("10.99.3.1:22".into()));
    std::thread::sleep(Duration::from_secs(TTL + 1));
    let (out, _) = refresh(&host, &[]);
    assert_eq!(out, "gate alice: moving.test: 10.99.3.1 -> 10.99.2.1\n");
    assert_eq!(server_of(&host, &sshd), Ok("10.99.2.1:22".into()));

    // An answer gatectl refuses keeps the last good address.
    set_dns(&host, "127.0.0.1");
    let (out, err) = refresh(&host, &["--force"]);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "gatectl: warning: gate alice: moving.test resolves to no address a gate can use (127.0.0.1); \
         keeping 10.99.2.1\n"
    );
    // So does a resolver that does not answer.
    host.run_ok(&["systemctl", "stop", "test-dns.service"]);
    let (out, err) = refresh(&host, &["--force"]);
    assert_eq!(out, "");
    assert!(
        err.starts_with("gatectl: warning: gate alice: cannot resolve upstream \"moving.test\": ")
            && err.ends_with("; keeping 10.99.2.1\n"),
        "{err}"
    );
    assert_eq!(server_of(&host, &sshd), Ok("10.99.2.1:22".into()));
    old.echo("after the failed refreshes").unwrap();

    // The packaged unit runs the same refresh.
    start_dns_again(&host);
    set_dns(&host, "10.99.3.1");
    install_unit(&host, "units/gatectl-refresh.service");
    host.run_ok(&["systemctl", "daemon-reload"]);
    std::thread::sleep(Duration::from_secs(TTL));
    host.run_ok(&["systemctl", "start", "gatectl-refresh.service"]);
    let journal = host.run_ok(&["journalctl", "-u", "gatectl-refresh.service", "-o", "cat"]);
    assert!(
        journal.contains("gate alice: moving.test: 10.99.2.1 -> 10.99.3.1"),
        "{journal}"
    );
    assert_eq!(server_of(&host, &sshd), Ok("10.99.3.1:22".into()));

    drop(old);
    gatectl_ok(&host, &["stop", "alice"]);
    assert_eq!(leftovers(&host, "alice"), Vec::<String>::new());
}

/// Starts the DNS server again after the test stopped it.
fn start_dns_again(host: &TestHost) {
    // A unit that failed while stopping would keep its name.
    let _ = host.exec(&["systemctl", "reset-failed", "test-dns.service"]);
    start_dns(host, "10.99.2.1");
}
