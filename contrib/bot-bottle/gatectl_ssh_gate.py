"""An `SSHGate` backed by gatectl: the per-agent SSH egress gate as a
network namespace and a sandboxed forwarder on this host, instead of a
Docker sidecar.

    gate = GatectlSSHGate(agent_netns="agent-{slug}")
    plan = gate.prepare(bottle, slug, stage_dir)   # the seed's, unchanged
    target = gate.start(plan)                      # gatectl start SLUG --manifest FILE
    plan = gate.with_networks(plan)                # from gatectl status SLUG --json
    ...                                            # render the agent's ssh config from plan
    gate.stop(target)                              # gatectl stop SLUG (idempotent)

`start` writes the plan's upstream table as a gatectl manifest (JSON,
`ssh` entries in plan order) next to the seed's entrypoint script, starts
the gate from it, and checks that gatectl listens where the plan says:
entry i on BASE_LISTEN_PORT + i. `with_networks` fills the plan's
`internal_network` with the gate's address (the agent's ssh `HostName`)
and `egress_network` with the gate's network namespace, both read from
gatectl's versioned JSON (`gatectl.status/1`)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

from claude_bottle.ssh_gate import SSHGate, SSHGatePlan

# The JSON kinds this backend reads, and the one gatectl answers errors
# with. A kind's version changes only when a field is removed or renamed.
STATUS_SCHEMA = "gatectl.status/1"
PLAN_SCHEMA = "gatectl.plan/1"
ERROR_SCHEMA = "gatectl.error/1"

# Exit status of `gatectl status` for a gate that is not running.
EXIT_NOT_RUNNING = 3


class GatectlError(RuntimeError):
    """gatectl failed. `code`, `message` and `fix` come from its
    gatectl.error/1 object under --json, else from its error line."""

    def __init__(self, argv: list[str], returncode: int, code: str, message: str, fix: str | None):
        super().__init__(f"{' '.join(argv)} exited {returncode}: {message}")
        self.argv = argv
        self.returncode = returncode
        self.code = code
        self.message = message
        self.fix = fix


class PortMismatch(RuntimeError):
    """gatectl's listen ports are not the plan's (its base_port is not
    BASE_LISTEN_PORT); the gate was stopped again."""


class GatectlSSHGate(SSHGate):
    """The seed's `SSHGate` on gatectl. `gatectl` is the binary to run;
    `agent_netns`, if given, is the network namespace the agent's end of
    the gate goes into (`{slug}` is replaced by the slug); without it the
    agent keeps the host's network and the gate confines nothing."""

    def __init__(self, gatectl: str = "gatectl", agent_netns: str | None = None):
        self.gatectl = gatectl
        self.agent_netns = agent_netns

    def manifest(self, plan: SSHGatePlan) -> dict:
        """The gatectl manifest of `plan`: one `ssh` entry per upstream, in
        plan order, so gatectl gives entry i port 30000 + i as the plan does."""
        manifest: dict = {
            "ssh": [
                {"Host": u.bottle_host_alias, "Hostname": u.upstream_host, "Port": str(u.upstream_port)}
                for u in plan.upstreams
            ]
        }
        if self.agent_netns is not None:
            manifest["agent_netns"] = self.agent_netns.format(slug=plan.slug)
        return manifest

    def manifest_path(self, plan: SSHGatePlan) -> Path:
        """Where `start` writes the manifest: beside the seed's entrypoint
        script, in the stage directory."""
        return plan.entrypoint_script.with_name("gatectl-manifest.json")

    def write_manifest(self, plan: SSHGatePlan) -> Path:
        """Writes the manifest of `plan` (mode 600) and returns its path."""
        path = self.manifest_path(plan)
        path.write_text(json.dumps(self.manifest(plan), indent=2) + "\n")
        path.chmod(0o600)
        return path

    def gatectl_plan(self, plan: SSHGatePlan) -> dict:
        """gatectl's dry run of the gate of `plan` (`gatectl.plan/1`):
        creates nothing."""
        path = self.write_manifest(plan)
        return self._json(["plan", plan.slug, "--manifest", str(path), "--json"], PLAN_SCHEMA)

    def start(self, plan: SSHGatePlan) -> str:
        """Starts the gate of `plan` and returns its slug, the target.
        A gate already running with the same manifest is left as it is."""
        path = self.write_manifest(plan)
        self._run(["start", plan.slug, "--manifest", str(path)])
        gate = self.status(plan.slug)["plan"]
        if listen_ports(gate) != plan_ports(plan):
            self.stop(plan.slug)
            raise PortMismatch(
                f"gatectl listens on {listen_ports(gate)}, the plan says {plan_ports(plan)}; "
                "set base_port = 30000 in gatectl.toml"
            )
        return plan.slug

    def stop(self, target: str) -> None:
        """Stops the gate `target` and removes all of it; a gate that is
        not running is success."""
        self._run(["stop", target])

    def status(self, slug: str) -> dict:
        """gatectl's state of the gate `slug` (`gatectl.status/1`): its
        `state`, and under `plan` its addresses and upstream table."""
        return self._json(["status", slug, "--json"], STATUS_SCHEMA, ok=(0, EXIT_NOT_RUNNING))

    def with_networks(self, plan: SSHGatePlan) -> SSHGatePlan:
        """`plan` with the networks of its running gate: `internal_network`
        the gate's address, where the agent's ssh connects (`HostName`,
        with the upstream's listen port as `Port`), and `egress_network`
        the gate's network namespace, from which the forwarder reaches the
        upstreams."""
        gate = self.status(plan.slug)["plan"]
        if gate is None:
            raise GatectlError(["status", plan.slug], EXIT_NOT_RUNNING, "failed", "the gate is not running", None)
        return dataclasses.replace(
            plan,
            internal_network=gate["gate_internal"]["address"],
            egress_network=gate["netns"],
        )

    def _run(self, args: list[str], ok: tuple[int, ...] = (0,)) -> str:
        argv = [self.gatectl, *args]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode in ok:
            return done.stdout
        try:
            error = json.loads(done.stdout)
        except ValueError:
            error = None
        if isinstance(error, dict) and error.get("schema") == ERROR_SCHEMA:
            raise GatectlError(argv, done.returncode, error["code"], error["message"], error["fix"])
        line = done.stderr.strip().removeprefix("gatectl: error: ")
        raise GatectlError(argv, done.returncode, "failed", line, None)

    def _json(self, args: list[str], schema: str, ok: tuple[int, ...] = (0,)) -> dict:
        answer = json.loads(self._run(args, ok))
        if answer.get("schema") != schema:
            raise GatectlError(
                [self.gatectl, *args], 0, "failed", f"expected {schema}, gatectl answered {answer.get('schema')}", None
            )
        return answer


def plan_ports(plan: SSHGatePlan) -> list[tuple[str, int]]:
    """The plan's (alias, listen port) pairs, in plan order."""
    return [(u.bottle_host_alias, u.listen_port) for u in plan.upstreams]


def listen_ports(gate: dict) -> list[tuple[str, int]]:
    """gatectl's (alias, listen port) pairs of a gate plan (`plan` of
    gatectl.status/1, or gatectl.plan/1), in manifest order."""
    return [(u["alias"], u["listen_port"]) for u in gate["upstreams"]]


def ssh_config(plan: SSHGatePlan) -> str:
    """The agent's ssh_config Host blocks, rendered from a plan whose
    networks are filled (`GatectlSSHGate.with_networks`): each alias
    reaches the gate's address on its listen port, and `HostKeyAlias`
    keeps known_hosts matching the real upstream."""
    if not plan.internal_network:
        raise ValueError("the plan has no internal_network yet: call with_networks first")
    return "".join(
        f"Host {u.bottle_host_alias}\n"
        f"  HostName {plan.internal_network}\n"
        f"  Port {u.listen_port}\n"
        f"  HostKeyAlias {u.upstream_host}\n"
        for u in plan.upstreams
    )
