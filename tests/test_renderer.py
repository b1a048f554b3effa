"""The single-process renderer on the tiny model: GRCA, references, seeds, text caching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from storyadapter.engine import driver
from storyadapter.attention import grca
from storyadapter.story import schedule
from storyadapter.worker import torch_settings
from storyadapter.worker.renderer import RenderSettings, StoryRenderer, initial_noise
from storyadapter.story.parse import load_story
from storyadapter.worker.frame_worker import FramePrompt, FrameWorker, WorkerSpec

from .helpers.stories import write_story

SETTINGS = RenderSettings(steps=2, height=64, width=64, guidance_scale=7.5)


@pytest.fixture()
def renderer(tiny_source):
    # A fresh pipeline per test: StoryRenderer swaps the attention processors in place. One CPU thread, as
    # workers render (cluster.threads_per_worker): batched arithmetic depends on how threads split it.
    from storyadapter.models.loading import load_backbone

    with torch_settings.reproducible(threads=1):
        yield StoryRenderer(load_backbone(tiny_source, torch.device("cpu"), torch.float32), SETTINGS)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_scale_zero_equals_text_only_sdxl_pipeline(renderer, tiny_source):
    """Iteration 0 (scale 0) must be exactly diffusers' SDXL text-to-image with the same noise."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    plain = StableDiffusionXLPipeline.from_pretrained(tiny_source.pretrained)
    plain.scheduler = DDIMScheduler.from_config(plain.scheduler.config)
    plain.set_progress_bar_config(disable=True)
    prompt = "a young explorer with a green scarf reads a map"
    for bank in (None, np.random.default_rng(0).normal(size=(3, renderer.embedding_dim)).astype(np.float32)):
        renderer.set_references(bank, 0.0)
        ours = renderer.render([renderer.encode_text(prompt, "")], [11])[0]
        theirs = plain(prompt=prompt, num_inference_steps=2, guidance_scale=7.5, height=64, width=64,
                       latents=initial_noise(11, (1, 4, 8, 8))).images[0]
        assert np.array_equal(pixels(ours), pixels(theirs))


def test_text_encoding_matches_diffusers_and_accepts_long_prompts(renderer):
    pipe = renderer.backbone.pipe
    prompt = "a tall chef with curly red hair"
    tokens, negative, pooled, _ = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=True,
                                                     negative_prompt="blurry")
    ours = renderer.encode_text(prompt, "blurry")
    assert torch.equal(ours.tokens, tokens) and torch.equal(ours.pooled, pooled)
    assert torch.equal(ours.negative_tokens, negative)

    long_prompt = ", ".join(f"detail number {i}" for i in range(60))  # ~240 tokens
    from storyadapter.backbones.sdxl_text import count_windows

    windows = count_windows(pipe.tokenizer, long_prompt)
    assert windows >= 3
    emb = renderer.encode_text(long_prompt, "", windows)
    assert emb.tokens.shape[1] == 77 * windows
    # Later windows carry the tail of the prompt: it is not silently truncated.
    assert not torch.equal(emb.tokens[:, 77:154], renderer.encode_text("", "", windows).tokens[:, 77:154])
    image = renderer.render([emb], [1])[0]
    assert image.size == (64, 64)


def test_changing_one_reference_changes_every_other_frame(renderer):
    rng = np.random.default_rng(1)
    bank = rng.normal(size=(4, renderer.embedding_dim)).astype(np.float32)
    texts = [renderer.encode_text(f"frame {i} of a story about a lighthouse", "") for i in range(4)]

    renderer.set_references(bank, 0.5)
    before = renderer.render(texts, [3] * 4)
    changed = bank.copy()
    changed[0] = rng.normal(size=renderer.embedding_dim)
    renderer.set_references(changed, 0.5)
    after = renderer.render(texts, [3] * 4)
    for i in range(1, 4):
        assert not np.array_equal(pixels(before[i]), pixels(after[i])), f"frame {i} ignored reference 0"


@pytest.mark.parametrize("joint", [False, True], ids=["split-sdpa", "joint-sdpa"])
def test_grca_layer_equals_direct_joint_softmax(joint):
    """softmax(QK_txt)V_txt + lambda * softmax(QK_ref)V_ref with ONE softmax over all 4N reference tokens."""
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    dim, heads, cross, n_refs = 16, 2, 12, 5
    attn = Attention(query_dim=dim, cross_attention_dim=cross, heads=heads, dim_head=dim // heads)
    proc = grca.GlobalReferenceAttnProcessor(torch.nn.Linear(cross, dim, bias=False), torch.nn.Linear(cross, dim, bias=False),
                                             heads, joint)
    attn.set_processor(proc)
    x = torch.randn(4, 7, dim)  # batch: 2 unconditional + 2 conditional
    text = torch.randn(4, 9, cross)
    ref_cond, ref_uncond = torch.randn(1, 4 * n_refs, cross), torch.randn(1, 4, cross)
    proc.set_references(ref_cond, ref_uncond)
    proc.scale = 0.4
    got = attn(x, encoder_hidden_states=text)

    def split(t):  # (B, T, dim) -> (B, heads, T, d)
        return t.view(t.shape[0], t.shape[1], heads, dim // heads).transpose(1, 2)

    def attend(q, k, v):
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)
        return weights @ v

    q, k, v = split(attn.to_q(x)), split(attn.to_k(text)), split(attn.to_v(text))
    ref = []
    for b in range(4):
        tokens = ref_uncond if b < 2 else ref_cond
        ref.append(attend(q[b : b + 1], split(proc.to_k_ip(tokens)), split(proc.to_v_ip(tokens))))
    out = attend(q, k, v) + 0.4 * torch.cat(ref)
    expected = attn.to_out[0](out.transpose(1, 2).reshape(4, 7, dim))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    proc.scale = 0.0
    no_ref = attn.to_out[0](attend(q, k, v).transpose(1, 2).reshape(4, 7, dim))
    torch.testing.assert_close(attn(x, encoder_hidden_states=text), no_ref, rtol=1e-5, atol=1e-5)


def test_same_seed_same_pixels_and_seed_policies(renderer):
    text = renderer.encode_text("a red kite over a beach", "")
    renderer.set_references(None, 0.0)
    a, b, c = renderer.render([text, text, text], [5, 5, 6])
    again = renderer.render([text, text, text], [5, 5, 6])[0]
    assert np.array_equal(pixels(a), pixels(b))
    # The same batch again gives the same pixels. (A different batch composition may change the
    # last bit of batched arithmetic; that is why the engine fixes batches by frame index.)
    assert np.array_equal(pixels(a), pixels(again))
    assert not np.array_equal(pixels(a), pixels(c))
    assert schedule.frame_seed(9, "shared", 0) == schedule.frame_seed(9, "shared", 7)
    assert schedule.frame_seed(9, "per_frame", 0) != schedule.frame_seed(9, "per_frame", 7)


def test_adapter_scale_schedule_is_linear_from_start_to_end():
    scales = [schedule.adapter_scale(t, 10, 0.3, 0.5) for t in range(11)]
    assert scales[0] == 0.0 and scales[1] == pytest.approx(0.3) and scales[10] == pytest.approx(0.5)
    steps = np.diff(scales[1:])
    assert np.allclose(steps, steps[0])


def _count_calls(module) -> list[int]:
    calls = []
    module.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    return calls


def test_encoder_passes_per_iteration_and_text_encoded_once(tiny_source, tmp_path):
    story = load_story(write_story(tmp_path / "s.txt", [f"a cat on roof number {i}" for i in range(5)]))
    spec = WorkerSpec(source=tiny_source, settings=SETTINGS,
                      prompts=tuple(FramePrompt(*story.styled(f)) for f in story.frames),
                      out_dir=str(tmp_path / "out"), seed=1, seed_policy="per_frame", threads=1)
    outside = torch.get_num_threads(), torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.set_num_threads(2)
    try:
        worker = FrameWorker(spec)
        assert torch.get_num_threads() == 2  # the worker's one thread is its own business, not the process's
    finally:
        torch.set_num_threads(outside[0])
    image_calls = _count_calls(worker.renderer.backbone.pipe.image_encoder)
    text_calls = _count_calls(worker.renderer.backbone.pipe.text_encoder)
    plan = driver.RunPlan(story=story, out_dir=tmp_path / "out", iterations=2, batch_size=1, scale_start=0.3,
                          scale_end=0.5, seed=1, seed_policy="per_frame")
    stats = driver.run_iterations(plan, driver.LocalExecutor(worker))
    assert [s.iteration for s in stats] == [0, 1, 2]
    assert image_calls == [1] * 5 * 3  # N single-image passes per iteration, never N^2
    assert len(text_calls) == 5  # once per frame for the whole run (empty negative -> zeros)
    assert worker.image_encodes == 15
    assert (torch.get_num_threads(), torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == outside


def test_reproducible_settings_apply_inside_the_block_only_even_when_it_fails():
    cudnn = torch.backends.cudnn
    outside = torch.get_num_threads(), cudnn.benchmark, cudnn.deterministic
    cudnn.benchmark = True
    try:
        with pytest.raises(RuntimeError), torch_settings.reproducible(threads=1):
            assert (torch.get_num_threads(), cudnn.benchmark, cudnn.deterministic) == (1, False, True)
            raise RuntimeError("a failed batch")
        assert (torch.get_num_threads(), cudnn.benchmark, cudnn.deterministic) == (outside[0], True, outside[2])
    finally:
        cudnn.benchmark = outside[1]


def test_scale_past_the_ramp_stays_at_the_end():
    """An extended run (render.iterations raised on resume) keeps refining at scale_end."""
    assert schedule.adapter_scale(13, 10, 0.3, 0.5) == pytest.approx(0.5)
    assert driver.RunPlan(None, None, 15, 1, 0.3, 0.5, 1, "shared", ramp_iterations=10).scale(12) == pytest.approx(0.5)
    assert driver.RunPlan(None, None, 15, 1, 0.3, 0.5, 1, "shared").scale(12) < 0.5


def test_a_worker_never_renders_with_a_stale_bank(tiny_source, tmp_path):
    """The bank arrives with begin_iteration; a batch for any other iteration is refused, and a new bank
    gives exactly what a fresh worker gives with it (nothing of the old bank lingers)."""
    from storyadapter.engine.protocol import StaleIterationError

    story = load_story(write_story(tmp_path / "s.txt", [f"a fox in a lantern shop, scene {i}" for i in range(2)]))
    spec = WorkerSpec(source=tiny_source, settings=SETTINGS,
                      prompts=tuple(FramePrompt(*story.styled(f)) for f in story.frames),
                      out_dir=str(tmp_path / "out"), seed=3, seed_policy="per_frame", threads=1)
    rng = np.random.default_rng(0)
    worker = FrameWorker(spec)
    old, new = (rng.normal(size=(2, worker.embedding_dim)).astype(np.float32) for _ in range(2))
    with pytest.raises(StaleIterationError):
        worker.render_batch(1, [0])  # no bank yet
    worker.begin_iteration(1, old, 0.5)
    with_old = worker.render_batch(1, [0]).frames[0].embedding
    worker.begin_iteration(2, new, 0.5)
    with pytest.raises(StaleIterationError):
        worker.render_batch(1, [0])
    with_new = worker.render_batch(2, [0]).frames[0].embedding

    fresh = FrameWorker(spec)
    fresh.begin_iteration(2, new, 0.5)
    np.testing.assert_array_equal(fresh.render_batch(2, [0]).frames[0].embedding, with_new)
    assert not np.array_equal(with_old, with_new)


def test_fp16_vae_is_upcast_once_and_pixels_match_diffusers(tiny_source):
    """An fp16 pipeline decodes with an fp32 VAE converted once at start-up, never per batch, and its frames
    equal diffusers' pipeline, which converts the VAE fp16 -> fp32 -> fp16 on every call."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    from storyadapter.models.loading import load_backbone

    r = StoryRenderer(load_backbone(tiny_source, torch.device("cpu"), torch.float16), SETTINGS)
    vae = r.backbone.pipe.vae
    assert r.dtype == torch.float16 and vae.config.force_upcast
    weights = {name: (p.dtype, p.data_ptr()) for name, p in vae.named_parameters()}
    assert {dtype for dtype, _ in weights.values()} == {torch.float32}
    conversions = []
    for module in vae.modules():  # any nn.Module.to/half/float goes through _apply
        original = module._apply
        module._apply = lambda fn, *a, _orig=original, **k: (conversions.append(fn), _orig(fn, *a, **k))[1]

    prompt = "a lighthouse keeper climbs the stairs"
    text = r.encode_text(prompt, "")
    r.set_references(None, 0.0)
    ours = [r.render([text, text], [11, 12]) for _ in range(2)]
    assert conversions == []
    assert {name: (p.dtype, p.data_ptr()) for name, p in vae.named_parameters()} == weights
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(*ours))

    plain = StableDiffusionXLPipeline.from_pretrained(tiny_source.pretrained, torch_dtype=torch.float16)
    plain.scheduler = DDIMScheduler.from_config(plain.scheduler.config)
    plain.set_progress_bar_config(disable=True)
    assert plain.vae.dtype == torch.float16  # diffusers upcasts it inside each call
    theirs = plain(prompt=prompt, num_inference_steps=2, guidance_scale=7.5, height=64, width=64,
                   latents=initial_noise(11, (1, 4, 8, 8)).half()).images[0]
    assert np.array_equal(pixels(ours[0][0]), pixels(theirs))


def test_joint_reference_sdpa_renders_like_split(tiny_source):
    """One SDPA call for both CFG halves: the same frames up to rounding, and bitwise text-only at scale 0."""
    from storyadapter.models.loading import load_backbone

    split = StoryRenderer(load_backbone(tiny_source, torch.device("cpu"), torch.float32), SETTINGS)
    joint = StoryRenderer(load_backbone(tiny_source, torch.device("cpu"), torch.float32),
                          RenderSettings(steps=2, height=64, width=64, guidance_scale=7.5, reference_sdpa="joint"))
    assert all(p.joint for p in joint.grca.values()) and not any(p.joint for p in split.grca.values())
    bank = np.random.default_rng(2).normal(size=(3, split.embedding_dim)).astype(np.float32)
    frames = {}
    for scale in (0.0, 0.5):
        for name, r in (("split", split), ("joint", joint)):
            texts = [r.encode_text(f"a lantern on a bridge, view {i}", "") for i in range(2)]
            r.set_references(bank, scale)
            frames[name, scale] = [pixels(im) for im in r.render(texts, [4, 5])]
    assert all(np.array_equal(a, b) for a, b in zip(frames["split", 0.0], frames["joint", 0.0]))
    assert all(np.abs(a - b).max() <= 2 for a, b in zip(frames["split", 0.5], frames["joint", 0.5]))
    assert not all(np.array_equal(a, b) for a, b in zip(frames["split", 0.0], frames["split", 0.5]))  # references count
