# -*- test-case-name: tests.test_packaging -*-
"""
twistd plugins for smobility: one ServiceMaker per role.

A ServiceMaker only names its tap module, so importing this file (which
C{twistd --help} does for every plugin) stays cheap: the tap module is
imported only when its subcommand runs.
"""

from __future__ import annotations

from twisted.application.service import ServiceMaker

smobilityHome = ServiceMaker(
    "smobility home agent",
    "smobility.services.home_tap",
    "smobility home agent: registrations, bindings and tunnels for roaming clients.",
    "smobility-home",
)
"""The C{twistd smobility-home} subcommand."""

smobilityRelay = ServiceMaker(
    "smobility relay",
    "smobility.services.relay_tap",
    "smobility relay / foreign agent: forwards registrations and tunnels to the home agent.",
    "smobility-relay",
)
"""The C{twistd smobility-relay} subcommand."""

smobilityMux = ServiceMaker(
    "smobility multiplexer",
    "smobility.services.mux_tap",
    "smobility HTTP(S) multiplexer with SOCKS5 ingress: carries tunnels through web proxies.",
    "smobility-mux",
)
"""The C{twistd smobility-mux} subcommand."""

smobilityClient = ServiceMaker(
    "smobility client",
    "smobility.services.client_tap",
    "smobility roaming client: keeps its home address across networks.",
    "smobility-client",
)
"""The C{twistd smobility-client} subcommand."""
