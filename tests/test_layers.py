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


def _host_classes() -> set[str]:
    """Classes of hosts/ that implement the Host protocol (LocalHost, SshHost, ...)."""
    found = set()
    for path in (PKG / "hosts").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and b.id == "Host" for b in node.bases
            ):
                found.add(node.name)
    return found


def test_no_module_above_hosts_names_a_concrete_host_class() -> None:
    """Above hosts/ a host is a `Host`; only hosts/factory.py knows which class it is."""
    concrete = _host_classes()
    assert {"LocalHost", "SshHost"} <= concrete
    bad = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if rel.parts[0] == "hosts":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.Name):
                names = [node.id]
            elif isinstance(node, ast.Attribute):
                names = [node.attr]
            bad += [f"{rel}:{node.lineno} names {n}" for n in names if n in concrete]
    assert bad == []
