"""Tests of the gatectl backend of the seed's SSHGate.

The first tests need nothing but Python. The others drive the real
gatectl, as root, with real ssh: tests/e2e_contrib.rs runs them inside a
throwaway systemd host, with an sshd in an upstream netns, an agent netns,
and the environment below. Without GATECTL_E2E they skip, unless CI is
set: then they fail, so CI cannot pass without running them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from claude_bottle.manifest import Bottle, SSHEntry
from claude_bottle.ssh_gate import BASE_LISTEN_PORT
from gatectl_ssh_gate import GatectlError, GatectlSSHGate, listen_ports, plan_ports, ssh_config

# Three entries, two ports: the mapping is BASE_LISTEN_PORT + i in order.
UPSTREAM = os.environ.get("GATECTL_E2E_UPSTREAM", "upstream.test")
BOTTLE = Bottle(
    ssh=(
        SSHEntry(Host="up", Hostname=UPSTREAM),
        SSHEntry(Host="up-again", Hostname=UPSTREAM, Port="22"),
        SSHEntry(Host="up-third", Hostname=UPSTREAM),
    )
)


def test_the_manifest_is_the_plans_upstream_table_in_order(tmp_path: Path):
    gate = GatectlSSHGate(agent_netns="agent-{slug}")
    plan = gate.prepare(BOTTLE, "alice", tmp_path)
    assert plan_ports(plan) == [("up", 30000), ("up-again", 30001), ("up-third", 30002)]
    assert BASE_LISTEN_PORT == 30000
    path = gate.write_manifest(plan)
    assert path == tmp_path / "gatectl-manifest.json"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert path.read_text() == (
        "{\n"
        '  "ssh": [\n'
        '    {\n      "Host": "up",\n      "Hostname": "%s",\n      "Port": "22"\n    },\n'
        '    {\n      "Host": "up-again",\n      "Hostname": "%s",\n      "Port": "22"\n    },\n'
        '    {\n      "Host": "up-third",\n      "Hostname": "%s",\n      "Port": "22"\n    }\n'
        "  ],\n"
        '  "agent_netns": "agent-alice"\n'
        "}\n"
    ) % (UPSTREAM, UPSTREAM, UPSTREAM)


def test_an_error_object_becomes_a_gatectl_error(tmp_path: Path):
    fake = tmp_path / "gatectl"
    fake.write_text(
        "#!/bin/sh\n"
        "echo '{\"schema\": \"gatectl.error/1\", \"code\": \"invalid\", \"message\": \"bad; fix it\", "
        "\"fix\": \"fix it\"}'\n"
        "exit 1\n"
    )
    fake.chmod(0o755)
    with pytest.raises(GatectlError) as raised:
        GatectlSSHGate(gatectl=str(fake)).status("alice")
    assert (raised.value.code, raised.value.message, raised.value.fix) == ("invalid", "bad; fix it", "fix it")
    assert raised.value.returncode == 1


@pytest.fixture
def e2e() -> dict:
    """The environment of tests/e2e_contrib.rs; skips (fails under CI)
    without it."""
    if not os.environ.get("GATECTL_E2E"):
        if os.environ.get("CI"):
            pytest.fail("GATECTL_E2E is not set under CI: run these through tests/e2e_contrib.rs")
        pytest.skip("needs a throwaway host: cargo test --test e2e_contrib")
    return {
        "gatectl": os.environ["GATECTL_E2E_GATECTL"],
        "agent_netns": os.environ["GATECTL_E2E_AGENT_NETNS"],
        "identity": os.environ["GATECTL_E2E_IDENTITY"],
        "known_hosts": os.environ["GATECTL_E2E_KNOWN_HOSTS"],
    }


def ssh(e2e: dict, config: Path, alias: str, command: str) -> subprocess.CompletedProcess:
    """A real, non-interactive ssh from the agent netns to `alias`."""
    argv = ["ip", "netns", "exec", e2e["agent_netns"], "ssh", "-F", str(config), "-i", e2e["identity"]]
    for option in [
        f"UserKnownHostsFile={e2e['known_hosts']}",
        "GlobalKnownHostsFile=/dev/null",
        "StrictHostKeyChecking=yes",
        "BatchMode=yes",
        "IdentitiesOnly=yes",
        "UpdateHostKeys=no",
        "ConnectTimeout=5",
        "LogLevel=ERROR",
        "User=root",
    ]:
        argv += ["-o", option]
    return subprocess.run([*argv, "--", alias, command], capture_output=True, text=True, timeout=60, check=False)


def test_gatectls_listen_ports_are_the_plans(e2e: dict, tmp_path: Path):
    gate = GatectlSSHGate(gatectl=e2e["gatectl"], agent_netns=e2e["agent_netns"])
    plan = gate.prepare(BOTTLE, "ports", tmp_path)
    assert listen_ports(gate.gatectl_plan(plan)) == plan_ports(plan)


def test_prepare_start_ssh_stop_and_stop_again(e2e: dict, tmp_path: Path):
    gate = GatectlSSHGate(gatectl=e2e["gatectl"], agent_netns=e2e["agent_netns"])
    plan = gate.prepare(BOTTLE, "bottle", tmp_path)
    target = gate.start(plan)
    try:
        assert target == "bottle"
        status = gate.status(target)
        assert status["state"] == "running", status
        assert listen_ports(status["plan"]) == plan_ports(plan)
        plan = gate.with_networks(plan)
        assert plan.egress_network == "gate-bottle"
        assert plan.internal_network == status["plan"]["gate_internal"]["address"]
        config = tmp_path / "ssh_config"
        config.write_text(ssh_config(plan))
        config.chmod(0o600)
        for upstream in plan.upstreams:
            out = ssh(e2e, config, upstream.bottle_host_alias, "echo through-the-gate")
            assert out.returncode == 0 and out.stdout == "through-the-gate\n", (upstream, out)
        # A start of the running gate with the same plan changes nothing.
        assert gate.start(plan) == target
    finally:
        gate.stop(target)
    assert gate.status(target)["state"] == "stopped"
    gate.stop(target)
    assert gate.status(target)["state"] == "stopped"
    out = ssh(e2e, tmp_path / "ssh_config", "up", "true")
    assert out.returncode != 0, out
