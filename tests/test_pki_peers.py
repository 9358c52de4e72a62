# -*- test-case-name: tests.test_pki_peers -*-
"""
The CA's certificates and CRLs checked by independent implementations:
OpenSSL (C{openssl verify}, C{x509}, C{crl}, C{req}) and strongSwan's C{pki}.

Each test case makes a CA with C{smobility-ctl pki} (ECDSA P-256, and RSA),
issues a server and a client certificate, revokes the client's and publishes
a CRL, then asks the other tool.  A missing tool skips (fails under
C{CI=true}); strongSwan's C{pki} comes from the Debian package strongswan-pki.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from smobility import pki
from smobility.ctl import main as ctl_main
from tests.util import require_tool

SERVER_SANS = ("dns:home.example", "ip:203.0.113.5", "email:ha@example.org")


def run_ctl(*argv: str) -> str:
    """Run C{smobility-ctl} in-process; return its output, raising if it fails."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = ctl_main(list(argv))
    if status != 0:
        raise AssertionError(f"smobility-ctl {' '.join(argv)}: {err.getvalue()}")
    return out.getvalue()


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run a tool; return the finished process (stdout and stderr as text)."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)


class _Fixture:
    """A CA in a temporary directory, with a good and a revoked certificate."""

    rsa_bits: int | None = None

    def make_ca(self, directory: str) -> None:
        """Make the CA, the certificates and the CRLs under C{directory}."""
        self.dir = Path(directory)
        self.dir.mkdir(parents=True)
        self.db = str(self.dir / "home.sqlite")
        init = ["pki", "init", "--db", self.db, "--name", "Peer Test CA"]
        if self.rsa_bits is not None:
            init += ["--rsa", str(self.rsa_bits)]
        run_ctl(*init)
        certs = self.dir / "certs"
        sans = [a for s in SERVER_SANS for a in ("--san", s)]
        run_ctl("pki", "issue", "home", "--server", *sans, "--out-dir", str(certs), "--db", self.db)
        run_ctl(
            "pki",
            "issue",
            "laptop",
            "--client",
            "--san",
            "email:alice@example.org",
            "--out-dir",
            str(certs),
            "--db",
            self.db,
        )
        run_ctl("pki", "revoke", "laptop", "--reason", "key-compromise", "--db", self.db)
        self.crl_pem = self.dir / "crl.pem"
        self.crl_der = self.dir / "crl.der"
        run_ctl("pki", "crl", "--out", str(self.crl_pem), "--db", self.db)
        run_ctl("pki", "crl", "--out", str(self.crl_der), "--db", self.db)
        self.ca = certs / "ca.crt"
        self.good = certs / "home.crt"
        self.good_key = certs / "home.key"
        self.revoked = certs / "laptop.crt"
        self.revoked_serial = pki.load_certificate(self.revoked.read_bytes()).serial_number


class OpenSSLTests(_Fixture, SynchronousTestCase):
    """The checks with OpenSSL, against an ECDSA P-256 CA."""

    def setUp(self) -> None:
        self.openssl = require_tool(self, "openssl")
        self.make_ca(self.mktemp())

    def test_verify_with_crl(self) -> None:
        """C{openssl verify -crl_check} accepts the good certificate, rejects the revoked."""
        args = [
            self.openssl,
            "verify",
            "-CAfile",
            str(self.ca),
            "-crl_check",
            "-CRLfile",
            str(self.crl_pem),
        ]
        good = run(*args, str(self.good))
        self.assertEqual(good.returncode, 0, good.stdout + good.stderr)
        self.assertIn(f"{self.good}: OK", good.stdout)
        bad = run(*args, str(self.revoked))
        self.assertNotEqual(bad.returncode, 0, bad.stdout)
        self.assertIn("certificate revoked", bad.stdout + bad.stderr)
        # Without the CRL the same certificate verifies: the CRL is what refuses it.
        plain = run(self.openssl, "verify", "-CAfile", str(self.ca), str(self.revoked))
        self.assertEqual(plain.returncode, 0, plain.stdout + plain.stderr)

    def test_purpose(self) -> None:
        """OpenSSL reads the extended key usages as we meant them."""
        base = [self.openssl, "verify", "-CAfile", str(self.ca)]
        ok = run(*base, "-purpose", "sslserver", str(self.good))
        self.assertEqual(ok.returncode, 0, ok.stdout + ok.stderr)
        no = run(*base, "-purpose", "sslclient", str(self.good))
        self.assertNotEqual(no.returncode, 0)
        ok = run(*base, "-purpose", "sslclient", str(self.revoked))
        self.assertEqual(ok.returncode, 0, ok.stdout + ok.stderr)

    def test_text(self) -> None:
        """C{openssl x509 -text} shows the SANs, EKUs and the CA's constraints."""
        text = run(self.openssl, "x509", "-noout", "-text", "-in", str(self.good)).stdout
        for want in (
            "DNS:home.example",
            "IP Address:203.0.113.5",
            "email:ha@example.org",
            "TLS Web Server Authentication",
            "CA:FALSE",
            "Digital Signature",
            "Subject: CN = home",
            "Issuer: CN = Peer Test CA",
        ):
            self.assertIn(want, text)
        self.assertNotIn("TLS Web Client Authentication", text)
        text = run(self.openssl, "x509", "-noout", "-text", "-in", str(self.revoked)).stdout
        self.assertIn("TLS Web Client Authentication", text)
        self.assertIn("email:alice@example.org", text)
        text = run(self.openssl, "x509", "-noout", "-text", "-in", str(self.ca)).stdout
        self.assertIn("CA:TRUE, pathlen:0", text)
        self.assertIn("Certificate Sign, CRL Sign", text)
        algorithm = "sha256WithRSAEncryption" if self.rsa_bits else "ecdsa-with-SHA256"
        self.assertIn(f"Signature Algorithm: {algorithm}", text)

    def test_crl(self) -> None:
        """OpenSSL checks the CRL's signature and reads number, serial and reason."""
        for path, form in ((self.crl_pem, "PEM"), (self.crl_der, "DER")):
            res = run(
                self.openssl,
                "crl",
                "-inform",
                form,
                "-in",
                str(path),
                "-CAfile",
                str(self.ca),
                "-noout",
                "-text",
            )
            self.assertEqual(res.returncode, 0, res.stderr)
            self.assertIn("verify OK", res.stdout + res.stderr)
            self.assertIn("X509v3 CRL Number", res.stdout)
            self.assertIn(pki.format_serial(self.revoked_serial), res.stdout)
            self.assertIn("Key Compromise", res.stdout)
            self.assertIn("Next Update", res.stdout)

    def test_key_file(self) -> None:
        """The key file we wrote is the certificate's key, as OpenSSL reads it."""
        from_key = run(self.openssl, "pkey", "-in", str(self.good_key), "-pubout")
        from_cert = run(self.openssl, "x509", "-in", str(self.good), "-noout", "-pubkey")
        self.assertEqual(from_key.returncode, 0, from_key.stderr)
        self.assertEqual(from_key.stdout, from_cert.stdout)

    def test_openssl_request(self) -> None:
        """A request made by OpenSSL is signed, and OpenSSL verifies the result."""
        key, csr, crt = self.dir / "gw.key", self.dir / "gw.csr", self.dir / "gw.crt"
        made = run(
            self.openssl,
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-subj",
            "/CN=gw.example/O=Example",
            "-addext",
            "subjectAltName=DNS:gw.example",
            "-out",
            str(csr),
        )
        self.assertEqual(made.returncode, 0, made.stderr)
        run_ctl("pki", "sign-csr", str(csr), "--server", "--out", str(crt), "--db", self.db)
        res = run(
            self.openssl, "verify", "-CAfile", str(self.ca), "-purpose", "sslserver", str(crt)
        )
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        text = run(self.openssl, "x509", "-noout", "-text", "-in", str(crt)).stdout
        self.assertIn("DNS:gw.example", text)
        self.assertIn("O = Example", text)


class OpenSSLRSATests(OpenSSLTests):
    """OpenSSL against an RSA 2048 CA."""

    rsa_bits = 2048


class StrongSwanTests(_Fixture, SynchronousTestCase):
    """The checks with strongSwan's C{pki}, against an ECDSA P-256 CA."""

    def setUp(self) -> None:
        self.pki = require_tool(self, "pki")
        self.make_ca(self.mktemp())

    def test_verify(self) -> None:
        """C{pki --verify} trusts our certificates; with the CRL it refuses the revoked one."""
        res = run(self.pki, "--verify", "--in", str(self.good), "--cacert", str(self.ca))
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        self.assertIn("certificate trusted", res.stdout)
        res = run(
            self.pki,
            "--verify",
            "--in",
            str(self.good),
            "--cacert",
            str(self.ca),
            "--crl",
            str(self.crl_der),
        )
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        self.assertIn("not revoked", res.stdout)
        res = run(
            self.pki,
            "--verify",
            "--in",
            str(self.revoked),
            "--cacert",
            str(self.ca),
            "--crl",
            str(self.crl_pem),
        )
        self.assertNotEqual(res.returncode, 0, res.stdout)
        self.assertIn("untrusted", res.stdout)

    def test_print_crl(self) -> None:
        """C{pki --print} reads our CRL (PEM and DER): issuer, number, the revoked serial."""
        serial = ":".join(
            f"{b:02x}"
            for b in self.revoked_serial.to_bytes(
                (self.revoked_serial.bit_length() + 7) // 8, "big"
            )
        )
        for path in (self.crl_pem, self.crl_der):
            res = run(self.pki, "--print", "--type", "crl", "--in", str(path))
            self.assertEqual(res.returncode, 0, res.stderr)
            self.assertIn('issuer:   "CN=Peer Test CA"', res.stdout)
            self.assertIn("1 revoked certificate", res.stdout)
            self.assertIn(serial, res.stdout)
            self.assertIn("key compromise", res.stdout)
        self.assertIn(
            "serial:    01",
            run(self.pki, "--print", "--type", "crl", "--in", str(self.crl_pem)).stdout,
        )
        self.assertIn(
            "serial:    02",
            run(self.pki, "--print", "--type", "crl", "--in", str(self.crl_der)).stdout,
        )

    def test_print_certificate(self) -> None:
        """C{pki --print} sees the identities and flags IKE will use."""
        res = run(self.pki, "--print", "--in", str(self.good))
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertIn("altNames:  home.example, 203.0.113.5, ha@example.org", res.stdout)
        self.assertIn("serverAuth", res.stdout)
        res = run(self.pki, "--print", "--in", str(self.revoked))
        self.assertIn("clientAuth", res.stdout)

    def test_key_file(self) -> None:
        """strongSwan loads our key file (as swanctl/private would) and it fits the cert."""
        key = run(
            self.pki, "--keyid", "--in", str(self.good_key), "--id", "spki", "--format", "hex"
        )
        cert = run(
            self.pki,
            "--keyid",
            "--type",
            "x509",
            "--in",
            str(self.good),
            "--id",
            "spki",
            "--format",
            "hex",
        )
        self.assertEqual(key.returncode, 0, key.stderr)
        self.assertEqual(key.stdout.strip(), cert.stdout.strip())
        self.assertTrue(key.stdout.strip())

    def test_strongswan_request(self) -> None:
        """A request made by strongSwan is signed, and strongSwan trusts the result."""
        key, csr, crt = self.dir / "sw.key", self.dir / "sw.csr", self.dir / "sw.crt"
        gen = subprocess.run(
            [self.pki, "--gen", "--type", "ecdsa", "--size", "256"],
            capture_output=True,
            timeout=60,
            check=True,
        )
        key.write_bytes(gen.stdout)
        req = subprocess.run(
            [
                self.pki,
                "--req",
                "--in",
                str(key),
                "--dn",
                "CN=sw.example",
                "--san",
                "sw.example",
                "--san",
                "10.1.2.3",
            ],
            capture_output=True,
            timeout=60,
            check=True,
        )
        csr.write_bytes(req.stdout)
        run_ctl("pki", "sign-csr", str(csr), "--client", "--out", str(crt), "--db", self.db)
        res = run(self.pki, "--verify", "--in", str(crt), "--cacert", str(self.ca))
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        res = run(self.pki, "--print", "--in", str(crt))
        self.assertIn("altNames:  sw.example, 10.1.2.3", res.stdout)
        self.assertIn("clientAuth", res.stdout)


class StrongSwanRSATests(StrongSwanTests):
    """strongSwan against an RSA 3072 CA."""

    rsa_bits = 3072
