"""python -m bench.sim [only=scaling,node_loss,no_capacity,driver_memory] [gpus=1,8,32,64] [work=DIR]"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from . import report, scenarios
from .harness import ROOT, SimCluster

ALL = ("scaling", "driver_memory", "node_loss", "no_capacity")  # no_capacity last: it removes every node


def main(argv: list[str]) -> int:
    opts = dict(a.split("=", 1) for a in argv)
    only = opts.get("only", ",".join(ALL)).split(",")
    gpus = [int(g) for g in opts.get("gpus", "1,8,32,64").split(",")]
    work = Path(opts.get("work") or tempfile.mkdtemp(prefix="bench-sim-"))
    work.mkdir(parents=True, exist_ok=True)
    setup = scenarios.Setup()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench-sim: %(message)s", datefmt="%H:%M:%S")
    log = logging.getLogger("bench-sim")
    t0 = time.monotonic()
    results: dict = {"setup": dataclasses.asdict(setup), "machine": f"{os.cpu_count()} cores, {platform.machine()}",
                     "scaling": [], "work_dir": str(work)}

    def save():
        results["bench_s"] = time.monotonic() - t0
        report.write(results, Path(opts.get("results", ROOT / "bench" / "results")))

    log.info("starting %d nodes x %d GPUs", setup.nodes, setup.gpus_per_node)
    cluster = SimCluster(setup.nodes, setup.gpus_per_node)
    try:
        if "scaling" in only:
            for g in gpus:
                log.info("scaling: %d GPUs", g)
                results["scaling"].append(scenarios.scaling(setup, cluster, work, g))
                log.info("-> %s", {k: v for k, v in results["scaling"][-1].items() if k != "iterations"})
                save()
        if "driver_memory" in only:
            log.info("driver memory: %d frames", setup.rss_frames)
            results["driver_memory"] = scenarios.driver_memory(setup, cluster, work)
            log.info("-> %s", results["driver_memory"])
            save()
        reference = next((r for r in results["scaling"] if r["gpus"] == max(gpus) and r.get("exit") == 0), None)
        if "node_loss" in only and reference is not None:
            log.info("node loss")
            results["node_loss"] = scenarios.node_loss(setup, cluster, work, reference)
            log.info("-> %s", results["node_loss"])
            save()
        if "no_capacity" in only:
            log.info("no capacity")
            results["no_capacity"] = scenarios.no_capacity(setup, cluster, work)
            log.info("-> %s", results["no_capacity"])
            save()
    finally:
        cluster.shutdown()
        save()
    log.info("wrote bench/results/sim.{json,md} in %.0f s", time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
