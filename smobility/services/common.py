# -*- test-case-name: tests.test_services -*-
"""What every role's tap module shares: the ``--config`` option and start-up checks."""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.logger import Logger
from twisted.python import usage

from smobility.config import ConfigError

log = Logger()


class ConfigOptions(usage.Options):
    """``usage.Options`` with one required ``--config FILE`` that is loaded and checked.

    Subclasses set ``role`` (for messages), ``example`` (the example file in
    etc/) and override :meth:`load`.
    After parsing, ``self.config`` holds the validated configuration; a bad
    file is a :class:`~twisted.python.usage.UsageError` whose text is the one
    sentence :class:`~smobility.config.ConfigError` gives.
    """

    role: ClassVar[str] = ""
    example: ClassVar[str] = ""

    optParameters: ClassVar[list[list[Any]]] = [
        ["config", "c", None, "The role's TOML configuration file (required)."],
    ]

    def load(self, path: str) -> Any:
        """Load and validate the configuration file (one ``smobility.config.load_*``)."""
        raise NotImplementedError

    def postOptions(self) -> None:  # noqa: N802
        path = self["config"]
        if not path:
            raise usage.UsageError(
                f"--config FILE is required: the {self.role}'s TOML configuration, "
                f"for example {self.example}"
            )
        try:
            self.config = self.load(path)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


class StartupError(Exception):
    """A service cannot start; the text is one sentence for the operator."""


def log_warnings(warnings: tuple[str, ...]) -> None:
    """Log the configuration loader's warnings, one line each."""
    for warning in warnings:
        log.warn("configuration: {text}", text=warning)
