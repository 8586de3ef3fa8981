"""One libvirt event loop thread per process.

libvirt only delivers domain events (lifecycle, graphics, job completion) to
connections opened after the default event implementation is registered, so
`ensure_event_loop()` runs before any connection is opened.
"""

from __future__ import annotations

import threading

import libvirt

_lock = threading.Lock()
_thread: threading.Thread | None = None


def _run() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


def ensure_event_loop() -> None:
    global _thread
    with _lock:
        if _thread is None:
            libvirt.virEventRegisterDefaultImpl()
            _thread = threading.Thread(target=_run, name="libvirt-events", daemon=True)
            _thread.start()


def event_loop_alive() -> bool:
    """False once the loop thread has ended (no more events will come)."""
    return _thread is None or _thread.is_alive()
