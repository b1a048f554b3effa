"""bench/model_flops.py's FLUX counts (meta device): the parts are what the architecture says they are."""

from __future__ import annotations

import pytest


def test_flux_frame_flops_count_the_model_flux_dev_is():
    import torch

    from bench.model_flops import flux_frame_flops, flux_parts
    from storyadapter.models import flux_random

    size, heads_dim, image_tokens = 128, 24 * 128, (128 // 16) ** 2
    pipe = flux_random.build_pipeline("meta", torch.bfloat16)
    one, two = flux_parts(pipe, size, batch=1, ns=(2, 8)), flux_parts(pipe, size, batch=2, ns=())
    assert one["parameters"]["transformer"] == 11_901_408_320  # FLUX.1-dev's transformer, without the adapter
    assert one["parameters"]["ip_adapter"] == 490_874_880
    # The IP-Adapter's attention in the 19 double blocks: each image token's query against 4N reference keys,
    # QK^T and PV, 2 x q x k x 3072 FLOPs each.
    for n in (2, 8):
        assert one["ip_step"][n] == 19 * 2 * 2 * image_tokens * 4 * n * heads_dim
    # True CFG runs the transformer on a batch of 2: twice the work per step.
    assert two["transformer_step"] == pytest.approx(2 * one["transformer_step"], rel=1e-3)
    # Per frame, the transformer's share is steps x one pass; everything else does not depend on the steps.
    f28, f1 = flux_frame_flops(one, 28), flux_frame_flops(one, 1)
    assert f28[8]["transformer"] == 28 * (one["transformer_step"] + one["ip_step"][8])
    assert f28[8]["total"] - f1[8]["total"] == 27 * (one["transformer_step"] + one["ip_step"][8])
    assert f28[8]["total"] > f28[2]["total"]


def test_live_bytes_count_what_is_alive_at_once_with_attention_as_a_fused_kernel():
    import torch
    import torch.nn.functional as F

    from bench.meta_memory import peak_activation_bytes

    x = torch.zeros(1000, 1000, device="meta")  # made before the call: not counted

    def two_alive_then_one():
        a = x * 2
        b = a + 1  # a and b alive: 8 MB
        del a
        b.add_(1)  # in place: no new storage
        return b.view(-1)  # a view: no new storage

    assert peak_activation_bytes(two_alive_then_one) == 2 * 4_000_000
    q = torch.zeros(1, 24, 4608, 128, device="meta", dtype=torch.bfloat16)
    # A fused kernel holds its output, not the 4608 x 4608 scores per head that the math path would.
    assert peak_activation_bytes(lambda: F.scaled_dot_product_attention(q, q, q)) == q.numel() * 2


def test_flux_memory_peaks_follow_where_each_offload_choice_keeps_the_weights():
    from bench.flux_memory import held, peaks

    kept = held(n=100, frames=100, batch=1)
    assert kept["reference_kv"] == 19 * 2 * 400 * 3072 * 2  # 19 double blocks, K and V, 4 tokens per reference, bf16
    assert kept["text_embeddings"] == 100 * (512 * 4096 + 768) * 2
    weights = {"transformer": 23_802_816_640, "ip_adapter": 981_749_760, "text_encoder_2": 9_524_621_312,
               "text_encoder": 246_120_960, "vae": 167_639_366, "image_encoder": 607_932_416}
    act = {"text": 10**8, "transformer": 5 * 10**8, "vae": 16 * 10**8, "image_encoder": 10**7}
    p = peaks(weights, act, kept, largest_layer=263_192_576, stream=STREAM)
    # none: the whole pipeline encodes the prompts at start-up; rendering holds no text encoders but the K/V
    assert p["none_startup"] == sum(weights.values()) + act["text"]
    assert p["none_rendering"] == sum(weights.values()) - weights["text_encoder_2"] - weights["text_encoder"] + \
        kept["reference_kv"] + act["vae"]
    assert p["none"] == p["none_startup"] > p["model"] > p["sequential"]
    assert p["model"] == weights["transformer"] + weights["ip_adapter"] + act["transformer"] + kept["reference_kv"]


STREAM = {"transformer_root": 128_249_984, "blocks_in_flight": 1_359_325_184, "blocks": 57}


def test_block_offload_holds_two_blocks_and_the_rest_of_the_pipeline_but_the_text_encoders_once_they_leave():
    import torch

    from bench.flux_memory import GIB, _weights, held, peaks, streamed
    from storyadapter.models import flux_random

    pipe = flux_random.build_pipeline("meta", torch.bfloat16)
    stream = streamed(pipe)
    # the transformer is its 57 blocks and the rest; two double-stream blocks are the largest consecutive pair
    assert stream == STREAM
    double = sum(p.numel() for n, p in pipe.transformer.transformer_blocks[0].named_parameters() if ".processor." not in n)
    assert stream["blocks_in_flight"] == 2 * 2 * double
    blocks = [b for blocks in (pipe.transformer.transformer_blocks, pipe.transformer.single_transformer_blocks) for b in blocks]
    weights = _weights(pipe)
    assert stream["transformer_root"] + sum(p.numel() * 2 for b in blocks for n, p in b.named_parameters()
                                            if ".processor." not in n) == weights["transformer"]
    kept = held(n=100, frames=100, batch=1)
    act = {"text": 10**8, "transformer": 5 * 10**8, "vae": 16 * 10**8, "image_encoder": 10**7}
    p = peaks(weights, act, kept, largest_layer=263_192_576, stream=stream)
    resident = weights["ip_adapter"] + weights["vae"] + weights["image_encoder"]
    assert p["blocks_startup"] == weights["text_encoder_2"] + weights["text_encoder"] + resident + act["text"]
    assert p["blocks_rendering"] == resident + sum(STREAM[k] for k in ("transformer_root", "blocks_in_flight")) + \
        kept["reference_kv"] + act["vae"]
    assert p["blocks"] == p["blocks_startup"] and p["blocks"] + GIB < 24 * GIB < p["model"] + GIB


def test_flux_part_runs_flux_random_on_the_gpu_preset_and_its_growth_path_renders_flux_tiny(flux_tiny_cache, tmp_path):
    import dataclasses

    from bench import flux
    from bench.growth import measure_growth
    from bench.harness import PRESETS, BenchConfig

    gpu = flux.flux_config(BenchConfig(**PRESETS["gpu"]))
    assert (gpu.model, gpu.family, gpu.steps, gpu.size, gpu.growth_frames) == ("flux-random", "flux", 28, 1024, [25, 100, 400])
    assert (gpu.scheduler, gpu.guidance_scale, gpu.distilled_guidance, gpu.flux_parts) == ("flow_euler", 1.0, 3.5, ["growth"])

    # make bench-gpu's path, at flux-tiny's size in this process (the benchmark runs it in a child process).
    cpu = flux.flux_config(BenchConfig(**{**PRESETS["cpu"], "steps": 1, "growth_sample": 1, "growth_reps": 1,
                                          "flux_growth_frames": [2, 6], "cache_dir": str(flux_tiny_cache)}))
    assert (cpu.model, cpu.family) == ("tiny", "flux")
    rows = measure_growth("engine", cpu, str(tmp_path))["rows"]
    assert [r["n"] for r in rows] == [2, 6] and all(r["per_frame_s"] > 0 and r["peak_mb"] > 0 for r in rows)
    assert rows[1]["flops_per_frame"]["total"] > rows[0]["flops_per_frame"]["total"]  # attention over more references
    table = flux.markdown({"flux": {"config": dataclasses.asdict(cpu), "growth": {"engine": rows}}}, 989.0)
    assert table[1].startswith("## FLUX (tiny, family flux): 64x64, 1 steps") and table[-1].startswith("| 6 |")
