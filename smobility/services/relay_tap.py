# -*- test-case-name: tests.test_services -*-
"""``twistd smobility-relay``: the relay (Mobile IP foreign agent).

Not built yet: the tap validates its configuration, then refuses to start
with a sentence that names what is missing, rather than running a service
that silently does nothing.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application.service import IService
from twisted.python import usage

from smobility.config import load_relay
from smobility.services.common import ConfigOptions

MISSING = (
    "smobility-relay cannot start yet: registration relaying (the foreign agent "
    "with MN-FA and FA-HA authentication), the relay-to-home IP-in-IP path and "
    "the relay's IKE SA are not built in this version; nothing was started"
)


class Options(ConfigOptions):
    """Options of ``twistd smobility-relay``."""

    synopsis = "--config FILE"
    longdesc = (
        "Relay server: relays Mobile IP registrations from roaming clients to their "
        "home agent and carries their traffic to it.  Configuration: etc/relay.toml.  "
        "This version validates the configuration and refuses to start: the relay "
        "service is not built yet."
    )
    role: ClassVar[str] = "relay"
    example: ClassVar[str] = "etc/relay.toml"

    def load(self, path: str) -> Any:
        return load_relay(path)

    def postOptions(self) -> None:  # noqa: N802
        super().postOptions()
        raise usage.UsageError(MISSING)


def makeService(options: Options) -> IService:  # noqa: N802
    """Never reached: :meth:`Options.postOptions` refuses first."""
    raise usage.UsageError(MISSING)
