//! Helpers for end-to-end tests of gatectl inside a [`TestHost`]: run the
//! installed binary, build the standard upstream/agent fixture, attempt
//! connections, and list what a gate left behind.

use std::path::Path;
use std::process::Output;

use super::{SshFixture, TestHost};

/// Where the tests install the freshly built binary inside a host (a system
/// path, as `DynamicUser=` units require).
pub const GATECTL: &str = "/usr/local/bin/gatectl";

/// A command's exit status, stdout and stderr, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs the installed gatectl with `args` inside `host`.
pub fn gatectl(host: &TestHost, args: &[&str]) -> Output {
    let mut argv = vec![GATECTL];
    argv.extend_from_slice(args);
    host.exec(&argv)
}

/// Runs gatectl and panics (with its output) unless it succeeds; returns stdout.
pub fn gatectl_ok(host: &TestHost, args: &[&str]) -> String {
    let out = gatectl(host, args);
    assert!(out.status.success(), "gatectl {args:?} failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A throwaway host with gatectl installed at [`GATECTL`] and the fixture of
/// [`add_upstream_and_agent`].
pub fn setup(name: &str) -> (TestHost, SshFixture) {
    let host = TestHost::boot(name);
    host.install_binary(Path::new(env!("CARGO_BIN_EXE_gatectl")), GATECTL);
    host.run_ok(&["mkdir", "-p", "/etc/gatectl/bottles"]);
    let sshd = add_upstream_and_agent(&host);
    (host, sshd)
}

/// An upstream netns `upstream` (10.99.2.1, behind the host's `up0`
/// 10.99.2.0) running sshd on :22 and named `upstream.test` in /etc/hosts,
/// and an isolated agent netns `agent`. `/root/agent/known_hosts` vouches
/// for the upstream's host key.
pub fn add_upstream_and_agent(host: &TestHost) -> SshFixture {
    host.add_netns_with_link("upstream", "up0", "10.99.2.0/31", "10.99.2.1/31");
    let sshd = host.start_sshd("upstream", "10.99.2.1", 22);
    add_host_name(host, "10.99.2.1", "upstream.test");
    host.add_netns("agent");
    host.run_ok(&["mkdir", "-p", "/root/agent"]);
    sshd.write_known_hosts(host, "/root/agent/known_hosts", &["upstream.test"]);
    sshd
}

/// Adds `address name` to the host's /etc/hosts.
pub fn add_host_name(host: &TestHost, address: &str, name: &str) {
    let hosts = host.read_file("/etc/hosts") + &format!("{address} {name}\n");
    host.write_file("/etc/hosts", hosts.as_bytes(), 0o644);
}

/// Tries a TCP connection from `netns` (or the host's root namespace) to
/// `address:port`, giving up after 3 s. `Err` carries why it failed.
pub fn connect(host: &TestHost, netns: Option<&str>, address: &str, port: u16) -> Result<(), String> {
    connect_within(host, netns, address, port, "3")
}

/// [`connect`], giving up after `seconds` (as `timeout(1)` takes them, e.g.
/// `"0.5"`): for attempts expected to get no answer.
pub fn connect_within(
    host: &TestHost,
    netns: Option<&str>,
    address: &str,
    port: u16,
    seconds: &str,
) -> Result<(), String> {
    let script = format!("exec 3<>/dev/tcp/{address}/{port}");
    let mut argv: Vec<&str> = Vec::new();
    if let Some(ns) = netns {
        argv.extend(["ip", "netns", "exec", ns]);
    }
    argv.extend(["timeout", seconds, "bash", "-c", &script]);
    let out = host.exec(&argv);
    if out.status.success() {
        Ok(())
    } else if out.status.code() == Some(124) {
        Err("timed out".into())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Starts a TCP server in `netns` (or the root namespace) on
/// `address:port` that answers every connection with `reply`; it lives
/// until the host ends.
pub fn serve(host: &TestHost, netns: Option<&str>, address: &str, port: u16, reply: &str) {
    let listen = format!("{address}:{port}");
    let mut argv: Vec<&str> = vec!["systemd-run", "--quiet", "--collect"];
    let ns_path;
    if let Some(ns) = netns {
        ns_path = format!("NetworkNamespacePath=/run/netns/{ns}");
        argv.extend(["-p", &ns_path]);
    }
    argv.extend([
        "systemd-socket-activate",
        "--accept",
        "--inetd",
        "-l",
        &listen,
        "/bin/echo",
        reply,
    ]);
    host.run_ok(&argv);
    for _ in 0..50 {
        if connect(host, netns, address, port).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the test server on {listen} did not come up");
}

/// The elements of gatectl's allowlist sets, one `ifname . address . port`
/// per line (empty if the table is absent).
pub fn allowlist(host: &TestHost) -> String {
    let mut lines = String::new();
    for set in ["allow4", "allow6"] {
        let out = host.exec(&["nft", "list", "set", "inet", "gatectl", set]);
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(start) = text.find("elements = {") {
            let body = &text[start + "elements = {".len()..];
            let body = &body[..body.find('}').unwrap_or(body.len())];
            for e in body.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                lines.push_str(e);
                lines.push('\n');
            }
        }
    }
    lines
}

/// The argv listing every `gate-*` unit systemd has loaded, one per line.
pub const LIST_GATE_UNITS: [&str; 6] = [
    "systemctl",
    "list-units",
    "--all",
    "--plain",
    "--no-legend",
    "gate-*",
];

/// Everything gatectl may change on a host, as text to compare: network
/// namespaces, links (of the host and the agent netns), routes, the nftables
/// ruleset, IPv4 forwarding, the gate units and gatectl's runtime state.
pub fn host_state(host: &TestHost) -> String {
    let mut state = String::new();
    let probes: [&[&str]; 8] = [
        &["ip", "netns", "list"],
        &["ip", "-o", "link", "show"],
        &["ip", "-4", "route", "show", "table", "all"],
        &["ip", "-n", "agent", "-o", "link", "show"],
        &["nft", "list", "ruleset"],
        &["sysctl", "net.ipv4.ip_forward"],
        &LIST_GATE_UNITS,
        &["find", "/run/gatectl", "-printf", "%p %y %s\n"],
    ];
    for argv in probes {
        let o = host.exec(argv);
        state += &format!(
            "$ {}\n{}{}",
            argv.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    state
}

/// `net.ipv4.ip_forward` in `netns` (or the host's root namespace).
pub fn ip_forward(host: &TestHost, netns: Option<&str>) -> String {
    let mut argv = Vec::new();
    if let Some(ns) = netns {
        argv.extend(["ip", "netns", "exec", ns]);
    }
    argv.extend(["sysctl", "-n", "net.ipv4.ip_forward"]);
    host.run_ok(&argv).trim().to_string()
}

/// What the kernel, systemd and gatectl's state hold of gate `slug`, or of
/// any gate's links, the firewall aside (empty when nothing is left).
pub fn gate_traces(host: &TestHost, slug: &str) -> Vec<String> {
    let mut left = Vec::new();
    let netns = host.run_ok(&["ip", "netns", "list"]);
    if netns.contains(&format!("gate-{slug}")) {
        left.push(format!("netns: {netns}"));
    }
    let links = host.run_ok(&["ip", "-o", "link", "show"]);
    for l in links
        .lines()
        .filter(|l| l.contains(": gte") || l.contains(": gti"))
    {
        left.push(format!("host link: {l}"));
    }
    let agent_links = host.run_ok(&["ip", "-n", "agent", "-o", "link", "show"]);
    if agent_links.contains("gate0") {
        left.push(format!("agent link: {agent_links}"));
    }
    let units = host.run_ok(&LIST_GATE_UNITS);
    if !units.trim().is_empty() {
        left.push(format!("units: {units}"));
    }
    let record = host.exec(&["test", "-e", &format!("/run/gatectl/gates/{slug}.json")]);
    if record.status.success() {
        left.push("state record".into());
    }
    left
}

/// [`gate_traces`] plus any element left in gatectl's firewall allowlist.
pub fn leftovers(host: &TestHost, slug: &str) -> Vec<String> {
    let mut left = gate_traces(host, slug);
    let elements = allowlist(host);
    if !elements.is_empty() {
        left.push(format!("firewall elements: {elements}"));
    }
    left
}

/// Runs `command` on the upstream over a real `ssh` to alias `up`, through
/// gate `slug` with the config `gatectl ssh-config` prints, from `netns` (or
/// the host's root namespace). Returns ssh's stdout, or why it failed.
pub fn ssh_via_gate(
    host: &TestHost,
    sshd: &SshFixture,
    slug: &str,
    netns: Option<&str>,
    command: &str,
) -> Result<String, String> {
    let config = gatectl_ok(host, &["ssh-config", slug]);
    let path = format!("/root/agent/{slug}.ssh_config");
    host.write_file(&path, config.as_bytes(), 0o600);
    let argv = super::ssh_args(
        netns,
        Some(&path),
        &sshd.identity,
        "/root/agent/known_hosts",
        "up",
        command,
    );
    let out = host.exec(&argv);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(text(&out))
    }
}

/// Runs a bash `script` inside `netns` with a time limit of `seconds`
/// (for raw `/dev/tcp` connections).
pub fn bash_in(host: &TestHost, netns: &str, seconds: u32, script: &str) -> Output {
    let seconds = seconds.to_string();
    host.exec(&[
        "ip", "netns", "exec", netns, "timeout", &seconds, "bash", "-c", script,
    ])
}
