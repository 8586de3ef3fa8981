"""Inventory: how to reach real machines, in one file that several topologies share.

Ansible's YAML layout (`all: {hosts, vars, children}`), so an existing
inventory can serve: a topology names the file (`inventory: PATH`) and a host
says `from_inventory: NAME`. Variables merge as in Ansible: `all` < parent
group < child group (groups of one depth by name) < the host's own, and the
topology's own fields win over all of them. Keys are the ssh fields of a
topology host, or Ansible's names for them (ansible_host, ansible_port,
ansible_user, ansible_ssh_private_key_file, ansible_become); other ansible_*
variables belong to Ansible and are ignored. Errors name the inventory's file,
line and field; relative paths are read from the inventory's folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.errors import InputError
from testbed.model.hostspec import SSH_FIELDS, HostSpec
from testbed.model.yamlsrc import PathKey, YamlDoc, dotted, load_yaml_file, validate

ANSIBLE_NAMES = {
    "ansible_host": "address",
    "ansible_port": "port",
    "ansible_user": "user",
    "ansible_ssh_private_key_file": "key_file",
    "ansible_private_key_file": "key_file",
    "ansible_become": "sudo",
}
GROUP_KEYS = ("hosts", "vars", "children")
VAR_FIELDS = tuple(f for f in SSH_FIELDS if f not in ("from_inventory", "from_pool"))


@dataclass
class _Group:
    depth: int
    vars: dict[str, Any] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)


@dataclass
class Inventory:
    """Each host's merged ssh fields (validated, paths absolute)."""

    file: str
    hosts: dict[str, dict[str, Any]]
    groups: dict[str, list[str]] = field(default_factory=dict)  # with their children's hosts

    def host(self, name: str) -> dict[str, Any]:
        return self.hosts[name]

    def groups_of(self, host: str) -> list[str]:
        return sorted(g for g, members in self.groups.items() if host in members)


class _Reader:
    def __init__(self, doc: YamlDoc, base: Path) -> None:
        self.doc, self.base = doc, base
        self.groups: dict[str, _Group] = {}
        self.host_vars: dict[str, dict[str, Any]] = {}
        self.parents: dict[str, set[str]] = {}

    def fail(self, msg: str, path: PathKey) -> None:
        raise InputError(msg, file=self.doc.file, line=self.doc.line_of(path), field=dotted(path))

    def group(self, name: str, node: Any, path: PathKey, depth: int) -> None:
        g = self.groups.setdefault(name, _Group(depth))
        self.parents.setdefault(name, set())
        g.depth = max(g.depth, depth)
        if node is None:
            return
        if not isinstance(node, dict):
            self.fail("a group is a mapping with hosts, vars, children", path)
        for key in node:
            if key not in GROUP_KEYS:
                self.fail(f"a group has only {', '.join(GROUP_KEYS)} (found {key!r})", (*path, key))
        if node.get("vars") is not None:
            g.vars.update(self.vars(node["vars"], (*path, "vars")))
        hosts = node.get("hosts") or {}
        if not isinstance(hosts, dict):
            self.fail("hosts is a mapping of host name to its variables", (*path, "hosts"))
        for hname, hnode in hosts.items():
            if any(c in hname for c in "[]:"):
                self.fail(f"host patterns are not supported (found {hname!r})", (*path, "hosts"))
            g.hosts.append(hname)
            own = self.host_vars.setdefault(hname, {})
            if hnode is not None:
                own.update(self.vars(hnode, (*path, "hosts", hname)))
        children = node.get("children") or {}
        if not isinstance(children, dict):
            self.fail("children is a mapping of group name to group", (*path, "children"))
        for cname, cnode in children.items():
            self.parents.setdefault(cname, set()).add(name)
            self.group(cname, cnode, (*path, "children", cname), depth + 1)

    def vars(self, node: Any, path: PathKey) -> dict[str, Any]:
        """Variables in our field names, checked as a host's fields are, paths made absolute."""
        if not isinstance(node, dict):
            self.fail("variables are a mapping", path)
        data: dict[str, Any] = {}
        for key, value in node.items():
            ours = ANSIBLE_NAMES.get(key, key)
            if ours not in VAR_FIELDS:
                if key.startswith("ansible_"):
                    continue  # Ansible's own business
                self.fail(
                    f"unknown variable {key!r} (known: {', '.join(VAR_FIELDS)}, "
                    f"{', '.join(ANSIBLE_NAMES)})",
                    (*path, key),
                )
            if ours in data:
                self.fail(f"{key!r} says {ours} a second time", (*path, key))
            self.doc.lines.setdefault((*path, ours), self.doc.line_of((*path, key)) or 0)
            data[ours] = value
        spec = validate(
            HostSpec, self.doc, data={"kind": "ssh", "roles": ["client"], **data}, prefix=path
        )
        out = {f: getattr(spec, f) for f in data}
        for f in ("key_file", "known_hosts"):
            if out.get(f) is not None:
                p = out[f].expanduser()
                out[f] = p if p.is_absolute() else self.base / p
        return out

    def merged(self) -> dict[str, dict[str, Any]]:
        order = sorted(self.groups.items(), key=lambda kv: (kv[1].depth, kv[0] != "all", kv[0]))
        out: dict[str, dict[str, Any]] = {}
        every = self.groups.get("all", _Group(0)).vars
        for hname, own in self.host_vars.items():
            merged = dict(every)
            interfaces = dict(every.get("interfaces", {}))
            for _, g in order:
                if hname in g.hosts:
                    merged.update(g.vars)
                    interfaces.update(g.vars.get("interfaces", {}))
            merged.update(own)
            interfaces.update(own.get("interfaces", {}))
            if interfaces:
                merged["interfaces"] = interfaces
            out[hname] = merged
        return out


    def membership(self) -> dict[str, list[str]]:
        """Each group's hosts, with those of its children (and theirs); `all` has every host."""
        out: dict[str, set[str]] = {g: set(grp.hosts) for g, grp in self.groups.items()}
        changed = True
        while changed:
            changed = False
            for child, parents in self.parents.items():
                for parent in parents:
                    before = len(out.setdefault(parent, set()))
                    out[parent] |= out.get(child, set())
                    changed |= len(out[parent]) != before
        out["all"] = set(self.host_vars)
        return {g: sorted(h) for g, h in out.items()}


def load_inventory(path: str | Path) -> Inventory:
    doc = load_yaml_file(path, empty_hint="an inventory starts with all: {hosts: ...}")
    if not isinstance(doc.data, dict):
        raise InputError("an inventory is a mapping of groups (all: ...)", file=doc.file, line=1)
    reader = _Reader(doc, Path(path).resolve().parent)
    for name, node in doc.data.items():
        reader.group(name, node, (name,), 0 if name == "all" else 1)
    return Inventory(doc.file, reader.merged(), reader.membership())
