# -*- test-case-name: tests.test_services -*-
"""``twistd smobility-mux``: the HTTP(S) multiplexer and its SOCKS5 ingress.

Not built yet: the tap validates its configuration, then refuses to start
with a sentence that names what is missing, rather than running a service
that silently does nothing.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application.service import IService
from twisted.python import usage

from smobility.config import load_mux
from smobility.services.common import ConfigOptions

MISSING = (
    "smobility-mux cannot start yet: the HTTP(S) tunnel server, the per-session "
    "UDP relay to the home agent and the SOCKS5 ingress are not built in this "
    "version; nothing was started"
)


class Options(ConfigOptions):
    """Options of ``twistd smobility-mux``."""

    synopsis = "--config FILE"
    longdesc = (
        "Multiplexer: carries roaming clients' datagrams in HTTP(S) requests behind a "
        "SOCKS5 ingress and relays them to the home agent over UDP.  Configuration: "
        "etc/mux.toml.  This version validates the configuration and refuses to "
        "start: the multiplexer service is not built yet."
    )
    role: ClassVar[str] = "multiplexer"
    example: ClassVar[str] = "etc/mux.toml"

    def load(self, path: str) -> Any:
        return load_mux(path)

    def postOptions(self) -> None:  # noqa: N802
        super().postOptions()
        raise usage.UsageError(MISSING)


def makeService(options: Options) -> IService:  # noqa: N802
    """Never reached: :meth:`Options.postOptions` refuses first."""
    raise usage.UsageError(MISSING)
