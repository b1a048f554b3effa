"""bench/results/sim.{json,md}: the measurements, and the issue's targets beside them (reported, not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from storyadapter.atomic import replacing

TARGET_EFFICIENCY = 0.90  # on 64 simulated GPUs, 10% jitter, one node 1.5x slower
TARGET_RSS_MB = 1024  # driver peak at 5,000 frames, outputs included


def _f(v, fmt="{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def _status(r: dict) -> str:
    if r.get("hung"):
        return "**hung** (killed at the hard timeout)"
    return "ok" if r.get("exit") == 0 else f"exit {r.get('exit')}: {r.get('error') or ''}"


def markdown(results: dict) -> str:
    s = results["setup"]
    lines = [
        "# Simulated cluster benchmark (`make bench-sim`)",
        "",
        f"{s['nodes']} nodes x {s['gpus_per_node']} fake GPUs (`ray.cluster_utils.Cluster`) on {results['machine']}; "
        f"model=sim driven by `python -m storyadapter.launch ... cluster=ray`. Frame times jitter by +-{s['jitter']:.0%}; "
        f"{s['straggler_share']:.3g} of the GPU nodes are {s['slowdown']}x slower. Bench time {results['bench_s']:.0f} s"
        + (f" (re-running only {', '.join(results['rerun'])}; the other sections are from the previous run)." if results.get("rerun") else "."),
        "",
    ]
    if results.get("label"):
        lines += [f"**{results['label']}**", ""]
    if results.get("scaling"):
        lines += [
            "## Scaling",
            "",
            f"{s['frames']} frames, 1 + {s['iterations']} iterations. The frame time scales with the GPU count so each "
            f"iteration ideally takes {s['iteration_s']:g} s. Efficiency = summed worker busy time / (GPUs x wall) over the "
            f"refinement iterations; the ceiling is what greedy scheduling of the same batches with zero overhead gets "
            f"(bench/sim/ideal.py: the iteration barrier, and the slow node's last batch). Target: >= {TARGET_EFFICIENCY} on 64 GPUs.",
            "",
            "| GPUs | frame time (s) | slow GPUs | refinement wall (s) | efficiency | barrier ceiling | driver RSS (MB) | status |",
            "|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
    for r in results.get("scaling", []):
        lines.append(f"| {r['gpus']} | {r['frame_s']:.4f} | {r.get('slow_gpus', '-')} | {_f(r.get('refinement_wall_s'))} | "
                     f"{_f(r.get('efficiency'), '{:.3f}')} | {_f(r.get('barrier_ceiling'), '{:.3f}')} | "
                     f"{_f(r.get('driver_peak_rss_mb'), '{:.0f}')} | {_status(r)} |")
    n = results.get("node_loss")
    if n:
        lines += ["", "## Node loss", "",
                  f"One node of {s['nodes']} removed (a crash, not a drain) once {s['loss_at']:.0%} of iteration 1 was on disk, "
                  f"{n['gpus']} GPUs, frame time {n['frame_s']:.4f} s. Target: costs at most the lost node's in-flight batches "
                  "plus the deadline.", "",
                  f"- status: {_status(n)}",
                  f"- removed {_f(n.get('removed_at_s'), '{:.1f}')} s after the launch; rendering took "
                  f"{_f(n.get('render_wall_s'), '{:.1f}')} s (all iterations) against {_f(n.get('reference_render_wall_s'), '{:.1f}')} s "
                  f"uninterrupted: time lost {_f(n.get('time_lost_s'), '{:.1f}')} s",
                  f"- manifest equal to the uninterrupted run's: {n.get('manifest_equal', '-')}",
                  f"- batches rendered twice: {n['batches_rendered_twice']}; batches started on the lost node from iteration 1: "
                  f"{n['batches_started_on_lost_node_from_iteration_1']}"]
        if "frames_done_when_stopped" in n:
            lines.append(f"- frames on disk when stopped, per iteration: {n['frames_done_when_stopped']}")
    if results.get("node_loss_skipped"):
        lines += ["", "## Node loss", "", f"Not run: {results['node_loss_skipped']}."]
    c = results.get("no_capacity")
    if c:
        lines += ["", "## No capacity", "",
                  f"Every worker node removed during iteration 0 ({c['gpus_before']} GPUs before). Target: the driver exits "
                  f"with one line within its deadline (cluster.capacity_timeout_s={c.get('capacity_timeout_s', '-')} s here, plus the "
                  f"time Ray takes to report the actors lost). Hard timeout: {c['hard_timeout_after_removal_s']:.0f} s after the removal.", "",
                  f"- status: {_status(c)}",
                  f"- exit {c['exit']} {_f(c.get('exit_after_removal_s'), '{:.1f}')} s after the removal; error lines: "
                  f"{c['error_lines']}; traceback: {c['traceback']}",
                  f"- error: `{c.get('error') or '-'}`",
                  f"- frames of iteration 0 kept on disk: {c['frames_kept']}"]
    lines += elastic_sections(results)
    m = results.get("driver_memory")
    if m:
        lines += ["", "## Driver memory", "",
                  f"{m['frames']} frames, 1 + {s['iterations']} iterations, outputs included (comic, GIF, gallery, metrics), "
                  f"{m['gpus']} GPUs, frame time {m['frame_s']} s. Target: peak RSS <= {TARGET_RSS_MB} MB.", "",
                  f"- status: {_status(m)}",
                  f"- driver peak RSS: {_f(m.get('driver_peak_rss_mb'), '{:.0f}')} MB; wall {_f(m.get('wall_s'), '{:.1f}')} s"]
    return "\n".join(lines) + "\n"


def elastic_sections(results: dict) -> list[str]:
    """Issue 24: the cluster shrinks and grows back; the render starts small and the cluster grows."""
    shapes = {"shrink_grow": lambda r: (f"{r['nodes']} nodes; {r['lost']} removed (a crash) once {r['loss_at']:.0%} of "
                                        f"iteration 1 was on disk, added back once {r['regrow_at']:.0%} was"),
              "grow_from_2": lambda r: (f"The render started on {r['nodes_at_start']} nodes with cluster.workers for "
                                        f"{r['nodes']}; the others added once iteration 1 had begun")}
    lines = []
    for key, shape in shapes.items():
        r = results.get(key)
        if not r:
            continue
        lines += ["", f"## {key.replace('_', ' ').capitalize()}", "",
                  f"{shape(r)}; {r['gpus']} GPUs wanted, frame time {r['frame_s']:.4f} s. Efficiency = worker busy time / "
                  "(GPUs x wall) from the growth to the end of rendering; the ceiling: greedy scheduling of the batches "
                  "not yet started then, on every GPU, zero overhead (bench/sim/elastic.py).", "",
                  f"- status: {_status(r)}",
                  f"- after the growth: {_f(r.get('after_growth_wall_s'), '{:.1f}')} s, efficiency "
                  f"{_f(r.get('efficiency_after_growth'), '{:.3f}')} (ceiling {_f(r.get('ceiling_after_growth'), '{:.3f}')})",
                  f"- a new node's first batch, seconds after it was added: {r.get('new_node_first_batch_s', '-')}",
                  *([f"- from the loss to the cluster whole again: {r['removed_to_grown_s']:.1f} s"]
                    if r.get("removed_to_grown_s") is not None else []),
                  f"- rendering took {_f(r.get('render_wall_s'), '{:.1f}')} s (all iterations)"]
    return lines


def write(results: dict, directory: Path, name: str = "sim") -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    js, md = directory / f"{name}.json", directory / f"{name}.md"
    with replacing(js) as tmp:
        tmp.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    with replacing(md) as tmp:
        tmp.write_text(markdown(results), encoding="utf-8")
    return js, md
