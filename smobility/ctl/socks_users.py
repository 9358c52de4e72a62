# -*- test-case-name: tests.test_socks -*-
"""``smobility-ctl socks-users``: the users of the multiplexer's SOCKS5 ingress.

``add NAME`` takes the password from ``--password-file F`` (its first line),
``--password-stdin`` (the first line of standard input) or, by default, asks
for it twice on the terminal.  Passwords never appear on the command line,
in the output or in the logs.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import sys
from typing import Any

from smobility.ctl import CtlError
from smobility.store.sqlite import StoreError
from smobility.store.users import UserStore, UserStoreError, check_name, check_password


def _first_line(text: str) -> str:
    """The first line of C{text} without its line ending."""
    return text.splitlines()[0] if text else ""


def _password(args: argparse.Namespace) -> str:
    """The new password, from the file, standard input or the terminal."""
    if args.password_file is not None:
        try:
            with open(args.password_file, encoding="utf-8") as f:
                password = _first_line(f.read())
        except OSError as e:
            raise CtlError(
                f"cannot read the password file {args.password_file}: {e.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise CtlError(f"the password file {args.password_file} is not UTF-8 text") from None
    elif args.password_stdin:
        password = _first_line(sys.stdin.read())
    else:
        try:
            password = getpass.getpass(f"Password for SOCKS user {args.name}: ")
            again = getpass.getpass("Same password again: ")
        except (EOFError, KeyboardInterrupt):
            raise CtlError("no password was entered") from None
        if password != again:
            raise CtlError("the two passwords differ; nothing was changed")
    try:
        check_password(password)
    except UserStoreError as e:
        raise CtlError(str(e)) from None
    return password


def _open(args: argparse.Namespace) -> UserStore:
    try:
        return UserStore(args.db)
    except StoreError as e:
        raise CtlError(str(e)) from None


def cmd_add(args: argparse.Namespace) -> int:
    """Add a user."""
    try:
        check_name(args.name)
    except UserStoreError as e:
        raise CtlError(str(e)) from None
    store = _open(args)
    try:
        # Say so before asking for a password that could not be used.
        if any(name == args.name for name, _ in store.list()):
            raise CtlError(f"the SOCKS user {args.name!r} already exists")
        password = _password(args)
        store.add(args.name, password)
    except UserStoreError as e:
        raise CtlError(str(e)) from None
    finally:
        store.close()
    print(f"added SOCKS user {args.name}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    """Remove a user."""
    store = _open(args)
    try:
        store.remove(args.name)
    except UserStoreError as e:
        raise CtlError(str(e)) from None
    finally:
        store.close()
    print(f"removed SOCKS user {args.name}")
    return 0


def _iso(created: float) -> str:
    return datetime.datetime.fromtimestamp(created, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cmd_list(args: argparse.Namespace) -> int:
    """Print the users, one per line (name, created), or as JSON."""
    store = _open(args)
    try:
        users = store.list()
    finally:
        store.close()
    if args.json:
        out: list[dict[str, Any]] = [{"name": n, "created": _iso(c)} for n, c in users]
        print(json.dumps(out))
    elif not users:
        print("no SOCKS users")
    else:
        for name, created in users:
            print(f"{name}\t{_iso(created)}")
    return 0


def register(subparsers: Any) -> None:
    """Add the area ``socks-users`` to ``smobility-ctl``."""
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument(
        "--db", required=True, metavar="PATH",
        help="the state database of the multiplexer (SQLite)",
    )
    area = subparsers.add_parser(
        "socks-users", help="users of the SOCKS5 ingress (username/password, RFC 1929)",
        description="Add, list and remove the users of the multiplexer's SOCKS5 ingress.",
    )
    sub = area.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add = sub.add_parser("add", parents=[db], help="add a user")
    add.add_argument("name", metavar="NAME", help="user name (1 to 255 bytes)")
    source = add.add_mutually_exclusive_group()
    source.add_argument(
        "--password-file", metavar="F",
        help="read the password from the first line of this file",
    )
    source.add_argument(
        "--password-stdin", action="store_true",
        help="read the password from the first line of standard input",
    )
    add.set_defaults(func=cmd_add)

    lst = sub.add_parser("list", parents=[db], help="list the users")
    lst.add_argument("--json", action="store_true", help="print a JSON array")
    lst.set_defaults(func=cmd_list)

    rm = sub.add_parser("remove", parents=[db], help="remove a user")
    rm.add_argument("name", metavar="NAME", help="user name")
    rm.set_defaults(func=cmd_remove)
