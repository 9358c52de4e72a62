# -*- test-case-name: tests.test_pki -*-
"""``smobility-ctl pki``: the home server's certificate authority.

::

    smobility-ctl pki init [--rsa BITS] [--name CN] [--days N] [--passphrase-file F]
    smobility-ctl pki issue NAME --san dns:x --san ip:1.2.3.4 [--client|--server] --out-dir DIR
    smobility-ctl pki sign-csr CSR --server|--client --out FILE
    smobility-ctl pki list [--json]
    smobility-ctl pki show SERIAL [--json]
    smobility-ctl pki revoke SERIAL|NAME [--reason R]
    smobility-ctl pki crl --out FILE [--format pem|der]

All take ``--db PATH`` (the home server's state database).  Private keys go
only into the key files ``issue`` writes (mode 0600), never to the terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from smobility import pki
from smobility.ctl import CtlError
from smobility.pki import PKIError
from smobility.store.pki import IssuedCertificate, PKIStore

#: The home server's state database, as in etc/home.toml.
DEFAULT_DB = "/var/lib/smobility/home.sqlite"


# -- helpers ------------------------------------------------------------------------


def _out(text: str = "") -> None:
    print(text, file=sys.stdout)


def _open(args: argparse.Namespace, *, create: bool = False) -> PKIStore:
    try:
        return PKIStore(args.db, create=create)
    except PKIError as e:
        raise CtlError(str(e)) from None


def _passphrase(args: argparse.Namespace) -> bytes | None:
    path: str | None = getattr(args, "passphrase_file", None)
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CtlError(f"cannot read the passphrase file {path}: {e.strerror}") from None
    data = data.rstrip(b"\r\n")
    if not data:
        raise CtlError(f"the passphrase file {path} is empty")
    return data


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write a file that must not exist yet, with exactly ``mode``."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise CtlError(f"{path} already exists: remove it or choose another name") from None
    except OSError as e:
        raise CtlError(f"cannot create {path}: {e.strerror}") from None
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away
        os.write(fd, data)
    except OSError as e:
        os.close(fd)
        raise CtlError(f"cannot write {path}: {e.strerror}") from None
    os.close(fd)


def _write_replace(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write a public file, replacing it atomically."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        raise CtlError(f"cannot write {path}: {e.strerror}") from None


def _sans(values: list[str] | None) -> list[x509.GeneralName]:
    return [pki.parse_san(v) for v in values or []]


def _profile(args: argparse.Namespace) -> pki.Profile:
    if args.client and not args.server:
        return "client"
    if args.server and not args.client:
        return "server"
    return "both"


def _summary(c: IssuedCertificate) -> dict[str, Any]:
    return {
        "serial": c.serial_hex,
        "name": c.name,
        "subject": c.subject,
        "sans": list(c.sans),
        "usage": c.usage,
        "not_before": c.not_before.isoformat(timespec="seconds"),
        "not_after": c.not_after.isoformat(timespec="seconds"),
        "status": c.status(),
        "revoked_at": None if c.revoked_at is None else c.revoked_at.isoformat(timespec="seconds"),
        "reason": c.reason,
    }


def _guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the library's one-sentence errors into the tool's."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except PKIError as e:
            raise CtlError(str(e)) from None

    run.__doc__ = func.__doc__
    return run


# -- commands --------------------------------------------------------------------------


@_guard
def cmd_init(args: argparse.Namespace) -> int:
    """Create the CA."""
    passphrase = _passphrase(args)
    store = _open(args, create=True)
    try:
        cert = store.init_ca(args.name, rsa_bits=args.rsa, days=args.days, passphrase=passphrase)
        if args.ca_out is not None:
            _write_replace(Path(args.ca_out), pki.certificate_pem(cert))
    finally:
        store.close()
    _out(f"created the certificate authority {cert.subject.rfc4514_string()} in {args.db}")
    _out(
        f"  key:         {pki.key_description(cert.public_key())}"
        f"{', encrypted with the passphrase' if passphrase else ', not encrypted'}"
    )
    _out(f"  serial:      {pki.format_serial(cert.serial_number)}")
    _out(f"  valid until: {cert.not_valid_after_utc.isoformat(timespec='seconds')}")
    _out(f"  SHA-256:     {pki.fingerprint(cert)}")
    if args.ca_out is not None:
        _out(f"wrote {args.ca_out}")
    return 0


@_guard
def cmd_issue(args: argparse.Namespace) -> int:
    """Make a key and a certificate; write NAME.key, NAME.crt and ca.crt."""
    name: str = args.name
    if not name or "/" in name or name.startswith(".") or "\0" in name:
        raise CtlError(f"the name {name!r} cannot be used as a file name")
    sans = _sans(args.san)
    subject = pki.parse_subject(args.subject) if args.subject else None
    out_dir = Path(args.out_dir)
    key_path, cert_path, ca_path = (
        out_dir / f"{name}.key",
        out_dir / f"{name}.crt",
        out_dir / "ca.crt",
    )
    for p in (key_path, cert_path):
        if p.exists():
            raise CtlError(f"{p} already exists: remove it or choose another name")
    passphrase = _passphrase(args)
    store = _open(args)
    try:
        ca_cert = store.ca_certificate()
        # Check the CA key before making a key of our own.
        store.ca_key(passphrase)
        try:
            out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise CtlError(f"cannot create the directory {out_dir}: {e.strerror}") from None
        cert, key = store.issue(
            name,
            sans=sans,
            profile=_profile(args),
            days=args.days,
            rsa_bits=args.rsa,
            subject=subject,
            passphrase=passphrase,
        )
    finally:
        store.close()
    _write_new(key_path, pki.private_key_pem(key), 0o600)
    _write_new(cert_path, pki.certificate_pem(cert), 0o644)
    _write_replace(ca_path, pki.certificate_pem(ca_cert))
    _out(
        f"issued {name}: serial {pki.format_serial(cert.serial_number)}, "
        f"{pki.profile_of(cert)}, {pki.key_description(key)}, "
        f"valid until {cert.not_valid_after_utc.isoformat(timespec='seconds')}"
    )
    _out(f"  subject: {cert.subject.rfc4514_string()}")
    sans_text = ", ".join(pki.format_san(n) for n in pki.subject_alt_names(cert)) or "none"
    _out(f"  subjectAltNames: {sans_text}")
    _out(f"wrote {key_path} (mode 0600), {cert_path}, {ca_path}")
    return 0


@_guard
def cmd_sign_csr(args: argparse.Namespace) -> int:
    """Issue a certificate for a PKCS#10 request."""
    try:
        data = Path(args.csr).read_bytes()
    except OSError as e:
        raise CtlError(f"cannot read the certificate request {args.csr}: {e.strerror}") from None
    csr = pki.load_csr(data)
    sans = _sans(args.san) if args.san else None
    out = Path(args.out)
    if out.exists():
        raise CtlError(f"{out} already exists: remove it or choose another file")
    passphrase = _passphrase(args)
    store = _open(args)
    try:
        cert = store.sign_csr(
            csr,
            profile="server" if args.server else "client",
            name=args.name,
            sans=sans,
            days=args.days,
            passphrase=passphrase,
        )
    finally:
        store.close()
    _write_new(out, pki.certificate_pem(cert), 0o644)
    _out(
        f"signed {cert.subject.rfc4514_string() or 'the request'}: serial "
        f"{pki.format_serial(cert.serial_number)}, {pki.profile_of(cert)}, valid until "
        f"{cert.not_valid_after_utc.isoformat(timespec='seconds')}"
    )
    _out(f"wrote {out}")
    return 0


@_guard
def cmd_list(args: argparse.Namespace) -> int:
    """List the issued certificates."""
    store = _open(args)
    try:
        certs = store.certificates()
    finally:
        store.close()
    if args.json:
        _out(json.dumps([_summary(c) for c in certs], indent=2))
        return 0
    if not certs:
        _out("no certificates issued")
        return 0
    rows = [("SERIAL", "NAME", "USAGE", "NOT AFTER", "STATUS", "SUBJECTALTNAMES")]
    for c in certs:
        rows.append(
            (
                c.serial_hex,
                c.name,
                c.usage,
                c.not_after.strftime("%Y-%m-%d"),
                c.status(),
                ",".join(c.sans),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        _out("  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5])
    return 0


@_guard
def cmd_show(args: argparse.Namespace) -> int:
    """Show one certificate, with its PEM."""
    store = _open(args)
    try:
        found = store.find(args.serial)
    finally:
        store.close()
    if not found:
        raise CtlError(f"no certificate has the serial number or name {args.serial!r}")
    if args.json:
        _out(
            json.dumps(
                [
                    dict(
                        _summary(c),
                        sha256=pki.fingerprint(c.certificate),
                        pem=c.pem.decode("ascii"),
                    )
                    for c in found
                ],
                indent=2,
            )
        )
        return 0
    for c in found:
        cert = c.certificate
        _out(f"serial:          {c.serial_hex}")
        _out(f"name:            {c.name}")
        _out(f"subject:         {c.subject}")
        _out(f"issuer:          {cert.issuer.rfc4514_string()}")
        _out(f"subjectAltNames: {', '.join(c.sans) or 'none'}")
        _out(f"usage:           {c.usage}")
        _out(f"key:             {pki.key_description(cert.public_key())}")
        _out(f"not before:      {c.not_before.isoformat(timespec='seconds')}")
        _out(f"not after:       {c.not_after.isoformat(timespec='seconds')}")
        _out(f"issued:          {c.issued_at.isoformat(timespec='seconds')}")
        status = c.status()
        if c.revoked_at is not None:
            status += f" on {c.revoked_at.isoformat(timespec='seconds')}"
            if c.reason:
                status += f" ({c.reason})"
        _out(f"status:          {status}")
        _out(f"SHA-256:         {pki.fingerprint(cert)}")
        _out(c.pem.decode("ascii").rstrip("\n"))
    return 0


@_guard
def cmd_revoke(args: argparse.Namespace) -> int:
    """Revoke a certificate by serial, or every valid one of a name."""
    reason = pki.parse_reason(args.reason) if args.reason else None
    store = _open(args)
    try:
        done = store.revoke(args.target, reason=reason)
    finally:
        store.close()
    for c in done:
        _out(f"revoked {c.serial_hex} ({c.name})" + (f", reason {c.reason}" if c.reason else ""))
    _out(
        "the home agent refuses it from now on; publish a new CRL with "
        "'smobility-ctl pki crl --out FILE' for other peers"
    )
    return 0


@_guard
def cmd_crl(args: argparse.Namespace) -> int:
    """Sign a new CRL and write it."""
    out = Path(args.out)
    fmt = args.format
    if fmt is None:
        fmt = "der" if out.suffix.lower() in (".der", ".crl") else "pem"
    passphrase = _passphrase(args)
    store = _open(args)
    try:
        crl = store.make_crl(passphrase=passphrase, days=args.days)
    finally:
        store.close()
    _write_replace(out, pki.crl_bytes(crl, pem=fmt == "pem"))
    nxt = crl.next_update_utc
    assert nxt is not None
    _out(
        f"wrote CRL number {pki.crl_number(crl)} ({fmt.upper()}, "
        f"{len(crl)} revoked) to {out}; next update "
        f"{nxt.isoformat(timespec='seconds')}"
    )
    return 0


# -- the parser -------------------------------------------------------------------------


def _days(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if n < 1:
        raise argparse.ArgumentTypeError("the number of days must be at least 1")
    return n


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``pki`` area to ``smobility-ctl``."""
    area = subparsers.add_parser(
        "pki",
        help="the certificate authority: init, issue, sign-csr, list, show, revoke, crl",
        description="The home server's certificate authority for IKEv2 and TLS.",
    )
    cmds = area.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db",
        metavar="PATH",
        default=DEFAULT_DB,
        help=f"the home server's state database (default {DEFAULT_DB})",
    )
    signing = argparse.ArgumentParser(add_help=False)
    signing.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help="file holding the CA key's passphrase (first line)",
    )

    p = cmds.add_parser(
        "init",
        parents=[common, signing],
        help="create the CA",
        description="Create the CA: ECDSA P-256, or RSA with --rsa. With "
        "--passphrase-file the CA key is stored encrypted.",
    )
    p.add_argument(
        "--rsa",
        type=int,
        choices=pki.RSA_SIZES,
        metavar="BITS",
        help="an RSA key of BITS bits (2048, 3072, 4096) instead of ECDSA P-256",
    )
    p.add_argument(
        "--name",
        default="smobility CA",
        metavar="CN",
        help="the CA's common name (default 'smobility CA')",
    )
    p.add_argument(
        "--days", type=_days, default=pki.CA_DAYS, help=f"lifetime in days (default {pki.CA_DAYS})"
    )
    p.add_argument("--ca-out", metavar="FILE", help="also write the CA certificate (PEM)")
    p.set_defaults(func=cmd_init)

    p = cmds.add_parser(
        "issue",
        parents=[common, signing],
        help="make a key and a certificate",
        description="Make a key and issue a certificate; write NAME.key "
        "(mode 0600), NAME.crt and ca.crt into --out-dir.",
    )
    p.add_argument("name", metavar="NAME", help="name of the peer (and of the files)")
    p.add_argument(
        "--san",
        action="append",
        metavar="KIND:VALUE",
        help="subjectAltName: dns:NAME, ip:ADDRESS or email:ADDRESS (repeat)",
    )
    p.add_argument("--subject", metavar="DN", help="subject DN (default CN=NAME)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--client", action="store_true", help="clientAuth only")
    kind.add_argument("--server", action="store_true", help="serverAuth only")
    p.add_argument(
        "--days",
        type=_days,
        default=pki.CERT_DAYS,
        help=f"lifetime in days (default {pki.CERT_DAYS})",
    )
    p.add_argument(
        "--rsa",
        type=int,
        choices=pki.RSA_SIZES,
        metavar="BITS",
        help="an RSA key instead of ECDSA P-256",
    )
    p.add_argument("--out-dir", required=True, metavar="DIR", help="where to write the files")
    p.set_defaults(func=cmd_issue)

    p = cmds.add_parser(
        "sign-csr",
        parents=[common, signing],
        help="issue a certificate for a PKCS#10 request",
        description="Issue a certificate for a request (PEM or DER). Its "
        "subject and subjectAltNames are kept unless --san is given.",
    )
    p.add_argument("csr", metavar="CSR", help="the request file")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--client", action="store_true", help="clientAuth")
    kind.add_argument("--server", action="store_true", help="serverAuth")
    p.add_argument("--out", required=True, metavar="FILE", help="the certificate file (PEM)")
    p.add_argument("--name", metavar="NAME", help="name to list it under (default its CN)")
    p.add_argument(
        "--san",
        action="append",
        metavar="KIND:VALUE",
        help="replace the requested subjectAltNames (repeat)",
    )
    p.add_argument(
        "--days",
        type=_days,
        default=pki.CERT_DAYS,
        help=f"lifetime in days (default {pki.CERT_DAYS})",
    )
    p.set_defaults(func=cmd_sign_csr)

    p = cmds.add_parser("list", parents=[common], help="list issued certificates")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_list)

    p = cmds.add_parser("show", parents=[common], help="show one certificate")
    p.add_argument("serial", metavar="SERIAL", help="serial number (hex) or name")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_show)

    p = cmds.add_parser(
        "revoke",
        parents=[common],
        help="revoke a certificate",
        description="Revoke a certificate by serial number, or every valid certificate of a name.",
    )
    p.add_argument("target", metavar="SERIAL|NAME")
    p.add_argument("--reason", metavar="R", help=f"one of {', '.join(pki.REASONS)}")
    p.set_defaults(func=cmd_revoke)

    p = cmds.add_parser(
        "crl",
        parents=[common, signing],
        help="sign and write a new CRL",
        description="Sign a CRL with the next CRL number and write it.",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="where to write it")
    p.add_argument(
        "--format",
        choices=("pem", "der"),
        help="default: der for .der and .crl files, pem otherwise",
    )
    p.add_argument(
        "--days",
        type=_days,
        default=pki.CRL_DAYS,
        help=f"days until the next update (default {pki.CRL_DAYS})",
    )
    p.set_defaults(func=cmd_crl)
