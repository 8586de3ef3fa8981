"""Argument prefixes that run a program inside a lab network namespace."""

from __future__ import annotations

NETNS_DIR = "/run/netns"


def netns_path(netns: str) -> str:
    return f"{NETNS_DIR}/{netns}"


def ns_argv(netns: str | None, mount_ns_pid: int | None = None) -> list[str]:
    """Prefix for argv that enters `netns` (and a process's mount namespace, if given)."""
    if netns is None and mount_ns_pid is None:
        return []
    argv = ["nsenter"]
    if netns is not None:
        argv.append(f"--net={netns_path(netns)}")
    if mount_ns_pid is not None:
        argv.append(f"--mount=/proc/{mount_ns_pid}/ns/mnt")
    return [*argv, "--"]
