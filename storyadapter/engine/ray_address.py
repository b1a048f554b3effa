"""Where `cluster=ray` connects, checked before `ray.init`: given a wrong address (a host that does not
resolve, a port nobody listens on), Ray retries for minutes and prints the same warning again and again.
A TCP connection to the address within `cluster.connect_timeout_s` tells a typo from a cluster in seconds.
"""

from __future__ import annotations

import os
import socket

from ..errors import UserError

RAY_CLIENT_PREFIX = "ray://"


def target(address: str | None) -> str:
    """What ray.init is given: cluster.address, else RAY_ADDRESS, else "auto" (the last `ray start` here)."""
    return address or os.environ.get("RAY_ADDRESS") or "auto"


def bootstrap_address(address: str) -> str | None:
    """host:port that `address` names; for "auto", the cluster the last `ray start` on this machine recorded,
    None when there is none."""
    if address != "auto":
        return address.removeprefix(RAY_CLIENT_PREFIX)
    from ray._private import services  # Ray's own lookup, so "auto" means here what it means to ray.init

    try:
        return services.canonicalize_bootstrap_address("auto")
    except (ConnectionError, ValueError):
        return None


def check_reachable(address: str, timeout_s: float) -> str:
    """The host:port to join; raises UserError in one line, within `timeout_s`, when nothing listens there."""
    hostport = bootstrap_address(address)
    if hostport is None:
        raise UserError("cluster=ray: no Ray cluster was started on this machine (no `ray start --head` found); "
                        "start one, or pass cluster.address=HOST:6379 (or cluster=local to start a Ray of its own)")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"cluster.address={address}: not HOST:PORT (for example cluster.address=10.0.0.5:6379)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except socket.gaierror:
        raise UserError(f"cluster.address={address}: the host {host!r} does not resolve; "
                        "pass the head node's name or IP (ray start --head prints it)") from None
    except TimeoutError:
        raise UserError(f"cluster.address={address}: no answer within cluster.connect_timeout_s={timeout_s:g} s; "
                        "is the head node up, and its port open to this machine?") from None
    except OSError as exc:
        raise UserError(f"cluster.address={address}: nothing listens at {hostport} ({exc.strerror or exc}); "
                        "start the head with `ray start --head`, or fix the address") from None
    return hostport
