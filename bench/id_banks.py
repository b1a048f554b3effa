"""How a character's ID bank should reach the actors (method=storydiffusion|hybrid): measured, not guessed.

    python -m bench.id_banks [--object-gib 1] [--frames 16] [--size 128] [--steps 10]

Three measurements in one run, then the full-size projection they support:
  1. Ray's object store on a two-node `ray.cluster_utils.Cluster` (two raylets on this machine): an actor
     returns a bank-sized byte array (what `write_identity` does), then actors on the same node and on the
     other node fetch it. Same node is a memory map of the one copy; the other node is a network transfer
     (here over loopback, so a ceiling for a real network, which the projection states separately).
  2. The two delivery modes end to end on the tiny model with two CPU actors: `method.id_banks=shared`
     (one write phase per character, banks fetched) vs `rerender` (each actor writes the banks it needs).
  3. The bank's bytes at 1024², 50 steps, counted on the meta device (bench/csa_bank.py).
Results go to bench/results/id_banks.{json,md}.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
GIB = 1024**3
H100_PEAK_TFLOPS = 989.0  # dense bf16
FRAME_TFLOP = 690.0  # one 1024² frame, 50 steps, CFG, full-size SDXL + IP-Adapter (bench/model_flops.py)
NETWORKS_GBIT = (25, 100, 400)  # common node interconnects, for the projection


def object_store(object_gib: float) -> dict:
    """Seconds to return a bank-sized object from an actor, and to fetch it on the same and on another node."""
    import ray
    from ray.cluster_utils import Cluster

    size = int(object_gib * GIB)
    store = int(max(2 * size, GIB))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node_a": 2},
                                                            "object_store_memory": store})
    cluster.add_node(num_cpus=1, resources={"node_b": 1}, object_store_memory=store)
    ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
    try:
        @ray.remote(num_cpus=0)
        class Holder:
            def make(self, n: int) -> np.ndarray:
                return np.ones(n, dtype=np.uint8)  # a packed bank is one flat uint8 array

            def fetch(self, refs) -> float:
                t = time.perf_counter()
                data = ray.get(refs[0])
                checksum = int(data[:: 1 << 20].sum())  # touch it, so a lazy map is paid for
                return time.perf_counter() - t if checksum else -1.0

        writer = Holder.options(resources={"node_a": 1}).remote()
        near = Holder.options(resources={"node_a": 1}).remote()
        far = Holder.options(resources={"node_b": 1}).remote()
        ray.get([a.fetch.remote([ray.put(np.ones(1, dtype=np.uint8))]) for a in (writer, near, far)])  # actors up
        t = time.perf_counter()
        ref = writer.make.remote(size)
        ray.wait([ref], fetch_local=False)
        write_s = time.perf_counter() - t
        near_s = ray.get(near.fetch.remote([ref]))
        far_s = ray.get(far.fetch.remote([ref]))
        far_again_s = ray.get(far.fetch.remote([ref]))  # the second reader on that node: already local
        return {"bytes": size, "write_s": round(write_s, 3), "same_node_fetch_s": round(near_s, 4),
                "other_node_fetch_s": round(far_s, 3), "other_node_second_fetch_s": round(far_again_s, 4),
                "other_node_gbit_s": round(size * 8 / far_s / 1e9, 2)}
    finally:
        ray.shutdown()
        cluster.shutdown()


def delivery_modes(frames: int, size: int, steps: int) -> dict:
    """storydiffusion on two CPU actors, once per `method.id_banks`: identity frames rendered and wall time."""
    import ray

    from bench.methods import CHARACTERS, SCENES
    from storyadapter.engine import driver, executor as engine, placement
    from storyadapter.launch import compose_config
    from storyadapter.render_story import plan_for, resolve_model, worker_spec
    from storyadapter.spec import from_config
    from storyadapter.story.parse import load_story

    work = Path(tempfile.mkdtemp(prefix="bench-id-banks-"))
    story_path = work / "story.txt"
    story_path.write_text("\n".join(CHARACTERS + [SCENES[i % len(SCENES)] + f", scene {i}" for i in range(frames)]) + "\n")
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    out = {}
    try:
        for mode in ("shared", "rerender"):
            run = from_config(compose_config([f"story.path={story_path}", "model=tiny", "render=tiny", f"render.steps={steps}",
                                  f"render.height={size}", f"render.width={size}", "render.batch_size=1",
                                  "method=storydiffusion", f"method.id_banks={mode}", "cluster.threads_per_worker=1",
                                  "outputs.enabled=false", f"output_dir={work / mode}"]))
            story = load_story(story_path)
            res = placement.ActorResources(workers=2, gpus_per_worker=0, cpus_per_worker=1, max_restarts=0, ready_timeout_s=300,
                                           min_workers=2)  # both actors from the first write phase
            executor = engine.RayExecutor(worker_spec(run, story, resolve_model(run.model)[0], work / mode), res,
                                          use_gpu=False, fixed_cluster=True)
            try:
                t = time.perf_counter()
                driver.run_iterations(plan_for(run, story, work / mode), executor)
                wall = time.perf_counter() - t
                counts = executor.counters()
            finally:
                executor.shutdown()
            out[mode] = {"wall_s": round(wall, 2), "identity_frames_rendered": sum(c["identity_renders"] for c in counts),
                         "banks_fetched": sum(c["banks_fetched"] for c in counts)}
        same = all(np.array_equal(np.asarray(_png(work / "shared" / p)), np.asarray(_png(work / "rerender" / p)))
                   for p in sorted(q.relative_to(work / "shared") for q in (work / "shared").glob("iter_00/*.png")))
        out["same_pixels"] = bool(same)
        out.update(frames=frames, size=size, steps=steps, actors=2, characters=2, id_length=4)
        return out
    finally:
        ray.shutdown()


def _png(path: Path):
    from PIL import Image

    return Image.open(path)


def projection(bank: dict, store: dict, actors_per_node: int = 8, characters: int = 2) -> dict:
    """Per node of `actors_per_node` GPUs and a `characters`-character story at 1024², 50 steps."""
    per_char = bank["bytes_per_character"]
    id_length = bank["id_length"]
    rerender_floor_s = id_length * FRAME_TFLOP / H100_PEAK_TFLOPS  # an H100 at 100% of peak: a lower bound
    return {
        "bytes_per_character": per_char,
        "shared": {
            "host_bytes_per_node": characters * per_char,  # one copy in the node's object store
            "fetch_s_per_node_at_gbit": {g: round(characters * per_char * 8 / (g * 1e9), 1) for g in NETWORKS_GBIT},
            "fetch_s_per_node_measured_loopback": round(characters * per_char * 8 / (store["other_node_gbit_s"] * 1e9), 1),
            "identity_frames_per_story": characters * id_length,
        },
        "rerender": {
            "host_bytes_per_node": actors_per_node * characters * per_char,  # one private copy per actor
            "gpu_s_per_actor_floor": round(characters * rerender_floor_s, 1),
            "identity_frames_per_story": actors_per_node * characters * id_length,
        },
        "actors_per_node": actors_per_node, "characters": characters,
    }


def report(res: dict) -> str:
    st, dm, pj = res["object_store"], res["delivery"], res["projection"]
    gb = lambda b: f"{b / 1e9:.1f} GB"  # noqa: E731
    lines = [
        "# ID bank delivery (`python -m bench.id_banks`)", "",
        f"Object store, {st['bytes'] / GIB:g} GiB object, two raylets on one machine:",
        f"- actor returns it (serialized into its node's store): {st['write_s']} s",
        f"- fetched by an actor on the same node: {st['same_node_fetch_s']} s (a memory map of the one copy)",
        f"- fetched on the other node: {st['other_node_fetch_s']} s ({st['other_node_gbit_s']} Gbit/s over loopback); "
        f"a second actor there: {st['other_node_second_fetch_s']} s", "",
        f"Tiny model, storydiffusion, {dm['frames']} frames, {dm['characters']} characters, id_length {dm['id_length']}, "
        f"{dm['actors']} CPU actors, {dm['size']} px, {dm['steps']} steps:", "",
        "| method.id_banks | identity frames rendered | banks fetched | wall s |", "|---|---:|---:|---:|",
        *(f"| {m} | {dm[m]['identity_frames_rendered']} | {dm[m]['banks_fetched']} | {dm[m]['wall_s']} |" for m in ("shared", "rerender")),
        "", f"Same pixels in both modes: {dm['same_pixels']}.", "",
        f"Full size (1024², 50 steps, id_length {res['bank']['id_length']}), {pj['characters']} characters, "
        f"a node of {pj['actors_per_node']} GPUs:", "",
        "| | shared | rerender |", "|---|---:|---:|",
        f"| bank per character | {gb(pj['bytes_per_character'])} | {gb(pj['bytes_per_character'])} |",
        f"| host memory per node | {gb(pj['shared']['host_bytes_per_node'])} | {gb(pj['rerender']['host_bytes_per_node'])} |",
        f"| identity frames rendered per story (one node) | {pj['shared']['identity_frames_per_story']} | "
        f"{pj['rerender']['identity_frames_per_story']} |",
        "| per actor, before its first read | fetch: " + ", ".join(
            f"{s} s at {g} Gbit/s" for g, s in pj['shared']['fetch_s_per_node_at_gbit'].items())
        + f" (once per node) | at least {pj['rerender']['gpu_s_per_actor_floor']} s of H100 time at 100% of peak |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    from bench.harness import bench_environment

    bench_environment()
    from storyadapter.methods import CSASettings
    from storyadapter.errors import ArgumentParser

    from .csa_bank import bank_bytes

    p = ArgumentParser(prog="python -m bench.id_banks", description=__doc__.splitlines()[0])
    p.add_argument("--object-gib", type=float, default=1.0)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    a = p.parse_args()
    res = {"object_store": object_store(a.object_gib), "delivery": delivery_modes(a.frames, a.size, a.steps),
           "bank": bank_bytes(1024, 50, CSASettings(), 2)}
    res["projection"] = projection(res["bank"], res["object_store"])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "id_banks.json").write_text(json.dumps(res, indent=2) + "\n")
    text = report(res)
    (RESULTS / "id_banks.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
