"""The Ray connection every Ray user of emobridge shares (grid cells, sharded feature
extraction): address checks, the optional import, and one session context.

Ray is optional (``pip install emobridge[ray]``) and imported only when used. This module
sits below ``features`` and ``experiments`` so that neither reaches into the other.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from collections.abc import Iterator
from typing import Any

from emobridge.errors import ConfigError

__all__ = ["ADDRESS_RE", "RAY_MISSING", "check_address", "check_reachable", "import_ray",
           "ray_session"]

RAY_MISSING = "--executor ray needs the ray extra: pip install emobridge[ray]"
#: ``auto`` (the cluster this node belongs to), ``ray://HOST:PORT`` (Ray client) or
#: ``HOST:PORT`` (the head's GCS address)
ADDRESS_RE = re.compile(r"^(auto|ray://[A-Za-z0-9_.\-\[\]:]+:\d+|[A-Za-z0-9_.\-\[\]:]+:\d+)$")


def check_address(address: str | None) -> str | None:
    """``address`` if it is a Ray address emobridge accepts, else :class:`ConfigError`."""
    if address is None:
        return None
    if not ADDRESS_RE.match(address):
        raise ConfigError(f"--address {address!r}: expected auto, ray://HOST:PORT or "
                          "HOST:PORT")
    return address


#: The HTTP/2 client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS and its
#: client server both are) answers with a SETTINGS frame of its own at once.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_H2_SETTINGS = 0x04


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Refuse a ``HOST:PORT`` / ``ray://HOST:PORT`` address that nothing answers on, or
    whose server is not a gRPC server, within ``timeout_s`` (``ray.init`` itself retries
    for minutes, or 25 s against a port that accepts connections without Ray behind it).
    With TLS (``RAY_USE_TLS=1``) only the connection is checked."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        conn = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s)
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: "
                          f"{exc.strerror or exc}") from None
    with conn:
        if os.environ.get("RAY_USE_TLS", "0").strip() not in ("", "0"):
            return
        try:
            conn.sendall(_H2_PREFACE)
            frame = conn.recv(9)
        except OSError:  # a timeout, or a server that hung up
            frame = b""
    if len(frame) < 9 or frame[3] != _H2_SETTINGS:
        raise ConfigError(f"{address} accepts connections but does not answer as a Ray "
                          f"cluster (no gRPC server there within {timeout_s:g} s): give the "
                          "head's GCS port (6379 by default) or ray://HOST:10001 for the "
                          "Ray client")


def import_ray() -> Any:
    """The ``ray`` module, or one :class:`ConfigError` line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Yield the ``ray`` module connected to a cluster.

    An already initialised Ray is used as it is. Otherwise ``address`` connects to a running
    cluster, and no address starts a private local instance with ``num_cpus`` CPUs; either
    is shut down on exit.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    check_address(address)
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address is None:
        options["num_cpus"] = num_cpus
    else:
        check_reachable(address)
        options["address"] = address
    try:
        ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ConfigError(f"cannot connect to {where}: {exc}".splitlines()[0]) from None
    try:
        yield ray
    finally:
        ray.shutdown()
