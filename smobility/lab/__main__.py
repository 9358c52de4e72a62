# -*- test-case-name: tests.test_lab -*-
"""
C{python -m smobility.lab}: build, drive, inspect and remove the namespace lab by hand.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from smobility.lab.namespaces import Lab, LabError
from smobility.lab.topology import TOPOLOGY

DESCRIPTION = """\
The smobility namespace lab (needs root).

Network namespaces <prefix>-<role>: sw (the LAN bridges br-home, br-v1, br-v2),
ha (home agent and home LAN router: 10.77.0.1 inside, 172.31.0.2 public),
cn (correspondent host 10.77.0.100), inet (the internet router), v1 (visited
network 192.168.101.0/24, routed), v2 (visited network 192.168.102.0/24 behind
NAT as 172.31.2.2) and mn (the mobile node: one interface "uplink" whose
address comes only from DHCP; at home it is always 10.77.0.10).
Each LAN router runs dnsmasq; the mobile node runs busybox udhcpc with the
lab's own script (it never touches /etc/resolv.conf).
"""

EPILOG = """\
commands:
  up          build the lab (tearing down leftovers of the same prefix first);
              the mobile node starts attached to no network
  down        remove everything of the prefix: processes, nft tables,
              namespaces, the work directory (also after a crash)
  move NET    move the mobile node to NET (one of: {nets}) and wait for its
              DHCP address
  detach      take the mobile node off every network
  status      namespaces, addresses, where the mobile node is, processes

examples:
  python -m smobility.lab up
  python -m smobility.lab move v2
  ip netns exec smob-mn ping -c1 172.31.0.2
  python -m smobility.lab status
  python -m smobility.lab down
"""


def _parser() -> argparse.ArgumentParser:
    """The command line: a command, and --prefix/--workdir before or after it."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: an option given after the command must not be reset to its
    # default by the subcommand's parser when it was given before the command.
    common.add_argument(
        "--prefix",
        default=argparse.SUPPRESS,
        help="name prefix of the lab's namespaces and nft table (default: smob)",
    )
    common.add_argument(
        "--workdir",
        type=Path,
        default=argparse.SUPPRESS,
        help="pid files, leases and logs (default: /run/<prefix>-lab)",
    )
    parser = argparse.ArgumentParser(
        prog="python -m smobility.lab",
        description=DESCRIPTION,
        epilog=EPILOG.format(nets=", ".join(net.name for net in TOPOLOGY.networks)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("up", parents=[common], help="build the lab")
    sub.add_parser("down", parents=[common], help="remove the lab")
    move = sub.add_parser("move", parents=[common], help="move the mobile node to a network")
    move.add_argument("net", choices=[net.name for net in TOPOLOGY.networks])
    move.add_argument("--no-wait", action="store_true", help="do not wait for the new DHCP address")
    move.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the address")
    sub.add_parser("detach", parents=[common], help="take the mobile node off every network")
    sub.add_parser("status", parents=[common], help="show the lab")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one lab command; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        # Read with getattr: SUPPRESS leaves an option that was not given unset
        # (parents share their option objects, so no set_defaults() here).
        lab = Lab(prefix=getattr(args, "prefix", "smob"), workdir=getattr(args, "workdir", None))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        if args.command == "up":
            lab.up()
            print(f"lab {lab.prefix} up in {time.monotonic() - started:.2f} s")
        elif args.command == "down":
            lab.down()
            print(f"lab {lab.prefix} down in {time.monotonic() - started:.2f} s")
        elif args.command == "move":
            link = lab.move(args.net)
            if args.no_wait:
                print(f"moved to {args.net}: link change {link:.3f} s")
            else:
                address = lab.wait_address(args.net, timeout=args.timeout)
                print(
                    f"moved to {args.net}: link change {link:.3f} s, address {address} "
                    f"after {time.monotonic() - started:.3f} s"
                )
        elif args.command == "detach":
            lab.detach()
            print("detached")
        else:
            print(lab.status())
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
