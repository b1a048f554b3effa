"""Per-frame time and peak memory of one method on the tiny model, in this process (one worker, no Ray).

    python -m bench.methods METHOD [--frames 8] [--size 128] [--steps 10] [--iterations 1]

Renders a two-character story's iteration 0 (CSA for storydiffusion/hybrid, text only for story_adapter)
and, unless storydiffusion, `--iterations` GRCA refinements. Prints one JSON line: CPU seconds (process time, steadier than wall time on a shared machine) per frame for
each iteration, the seconds spent rendering identity frames (a worker's local re-render of the ID banks),
the banks' bytes, and the process's peak resident memory. Run one method per process: peak RSS is per process.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

CHARACTERS = ["[Tom] A boy with a red cap and a blue backpack.", "[Lisa] A girl with long black hair and a yellow raincoat.", ""]
SCENES = ["[Tom] walks to school", "[Lisa] reads under a tree", "[Tom] and [Lisa] meet at the gate",
          "[NC] An empty classroom at dusk", "[Tom] runs home in the rain", "[Lisa] paints a fence",
          "[Tom] and [Lisa] share an umbrella", "[Tom] eats dinner with his dog"]


def measure(method: str, frames: int, size: int, steps: int, iterations: int, tiny_cache: str | None) -> dict:
    import numpy as np
    import torch

    from storyadapter.launch import compose_config
    from storyadapter.render_story import resolve_model, worker_spec
    from storyadapter.story import load_story

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-methods-"))
    story_path = work / "story.txt"
    story_path.write_text("\n".join(CHARACTERS + [SCENES[i % len(SCENES)] + f", scene {i}" for i in range(frames)]) + "\n")
    cfg = compose_config([f"story.path={story_path}", "model=tiny", *( [f"model.cache_dir={tiny_cache}"] if tiny_cache else []),
                          "render=tiny", f"render.steps={steps}", f"render.height={size}", f"render.width={size}",
                          f"method={method}", f"output_dir={work / 'out'}", "cluster.threads_per_worker=1"])
    story = load_story(story_path)
    worker = worker_spec(cfg, story, resolve_model(cfg)[0], work / "out").build()
    per_frame, identity_s = [], 0.0
    renderer = worker.renderer
    if renderer.csa is not None:  # time the write phase apart from the reads
        real = renderer.render_identity

        def timed(*args, **kwargs):
            nonlocal identity_s
            t = time.process_time()
            out = real(*args, **kwargs)
            identity_s += time.process_time() - t
            return out

        renderer.render_identity = timed
    bank = None
    bank_bytes = 0
    last = 0 if method == "storydiffusion" else iterations
    for it in range(last + 1):
        worker.begin_iteration(it, bank, 0.0 if it == 0 else 0.4)
        t = time.process_time()
        results = [r for f in range(frames) for r in worker.render_batch(it, [f]).frames]
        per_frame.append((time.process_time() - t) / frames)
        if it == 0 and renderer.csa is not None:
            bank_bytes = sum(b.nbytes() for b in renderer.csa.banks.values())
        bank = np.stack([r.embedding for r in results])
    return {
        "method": method, "frames": frames, "size": size, "steps": steps,
        "seconds_per_frame": [round(s, 4) for s in per_frame],
        "identity_frames_rendered": worker.identity_renders, "identity_seconds": round(identity_s, 3),
        "bank_bytes": bank_bytes, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    from storyadapter.errors import ArgumentParser

    p = ArgumentParser(prog="python -m bench.methods", description=__doc__.splitlines()[0])
    p.add_argument("method", choices=("story_adapter", "storydiffusion", "hybrid"))
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--iterations", type=int, default=1)
    p.add_argument("--tiny-cache", default=None)
    a = p.parse_args()
    print(json.dumps(measure(a.method, a.frames, a.size, a.steps, a.iterations, a.tiny_cache)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
