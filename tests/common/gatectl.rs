//! Helpers for end-to-end tests of gatectl inside a [`TestHost`]: run the
//! installed binary, build the standard upstream/agent fixture, attempt
//! connections, and list what a gate left behind.

use std::path::Path;
use std::process::Output;

use super::{json_schema, SshFixture, TestHost};

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

/// Runs the installed gatectl with `args` inside `host`. A `--json` output
/// (or error object) is validated against its committed JSON Schema.
pub fn gatectl(host: &TestHost, args: &[&str]) -> Output {
    let mut argv = vec![GATECTL];
    argv.extend_from_slice(args);
    let out = host.exec(&argv);
    if args.contains(&"--json") {
        json_schema::validate(
            &format!("gatectl {args:?}"),
            &String::from_utf8_lossy(&out.stdout),
        );
    }
    out
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
/// `address:port` that answers every connection with `reply` and closes it;
/// it lives until the host ends.
pub fn serve(host: &TestHost, netns: Option<&str>, address: &str, port: u16, reply: &str) {
    serve_with(host, netns, address, port, &["/bin/echo", reply]);
}

/// Starts a TCP echo server in `netns` (or the root namespace) on
/// `address:port`: each connection gets back every byte it sends and stays
/// open until the client closes it. It lives until the host ends.
pub fn serve_echo(host: &TestHost, netns: Option<&str>, address: &str, port: u16) {
    serve_with(host, netns, address, port, &["/bin/cat"]);
}

/// Runs `command` for every connection to `address:port` in `netns`, with
/// the connection as its stdin and stdout, and waits until it accepts.
fn serve_with(host: &TestHost, netns: Option<&str>, address: &str, port: u16, command: &[&str]) {
    let listen = if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    };
    let mut argv: Vec<&str> = vec!["systemd-run", "--quiet", "--collect"];
    let ns_path;
    if let Some(ns) = netns {
        ns_path = format!("NetworkNamespacePath=/run/netns/{ns}");
        argv.extend(["-p", &ns_path]);
    }
    argv.extend(["systemd-socket-activate", "--accept", "--inetd", "-l", &listen]);
    argv.extend_from_slice(command);
    host.run_ok(&argv);
    for _ in 0..50 {
        if connect(host, netns, address, port).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the test server on {listen} did not come up");
}

/// The elements of gatectl's allowlist sets in the host's root namespace, one
/// `"ifname" . address . port` per line, read from `nft -j`; empty when the
/// table `inet gatectl` does not exist. Any other failure of nft, or a listing
/// of an unexpected shape, fails the test: an unreadable table is not an
/// empty one.
pub fn allowlist(host: &TestHost) -> String {
    let Some(listing) = host_table(host) else {
        return String::new();
    };
    let mut lines = String::new();
    for set in listing.iter().filter_map(|o| o.get("set")) {
        if !matches!(set["name"].as_str(), Some("allow4" | "allow6")) {
            continue;
        }
        for element in set.get("elem").and_then(|e| e.as_array()).into_iter().flatten() {
            let parts = element["concat"]
                .as_array()
                .unwrap_or_else(|| panic!("allowlist element is not a concatenation: {element}"));
            let [ifname, address, port] = parts.as_slice() else {
                panic!("allowlist element has not three parts: {element}");
            };
            let (Some(ifname), Some(address), Some(port)) =
                (ifname.as_str(), address.as_str(), port.as_u64())
            else {
                panic!("allowlist element is not ifname . address . port: {element}");
            };
            lines.push_str(&format!("\"{ifname}\" . {address} . {port}\n"));
        }
    }
    lines
}

/// The objects of the host's table `inet gatectl` as `nft -j` lists them, or
/// `None` when nft says the table does not exist. Fails the test on any other
/// error of nft.
pub fn host_table(host: &TestHost) -> Option<Vec<serde_json::Value>> {
    let out = host.exec(&["nft", "-j", "list", "table", "inet", "gatectl"]);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("No such file or directory"),
            "nft cannot list table inet gatectl: {}",
            text(&out)
        );
        return None;
    }
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("nft -j printed no JSON ({e}): {}", text(&out)));
    let objects = listing["nftables"]
        .as_array()
        .unwrap_or_else(|| panic!("nft -j printed no `nftables` array: {}", text(&out)));
    Some(objects.clone())
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
    let probes: [&[&str]; 11] = [
        &["ip", "netns", "list"],
        &["ip", "-o", "link", "show"],
        &["ip", "-4", "route", "show", "table", "all"],
        &["ip", "-6", "route", "show", "table", "all"],
        &["ip", "-6", "rule", "show"],
        &["ip", "-n", "agent", "-o", "link", "show"],
        &["nft", "list", "ruleset"],
        &["sysctl", "net.ipv4.ip_forward"],
        &["sysctl", "net.ipv6.conf.all.forwarding"],
        &LIST_GATE_UNITS,
        &["find", "/run/gatectl", "-printf", "%p %y %s\n"],
    ];
    for argv in probes {
        let o = host.exec(argv);
        // The local route of a link-local address appears once the kernel's
        // duplicate address detection ends, a second or so after a link
        // comes up: a fixture link's would show up between two snapshots.
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stdout: String = stdout
            .lines()
            .filter(|line| !line.starts_with("local fe80::"))
            .map(|line| format!("{line}\n"))
            .collect();
        state += &format!(
            "$ {}\n{stdout}{}",
            argv.join(" "),
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

/// [`gate_traces`] plus everything gatectl changes host-wide, which must be
/// gone once no gate is left: the host's table `inet gatectl` (with any
/// allowlist element), gatectl's FIB rules (`proto 231`), routes into the
/// default address pools (of gate links), index claims and the forwarding marker in the
/// state directory, and IPv4 and IPv6 forwarding, which the fixture of
/// [`add_upstream_and_agent`] leaves off (so gatectl must have turned them
/// off again); the same for IPv6: `ip -6 rule`s of gatectl, routes into the
/// default IPv6 egress pool, its marker. Call it only where no gate should
/// exist and the test has not turned forwarding on itself.
pub fn leftovers(host: &TestHost, slug: &str) -> Vec<String> {
    let mut left = gate_traces(host, slug);
    if host_table(host).is_some() {
        left.push(format!(
            "firewall table inet gatectl, allowlist: [{}]",
            allowlist(host).trim_end().replace('\n', ", ")
        ));
    }
    let rules = host.run_ok(&["ip", "-4", "rule", "show"]);
    for rule in rules.lines().filter(|r| r.contains("proto 231")) {
        left.push(format!("FIB rule: {rule}"));
    }
    let rules6 = host.run_ok(&["ip", "-6", "rule", "show"]);
    for rule in rules6.lines().filter(|r| r.contains("proto 231")) {
        left.push(format!("IPv6 FIB rule: {rule}"));
    }
    let routes6 = host.run_ok(&["ip", "-6", "route", "show", "table", "all"]);
    for route in routes6.lines().filter(|r| r.contains("fd23:1:2:")) {
        left.push(format!("IPv6 route: {route}"));
    }
    let routes = host.run_ok(&["ip", "-4", "route", "show", "table", "all"]);
    // An `unreachable` route into a pool is a test's own (it makes `start`
    // refuse the pool); gatectl adds none.
    for route in routes
        .lines()
        .filter(|r| (r.contains("10.231.") || r.contains("10.232.")) && !r.starts_with("unreachable "))
    {
        left.push(format!("route: {route}"));
    }
    let state = host.run_ok(&[
        "sh",
        "-c",
        "find /run/gatectl/indexes /run/gatectl/ip_forward-enabled-by-gatectl \
         /run/gatectl/ipv6-forwarding-enabled-by-gatectl 2>/dev/null || true",
    ]);
    for path in state.lines().filter(|p| *p != "/run/gatectl/indexes") {
        left.push(format!("state: {path}"));
    }
    let forwarding = ip_forward(host, None);
    if forwarding != "0" {
        left.push(format!(
            "net.ipv4.ip_forward = {forwarding}, the fixture left it 0"
        ));
    }
    let forwarding6 = ipv6_forwarding(host);
    if forwarding6 != "0" {
        left.push(format!(
            "net.ipv6.conf.all.forwarding = {forwarding6}, the fixture left it 0"
        ));
    }
    left
}

/// `net.ipv6.conf.all.forwarding` in the host's root namespace.
pub fn ipv6_forwarding(host: &TestHost) -> String {
    host.run_ok(&["sysctl", "-n", "net.ipv6.conf.all.forwarding"])
        .trim()
        .to_string()
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

/// The lines of `ip rule show` that are gatectl's (protocol 231).
pub fn gatectl_rules(host: &TestHost) -> Vec<String> {
    gatectl_rules_of(host, "-4")
}

/// gatectl's lines (protocol 231) of `ip FAMILY rule show`.
fn gatectl_rules_of(host: &TestHost, family: &str) -> Vec<String> {
    host.run_ok(&["ip", family, "rule", "show"])
        .lines()
        .filter(|l| l.contains("proto 231"))
        .map(|l| l.trim().to_string())
        .collect()
}

/// The detail of the `gatectl check` report's line about `subject` (the
/// columns are the verdict in 5, the subject in 14, then the detail).
pub fn detail<'a>(report: &'a str, subject: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.get(6..20).map(str::trim_end) == Some(subject))
        .map(|l| &l[21..])
        .unwrap_or_else(|| panic!("no {subject} line: {report}"))
}

/// The lines of a `gatectl check` report whose verdict is not `ok`.
pub fn not_ok(report: &str) -> Vec<&str> {
    report.lines().filter(|l| !l.starts_with("ok ")).collect()
}

/// Installs the unit file at `repo_path` (relative to the repository, e.g.
/// `units/gatectl@.service`) into the host's /etc/systemd/system, running
/// the binary the tests install ([`GATECTL`]) where the package's runs
/// /usr/bin/gatectl. The caller runs `systemctl daemon-reload`.
pub fn install_unit(host: &TestHost, repo_path: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(repo_path);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .replace("/usr/bin/gatectl", GATECTL);
    let name = path.file_name().unwrap().to_str().unwrap();
    host.write_file(&format!("/etc/systemd/system/{name}"), text.as_bytes(), 0o644);
}

/// A count from the environment variable `name`, or `default`: the knob of
/// a long loop, short by default so CI stays fast.
pub fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|e| panic!("{name}={v}: {e}")))
        .unwrap_or(default)
}

/// Whether the host's root netns holds the table `inet gatectl`.
pub fn host_table_exists(host: &TestHost) -> bool {
    host.exec(&["nft", "list", "table", "inet", "gatectl"])
        .status
        .success()
}

/// The lines of `ip -6 rule show` that are gatectl's (protocol 231).
pub fn gatectl_rules6(host: &TestHost) -> Vec<String> {
    gatectl_rules_of(host, "-6")
}

/// The `STATUS=` line systemd holds for `unit` (its `StatusText`).
pub fn status_text(host: &TestHost, unit: &str) -> String {
    host.run_ok(&["systemctl", "show", "-p", "StatusText", "--value", unit])
}

/// Starts the installed gatectl with `args` inside `host` without waiting,
/// its stdout and stderr piped (finish it with `common::finish`): for
/// commands that race each other.
pub fn spawn_gatectl(host: &TestHost, args: &[&str]) -> std::process::Child {
    let mut argv = vec![GATECTL];
    argv.extend_from_slice(args);
    host.command(&argv)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cannot run gatectl in the host")
}

/// What `systemctl is-active unit` prints (`active`, `inactive`, …).
pub fn unit_state(host: &TestHost, unit: &str) -> String {
    let out = host.exec(&["systemctl", "is-active", unit]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits up to `within` for `systemctl is-active unit` to print `state`;
/// returns the last state it printed.
pub fn wait_unit_state(host: &TestHost, unit: &str, state: &str, within: std::time::Duration) -> String {
    let deadline = std::time::Instant::now() + within;
    loop {
        let now = unit_state(host, unit);
        if now == state || std::time::Instant::now() >= deadline {
            return now;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The value systemd holds for `property` of `unit`, trimmed.
pub fn unit_property(host: &TestHost, unit: &str, property: &str) -> String {
    host.run_ok(&["systemctl", "show", "--value", "-p", property, unit])
        .trim()
        .to_string()
}

/// The main PID systemd holds for `unit` (0 when it runs none).
pub fn main_pid(host: &TestHost, unit: &str) -> String {
    unit_property(host, unit, "MainPID")
}

/// The journal of `unit` (`journalctl -o cat`) once `complete` holds for
/// it, or as it is after 5 s. Audit records reach the journal in batches,
/// a few milliseconds after their connection closed.
pub fn journal_when(host: &TestHost, unit: &str, complete: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let journal = host.run_ok(&["journalctl", "-u", unit, "-o", "cat", "--no-pager"]);
        if complete(&journal) || std::time::Instant::now() >= deadline {
            return journal;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
