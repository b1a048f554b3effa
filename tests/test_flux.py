"""GRCA on FLUX (model=flux-tiny), in one process, against diffusers' own FLUX pipelines on the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from storyadapter.worker import torch_settings
from storyadapter.worker.renderer import RenderSettings, StoryRenderer, initial_noise

SETTINGS = RenderSettings(steps=2, height=64, width=64, guidance_scale=1.0, distilled_guidance=3.5,
                          scheduler="flow_euler")
PROMPT = "a woman with a red coat walks in the rain at night"


@pytest.fixture()
def renderer(flux_tiny_source):
    from storyadapter.models.loading import load_backbone

    with torch_settings.reproducible(threads=1):
        yield StoryRenderer(load_backbone(flux_tiny_source, torch.device("cpu"), torch.float32), SETTINGS)


def _stock(source, ip_adapter: bool):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(source.pretrained, torch_dtype=torch.float32)
    if ip_adapter:
        pipe.load_ip_adapter(source.ip_adapter, weight_name=source.ip_adapter_weight,
                             image_encoder_pretrained_model_name_or_path=source.image_encoder_folder,
                             image_encoder_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(renderer, seed: int) -> torch.Tensor:
    """The renderer's starting noise for `seed`, packed as diffusers packs it."""
    noise = initial_noise(seed, renderer.backbone.latent_shape(64, 64))
    return renderer.backbone.pipe._pack_latents(noise, *noise.shape)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_scale_zero_equals_plain_flux_pipeline(renderer, flux_tiny_source):
    """Iteration 0 (no references) and scale 0 are exactly diffusers' FluxPipeline text-to-image, same noise."""
    plain = _stock(flux_tiny_source, ip_adapter=False)
    bank = np.random.default_rng(0).normal(size=(3, renderer.embedding_dim)).astype(np.float32)
    with torch_settings.reproducible(threads=1):
        theirs = plain(prompt=PROMPT, num_inference_steps=2, guidance_scale=3.5, height=64, width=64,
                       latents=_latents(renderer, 11)).images[0]
        for references in (None, bank):
            renderer.set_references(references, 0.0)
            ours = renderer.render([renderer.encode_text(PROMPT, "")], [11])[0]
            assert np.array_equal(pixels(ours), pixels(theirs))


def test_n_references_equal_stock_ip_adapter_fed_all_embeddings(renderer, flux_tiny_source):
    """GRCA over N references is diffusers' FLUX IP-Adapter given the N embeddings as one adapter's tokens (its
    ip_adapter_image_embeds of shape (1, N, D)): one softmax over all 4N tokens, bitwise."""
    stock = _stock(flux_tiny_source, ip_adapter=True)
    stock.set_ip_adapter_scale(0.4)
    bank = np.random.default_rng(1).normal(size=(3, renderer.embedding_dim)).astype(np.float32)
    with torch_settings.reproducible(threads=1):
        theirs = stock(prompt=PROMPT, num_inference_steps=2, guidance_scale=3.5, height=64, width=64,
                       latents=_latents(renderer, 5), ip_adapter_image_embeds=[torch.from_numpy(bank)[None]]).images[0]
        renderer.set_references(bank, 0.4)
        ours = renderer.render([renderer.encode_text(PROMPT, "")], [5])[0]
        renderer.set_references(None, 0.0)
        text_only = renderer.render([renderer.encode_text(PROMPT, "")], [5])[0]
    assert np.array_equal(pixels(ours), pixels(theirs))
    assert not np.array_equal(pixels(ours), pixels(text_only))  # the references do act


def test_reference_keys_and_values_are_computed_once_per_iteration(renderer):
    """Two batches of 2 steps after one set_references: each layer's K/V projections run once, on the bank."""
    calls = []
    for layer in renderer.backbone.reference_layers().values():
        for proj in (layer.to_k, layer.to_v):
            proj.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape))
    bank = np.random.default_rng(2).normal(size=(4, renderer.embedding_dim)).astype(np.float32)
    renderer.set_references(bank, 0.5)
    layers = len(renderer.backbone.reference_layers())
    assert layers == 2  # the tiny model's double-stream blocks
    assert len(calls) == 2 * 2 * layers  # (to_k, to_v) x (references, all-zero embedding) per layer
    calls.clear()
    text = renderer.encode_text(PROMPT, "")
    renderer.render([text, text], [1, 2])
    renderer.render([text], [3])
    assert calls == []


def test_long_prompt_reaches_t5_whole_and_clip_pooled_is_truncated(renderer):
    """No 77-token windows on FLUX: T5 takes up to 512 tokens; CLIP's pooled vector is that of the first 77, as
    diffusers' encode_prompt makes it."""
    backbone = renderer.backbone
    assert backbone.text_windows([PROMPT * 40]) == 1
    words = " ".join(f"window{i}" for i in range(60))  # ~360 T5 tokens, ~240 CLIP tokens
    assert len(backbone.pipe.tokenizer_2(words).input_ids) > 77
    long, tail_cut = renderer.encode_text(words + " red", ""), renderer.encode_text(words + " blue", "")
    assert long.tokens.shape[1] == 512
    assert not torch.equal(long.tokens, tail_cut.tokens)  # the last word (past 77 tokens) reaches T5
    assert torch.equal(long.pooled, tail_cut.pooled)  # and not CLIP, which stops at 77
    with torch.no_grad():  # as FluxPipeline.__call__ runs it
        tokens, pooled, _ = backbone.pipe.encode_prompt(words + " red", device="cpu", max_sequence_length=512)
    assert torch.equal(long.tokens, tokens) and torch.equal(long.pooled, pooled)


def test_character_weighting_bias_and_gate_act_as_on_sdxl(renderer):
    """render.reference_weighting=characters on FLUX: a bias that rules out every reference but one gives that
    reference's frame alone; a gate of 0 gives the text-only frame (up to rounding: other kernels)."""
    bank = np.random.default_rng(3).normal(size=(3, renderer.embedding_dim)).astype(np.float32)
    text = renderer.encode_text(PROMPT, "")
    with torch_settings.reproducible(threads=1):
        renderer.set_references(bank[1:2], 0.5)
        alone = renderer.render([text], [4])[0]
        renderer.set_references(None, 0.0)
        text_only = renderer.render([text], [4])[0]
        renderer.set_references(bank, 0.5)
        renderer.set_reference_weights(np.array([[-1e4, 0.0, -1e4]]), None)
        picked = renderer.render([text], [4])[0]
        renderer.set_reference_weights(None, np.array([0.0]))
        gated = renderer.render([text], [4])[0]
    assert np.abs(pixels(picked) - pixels(alone)).max() <= 1
    assert np.abs(pixels(gated) - pixels(text_only)).max() <= 1
    assert np.abs(pixels(alone) - pixels(text_only)).max() > 1


def test_true_cfg_is_a_second_pass_combined_as_diffusers_true_cfg_scale(renderer, flux_tiny_source):
    """render.guidance_scale > 1 on FLUX: without references, exactly FluxPipeline(true_cfg_scale=...); the negative
    prompt's pass joins the batch (2 evaluations per step), the references reach both branches, and the frame
    differs from the distilled-only one."""
    from dataclasses import replace

    bank = np.random.default_rng(4).normal(size=(2, renderer.embedding_dim)).astype(np.float32)
    text = renderer.encode_text(PROMPT, "blurry")
    with torch_settings.reproducible(threads=1):
        theirs = _stock(flux_tiny_source, ip_adapter=False)(
            prompt=PROMPT, negative_prompt="blurry", true_cfg_scale=2.0, guidance_scale=3.5, num_inference_steps=2,
            height=64, width=64, latents=_latents(renderer, 6)).images[0]
        renderer.use(replace(SETTINGS, guidance_scale=2.0))
        assert np.array_equal(pixels(renderer.render([text], [6])[0]), pixels(theirs))
        renderer.use(SETTINGS)
        renderer.set_references(bank, 0.5)
        distilled = renderer.render([text], [6])[0]
        renderer.use(replace(SETTINGS, guidance_scale=2.0))
        renderer.set_references(bank, 0.5)
        before = renderer.backbone.unet_evaluations
        cfg = renderer.render([text], [6])[0]
    assert renderer.guided and renderer.backbone.unet_evaluations - before == 2 * SETTINGS.steps
    assert np.abs(pixels(cfg) - pixels(distilled)).max() > 1
