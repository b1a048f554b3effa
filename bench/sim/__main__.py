"""python -m bench.sim [only=scaling,driver_memory,node_loss,shrink_grow,grow_from_2,no_capacity] [gpus=1,8,32,64]
[work=DIR] [results=DIR] [name=sim] [SETUP_FIELD=VALUE ...]

A Setup field given (nodes=8 gpus_per_node=1 frames=96 ...) runs the scenarios at that size; give such a run its own
name= so bench/results/sim.* keep the full-size figures."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

from . import elastic, report, scenarios
from .harness import ROOT, SimCluster

ALL = ("scaling", "driver_memory", "node_loss", "shrink_grow", "grow_from_2", "no_capacity")  # no_capacity last: it removes every node


def main(argv: list[str]) -> int:
    opts = dict(a.split("=", 1) for a in argv)
    only = opts.get("only", ",".join(ALL)).split(",")
    gpus = [int(g) for g in opts.get("gpus", "1,8,32,64").split(",")]
    work = Path(opts.get("work") or tempfile.mkdtemp(prefix="bench-sim-"))
    work.mkdir(parents=True, exist_ok=True)
    fields = {f.name: f.type for f in dataclasses.fields(scenarios.Setup)}
    setup = scenarios.Setup(**{k: (int if fields[k] == "int" else float)(v) for k, v in opts.items() if k in fields})
    name = opts.get("name", "sim")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench-sim: %(message)s", datefmt="%H:%M:%S")
    log = logging.getLogger("bench-sim")
    t0 = time.monotonic()
    # A stopped bench still removes its cluster and its driver (finally blocks); plain SIGTERM would skip them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    results_dir = Path(opts.get("results", ROOT / "bench" / "results"))
    results: dict = {"scaling": []}
    if set(only) != set(ALL) and (results_dir / f"{name}.json").is_file():
        results = json.loads((results_dir / f"{name}.json").read_text())  # re-run some scenarios, keep the others
        results["rerun"] = only
    if opts.get("label"):
        results["label"] = opts["label"]
    results.update({"setup": dataclasses.asdict(setup), "machine": f"{os.cpu_count()} cores, {platform.machine()}",
                    "work_dir": str(work)})
    if "scaling" in only:
        results["scaling"] = []

    def save():
        results["bench_s"] = time.monotonic() - t0
        report.write(results, results_dir, name)

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
        reference = next((r for r in results.get("scaling", []) if r["gpus"] == max(gpus) and r.get("exit") == 0), None)
        if "node_loss" in only and reference is None:
            results["node_loss_skipped"] = f"the uninterrupted {max(gpus)}-GPU run it is compared with did not finish"
        elif "node_loss" in only:
            log.info("node loss")
            results["node_loss"] = scenarios.node_loss(setup, cluster, work, reference)
            log.info("-> %s", results["node_loss"])
            save()
        for scenario in ("shrink_grow", "grow_from_2"):
            if scenario in only:
                log.info("%s", scenario.replace("_", " "))
                results[scenario] = getattr(elastic, scenario)(setup, cluster, work)
                log.info("-> %s", results[scenario])
                save()
        if "no_capacity" in only:
            log.info("no capacity")
            results["no_capacity"] = scenarios.no_capacity(setup, cluster, work)
            log.info("-> %s", results["no_capacity"])
            save()
    finally:
        cluster.shutdown()
        save()
    log.info("wrote %s/%s.{json,md} in %.0f s", results_dir, name, time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
