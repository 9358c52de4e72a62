# -*- test-case-name: tests.test_mux -*-
"""``smobility-ctl tokens``: credentials of the multiplexer's HTTP tunnel.

::

    smobility-ctl tokens issue NAME --db PATH [--replace]
    smobility-ctl tokens list --db PATH [--json]
    smobility-ctl tokens revoke NAME --db PATH

``issue`` prints the new token (64 hex digits) on standard output, once: only
its SHA-256 digest is stored.  The client presents it as
``Authorization: Smobility NAME:TOKEN``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from smobility.ctl import CtlError
from smobility.store.sqlite import StoreError
from smobility.store.tokens import TokenStore, TokenStoreError

__all__ = ["register"]


def _open(args: argparse.Namespace) -> TokenStore:
    try:
        return TokenStore(args.db)
    except StoreError as e:
        raise CtlError(str(e)) from None


def _issue(args: argparse.Namespace) -> int:
    store = _open(args)
    try:
        token = store.issue(args.name, replace=args.replace)
    except TokenStoreError as e:
        raise CtlError(str(e)) from None
    finally:
        store.close()
    print(token)
    print(
        f"issued the multiplexer credential {args.name!r}; the token above is shown only "
        f"once: the client sends 'Authorization: Smobility {args.name}:<token>'",
        file=sys.stderr,
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    store = _open(args)
    try:
        entries = store.list()
    finally:
        store.close()
    if args.json:
        print(json.dumps([{"name": e.name, "created": e.created} for e in entries]))
        return 0
    if not entries:
        print("no multiplexer credentials issued")
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(e.created))
        print(f"{e.name}  issued {when}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    store = _open(args)
    try:
        store.revoke(args.name)
    except TokenStoreError as e:
        raise CtlError(str(e)) from None
    finally:
        store.close()
    print(f"revoked the multiplexer credential {args.name!r}", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    """Add the ``tokens`` area to ``smobility-ctl``."""
    area = subparsers.add_parser(
        "tokens", help="credentials of the multiplexer's HTTP tunnel",
        description="Issue, list and revoke the credentials clients present to the "
        "HTTP(S) multiplexer (Authorization: Smobility NAME:TOKEN).",
    )
    sub = area.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def db(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--db", required=True, metavar="PATH",
            help="the multiplexer's state database (mux.state_db)",
        )

    issue = sub.add_parser("issue", help="issue a credential and print its token once")
    issue.add_argument("name", help="the credential's name (1-64 of A-Z a-z 0-9 _ . -)")
    issue.add_argument(
        "--replace", action="store_true", help="replace the token of an existing name"
    )
    db(issue)
    issue.set_defaults(func=_issue)

    lst = sub.add_parser("list", help="list the issued credentials (never the tokens)")
    lst.add_argument("--json", action="store_true", help="print one JSON array")
    db(lst)
    lst.set_defaults(func=_list)

    revoke = sub.add_parser("revoke", help="revoke a credential")
    revoke.add_argument("name")
    db(revoke)
    revoke.set_defaults(func=_revoke)
