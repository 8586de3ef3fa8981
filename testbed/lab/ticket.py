"""The lab's SPICE ticket: one random password per lab, kept in a 0600 file of its state.

Guests get it in their graphics `passwd` (libvirt passes it to QEMU encrypted);
the client gets it in a virt-viewer connection file, never on a command line.
It is not written to lab.json, a log or a run's results.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TICKET_FILE = "spice-ticket"


def spice_ticket(lab_dir: Path) -> str:
    """The ticket of the lab whose state is `lab_dir`, made on first use."""
    path = lab_dir / TICKET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    ticket = secrets.token_urlsafe(18)
    with os.fdopen(fd, "w") as f:
        f.write(ticket + "\n")
    return ticket
