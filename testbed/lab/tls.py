"""The lab's SPICE TLS: a CA made per lab, a server certificate per hypervisor.

With `spice_tls: true` in the topology every hypervisor's libvirtd gets
`spice_tls = 1` and a certificate directory (ca-cert.pem, server-cert.pem,
server-key.pem, as libvirt expects), guests' displays accept only TLS channels,
and the client verifies the server against the lab's CA and the certificate
subject. Each server certificate's subject is `CN=<display address>` (one
component, so libvirt's DN string, which it hands to QEMU's client_migrate_info
from the destination's certificate, and spice-gtk's parse of it agree; see
testbed.spice.tls), with the same address as an IP SAN. The CA's key never leaves
this machine's lab state; a host gets only its own key, mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import threading
from pathlib import Path, PurePath

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from testbed.hosts.base import Host
from testbed.spice.tls import ClientTls

TLS_DIR = "spice-tls"
VALID = datetime.timedelta(days=2)  # a lab lives for a run, not for years
_ca_lock = threading.Lock()  # the hosts of a lab come up in parallel: one CA for all


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def lab_ca(lab_dir: Path, lab_id: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The lab's CA, made on first use under the lab's state (key 0600)."""
    with _ca_lock:
        return _lab_ca(lab_dir, lab_id)


def _lab_ca(lab_dir: Path, lab_id: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    d = lab_dir / TLS_DIR
    d.mkdir(mode=0o700, exist_ok=True)
    cert_p, key_p = d / "ca-cert.pem", d / "ca-key.pem"
    if cert_p.exists() and key_p.exists():
        key = serialization.load_pem_private_key(key_p.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(cert_p.read_bytes()), key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"testbed lab {lab_id} CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALID)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write(key_p, _key_pem(key), 0o600)
    _write(cert_p, _pem(cert), 0o644)
    return cert, key


def server_files(lab_dir: Path, lab_id: str, address: str) -> dict[str, bytes]:
    """ca-cert.pem, server-cert.pem and server-key.pem for the display at `address`."""
    ca, ca_key = lab_ca(lab_dir, lab_id)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALID)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return {
        "ca-cert.pem": _pem(ca),
        "server-cert.pem": _pem(cert),
        "server-key.pem": _key_pem(key),
    }


def install_server_tls(
    host: Host, lab_dir: Path, lab_id: str, address: str, cert_dir: PurePath
) -> None:
    """Write the host's certificate directory (libvirt's spice_tls_x509_cert_dir)."""
    host.makedirs(cert_dir, mode=0o700)
    for name, data in server_files(lab_dir, lab_id, address).items():
        host.write_text(cert_dir / name, data.decode(), mode=0o600 if "key" in name else 0o644)


def client_tls(lab_dir: Path, lab_id: str) -> ClientTls:
    ca, _key = lab_ca(lab_dir, lab_id)
    return ClientTls(ca_pem=_pem(ca).decode())
