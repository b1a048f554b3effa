"""The Ray runtime `cluster=local` starts inside the launcher, and its clean end.

- Token authentication stays on (Ray's default for a new local cluster); only Ray's notice saying so on
  every run is dropped (other warnings from the same logger still show).
- Ray's session folder (logs, sockets, spilled objects) goes to a temporary folder of its own, removed
  when the run ends, instead of piling up under /tmp/ray. RAY_TMPDIR, when set, keeps Ray's own layout
  (and its logs) for debugging.
- Ray's gRPC servers (GCS, raylet, workers) listen on every interface: Ray 2.60 hard-codes 0.0.0.0 and
  refuses a loopback node address. The token is what keeps other machines out.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile

_session_root: str | None = None
_AUTH_NOTICE = "Token authentication is enabled for this Ray cluster"


def _not_the_auth_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_AUTH_NOTICE)


def start(**init_args) -> None:
    """ray.init(**init_args) for a local Ray of this run's own."""
    import ray

    global _session_root
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_not_the_auth_notice)
    if not os.environ.get("RAY_TMPDIR"):
        if _session_root is None:
            _session_root = tempfile.mkdtemp(prefix="storyadapter-ray-")  # short: Ray's socket paths must fit 107 bytes
            atexit.register(stop)  # an exit that skips the caller's shutdown still removes it
        init_args["_temp_dir"] = _session_root
    ray.init(**init_args)


def stop() -> None:
    """Shut Ray down (its actors with it) and remove the session folder `start` made."""
    import ray

    global _session_root
    ray.shutdown()
    if _session_root is not None:
        shutil.rmtree(_session_root, ignore_errors=True)
        atexit.unregister(stop)
        _session_root = None
