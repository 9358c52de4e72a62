# -*- test-case-name: tests.test_gateway -*-
"""strongSwan 5.9 in the lab: charon with kernel-libipsec in a namespace, and its configs.

The independent IKEv2/IPsec peer of the tests and the IPsec VPN gateway of
the demo (the seed's figure 7).  How charon has to run on a kernel without
XFRM is in PEERS.md; in short:

- userspace ESP: the kernel-libipsec plugin (a TUN device, ESP in UDP only),
  loaded before kernel-netlink, with an explicit ``load`` list
  (:data:`LOAD`, ``load_modular = no``);
- one charon per namespace, each with its own ``/run`` (a bind mount in the
  mount namespace ``ip netns exec`` makes: the pid file path is compiled in),
  its own vici socket and its own ``swanctl`` directory
  (:class:`Charon`);
- ``encap = yes`` and both NAT_DETECTION notifies, so that everything goes
  ESP-in-UDP on port 4500.

Configuration builders: :func:`strongswan_conf` (the daemon),
:func:`swanctl_responder` / :func:`swanctl_initiator` (one peer against our
IKE engine, for the interop tests), :func:`gateway_swanctl` (a VPN gateway
handing out virtual IPs from a pool, with a shared key or with certificates
from our CA), :func:`pubkey_auth` (a shared-key config turned into a
certificate one).  Credentials: :func:`make_pki` (made by strongSwan's own
``pki`` tool), :func:`our_pki` (made by our CA, :mod:`smobility.pki` /
:mod:`smobility.store.pki`), :func:`install_credentials`.  Reading
``swanctl --list-sas``: :func:`ike_sas`, :func:`installed_children`,
:func:`child_counters`.

Nothing here logs secrets: charon's key dumps (log level 4) are only on
with ``key_dump=True``, which the interop tests use to compare keys.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from smobility import pki as ca

if TYPE_CHECKING:
    from smobility.store.pki import PKIStore

CHARON = "/usr/lib/ipsec/charon"
"""Where Debian's strongswan-charon package puts the daemon."""

LOAD = (
    "random nonce openssl aes sha1 sha2 hmac gcm curve25519 gmp pem pkcs1 pkcs8 x509 pubkey "
    "constraints revocation kdf kernel-libipsec kernel-netlink socket-default vici updown"
)
"""charon's plugins, in order: kernel-libipsec before kernel-netlink (PEERS.md)."""

GATEWAY_PROPOSALS = (
    "aes128gcm16-prfsha256-ecp256,aes256gcm16-prfsha384-x25519,aes128gcm16-prfsha256-x25519"
)
"""IKE proposals of :func:`gateway_swanctl`: all of them are suites our engine speaks."""

GATEWAY_ESP_PROPOSALS = "aes128gcm16,aes256gcm16"
"""ESP proposals of :func:`gateway_swanctl` (our ESP code is AES-GCM only)."""

VPN_POOL = "10.78.0.0/24"
"""The default pool of virtual IPs a gateway hands out."""

_SOCKET_PREFIX = "smosw"
_SUBDIRS = ("", "x509", "x509ca", "x509crl", "private", "rsa", "ecdsa", "pkcs8", "conf.d")


class StrongSwanError(RuntimeError):
    """charon or one of strongSwan's tools did not do what was asked; the message says why."""


def find_tool(name: str) -> str:
    """The path of a strongSwan tool (``swanctl``, ``pki``), also in the sbin directories."""
    found = shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")
    return found or name


def run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 20,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command (list argv); raise :class:`StrongSwanError` with its output if it fails."""
    result = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout,
        env=dict(env) if env is not None else None, check=False,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise StrongSwanError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result


# ---------------------------------------------------------------------------
# strongswan.conf
# ---------------------------------------------------------------------------


def strongswan_conf(directory: Path, socket_dir: Path, *, key_dump: bool = False) -> str:
    """A strongswan.conf for one charon: its plugins, vici socket and log file.

    The socket lives in ``socket_dir``: a unix socket path holds at most 108
    bytes, less than a test's temporary directory may take.  The log goes to
    ``directory/charon.log`` with proposals, configuration and kernel
    messages (levels 2); ``key_dump`` raises IKE and CHILD_SA logging to
    level 4, where charon writes every key: for interop tests only.
    """
    secret_level = 4 if key_dump else 1
    return f"""
charon {{
    load_modular = no
    load = {LOAD}
    install_virtual_ip = yes
    retransmit_timeout = 1.0
    retransmit_tries = 3
    plugins {{
        vici {{
            socket = unix://{socket_dir}/vici
        }}
    }}
    filelog {{
        smob {{
            path = {directory}/charon.log
            time_format = %T
            default = 1
            ike = {4 if key_dump else 2}
            cfg = 2
            enc = 1
            knl = 2
            chd = {secret_level}
            flush_line = yes
        }}
    }}
    syslog {{
        daemon {{
            default = -1
        }}
    }}
}}
"""


# ---------------------------------------------------------------------------
# swanctl.conf builders
# ---------------------------------------------------------------------------


def _quote(secret: str) -> str:
    if any(c in secret for c in '"\\\n\r'):
        raise ValueError("a shared key for swanctl.conf may not contain quotes, \\ or newlines")
    return f'"{secret}"'


def swanctl_responder(
    *,
    ike: str,
    esp: str = "aes128gcm16,aes256gcm16",
    local_addr: str,
    local_id: str,
    remote_id: str,
    psk: str,
    local_ts: str,
    pool: str,
    name: str = "ha",
) -> str:
    """swanctl.conf of strongSwan as a responder to our initiator, handing out ``pool`` by CP.

    ``esp``: its ESP proposals (a DH group in them means PFS on rekeys).
    The connection is ``name``, its child ``net``; no rekeying, no DPD.
    """
    return f"""
connections {{
    {name} {{
        version = 2
        local_addrs = {local_addr}
        proposals = {ike}
        encap = yes
        mobike = no
        rekey_time = 0
        reauth_time = 0
        dpd_delay = 0
        pools = vpool
        local {{
            auth = psk
            id = {local_id}
        }}
        remote {{
            auth = psk
            id = {remote_id}
        }}
        children {{
            net {{
                mode = tunnel
                local_ts = {local_ts}
                esp_proposals = {esp}
                rekey_time = 0
            }}
        }}
    }}
}}
pools {{
    vpool {{
        addrs = {pool}
    }}
}}
secrets {{
    ike-smob {{
        id-a = {local_id}
        id-b = {remote_id}
        secret = {_quote(psk)}
    }}
}}
"""


def swanctl_initiator(
    *,
    ike: str,
    esp: str,
    local_addr: str,
    remote_addr: str,
    local_id: str,
    remote_id: str,
    psk: str,
    local_ts: str,
    remote_ts: str,
    child_rekey: str = "0",
    name: str = "home",
) -> str:
    """swanctl.conf of strongSwan as an initiator towards our responder.

    ``child_rekey``: the CHILD_SA's ``rekey_time`` (``0``: never); its
    ``life_time`` is then well beyond (by default only 10 % more, which
    rounds to the same second for short times and expires the SA instead).
    The connection is ``name``, its child ``net``.
    """
    return f"""
connections {{
    {name} {{
        version = 2
        local_addrs = {local_addr}
        remote_addrs = {remote_addr}
        proposals = {ike}
        encap = yes
        mobike = no
        rekey_time = 0
        reauth_time = 0
        dpd_delay = 0
        local {{
            auth = psk
            id = {local_id}
        }}
        remote {{
            auth = psk
            id = {remote_id}
        }}
        children {{
            net {{
                mode = tunnel
                local_ts = {local_ts}
                remote_ts = {remote_ts}
                esp_proposals = {esp}
                rekey_time = {child_rekey}
                life_time = {"0" if child_rekey == "0" else "60s"}
                rand_time = {"0" if child_rekey == "0" else "1s"}
            }}
        }}
    }}
}}
secrets {{
    ike-smob {{
        id-a = {local_id}
        id-b = {remote_id}
        secret = {_quote(psk)}
    }}
}}
"""


def gateway_swanctl(
    *,
    lan: str | Sequence[str],
    local_id: str,
    auth: str = "psk",
    psk: str | None = None,
    remote_id: str = "%any",
    cert: str = "gateway.crt",
    cacert: str | None = "ca.crt",
    pool: str = VPN_POOL,
    dns: Sequence[str] = (),
    public_addr: str = "%any",
    proposals: str = GATEWAY_PROPOSALS,
    esp_proposals: str = GATEWAY_ESP_PROPOSALS,
    rekey_time: str = "4h",
    child_rekey_time: str = "1h",
    dpd_delay: str = "30s",
    name: str = "gw",
) -> str:
    """swanctl.conf of an IPsec VPN gateway at the home perimeter (the seed's figure 7).

    A responder only: road warriors ask for a virtual IP by the
    configuration payload and get one from ``pool``; their CHILD_SA
    reaches the home network ``lan`` (one or more subnets: the gateway's
    ``local_ts``) in tunnel mode, always ESP-in-UDP (``encap = yes``, the
    only mode kernel-libipsec has), no MOBIKE.

    ``auth``: ``"psk"`` (the secret ``psk`` for ``local_id`` and
    ``remote_id``; give a client's identity as ``remote_id``) or
    ``"pubkey"`` (the gateway's certificate ``cert`` from ``swanctl/x509``,
    clients' certificates checked against the CA certificate ``cacert``
    from ``swanctl/x509ca`` and their ID against ``remote_id``, ``%any``
    meaning any identity that CA certified).  ``dns``: DNS servers for CP.
    ``rekey_time`` / ``child_rekey_time`` / ``dpd_delay``: swanctl time
    values, ``"0"`` turns each off.  The connection is ``name``, its child
    ``lan``, the pool ``{name}pool``.

    :raises ValueError: for an unknown ``auth``, or a shared key that is missing.
    """
    if auth not in ("psk", "pubkey"):
        raise ValueError(f"gateway auth is 'psk' or 'pubkey', not {auth!r}")
    if auth == "psk" and not psk:
        raise ValueError("a shared-key gateway needs the shared key (psk)")
    local_ts = lan if isinstance(lan, str) else ",".join(lan)
    if auth == "psk":
        local = f"auth = psk\n            id = {local_id}"
        remote = f"auth = psk\n            id = {remote_id}"
        ids = f"        id-gw = {local_id}\n"
        if remote_id != "%any":
            ids += f"        id-client = {remote_id}\n"
        assert psk is not None
        secret = _quote(psk)
        secrets = f"secrets {{\n    ike-{name} {{\n{ids}        secret = {secret}\n    }}\n}}\n"
    else:
        local = f"auth = pubkey\n            certs = {cert}\n            id = {local_id}"
        remote = f"auth = pubkey\n            id = {remote_id}"
        if cacert is not None:
            remote += f"\n            cacerts = {cacert}"
        secrets = ""
    pool_dns = f"\n        dns = {','.join(dns)}" if dns else ""
    return f"""
connections {{
    {name} {{
        version = 2
        local_addrs = {public_addr}
        proposals = {proposals}
        encap = yes
        mobike = no
        send_cert = always
        rekey_time = {rekey_time}
        reauth_time = 0
        dpd_delay = {dpd_delay}
        pools = {name}pool
        local {{
            {local}
        }}
        remote {{
            {remote}
        }}
        children {{
            lan {{
                mode = tunnel
                local_ts = {local_ts}
                esp_proposals = {esp_proposals}
                rekey_time = {child_rekey_time}
            }}
        }}
    }}
}}
pools {{
    {name}pool {{
        addrs = {pool}{pool_dns}
    }}
}}
{secrets}"""


def pubkey_auth(conf: str, local_cert: str) -> str:
    """Turn a shared-key swanctl.conf (of the builders above) into a certificate one."""
    conf = conf.replace(
        "        local {\n            auth = psk\n",
        f"        local {{\n            auth = pubkey\n            certs = {local_cert}\n",
    )
    return conf.replace("auth = psk", "auth = pubkey")


# ---------------------------------------------------------------------------
# Credentials
# ---------------------------------------------------------------------------


def make_pki(directory: Path, kind: str, names: Mapping[str, str]) -> dict[str, Path]:
    """A CA and one certificate per entry of ``names``, made by strongSwan's ``pki``.

    ``kind`` is ``ecdsa`` (P-256) or ``rsa`` (2048 bits); ``names`` maps a
    file name (``ha``) to the identity its certificate carries as subject CN
    and DNS subjectAltName.  Returns the PEM paths: ``ca``, and
    ``<name>.crt`` / ``<name>.key`` for each name.
    """
    directory.mkdir(parents=True, exist_ok=True)
    size = "256" if kind == "ecdsa" else "2048"
    paths: dict[str, Path] = {}
    tool = find_tool("pki")

    def pki(*args: str) -> bytes:
        r = subprocess.run([tool, *args], capture_output=True, timeout=60, check=False)
        if r.returncode != 0:
            raise StrongSwanError(f"pki {' '.join(args)}: {r.stderr.decode(errors='replace')}")
        return r.stdout

    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    ca_key.write_bytes(pki("--gen", "--type", kind, "--size", size, "--outform", "pem"))
    ca_crt.write_bytes(
        pki("--self", "--ca", "--lifetime", "30", "--in", str(ca_key), "--type", kind,
            "--dn", "C=CH, O=smobility, CN=smobility test CA", "--outform", "pem")
    )  # fmt: skip
    paths["ca"] = ca_crt
    for name, ident in names.items():
        key, crt = directory / f"{name}.key", directory / f"{name}.crt"
        key.write_bytes(pki("--gen", "--type", kind, "--size", size, "--outform", "pem"))
        crt.write_bytes(
            pki("--issue", "--cacert", str(ca_crt), "--cakey", str(ca_key), "--type", "priv",
                "--in", str(key), "--dn", f"C=CH, O=smobility, CN={ident}", "--san", ident,
                "--flag", "serverAuth", "--flag", "clientAuth", "--lifetime", "30",
                "--outform", "pem")
        )  # fmt: skip
        paths[f"{name}.key"], paths[f"{name}.crt"] = key, crt
    return paths


class Credential(NamedTuple):
    """One certificate to issue with :func:`our_pki`: file name, DNS identity, usage."""

    name: str
    dns: str
    profile: ca.Profile = "both"


def our_pki(
    directory: Path,
    credentials: Sequence[Credential],
    *,
    store: PKIStore | None = None,
    rsa_bits: int | None = None,
) -> dict[str, Path]:
    """Certificates from our own CA, in the same layout as :func:`make_pki`.

    ``store``: a :class:`smobility.store.pki.PKIStore` holding the CA (the
    home server's state database): each certificate is issued and recorded
    there.  Without it a fresh CA is made with :func:`smobility.pki.create_ca`.
    Each credential gets subject ``CN=<dns>``, the DNS subjectAltName
    ``dns`` and its profile's extended key usages.  Keys are PKCS#8 PEM
    files of mode 0600 (for ``swanctl/private``).  Returns ``ca`` and
    ``<name>.crt`` / ``<name>.key`` paths.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    ca_key: ca.PrivateKey | None = None
    if store is not None:
        ca_cert = store.ca_certificate()
    else:
        ca_cert, ca_key = ca.create_ca("smobility lab CA", rsa_bits=rsa_bits)
    (directory / "ca.crt").write_bytes(ca.certificate_pem(ca_cert))
    paths["ca"] = directory / "ca.crt"
    for cred in credentials:
        subject = ca.common_name(cred.dns)
        sans = [ca.parse_san(f"dns:{cred.dns}")]
        if store is not None:
            cert, key = store.issue(
                cred.name, sans=sans, profile=cred.profile, subject=subject, rsa_bits=rsa_bits
            )
        else:
            assert ca_key is not None
            cert, key = ca.issue_with_new_key(
                ca_cert, ca_key, subject=subject, sans=sans, profile=cred.profile,
                rsa_bits=rsa_bits,
            )  # fmt: skip
        crt_path, key_path = directory / f"{cred.name}.crt", directory / f"{cred.name}.key"
        crt_path.write_bytes(ca.certificate_pem(cert))
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(ca.private_key_pem(key))
        paths[f"{cred.name}.crt"], paths[f"{cred.name}.key"] = crt_path, key_path
    return paths


def install_credentials(swan_dir: Path, pki: Mapping[str, Path], name: str, kind: str) -> None:
    """Copy the CA, ``name``'s certificate and key into a charon's swanctl directory.

    ``kind`` is the swanctl directory the key goes to: ``ecdsa``, ``rsa``,
    or ``private`` (any type, PKCS#8 as :func:`our_pki` writes).  The
    certificate keeps its file name ``<name>.crt``, the CA becomes ``ca.crt``.
    """
    base = swan_dir / "swanctl"
    for sub in ("x509ca", "x509", kind):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "x509ca" / "ca.crt").write_bytes(pki["ca"].read_bytes())
    (base / "x509" / f"{name}.crt").write_bytes(pki[f"{name}.crt"].read_bytes())
    key = base / kind / f"{name}.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pki[f"{name}.key"].read_bytes())


# ---------------------------------------------------------------------------
# charon
# ---------------------------------------------------------------------------


class Charon:
    """One charon in a namespace, with its own directory, /run, vici socket and log.

    ``directory`` holds ``strongswan.conf``, ``swanctl/`` (with
    ``swanctl.conf`` and any credentials put there before :meth:`start`),
    ``run/`` (charon's ``/run``) and ``charon.log``.  Stop it with
    :meth:`stop` (by its PID); it is safe to call at any time.
    """

    def __init__(
        self, ns: str, directory: Path, swanctl_conf: str, *, key_dump: bool = False
    ) -> None:
        self.ns = ns
        self.dir = directory
        self.swanctl_conf = swanctl_conf
        self.key_dump = key_dump
        self.socket_dir = Path(tempfile.mkdtemp(prefix=_SOCKET_PREFIX, dir="/tmp"))
        self.uri = f"unix://{self.socket_dir}/vici"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "charon.log"

    def env(self) -> dict[str, str]:
        """The environment for charon and swanctl."""
        e = dict(os.environ)
        e["STRONGSWAN_CONF"] = str(self.dir / "strongswan.conf")
        e["SWANCTL_DIR"] = str(self.dir / "swanctl")
        return e

    @property
    def pid(self) -> int | None:
        """The PID of the process started (``ip netns exec``, which becomes charon)."""
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 20.0) -> None:
        """Start charon, wait for its vici socket, load the configuration.

        :raises StrongSwanError: charon exited, never answered, or refused the configuration.
        """
        (self.dir / "run").mkdir(parents=True, exist_ok=True)
        swanctl_dir = self.dir / "swanctl"
        for sub in _SUBDIRS:
            (swanctl_dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "strongswan.conf").write_text(
            strongswan_conf(self.dir, self.socket_dir, key_dump=self.key_dump)
        )
        conf = swanctl_dir / "swanctl.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds secrets
        with os.fdopen(fd, "w") as f:
            f.write(self.swanctl_conf)
        stdout = open(self.dir / "charon.stdout", "wb")  # noqa: SIM115 - owned by the process
        try:
            self.proc = subprocess.Popen(
                [
                    "ip", "netns", "exec", self.ns, "sh", "-c",
                    f"mount --bind {self.dir}/run /run && exec {CHARON}",
                ],
                stdout=stdout,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env(),
            )  # fmt: skip
        finally:
            stdout.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise StrongSwanError(f"charon exited ({self.proc.returncode}):\n{self.text()}")
            r = self.swanctl("--stats", check=False, timeout=5)
            if r.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise StrongSwanError(f"charon's vici socket did not answer:\n{self.text()}")
            time.sleep(0.1)
        self.swanctl("--load-all", "--noprompt")

    def swanctl(
        self, *args: str, check: bool = True, timeout: float = 20
    ) -> subprocess.CompletedProcess[str]:
        """Run ``swanctl ARGS --uri <ours>`` (the socket is a file: no namespace needed)."""
        return run([find_tool("swanctl"), *args, "--uri", self.uri], check=check,
                   timeout=timeout, env=self.env())  # fmt: skip

    def list_sas(self) -> str:
        """``swanctl --list-sas``: the IKE and CHILD SAs as charon sees them."""
        return self.swanctl("--list-sas", check=False).stdout

    def text(self) -> str:
        """charon's log so far (and what it printed)."""
        parts = []
        for p in (self.dir / "charon.stdout", self.log_path):
            if p.exists():
                parts.append(p.read_text(errors="replace"))
        return "\n".join(parts)

    def wait_log(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """Wait until ``pattern`` appears in charon's log.

        :raises StrongSwanError: not within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            m = re.search(pattern, text)
            if m is not None:
                return m
            if time.monotonic() > deadline:
                raise StrongSwanError(f"no {pattern!r} in charon's log within {timeout} s")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM charon by its PID; SIGKILL if it hangs; remove the socket directory."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            self.proc = None
        shutil.rmtree(self.socket_dir, ignore_errors=True)


# ---------------------------------------------------------------------------
# Reading swanctl --list-sas
# ---------------------------------------------------------------------------

_CHILD_HEAD = re.compile(r"^\s+\S+: #\d+, reqid \d+, (\w+),")
_CHILD_SPI = re.compile(r"^\s+(in|out)\s+([0-9a-f]{8})[,_ ]")
_CHILD_BYTES = re.compile(r"^\s+(in|out)\s+([0-9a-f]{8})[^,]*,\s+(\d+) bytes,\s+(\d+) packets")
_IKE_HEAD = re.compile(r"^\S+: #\d+, (\w+), IKEv2, ([0-9a-f]{16})_i\*? ([0-9a-f]{16})_r")


def installed_children(listing: str) -> list[tuple[str, str]]:
    """(in, out) SPIs, as strongSwan sees them, of each INSTALLED CHILD_SA in ``--list-sas``."""
    out: list[tuple[str, str]] = []
    state, spi_in = "", ""
    for line in listing.splitlines():
        head = _CHILD_HEAD.match(line)
        if head is not None:
            state = head.group(1)
            continue
        spi = _CHILD_SPI.match(line)
        if spi is None or state != "INSTALLED":
            continue
        if spi.group(1) == "in":
            spi_in = spi.group(2)
        else:
            out.append((spi_in, spi.group(2)))
    return out


def ike_sas(listing: str) -> list[tuple[str, str, str]]:
    """(state, SPIi, SPIr) of each IKE SA in ``--list-sas``."""
    return [
        (m.group(1), m.group(2), m.group(3))
        for m in map(_IKE_HEAD.match, listing.splitlines())
        if m is not None
    ]


def child_counters(listing: str) -> dict[str, tuple[int, int]]:
    """strongSwan's (bytes, packets) per CHILD_SA SPI (8 hex digits) in ``--list-sas``."""
    found: dict[str, tuple[int, int]] = {}
    for line in listing.splitlines():
        m = _CHILD_BYTES.match(line)
        if m is not None:
            found[m.group(2)] = (int(m.group(3)), int(m.group(4)))
    return found


__all__ = [
    "CHARON",
    "GATEWAY_ESP_PROPOSALS",
    "GATEWAY_PROPOSALS",
    "LOAD",
    "VPN_POOL",
    "Charon",
    "Credential",
    "StrongSwanError",
    "child_counters",
    "find_tool",
    "gateway_swanctl",
    "ike_sas",
    "install_credentials",
    "installed_children",
    "make_pki",
    "our_pki",
    "pubkey_auth",
    "run",
    "strongswan_conf",
    "swanctl_initiator",
    "swanctl_responder",
]
