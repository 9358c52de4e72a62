"""TCP streams for the roaming demo and the integration tests.

Runs as its own process inside a lab namespace:

    python -m smobility.demo.streams server --bind IP --port P --stats FILE
    python -m smobility.demo.streams client --bind SRC --connect IP --port P --stats FILE
    python -m smobility.demo.streams probe --connect IP --port P [--timeout S]

The client sends paced data until SIGTERM; the server receives it and records
every gap between arrivals.  On SIGTERM each writes its statistics as JSON:
bytes moved, the longest gap (ms), connection resets seen, and whether the
connection was still up at the end.  The server also answers probes: a new
connection that sends ``probe\\n`` gets ``ok\\n`` back (an inbound check).
"""

from __future__ import annotations

import argparse
import errno
import json
import selectors
import signal
import socket
import sys
import time
from typing import Any

_stop = False


def _on_term(signum: int, frame: object) -> None:
    global _stop
    _stop = True


def _write(path: str, stats: dict[str, Any]) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(stats, f)
    import os

    os.replace(path + ".tmp", path)


def server(bind: str, port: int, stats_path: str) -> int:
    """Accept the data connection and probes; track arrival gaps."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((bind, port))
    listener.listen(16)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "listen")
    stats: dict[str, Any] = {
        "role": "server",
        "bytes": 0,
        "max_gap_ms": 0.0,
        "resets": 0,
        "connections": 0,
        "probes": 0,
        "open_at_end": False,
        "gaps_over_100ms": [],
    }
    data_conn: socket.socket | None = None
    last: float | None = None
    while not _stop:
        for key, _ in sel.select(timeout=0.2):
            if key.data == "listen":
                conn, _addr = listener.accept()
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ, "new")
                continue
            conn = key.fileobj  # type: ignore[assignment]
            try:
                chunk = conn.recv(65536)
            except ConnectionResetError:
                stats["resets"] += 1
                chunk = b""
            except BlockingIOError:
                continue
            if key.data == "new":
                if chunk.startswith(b"probe"):
                    stats["probes"] += 1
                    try:
                        conn.sendall(b"ok\n")
                    except OSError:
                        pass
                    sel.unregister(conn)
                    conn.close()
                    continue
                sel.modify(conn, selectors.EVENT_READ, "data")
                data_conn = conn
                stats["connections"] += 1
            if not chunk:
                sel.unregister(conn)
                conn.close()
                if conn is data_conn:
                    data_conn = None
                continue
            now = time.monotonic()
            if last is not None and conn is data_conn:
                gap = (now - last) * 1000
                if gap > stats["max_gap_ms"]:
                    stats["max_gap_ms"] = round(gap, 1)
                if gap > 100:
                    stats["gaps_over_100ms"].append([round(time.time(), 3), round(gap, 1)])
            last = now
            stats["bytes"] += len(chunk)
        _write(stats_path, stats)
    stats["open_at_end"] = data_conn is not None
    _write(stats_path, stats)
    return 0


def client(bind: str, host: str, port: int, stats_path: str, rate_kbps: int) -> int:
    """Connect from ``bind`` and send paced data until told to stop."""
    stats: dict[str, Any] = {
        "role": "client",
        "bytes": 0,
        "resets": 0,
        "errors": [],
        "open_at_end": False,
    }
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((bind, 0))
    deadline = time.monotonic() + 20
    while True:
        try:
            sock.connect((host, port))
            break
        except OSError as e:
            if time.monotonic() > deadline:
                stats["errors"].append(f"connect: {e}")
                _write(stats_path, stats)
                return 1
            time.sleep(0.2)
    sock.setblocking(False)
    chunk = b"s" * 1024
    interval = len(chunk) * 8 / (rate_kbps * 1000)
    next_send = time.monotonic()
    pending = b""
    ok = True
    while not _stop and ok:
        now = time.monotonic()
        if now >= next_send:
            pending += chunk
            next_send += interval
            if next_send < now - 1:  # do not burst after a long stall
                next_send = now
        if pending:
            try:
                sent = sock.send(pending)
                stats["bytes"] += sent
                pending = pending[sent:]
            except BlockingIOError:
                pass
            except ConnectionResetError:
                stats["resets"] += 1
                ok = False
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.ENOBUFS):
                    stats["errors"].append(str(e))
                    ok = False
        if len(pending) > 1 << 20:
            pending = pending[-(1 << 20) :]
        time.sleep(min(0.005, max(0.0, next_send - time.monotonic())))
        stats["open_at_end"] = ok
        if int(now * 5) != int(time.monotonic() * 5):
            _write(stats_path, stats)
    stats["open_at_end"] = ok
    _write(stats_path, stats)
    sock.close()
    return 0 if ok else 1


def probe(host: str, port: int, timeout: float) -> int:
    """Open a new connection and expect ``ok``: the inbound reachability check."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"probe\n")
            s.settimeout(timeout)
            answer = s.recv(16)
    except OSError as e:
        print(f"probe failed: {e}")
        return 1
    return 0 if answer.startswith(b"ok") else 1


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(prog="python -m smobility.demo.streams", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--bind", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--stats", required=True)
    c = sub.add_parser("client")
    c.add_argument("--bind", required=True)
    c.add_argument("--connect", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--stats", required=True)
    c.add_argument("--rate-kbps", type=int, default=800)
    pr = sub.add_parser("probe")
    pr.add_argument("--connect", required=True)
    pr.add_argument("--port", type=int, required=True)
    pr.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    if args.cmd == "server":
        return server(args.bind, args.port, args.stats)
    if args.cmd == "client":
        return client(args.bind, args.connect, args.port, args.stats, args.rate_kbps)
    return probe(args.connect, args.port, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
