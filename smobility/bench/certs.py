# -*- test-case-name: tests.test_bench -*-
"""
A throwaway PKI for one benchmark run: a CA, a server and a client certificate.

OpenVPN 2.6 deprecates its static-key mode, so the benchmark runs it the way
it is deployed: TLS with certificates.  Keys are ECDSA P-256 (so C{--dh none}
is enough), valid for a day, written with mode 0600 into the run's work
directory and gone with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from smobility import pki as _pki


@dataclass(frozen=True)
class Pki:
    """The files of a throwaway PKI (PEM)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_key(path: Path, key: _pki.PrivateKey) -> None:
    path.touch(mode=0o600)
    path.write_bytes(_pki.private_key_pem(key))


def make_pki(directory: Path, name: str = "smobility-bench") -> Pki:
    """
    Create a CA and a server and client certificate it signs, in C{directory}.

    Made by the home server's own CA code (L{smobility.pki}): the server
    certificate carries serverAuth and the client's clientAuth, so
    C{--remote-cert-tls server} works on the client.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca, ca_key = _pki.create_ca(f"{name} CA", days=1)
    server_cert, server_key = _pki.issue_with_new_key(
        ca, ca_key, subject=_pki.parse_subject(f"CN={name} server"), profile="server", days=1
    )
    client_cert, client_key = _pki.issue_with_new_key(
        ca, ca_key, subject=_pki.parse_subject(f"CN={name} client"), profile="client", days=1
    )
    files = Pki(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )
    files.ca.write_bytes(_pki.certificate_pem(ca))
    files.server_cert.write_bytes(_pki.certificate_pem(server_cert))
    _write_key(files.server_key, server_key)
    files.client_cert.write_bytes(_pki.certificate_pem(client_cert))
    _write_key(files.client_key, client_key)
    return files
