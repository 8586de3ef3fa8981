"""Lower layers never import higher ones (model < hosts < net < virt < spice < lab < runner
< report < cli), read from the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "testbed"
ORDER = ["model", "hosts", "net", "virt", "spice", "lab", "runner", "report", "cli"]


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "testbed" and parts[1] in ORDER else None


def test_no_layer_imports_a_higher_one() -> None:
    bad = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        own = _layer(".".join(rel.parts))
        if own is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                other = _layer(name)
                if other and ORDER.index(other) > ORDER.index(own):
                    bad.append(f"{rel} ({own}) imports {name} ({other})")
    assert bad == []
