# -*- test-case-name: tests.test_ctl -*-
"""``smobility-ctl``: the administration tool of the home server.

Each area is a module in this package that defines ``register(subparsers)``;
:func:`main` collects them.  Every subcommand takes ``--db PATH`` (the state
database of the home server or multiplexer) and prints one clear sentence on
error (exit status 1) or 2 for usage errors.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: The areas, each a module of this package with ``register(subparsers)``.
AREAS: tuple[str, ...] = ("socks_users", "tokens", "pki")


class CtlError(Exception):
    """A command failed; the text is one sentence for the operator."""


def build_parser() -> argparse.ArgumentParser:
    """The parser with every area that is installed."""
    parser = argparse.ArgumentParser(
        prog="smobility-ctl",
        description="Administer the smobility home server: SOCKS users, multiplexer "
        "credentials, the certificate authority.",
    )
    sub = parser.add_subparsers(dest="area", required=True, metavar="AREA")
    for area in AREAS:
        try:
            module = importlib.import_module(f"smobility.ctl.{area}")
        except ModuleNotFoundError as e:
            if e.name != f"smobility.ctl.{area}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except CtlError as e:
        print(f"smobility-ctl: {e}", file=sys.stderr)
        return 1
    return result
