"""Where labs keep their state: `$TESTBED_STATE/labs/<id>/` (default /run/testbed).

`lab.json` says what the lab is (topology, hosts, addresses, owner) and
`ledger.jsonl` what it made. A lab belongs to the process that made it (a
`testbed run`, a test) until that process hands it over (`testbed up` does, to
the operator). A lab whose owner died, at any time, is an orphan that
`testbed down --all` sweeps.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.errors import TestbedError
from testbed.hosts.ledger import Ledger, process_start_time, same_process

ID_LEN = 4
# Lab ids are claimed machine-wide (whatever TESTBED_STATE says), so two labs never share
# namespace names, and a sweep for strays never takes another state root's lab for one.
ID_CLAIMS = Path("/run/testbed-ids")


def state_root() -> Path:
    return Path(os.environ.get("TESTBED_STATE", "/run/testbed"))


def labs_dir() -> Path:
    return state_root() / "labs"


def new_lab_dir(lab_id: str | None = None) -> tuple[str, Path]:
    """Claim a fresh lab id machine-wide (a symlink is the atomic claim) and its directory."""
    ID_CLAIMS.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        lid = lab_id or secrets.token_hex(ID_LEN // 2)
        d = labs_dir() / lid
        try:
            os.symlink(d, ID_CLAIMS / lid)
        except FileExistsError:
            if lab_id:
                raise TestbedError(f"lab id {lab_id} is taken (see `testbed status`)") from None
            continue
        d.mkdir(parents=True)  # parents too: a teardown may have just removed labs/
        return lid, d
    raise RuntimeError("no free lab id")


def claimed(lab_id: str) -> bool:
    """True when a live lab directory, in any state root, holds this id."""
    link = ID_CLAIMS / lab_id
    return link.is_symlink() and Path(os.readlink(link)).is_dir()


def release_claim(lab_id: str, lab_dir: Path) -> None:
    link = ID_CLAIMS / lab_id
    try:
        if Path(os.readlink(link)) == lab_dir:
            link.unlink()
    except OSError:
        pass


_SAVING = threading.Lock()


@dataclass
class LabRecord:
    """A lab as its state directory describes it."""

    id: str
    dir: Path
    info: dict[str, Any]

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.dir / "ledger.jsonl")

    @property
    def status(self) -> str:
        return str(self.info.get("status", "unknown"))

    @property
    def topology_name(self) -> str:
        return str(self.info.get("topology_name", "?"))

    def owner_alive(self) -> bool:
        pid = self.info.get("owner_pid")
        if not pid:
            return False
        return same_process(int(pid), self.info.get("owner_start"))

    @property
    def orphaned(self) -> bool:
        """Its owner process is gone: died while making or using it (a lab handed over to
        the operator has no owner). A lab still being made without an owner is one too."""
        if self.info.get("owner_pid"):
            return not self.owner_alive()
        return self.status != "up"

    def hand_over(self) -> None:
        """The lab now outlives the process that made it (`testbed up`): no owner."""
        self.info["owner_pid"] = None
        self.info["owner_start"] = None
        self.info["handed_over"] = True
        self.save()

    def save(self) -> None:
        """Write lab.json atomically (a host's setup threads may save at once)."""
        with _SAVING:
            text = json.dumps(self.info, indent=2, sort_keys=True, default=str)
            tmp = self.dir / "lab.json.tmp"
            tmp.write_text(text)
            tmp.replace(self.dir / "lab.json")


def read_lab(lab_dir: Path) -> LabRecord:
    try:
        info = json.loads((lab_dir / "lab.json").read_text())
    except (OSError, json.JSONDecodeError):
        info = {"status": "unknown"}
    return LabRecord(id=lab_dir.name, dir=lab_dir, info=info)


def list_labs() -> list[LabRecord]:
    if not labs_dir().exists():
        return []
    return [read_lab(d) for d in sorted(labs_dir().iterdir()) if d.is_dir()]


def owner_fields() -> dict[str, Any]:
    pid = os.getpid()
    return {"owner_pid": pid, "owner_start": process_start_time(pid)}
