"""The throughput benchmark's report: headline ratios against their targets, the markdown tables, the plot, and
the files bench/results/<name>.{json,md,png}."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from bench.harness import BenchConfig, median_round

TARGETS = {
    "engine_1_vs_plain": (">=", 0.95),
    "engine_1_vs_upstream": (">=", 1.10),  # "clearly faster"
    "engine_1_vs_plain_refinement": (">=", 0.95),
    "engine_1_vs_upstream_refinement": (">=", 1.10),
    "growth_400_over_25": ("<=", 1.30),
    "driver_overhead": ("<", 0.05),
    "driver_overhead_no_actor_rendering": ("<", 0.05),
    "driver_overhead_long_story": ("<", 0.05),
}


def _paired(per_round: list[float], best: float) -> dict:
    return {"min": min(per_round), "max": max(per_round), "best_rounds": best, "rounds": per_round}


def ratios(result: dict) -> tuple[dict, dict]:
    """Headline values and their spread over rounds.

    A throughput ratio is the median over rounds of the two loops' ratio within one round: the rounds are
    interleaved, so a change in the machine's load hits both loops of a round alike, which the ratio of
    each loop's separately chosen best round does not (that one is kept as `best_rounds`).
    `*_refinement` use refinement iterations only. Driver overhead is the median round's.
    """
    loops = result["loops"]
    all_name = f"engine-{result['workers_all']}"
    out, spread = {}, {}

    def paired(key: str, a: str, b: str, field: str = "fps") -> None:
        per_round = [ra[field] / rb[field] for ra, rb in zip(loops[a]["rounds"], loops[b]["rounds"])]
        out[key] = statistics.median(per_round)
        spread[key] = _paired(per_round, loops[a]["best"][field] / loops[b]["best"][field])

    pairs = {"engine_1_vs_plain": ("engine-1", "plain"), "engine_1_vs_upstream": ("engine-1", "upstream"),
             "engine_all_vs_upstream": (all_name, "upstream")}
    if "engine-1" not in loops:  # no Ray: what the plain loop (the engine's worker, in process) gains on upstream
        pairs = {"plain_vs_upstream": ("plain", "upstream")}
    if "upstream-all-cores" in loops:
        pairs["engine_all_vs_upstream_all_cores"] = (all_name, "upstream-all-cores")
    for key, (a, b) in pairs.items():
        if a not in loops or b not in loops:  # a run of some `parts` only
            continue
        paired(key, a, b)
        if "refine_fps" in loops[a]["best"]:
            paired(f"{key}_refinement", a, b, "refine_fps")
    growth = result.get("growth") or {}
    for kind in ("engine", "upstream"):
        rows = {r["n"]: r for r in growth.get(kind, [])}
        if rows:
            lo, hi = min(rows), max(rows)
            key = f"growth_{hi}_over_{lo}" if kind == "engine" else f"upstream_growth_{hi}_over_{lo}"
            # Paired by repetition (N=lo and N=hi measured seconds apart), like the throughput rounds.
            per_rep = [h["per_frame_s"] / l["per_frame_s"] for h, l in zip(rows[hi]["reps"], rows[lo]["reps"])]
            out[key] = statistics.median(per_rep)
            spread[key] = _paired(per_rep, rows[hi]["per_frame_s"] / rows[lo]["per_frame_s"])
    full = result.get("full_size_flops")
    if full:
        for kind in ("engine", "upstream"):
            rows = {int(n): v for n, v in full[kind].items()}
            lo, hi = min(rows), max(rows)
            out[f"full_size_flops_{kind}_{hi}_over_{lo}"] = rows[hi] / rows[lo]
    long = result.get("long_story")
    overheads = (("driver_overhead_no_actor_rendering", loops.get(all_name), "none_rendering_fraction"),
                 ("driver_overhead", loops.get(all_name), "idle_fraction"),
                 ("barrier_wait", loops.get(all_name), "barrier_fraction"),
                 ("driver_overhead_long_story", long, "idle_fraction"),
                 ("driver_overhead_engine_1", loops.get("engine-1") if all_name != "engine-1" else None, "idle_fraction"))
    for key, loop, field in overheads:
        if loop is not None and field in loop["best"]:
            per_round = [r[field] for r in loop["rounds"]]
            out[key] = statistics.median(per_round)
            spread[key] = _paired(per_round, min(per_round))
    return out, spread


def met(key: str, value: float) -> str:
    if key not in TARGETS:
        return ""
    op, bound = TARGETS[key]
    ok = {">=": value >= bound, "<=": value <= bound, "<": value < bound}[op]
    return "yes" if ok else "**no**"


def markdown(result: dict) -> str:
    cfg, env, r = result["config"], result["environment"], result["ratios"]
    device = env.get("gpu", f"CPU ({env['cpu_count']} cores)")
    if env.get("gpu"):
        device += f" (driver {env.get('driver')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')})"
    lines = [
        f"# Throughput benchmark: `{cfg['name']}`",
        "",
        f"{device}; model `{cfg['model']}` {cfg['dtype']}, {cfg['size']}x{cfg['size']}, {cfg['steps']} steps, "
        f"CFG {cfg['guidance_scale']}; story of {cfg['frames']} frames, iteration 0 + {cfg['iterations']} refinement "
        f"iteration(s); {cfg['rounds']} interleaved round(s) per loop after a warm-up. A throughput ratio is the median "
        f"over rounds of the two loops' ratio within a round (run back to back, so under nearly the same load); "
        f"the range over rounds and the ratio of each loop's best round are beside it"
        + (f"; {cfg['threads']} torch thread(s) per worker" if cfg["device"] == "cpu" else "")
        + ("; torch.compile" if cfg["compile"] else "") + ".",
        f"torch {env['torch']}, diffusers {env['diffusers']}, transformers {env['transformers']}, ray {env['ray']}; {env['date']}; "
        f"load average (1/5/15 min) at start {'/'.join(f'{x:.1f}' for x in env['loadavg_start'])}, at end "
        f"{'/'.join(f'{x:.1f}' for x in env.get('loadavg_end', ()))} on {env['cpu_count']} cores (other processes share this machine).",
        "",
        "## Headline ratios (one run)",
        "",
        *(["Ray was not importable here: the engine loops were skipped (the plain loop is the engine's worker "
           "in process).", ""] if result.get("engine_skipped") else []),
        "| ratio | value | range over rounds | best round(s) | target | met |",
        "|---|---:|---:|---:|---|---|",
    ]
    w = result["workers_all"]
    label = {
        "engine_1_vs_plain": "frames/s: engine 1 worker / plain in-process loop",
        "engine_1_vs_upstream": "frames/s: engine 1 worker / upstream-style loop",
        "engine_all_vs_upstream": f"frames/s: engine all workers ({w}) / upstream-style loop",
        "engine_all_vs_upstream_all_cores": f"frames/s: engine all workers ({w}) / upstream-style loop on all cores",
        "driver_overhead_no_actor_rendering": f"driver overhead, engine {w} worker(s): share of wall time with no actor rendering, median round",
        "driver_overhead": f"driver overhead, engine {w} worker(s), stricter: 1 - busy/(workers x wall), median round",
        "driver_overhead_long_story": f"same, stricter, on a {cfg.get('long_frames')}-frame story "
                                      f"({cfg.get('long_iterations')} refinement iteration(s))",
        "driver_overhead_engine_1": "driver overhead, engine 1 worker, median round",
        "barrier_wait": f"of which waiting at the iteration barrier for the last frames, engine {w} worker(s)",
        "plain_vs_upstream": "frames/s: plain in-process loop (the engine's worker, no Ray) / upstream-style loop",
    }
    for key, value in r.items():
        if key.endswith("_refinement"):
            text = label[key.removesuffix("_refinement")] + ", refinement iterations only"
        elif key.startswith("growth_"):
            text = f"engine per-frame time, N={key.split('_')[1]} / N={key.split('_')[3]}"
        elif key.startswith("upstream_growth_"):
            text = f"upstream per-frame time, N={key.split('_')[2]} / N={key.split('_')[4]}"
        elif key.startswith("full_size_flops_"):
            kind, hi, _, lo = key.removeprefix("full_size_flops_").split("_")
            text = (f"{kind} FLOPs per frame, full-size model at {result['full_size_flops']['size']} px, N={hi} / N={lo} "
                    f"(counted, not timed)")
        else:
            text = label.get(key, key)
        target_key = "growth_400_over_25" if key.startswith("growth_") else key
        target = TARGETS.get(target_key)
        share = "overhead" in key or key == "barrier_wait"

        def fmt(v: float) -> str:
            return f"{v:.1%}" if share else f"{v:.2f}x"

        tgt = "" if target is None else f"{target[0]} {target[1]:.0%}" if share else f"{target[0]} {target[1]:.2f}x"
        sp = result.get("ratio_spread", {}).get(key)
        rng, best = (f"{fmt(sp['min'])} - {fmt(sp['max'])}", fmt(sp["best_rounds"])) if sp else ("", "")
        lines.append(f"| {text} | {fmt(value)} | {rng} | {best} | {tgt} | {met(target_key, value)} |")

    lines += ["", "## Throughput", "",
              "| loop | workers | frames/s whole run: best | median (min) | frames/s refinement iterations: best | s/frame (best) | image-encoder passes | load/startup s |",
              "|---|---:|---:|---:|---:|---:|---|---:|"]
    n = cfg["frames"]
    for name, loop in result["loops"].items():
        m, med = loop["best"], loop["median"]
        if "image_encodes_per_refinement_iteration" in loop:
            enc = f"{loop['image_encodes_per_refinement_iteration']} per refinement iteration (N²={n * n})"
        else:
            enc = f"{loop['image_encodes_per_frame']:.0f} per frame ({n} per iteration)"
        startup = loop.get("startup_s", loop.get("load_s", 0.0))
        worst = min(rd["fps"] for rd in loop["rounds"])
        lines.append(f"| {name} | {loop['workers']} | {m['fps']:.3f} | {med['fps']:.3f} ({worst:.3f}) | "
                     f"{m.get('refine_fps', float('nan')):.3f} | {1 / m['fps']:.4f} | {enc} | {startup:.1f} |")

    growth = result.get("growth")
    if growth:
        mem = "peak CUDA MB" if cfg["device"].startswith("cuda") else "peak RSS MB"
        lines += ["", f"## Cost growth with story length (one refinement iteration, bank of N, {cfg['growth_sample']} sampled frames)", "",
                  f"| N | engine s/frame | engine set_references s (once per iteration) | engine {mem} | upstream s/frame | upstream {mem} | upstream / engine |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        up = {row["n"]: row for row in growth.get("upstream", [])}
        for row in growth["engine"]:
            u = up.get(row["n"], {})
            ratio = u.get("per_frame_s", float("nan")) / row["per_frame_s"]
            lines.append(f"| {row['n']} | {row['per_frame_s']:.4f} | {row['set_references_s']:.4f} | {row['peak_mb']:.0f} | "
                         f"{u.get('per_frame_s', float('nan')):.4f} | {u.get('peak_mb', float('nan')):.0f} | {ratio:.2f}x |")

    lines += ["", "## Driver overhead (engine runs: the round at the median idle share, the upper of the middle two "
              "for an even count)", "",
              "| engine | frames rendered | wall s | busy s (sum over workers) | no actor rendering | idle: 1 - busy/(workers x wall) | "
              "of which barrier wait | driver bank+manifest s | driver share of wall |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    engine_runs = [(name, loop) for name, loop in result["loops"].items() if name.startswith("engine")]
    if result.get("long_story"):
        engine_runs.append((result["long_story"]["loop"], result["long_story"]))
    for name, loop in engine_runs:
        if "busy_s" in loop["best"]:
            m = median_round(loop["rounds"], "idle_fraction")
            lines.append(f"| {name} | {m['frames']} | {m['wall_s']:.2f} | {m['busy_s']:.2f} | {m.get('none_rendering_fraction', 0.0):.1%} | "
                         f"{m['idle_fraction']:.1%} | {m.get('barrier_fraction', 0.0):.1%} | {m['driver_s']:.3f} | "
                         f"{m['driver_fraction']:.1%} |")

    flops = result.get("flops")
    if flops:
        lines += ["", "## FLOPs and achieved throughput", "",
                  "| what | GFLOP/frame | achieved TFLOP/s | of peak |", "|---|---:|---:|---:|"]
        for row in flops["rows"]:
            peak = f"{row['fraction_of_peak']:.1%}" if row.get("fraction_of_peak") is not None else "n/a"
            lines.append(f"| {row['what']} | {row['gflop_per_frame']:.2f} | {row['tflops']:.4f} | {peak} |")
        sf = (result.get("growth") or {}).get("story_frame_flops")
        if sf:
            cfg_steps = cfg["steps"]
            lines.append(f"\nEngine frame = {cfg_steps} x UNet step with CFG ({sf['unet_step'] / 1e9:.2f} GFLOP) + VAE decode "
                         f"({sf['vae_decode'] / 1e9:.2f}) + image encode ({sf['image_encode'] / 1e9:.3f}) + text "
                         f"({sf['text'] / 1e9:.3f}, once per run) + set_references ({sf['set_references'] / 1e9:.3f}, once "
                         f"per iteration) GFLOP.")
        if flops.get("peak_tflops"):
            lines.append(f"\nPeak: {flops['peak_tflops']:g} TFLOP/s per device (`peak_tflops=`).")
    full = result.get("full_size_flops")
    if full:
        lines += ["", f"## Full-size model (SDXL + IP-Adapter SDXL shapes), {full['size']}x{full['size']}, {full['steps']} steps: "
                  "TFLOP per refinement frame", "",
                  "Counted with torch's FlopCounterMode on the meta device (shapes only, no weights): how the work per "
                  "frame grows with the bank, where this machine cannot time the full-size model.", "",
                  "| N | engine TFLOP/frame | upstream TFLOP/frame | upstream / engine |", "|---:|---:|---:|---:|"]
        for n, e in full["engine"].items():
            u = full["upstream"][n]
            lines.append(f"| {n} | {e / 1e12:.1f} | {u / 1e12:.1f} | {u / e:.2f}x |")
    flux = result.get("flux_flops")
    if flux:
        from bench.model_flops import flux_markdown

        lines += flux_markdown(flux, full)
    lines += ["", "Notes:", "",
              "- upstream: bench/upstream_loop.py (one pipeline call per frame; N reference images re-encoded per frame; "
              "to_k_ip/to_v_ip over 4N tokens at every step; text re-encoded every call). SDPA kernels, same model, "
              "noise, steps and size as the engine.",
              "- plain: FrameWorker + LocalExecutor + driver.run_iterations in one process (no Ray).",
              "- per-frame time at N: median over the sampled frames (the engine's after the first, which also sets the "
              "references), fastest of the repetitions, plus set_references / N for the engine (it runs once per "
              "iteration for all N frames). The N=400 / N=25 ratio is the median over repetitions of the ratio within "
              "one repetition (measured back to back), its range beside it; the tables show each N's fastest repetition.",
              "- driver overhead counts every moment a worker is not inside render_batch: Ray dispatch, result "
              "transfer, barrier waits at the end of an iteration, and the driver's manifest write + bank build. "
              "The barrier wait is each worker's time from its last batch to the iteration's last batch: with "
              "frames as the unit of work it is about half a frame per worker per iteration even with perfect "
              "balancing, so its share falls as stories get longer.",
              ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.6))
    names = list(result["loops"])
    fps = [result["loops"][n]["best"]["fps"] for n in names]
    lo = [f - min(r["fps"] for r in result["loops"][n]["rounds"]) for n, f in zip(names, fps)]
    hi = [0.0 for _ in names]
    colors = ["tab:gray" if n.startswith("upstream") else "tab:blue" if n == "plain" else "tab:green" for n in names]
    ax = axes[0]
    ax.bar(names, fps, color=colors, yerr=[lo, hi], capsize=4)
    for i, v in enumerate(fps):
        ax.text(i, v / 2, f"{v:.2f}", ha="center", va="center", fontsize=9, color="white")
    ax.set_ylabel("frames / s (best round; bar down to the worst)")
    ax.set_title(f"Throughput, {result['config']['frames']}-frame story")
    ax.tick_params(axis="x", labelrotation=15, labelsize=8)

    growth = result.get("growth") or {}
    for ax, key, label, title in ((axes[1], "per_frame_s", "s / frame (refinement iteration)", "Per-frame time vs story length"),
                                  (axes[2], "peak_mb", "peak memory per worker, MB", "Peak memory vs story length")):
        for kind, style in (("engine", "o-"), ("upstream", "s--")):
            rows = growth.get(kind, [])
            if rows:
                ax.plot([r["n"] for r in rows], [r[key] for r in rows], style, label=kind,
                        color="tab:green" if kind == "engine" else "tab:gray")
        ax.set_xscale("log")
        ax.set_xticks([r["n"] for r in growth.get("engine", [])])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("story length N (bank of 4N reference tokens)")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.legend()

    ax = axes[3]
    engines = [n for n in names if n.startswith("engine")]
    if not engines:
        ax.text(0.5, 0.5, "engine not measured (Ray not installed)", ha="center", va="center")
    median = {n: median_round(result["loops"][n]["rounds"], "idle_fraction") for n in engines}
    busy = [1 - median[n]["idle_fraction"] for n in engines]
    drv = [median[n]["driver_fraction"] for n in engines]
    barrier = [median[n].get("barrier_fraction", 0.0) for n in engines]
    other = [1 - b - d - w for b, d, w in zip(busy, drv, barrier)]
    bottom = busy
    ax.bar(engines, busy, label="workers rendering", color="tab:green")
    for part, label, color in ((barrier, "barrier wait (last frames)", "tab:purple"), (drv, "driver bank+manifest", "tab:orange"),
                               (other, "dispatch / transfer", "tab:red")):
        ax.bar(engines, part, bottom=bottom, label=label, color=color)
        bottom = [x + y for x, y in zip(bottom, part)]
    for i, b in enumerate(busy):
        ax.text(i, b - 0.02, f"idle {1 - b:.1%}", ha="center", va="center", fontsize=9, color="white")
    ax.set_ylabel("share of worker time")
    ax.set_ylim(min(busy + [1.0]) - 0.1, 1)
    ax.set_title("Engine: where worker time goes (median round)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def flops_section(cfg: BenchConfig, result: dict) -> dict | None:
    growth = result.get("growth") or {}
    rows = []
    peak = cfg.peak_tflops
    for kind in ("engine", "upstream"):
        for row in growth.get(kind, []):
            if "flops_per_frame" not in row:
                continue
            total = row["flops_per_frame"]["total"]
            tflops = total / row["per_frame_s"] / 1e12
            rows.append({"what": f"{kind}, one worker, N={row['n']}", "gflop_per_frame": total / 1e9, "tflops": tflops,
                         "fraction_of_peak": tflops / peak if peak else None})
    if growth.get("story_frame_flops"):
        # A refinement frame of the throughput story (bank of `frames`); iteration-0 frames skip the reference
        # attention, a fraction of a percent less, so this slightly overstates the whole run.
        per_frame = growth["story_frame_flops"]["total"]
        for name, loop in result["loops"].items():
            if name.startswith("engine"):
                tflops = per_frame * loop["best"]["fps"] / 1e12
                devices = loop["workers"] if cfg.device != "cpu" else 1
                rows.append({"what": f"{name}, whole run ({loop['workers']} worker(s))", "gflop_per_frame": per_frame / 1e9,
                             "tflops": tflops, "fraction_of_peak": tflops / (peak * devices) if peak else None})
    return {"peak_tflops": peak, "rows": rows} if rows else None

def write(result: dict, out: Path, name: str, extra_markdown: list[str]) -> str:
    """bench/results/<name>.json, .md (this report, then `extra_markdown`) and .png; returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    text = markdown(result) + "\n".join(extra_markdown) + "\n"
    (out / f"{name}.md").write_text(text)
    plot(result, out / f"{name}.png")
    return text
