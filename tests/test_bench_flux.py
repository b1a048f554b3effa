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
