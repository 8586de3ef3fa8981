"""A host's shaping agent: the shaping engine, run on the host itself, one request at a time.

    python -m testbed.net.agent --state DIR  < request.json  > answer.json

One JSON request on stdin, one JSON answer on stdout (`{"ok": true, ...}` or `{"ok":
false, "error", "hint", "kind"}`, never a traceback; exit code 0 or 1). The engine is
the one `detect` picks on this host (netem if the kernel has it, else the userspace
NFQUEUE engine) unless the request names one; the choice, the engine's state and the
ledger of the processes it starts stay in DIR, so the next invocation continues where
this one left. The agent shapes its host's current network namespace (Endpoint.netns
CURRENT, ""), and only its own part of each direction (`ShapingEngine.here_only`): the
other endpoint's netns names another host ("@NAME"), whose agent does the rest.
Delay lines are started in a session of their own and outlive the agent; `close` stops
them, and any process its ledger still names, even after the caller crashed.

Ops: detect, apply, read_back, verify, health, close. `protect`: addresses whose
interfaces must never be shaped (the lab's SSH connection to this host); the agent
refuses, before touching anything, a direction that would shape one of them here.
Runs where testbed is importable (a bundle on an SSH host, `SshHost.module_argv`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from testbed.errors import InputError, LabError, TestbedError
from testbed.hosts.ledger import Ledger
from testbed.hosts.procs import stop_recorded
from testbed.model.profile import LinkProfile
from testbed.net.shaping.base import CURRENT, Direction, ShapingEngine, direction_from_dict

log = logging.getLogger("testbed.net.agent")

OPS = ("detect", "apply", "read_back", "verify", "health", "close")
CHOICE = "agent.json"  # the engine this host's agent runs: {"engine": NAME}


# -- the wire format, shared with the caller (testbed.net.shaping.hosts) ------------------
def shapes_to_json(shapes: dict[Direction, LinkProfile]) -> list[dict[str, Any]]:
    return [
        {"direction": asdict(d), "profile": p.model_dump(mode="json")} for d, p in shapes.items()
    ]


def shapes_from_json(items: list[dict[str, Any]]) -> dict[Direction, LinkProfile]:
    try:
        return {
            direction_from_dict(i["direction"]): LinkProfile.model_validate(i["profile"])
            for i in items
        }
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"malformed shapes in the request: {e}") from None


def held_to_json(held: dict[Direction, LinkProfile]) -> list[dict[str, Any]]:
    """A read-back: each profile with only the fields this host holds (a part of a link)."""
    return [
        {"direction": asdict(d), "fields": {k: getattr(p, k) for k in sorted(p.model_fields_set)}}
        for d, p in held.items()
    ]


def held_from_json(items: list[dict[str, Any]]) -> list[tuple[Direction, dict[str, Any]]]:
    return [(direction_from_dict(i["direction"]), dict(i["fields"])) for i in items]


# -- the agent ----------------------------------------------------------------------------
class Agent:
    """The engine of one host, continued from DIR by every invocation."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.ledger = Ledger(state / "ledger.jsonl")

    @property
    def choice_path(self) -> Path:
        return self.state / CHOICE

    def chosen(self) -> str | None:
        try:
            return json.loads(self.choice_path.read_text())["engine"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as e:
            raise LabError(f"unreadable agent state {self.choice_path}: {e}") from None

    def engine(self, asked: str = "auto") -> ShapingEngine:
        """The engine this host runs: the one chosen before, else `asked`, else detect's."""
        from testbed.net.shaping.detect import select_engine
        from testbed.net.shaping.kernel import KernelNetemEngine
        from testbed.net.shaping.userspace import UserspaceEngine

        held = self.chosen()
        if held is not None and asked not in ("auto", held):
            raise LabError(
                f"this host's agent runs the {held} engine, not {asked}",
                hint="close the links first, then shape with the other engine",
            )
        if held == KernelNetemEngine.name:
            return KernelNetemEngine(self.ledger, self.state, here_only=True)
        if held == UserspaceEngine.name:
            return UserspaceEngine(self.ledger, self.state, here_only=True)
        eng = select_engine(self.ledger, self.state, engine=asked, here_only=True)
        self.state.mkdir(parents=True, exist_ok=True)
        self.choice_path.write_text(json.dumps({"engine": eng.name}))
        return eng

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op not in OPS:
            raise InputError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
        protect = [str(a) for a in req.get("protect", [])]
        if op == "detect":
            from testbed.net.shaping.detect import netem_available, userspace_missing

            return {
                "netem": netem_available(),
                "userspace_missing": userspace_missing(),
                "protected": sorted(protected_interfaces(protect)),
                "engine": self.chosen(),
            }
        if op == "apply":
            shapes = shapes_from_json(req.get("shapes", []))
            refuse_protected(shapes, protected_interfaces(protect))
            if self.chosen() is None and all(p.is_empty() for p in shapes.values()):
                return {"engine": None}  # nothing shaped here before, nothing now
            eng = self.engine(str(req.get("engine", "auto")))
            eng.apply(shapes)
            return {"engine": eng.name}
        if op == "close":
            return self.close()
        if self.chosen() is None:  # never applied here: nothing is shaped
            if op == "health":
                return {"health": {"engine": None, "ok": True, "fail_mode": None}}
            return {"held": []} if op == "read_back" else {}
        eng = self.engine()
        if op == "read_back":
            return {"engine": eng.name, "held": held_to_json(eng.read_back())}
        if op == "verify":
            eng.verify()
            return {"engine": eng.name}
        return {"engine": eng.name, "health": eng.health()}

    def close(self) -> dict[str, Any]:
        """The engine's close, then every process the ledger still names; state removed."""
        name = self.chosen()
        if name is not None:
            self.engine().close()
        stopped = []
        for e in reversed(self.ledger.of_kind("process")):
            stop_recorded(e["pid"], e.get("start_time"))
            stopped.append(e["pid"])
        for p in (self.choice_path, self.ledger.path):
            p.unlink(missing_ok=True)
        return {"engine": name, "stopped": stopped}


def protected_interfaces(addresses: list[str]) -> dict[str, str]:
    """ifname -> address, for every interface here holding one of `addresses`.

    The address this host's SSH server was reached on is added when the agent runs
    under sshd (SSH_CONNECTION), so a caller that forgot it is still refused.
    """
    wanted = set(addresses)
    conn = os.environ.get("SSH_CONNECTION", "").split()
    if len(conn) == 4:
        wanted.add(conn[2])
    if not wanted:
        return {}
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        return {
            names[a["index"]]: a.get_attr("IFA_ADDRESS")
            for a in ipr.get_addr()
            if a.get_attr("IFA_ADDRESS") in wanted and a["index"] in names
        }


def refuse_protected(shapes: dict[Direction, LinkProfile], protected: dict[str, str]) -> None:
    for d, p in shapes.items():
        if p.is_empty():
            continue
        for ep in (d.src, d.dst):
            if ep.netns == CURRENT and ep.ifname in protected:
                raise LabError(
                    f"refusing to shape {d}: interface {ep.ifname} of {ep.host} carries the "
                    f"lab's SSH connection ({protected[ep.ifname]}), and shaping it could cut "
                    "the lab's control of this host",
                    hint="shape a network the lab does not use to reach the host over SSH",
                )


def answer(req_text: str, state: Path) -> tuple[dict[str, Any], int]:
    """The answer to one request, and the exit code (errors are answers too)."""
    try:
        try:
            req = json.loads(req_text)
        except ValueError as e:
            raise InputError(f"the request is not JSON: {e}") from None
        if not isinstance(req, dict):
            raise InputError("the request must be a JSON object")
        return {"ok": True, **Agent(state).handle(req)}, 0
    except TestbedError as e:
        log.warning("%s", e)
        return {"ok": False, "error": e.message, "hint": e.hint, "kind": type(e).__name__}, 1
    except Exception as e:  # noqa: BLE001 - the caller gets a message, the log the traceback
        log.error("unexpected failure:\n%s", traceback.format_exc())
        msg = f"{type(e).__name__}: {e} (traceback in {state / 'agent.log'})"
        return {"ok": False, "error": msg, "hint": None, "kind": "internal"}, 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.net.agent")
    ap.add_argument("--state", required=True, type=Path, help="this host's agent folder")
    args = ap.parse_args(argv)
    state: Path = args.state
    state.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s agent[%(process)d] %(name)s %(levelname)s %(message)s",
        filename=str(state / "agent.log"),
    )
    resp, code = answer(sys.stdin.read(), state)
    sys.stdout.write(json.dumps(resp) + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
