"""A simulated cluster on one machine and the product's own launcher driving it.

Nodes are `ray.cluster_utils.Cluster` nodes (one raylet each) carrying fake GPUs; the driver is
`python -m storyadapter.launch ... model=sim cluster=ray cluster.address=<head>` in a child process, so the numbers
are the product's, its peak RSS comes from wait4, and a hung run can be killed at a hard timeout.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class SimCluster:
    def __init__(self, nodes: int, gpus_per_node: int):
        from ray.cluster_utils import Cluster

        # The head carries no GPU: render actors land only on the worker nodes, which can then all be removed.
        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
        self.gpus_per_node = gpus_per_node
        for _ in range(nodes):
            self.cluster.add_node(num_cpus=gpus_per_node, num_gpus=gpus_per_node)
        self.cluster.wait_for_nodes()

    @property
    def address(self) -> str:
        return self.cluster.address

    @property
    def worker_nodes(self) -> list:
        return list(self.cluster.worker_nodes)

    def remove(self, node) -> None:
        self.cluster.remove_node(node, allow_graceful=False)  # as a crash, not a drain

    def shutdown(self) -> None:
        self.cluster.shutdown()


def write_story(path: Path, frames: int) -> Path:
    places = ("harbour", "lighthouse", "market", "forest", "bridge", "library", "hill", "station")
    lines = [f"the keeper walks past the {places[i % len(places)]}, scene {i}" for i in range(frames)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@dataclass
class DriverRun:
    """One launcher process. `poll()` reaps it with wait4, which also gives its peak RSS."""

    args: list[str]
    log_path: Path
    proc: subprocess.Popen = field(init=False)
    started: float = field(init=False)
    returncode: int | None = None
    wall_s: float | None = None
    peak_rss_mb: float | None = None
    killed: bool = False

    def __post_init__(self):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "RAY_DEDUP_LOGS": "0"}
        self._log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in poll/kill
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "storyadapter.launch", *self.args], cwd=ROOT, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def poll(self) -> bool:
        """True once the process has exited (and been reaped)."""
        if self.returncode is not None:
            return True
        pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
        if pid == 0:
            return False
        self.proc.returncode = self.returncode = os.waitstatus_to_exitcode(status)
        self.wall_s = time.monotonic() - self.started
        self.peak_rss_mb = usage.ru_maxrss / 1024  # KiB on Linux
        self._log.close()
        return True

    def wait(self, timeout_s: float, every=None, working=None, startup_s: float = 300.0) -> bool:
        """Wait up to timeout_s of work, calling every() between polls; on timeout kill it. True if it exited by itself.

        Starting the actors is not counted against timeout_s (dozens of processes on 2 shared cores take minutes):
        the clock starts once working() is true, or after startup_s.
        """
        try:
            begun = None
            while not self.poll():
                now = time.monotonic()
                if begun is None and (working is None or working() or now - self.started > startup_s):
                    begun = now
                if begun is not None and now - begun > timeout_s:
                    self.kill()
                    return False
                if every is not None:
                    every()
                time.sleep(0.1)
            return True
        except BaseException:
            self.kill()  # never leave a driver behind when the bench itself is stopped
            raise

    def kill(self) -> None:
        self.killed = True
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while not self.poll():
            time.sleep(0.05)

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def error_lines(self) -> list[str]:
        return [ln for ln in self.log.splitlines() if ln.startswith("error:")]


_DONE = re.compile(r"iteration (\d+)/(\d+) done: (\d+) frames in ([\d.]+) s .*?workers busy ([\d.]+) s")


def iteration_stats(log: str) -> dict[int, dict]:
    """The driver's per-iteration line: wall and summed worker busy time (storyadapter/engine/driver.py)."""
    return {int(m[1]): {"frames": int(m[3]), "wall_s": float(m[4]), "busy_s": float(m[5])} for m in _DONE.finditer(log)}


def frames_on_disk(out_dir: Path, iteration: int) -> int:
    d = out_dir / f"iter_{iteration:02d}"
    return sum(1 for _ in d.glob("frame_*.png")) if d.is_dir() else 0


def read_trace(trace_dir: Path) -> list[dict]:
    """The batches started (sim.py's trace). Dot-files are atomic writes in progress, or cut short by a lost node."""
    paths = sorted(p for p in trace_dir.glob("*.json") if not p.name.startswith(".")) if trace_dir.is_dir() else []
    return [json.loads(p.read_text()) for p in paths]


def add_node(cluster: SimCluster):
    """One more GPU node of the same size, registered before this returns."""
    node = cluster.cluster.add_node(num_cpus=cluster.gpus_per_node, num_gpus=cluster.gpus_per_node)
    cluster.cluster.wait_for_nodes()
    return node
