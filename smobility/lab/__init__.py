# -*- test-case-name: tests.test_lab -*-
"""
The namespace lab: a home LAN, the internet, visited networks and a mobile node.

The demo, the integration tests and the benchmarks all use it::

    with Lab(prefix="smob") as lab:
        lab.move("v2")
        lab.wait_address("v2")          # a DHCP address in 192.168.102.0/24
        lab.exec("mn", "ping", "-c1", Lab.HA_PUBLIC)

C{python -m smobility.lab up|down|move NET|detach|status} does the same by
hand.  See doc/lab.md.
"""

from __future__ import annotations

from smobility.lab.namespaces import DhcpLease, Lab, LabCommandError, LabError, LabProcess
from smobility.lab.topology import TOPOLOGY, Topology

__all__ = [
    "TOPOLOGY",
    "DhcpLease",
    "Lab",
    "LabCommandError",
    "LabError",
    "LabProcess",
    "Topology",
]
