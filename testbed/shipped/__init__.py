"""What testbed ships as package data: the topologies and playbooks of the repository.

`topologies/` and `playbooks/` at the repository root are links to these folders, so
`playbooks/bug-884631.yaml` works from the root, and an installed wheel carries them.
Only paths are computed here; the model reads the files.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED = Path(__file__).resolve().parent
TOPOLOGIES = SHIPPED / "topologies"
PLAYBOOKS = SHIPPED / "playbooks"

#: the embedded lab: every host a network namespace on this machine
DEFAULT_TOPOLOGY = TOPOLOGIES / "local.yaml"


def playbook_path(name_or_path: str) -> str:
    """A playbook file as given, or a shipped playbook named without .yaml (bug-884631).

    A path that exists wins; a bare name is looked up among the shipped playbooks;
    anything else is returned as given, so loading it says "no such file".
    """
    if Path(name_or_path).exists() or "/" in name_or_path:
        return name_or_path
    shipped = PLAYBOOKS / f"{name_or_path.removesuffix('.yaml')}.yaml"
    return str(shipped) if shipped.is_file() else name_or_path

#: the patches testbed builds into its fixed components (testbed.virt.builds)
PATCHES = SHIPPED / "patches"
