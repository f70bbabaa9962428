//! The demo behind `scripts/demo`: in a throwaway systemd host, start a gate
//! from `examples/demo.toml`, ssh through it from the agent's netns, show
//! `gatectl status`, and tear everything down. Ignored by `cargo test`;
//! `scripts/demo` runs it with `--ignored --nocapture`.

mod common;

use common::{require_root, ssh_args, TestHost};
use std::path::Path;

const GATECTL: &str = "/usr/local/bin/gatectl";

fn show(host: &TestHost, argv: &[&str]) -> String {
    println!("\n$ {}", argv.join(" "));
    let out = host.run_ok(argv);
    print!("{out}");
    out
}

#[test]
#[ignore = "the demo; run it with scripts/demo"]
fn demo() {
    if !require_root() {
        return;
    }
    println!("== booting a throwaway systemd host (overlay root, own namespaces)");
    let host = TestHost::boot("gatectl-demo");
    host.install_binary(Path::new(env!("CARGO_BIN_EXE_gatectl")), GATECTL);
    println!("== an upstream netns running sshd (upstream.demo = 10.99.2.1) and an agent netns");
    host.add_netns_with_link("upstream", "up0", "10.99.2.0/31", "10.99.2.1/31");
    let sshd = host.start_sshd("upstream", "10.99.2.1", 22);
    let hosts = host.read_file("/etc/hosts") + "10.99.2.1 upstream.demo\n";
    host.write_file("/etc/hosts", hosts.as_bytes(), 0o644);
    host.add_netns("agent-demo");
    let manifest = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo.toml")).unwrap();
    host.write_file("/etc/gatectl/bottles/demo.toml", &manifest, 0o644);

    show(&host, &[GATECTL, "start", "demo"]);
    println!("\n== the gate listens; start also started the forwarder, which exits when idle:");
    show(&host, &[GATECTL, "status", "demo"]);
    let config = show(&host, &[GATECTL, "ssh-config", "demo"]);
    host.write_file("/root/demo_ssh_config", config.as_bytes(), 0o600);
    sshd.write_known_hosts(&host, "/root/demo_known_hosts", &["upstream.demo"]);
    let ssh = ssh_args(
        Some("agent-demo"),
        Some("/root/demo_ssh_config"),
        &sshd.identity,
        "/root/demo_known_hosts",
        "upstream",
        "echo \"hello from $(hostname -I) via the gate\"",
    );
    let ssh: Vec<&str> = ssh.iter().map(String::as_str).collect();
    let out = show(&host, &ssh);
    assert!(out.contains("via the gate"));
    println!("\n== the agent has no other way out:");
    show(&host, &["ip", "netns", "exec", "agent-demo", "ip", "route"]);
    show(&host, &[GATECTL, "status", "demo"]);
    show(&host, &[GATECTL, "list"]);
    show(
        &host,
        &["journalctl", "-u", "gate-demo.service", "-o", "cat", "--no-pager"],
    );
    show(&host, &[GATECTL, "stop", "demo"]);
    show(&host, &["ip", "netns", "list"]);
    println!("\n== done; the throwaway host ends now and the real host was not changed");
}
