"""Opening libvirt connections: the event loop first, and libvirt's stderr chatter off.

libvirt prints every error to stderr by default; testbed reports errors itself,
with what to do about them.
"""

from __future__ import annotations

import libvirt

from testbed.virt.events import ensure_event_loop

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def open_conn(uri: str) -> libvirt.virConnect:
    ensure_event_loop()
    return libvirt.open(uri)
