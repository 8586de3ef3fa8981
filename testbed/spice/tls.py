"""What a SPICE client needs to verify a TLS display: the CA, and the subject rule.

A lab's server certificates are named after their display address (`CN=<address>`,
one component, so libvirt's DN string handed to client_migrate_info and spice-gtk's
parse of the subject agree); the client checks the first server it reaches against
that subject and the CA, and the migration target against the subject the source
server sends it.
"""

from __future__ import annotations

from dataclasses import dataclass

# every channel over TLS: the client refuses a plain channel
SECURE_CHANNELS = "main;display;inputs;cursor;playback;record;smartcard;usbredir;webdav"


@dataclass(frozen=True)
class ClientTls:
    ca_pem: str


def subject_for(address: str) -> str:
    """The certificate subject of the display at `address`."""
    return f"CN={address}"
