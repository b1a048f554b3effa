"""Character-aware references: per-frame attention bias on the GRCA reference branch (references.py, grca.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from storyadapter.attention import grca
from storyadapter.story import references
from storyadapter.worker.renderer import RenderSettings
from storyadapter.story.parse import load_story
from storyadapter.worker import torch_settings
from storyadapter.worker.frame_worker import FramePrompt, FrameWorker, WorkerSpec

SETTINGS = RenderSettings(steps=2, height=64, width=64, guidance_scale=7.5)
STORY = """[Tom] a boy with a red cap
[Ana] a girl with a blue scarf

[Tom] walks to school
[Ana] reads a book under a tree
[NC] an empty street at dawn
[Tom] and [Ana] play chess
"""
TOM, ANA, NOBODY, BOTH = range(4)


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    path = tmp_path_factory.mktemp("story") / "two.txt"
    path.write_text(STORY, encoding="utf-8")
    return load_story(path)


def spec_for(story, source, out_dir, **kw) -> WorkerSpec:
    return WorkerSpec(source=source, settings=SETTINGS,
                      prompts=tuple(FramePrompt(*story.styled(f), characters=f.characters) for f in story.frames),
                      out_dir=str(out_dir), seed=3, seed_policy="shared", threads=1, **kw)


@pytest.fixture(scope="module")
def uniform_worker(story, tiny_source, tmp_path_factory):
    return FrameWorker(spec_for(story, tiny_source, tmp_path_factory.mktemp("u")))


@pytest.fixture(scope="module")
def weighted_worker(story, tiny_source, tmp_path_factory):
    return FrameWorker(spec_for(story, tiny_source, tmp_path_factory.mktemp("w"),
                                reference_weighting="characters", character_weight=8.0))


def bank_for(worker, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(4, worker.embedding_dim)).astype(np.float32)


def render(worker, frames, bank, scale=0.5, iteration=1) -> list[np.ndarray]:
    worker.begin_iteration(iteration, bank, scale)
    batch = worker.render_batch(iteration, frames)
    return [np.asarray(Image.open(f"{worker.spec.out_dir}/{r.image_path}"), dtype=np.int16) for r in batch.frames]


# ----------------------------------------------------------------- the bias itself


def test_bias_rows_follow_shared_characters():
    rows = [("Tom",), ("Ana",), (), ("Tom", "Ana"), ("Tom",)]  # 4 frames, then Tom's photo
    frames = [("Tom",), ("Ana",), (), ("Ana", "Tom")]
    bias = references.character_bias(frames, rows, 4.0)
    w = math.log(4.0)
    np.testing.assert_allclose(bias, [[w, 0, 0, w, w], [0, w, 0, w, 0], [0, 0, 0, 0, 0], [w, w, 0, w, w]])
    assert references.batch_weights(frames, rows, "uniform", 4.0, False) == (None, None)
    assert references.batch_weights(frames, rows, "characters", 1.0, False) == (None, None)  # log 1 = 0
    assert references.batch_weights([()], rows, "characters", 4.0, False) == (None, None)  # nobody named
    bias, gate = references.own_photos_only(frames, [("Tom",), ("Ana",)])
    np.testing.assert_array_equal(gate, [1, 1, 0, 1])
    np.testing.assert_array_equal(bias, [[0, -np.inf], [-np.inf, 0], [0, 0], [0, 0]])


def _processor_case():
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    dim, heads, cross, n_refs = 16, 2, 12, 5
    attn = Attention(query_dim=dim, cross_attention_dim=cross, heads=heads, dim_head=dim // heads)
    proc = grca.GlobalReferenceAttnProcessor(torch.nn.Linear(cross, dim, bias=False), torch.nn.Linear(cross, dim, bias=False),
                                             heads)
    attn.set_processor(proc)
    x, text = torch.randn(4, 7, dim), torch.randn(4, 9, cross)  # 2 unconditional + 2 conditional rows
    ref_cond, ref_uncond = torch.randn(1, 4 * n_refs, cross), torch.randn(1, 4, cross)
    proc.set_references(ref_cond, ref_uncond)
    proc.scale = 0.4

    def split(t):
        return t.view(t.shape[0], t.shape[1], heads, dim // heads).transpose(1, 2)

    def attend(q, k, v):
        return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1) @ v

    def direct(rows_per_frame):
        """GRCA with frame b of the conditional half attending only to the reference rows listed for it."""
        q, k, v = split(attn.to_q(x)), split(attn.to_k(text)), split(attn.to_v(text))
        ref = []
        for b in range(4):
            if b < 2:
                tokens = ref_uncond
            else:
                keep = [4 * r + t for r in rows_per_frame[b - 2] for t in range(4)]
                tokens = ref_cond[:, keep]
            ref.append(attend(q[b : b + 1], split(proc.to_k_ip(tokens)), split(proc.to_v_ip(tokens))))
        out = attend(q, k, v) + 0.4 * torch.cat(ref)
        return attn.to_out[0](out.transpose(1, 2).reshape(4, 7, dim))

    return attn, proc, x, text, direct, n_refs


def test_zero_bias_equals_uniform_and_large_bias_restricts_to_same_character_references():
    attn, proc, x, text, direct, n = _processor_case()
    uniform = attn(x, encoder_hidden_states=text)
    torch.testing.assert_close(uniform, direct([range(n), range(n)]), rtol=1e-5, atol=1e-5)

    proc.ref_bias = torch.zeros(2, 1, 1, 4 * n)  # W = 1: log W = 0 on every reference
    torch.testing.assert_close(attn(x, encoder_hidden_states=text), uniform, rtol=1e-6, atol=1e-6)

    # Two frames of one batch, different characters: frame 0 shares rows {0, 3}, frame 1 rows {1, 2, 4}.
    same = [[0, 3], [1, 2, 4]]
    errors = []
    for weight in (1e2, 1e4, 1e8):
        bias = torch.from_numpy(references.character_bias(
            [("Tom",), ("Ana",)], [("Tom",), ("Ana",), ("Ana",), ("Tom",), ("Ana",)], weight))
        proc.ref_bias = bias.repeat_interleave(4, dim=1)[:, None, None, :]
        errors.append((attn(x, encoder_hidden_states=text) - direct(same)).abs().max().item())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-5, errors
    assert (attn(x, encoder_hidden_states=text) - uniform).abs().max() > 1e-3  # the bias did something


def test_gate_zero_leaves_a_frame_text_only():
    attn, proc, x, text, _, n = _processor_case()
    with_refs = attn(x, encoder_hidden_states=text)
    proc.scale = 0.0
    text_only = attn(x, encoder_hidden_states=text)
    proc.scale = 0.4
    proc.ref_gate = torch.tensor([0.0, 1.0, 0.0, 1.0])[:, None, None, None]  # frame 0 off, frame 1 on
    got = attn(x, encoder_hidden_states=text)
    assert torch.equal(got[[0, 2]], text_only[[0, 2]])
    torch.testing.assert_close(got[[1, 3]], with_refs[[1, 3]], rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------- on the tiny pipeline


def test_uniform_weighting_is_bitwise_todays_grca(uniform_worker, story):
    bank = bank_for(uniform_worker)
    got = render(uniform_worker, [TOM, ANA, NOBODY, BOTH], bank)
    r = uniform_worker.renderer
    # With the worker's thread count: batched arithmetic splits work by threads, so another count moves the last bits.
    with torch_settings.reproducible(uniform_worker.spec.threads, uniform_worker.spec.deterministic):
        r.set_references(bank, 0.5)  # the plain path: no weights ever set
        plain = r.render([uniform_worker._text_for(f) for f in range(4)], [3] * 4)
    for a, b in zip(got, plain):
        assert np.array_equal(a, np.asarray(b, dtype=np.int16))


def test_characters_weighting_per_frame_in_one_batch(uniform_worker, weighted_worker):
    bank = bank_for(uniform_worker)
    uniform = render(uniform_worker, [TOM, ANA, NOBODY, BOTH], bank)
    batched = render(weighted_worker, [TOM, ANA, NOBODY, BOTH], bank)
    # A frame naming nobody keeps uniform weights, even batched with frames that have a bias.
    assert np.abs(batched[NOBODY] - uniform[NOBODY]).max() <= 1
    for f in (TOM, ANA, BOTH):
        assert not np.array_equal(batched[f], uniform[f]), f"frame {f} ignored its character weights"
    # Each frame got its own bias row: rendered alone, with nothing else in the batch, it looks the same.
    for f in (TOM, ANA):
        alone = render(weighted_worker, [f], bank)[0]
        assert np.abs(alone - batched[f]).max() <= 1, f"frame {f} took another frame's bias"


def test_huge_weight_equals_a_bank_of_only_same_character_frames(uniform_worker, tiny_source, story, tmp_path):
    """W -> infinity: a Tom frame attends only to rows that show Tom, i.e. uniform GRCA over those rows."""
    heavy = FrameWorker(spec_for(story, tiny_source, tmp_path, reference_weighting="characters", character_weight=1e12))
    bank = bank_for(uniform_worker)
    got = render(heavy, [TOM], bank)[0]
    r = uniform_worker.renderer
    r.set_references(bank[[TOM, BOTH]], 0.5)  # the rows whose frames name Tom
    direct = np.asarray(r.render([uniform_worker._text_for(TOM)], [3])[0], dtype=np.int16)
    r.set_references(bank, 0.5)
    everyone = np.asarray(r.render([uniform_worker._text_for(TOM)], [3])[0], dtype=np.int16)
    assert np.abs(got - direct).max() <= 1
    assert np.abs(everyone - direct).max() > 1  # the restriction is visible at all


def test_joint_reference_sdpa_applies_the_same_bias_and_gate():
    """render.reference_sdpa=joint (one SDPA call for both CFG halves) weighs references like the split path."""
    attn, proc, x, text, _, n = _processor_case()
    torch.manual_seed(1)
    cond, uncond = torch.randn(1, 4 * n, 12), torch.randn(1, 4, 12)
    bias = torch.from_numpy(references.character_bias(
        [("Tom",), ("Ana",)], [("Tom",), ("Ana",), ("Ana",), ("Tom",), ("Ana",)], 50.0))
    outs = []
    for joint in (False, True):
        proc = grca.GlobalReferenceAttnProcessor(proc.to_k_ip, proc.to_v_ip, proc.heads, joint)
        attn.set_processor(proc)
        proc.set_references(cond, uncond)
        proc.scale = 0.4
        proc.ref_bias = bias.repeat_interleave(4, dim=1)[:, None, None, :]
        proc.ref_gate = torch.tensor([1.0, 0.0, 1.0, 0.0])[:, None, None, None]
        outs.append(attn(x, encoder_hidden_states=text))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
