"""Consistent self-attention (method=storydiffusion|hybrid) on the tiny model, in one process."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from storyadapter.attention import csa
from storyadapter.story import identity
from storyadapter.rundir import guard as rundir
from storyadapter.errors import UserError
from storyadapter.story.model import Frame, Story
from storyadapter.story.parse import load_story

from .helpers.csa import config, worker_for
from .helpers.stories import TOM_LISA, write_story

TOM_READS, BOTH, NC = 5, 2, 3  # with id_length=2 Tom's identity frames are 0 and 4; Lisa has frame 1 + one synthesized


def frame_pixels(worker, frames: list[int]) -> dict[int, np.ndarray]:
    worker.begin_iteration(0, None, 0.0)
    batch = worker.render_batch(0, frames)
    return {r.frame: np.asarray(Image.open(Path(worker.spec.out_dir) / r.image_path)) for r in batch.frames}


# --- the formula --------------------------------------------------------------------------------------


def _attention(dim: int, heads: int):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    return Attention(query_dim=dim, heads=heads, dim_head=dim // heads).double()


def _direct(attn, x: torch.Tensor, context: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V per head, written out: Q from x, K and V from context."""
    d = x.shape[-1] // heads

    def split(t):
        return t.view(t.shape[0], t.shape[1], heads, d).transpose(1, 2)

    q, k, v = split(attn.to_q(x)), split(attn.to_k(context)), split(attn.to_v(context))
    out = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1) @ v
    return attn.to_out[0](out.transpose(1, 2).reshape(x.shape[0], x.shape[1], heads * d))


def test_csa_processor_equals_the_formula_for_a_given_mask():
    dim, heads, tokens, n = 8, 2, 6, 3
    attn = _attention(dim, heads)
    always = csa.CSASettings(plain_steps=0, early_rate=1.0, late_rate=1.0)
    state = csa.ConsistentSelfAttention(always)
    attn.set_processor(csa.ConsistentSelfAttnProcessor(state, "layer", "sa32"))
    x = torch.randn(2 * n, tokens, dim, dtype=torch.float64)  # [uncond x3; cond x3]
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 0, 0, 1, 1, 1], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)

    with state.writing("Tom", n, seed=0):
        state.begin_step(2)
        state.phase.masks[(2, "sa32")] = mask
        got = attn(x)
    rows = x.view(2, n, tokens, dim)
    sampled = [rows[:, i][:, mask[i]] for i in range(n)]
    for i in range(n):
        context = torch.cat([sampled[j] for j in range(n) if j != i] + [rows[:, i]], dim=1)
        expected = _direct(attn, rows[:, i], context, heads)
        torch.testing.assert_close(got.view(2, n, tokens, dim)[:, i], expected)
    torch.testing.assert_close(state.banks["Tom"].tokens[(2, "layer")], torch.cat(sampled, dim=1))

    # Read phase: frame 0 names Tom, frame 1 nobody (plain self-attention).
    y = torch.randn(4, tokens, dim, dtype=torch.float64)
    with state.reading([("Tom",), ()], seeds=[1, 2]):
        state.begin_step(2)
        got = attn(y).view(2, 2, tokens, dim)
    y = y.view(2, 2, tokens, dim)
    torch.testing.assert_close(got[:, 0], _direct(attn, y[:, 0], torch.cat(sampled + [y[:, 0]], dim=1), heads))
    torch.testing.assert_close(got[:, 1], _direct(attn, y[:, 1], y[:, 1], heads))


def test_step_schedule_and_gates_are_deterministic():
    s = csa.CSASettings()
    assert [s.rate(k) for k in (0, 1, 19, 20, 49)] == [0.0, 0.7, 0.7, 0.9, 0.9]
    state = csa.ConsistentSelfAttention(s)

    def draws(seed):
        state.begin_step(5)
        g = torch.Generator("cpu").manual_seed(seed)
        return [state.gate(g) for _ in range(200)]

    assert draws(3) == draws(3) and draws(3) != draws(4)
    assert 0.6 < np.mean(draws(3)) < 0.8


def test_csa_replaces_only_the_up_blocks_self_attention(tiny_source):
    from storyadapter.models.loading import load_backbone
    from storyadapter.worker.renderer import RenderSettings, StoryRenderer

    renderer = StoryRenderer(load_backbone(tiny_source, torch.device("cpu"), torch.float32), RenderSettings(),
                             csa.CSASettings())
    procs = renderer.backbone.pipe.unet.attn_processors
    replaced = {n for n, p in procs.items() if isinstance(p, csa.ConsistentSelfAttnProcessor)}
    assert replaced == {n for n in procs if n.startswith("up_blocks.") and n.endswith("attn1.processor")}
    assert replaced
    assert all(procs[f"{n}.processor"] is p for n, p in renderer.grca.items())  # GRCA's cross-attention stays
    by_resolution = {procs[n].resolution for n in replaced if n.startswith("up_blocks.0.")}
    assert by_resolution == {"sa32"} and {procs[n].resolution for n in replaced} == {"sa32", "sa64"}


# --- identity planning ------------------------------------------------------------------------------


def test_missing_identity_frames_are_synthesized_from_the_description(tmp_path):
    story = load_story(write_story(tmp_path / "s.txt", TOM_LISA))
    plans = identity.plan_identities(story, 3)
    assert [f.frame for f in plans["Tom"].frames] == [0, 4, 5]
    lisa = plans["Lisa"].frames
    assert [f.frame for f in lisa] == [1, None, None]
    for f in lisa[1:]:
        assert f.prompt.startswith("Lisa, A girl with long black hair and a yellow raincoat, ")
    assert lisa[1].prompt != lisa[2].prompt
    shown = identity.consistent_pass(story, csa.CSASettings(id_length=3), seed=1, seed_policy="shared")
    assert {f: b.character for f in range(6) if (b := shown.owner_of(f))} == {0: "Tom", 4: "Tom", 5: "Tom", 1: "Lisa"}


def test_a_character_with_no_frame_of_its_own_and_no_description_is_one_error():
    story = Story(title="t", style="(No style)", characters={"Ghost": ""},
                  frames=(Frame(0, "Ghost and a dog", "", ("Ghost",), 1), Frame(1, "Ghost and a cat", "", ("Ghost",), 2)),
                  source="s.txt", digest="")
    identity.plan_identities(story, 2)  # solo frames, no description: synthesized from the frames
    story = Story(title="t", style="(No style)", characters={"Ghost": "a pale ghost"},
                  frames=(Frame(0, "Ghost, a dog", "", ("Ghost", "Dog"), 1),), source="s.txt", digest="")
    with pytest.raises(UserError, match="'Dog' has no frame of its own and no description"):
        identity.plan_identities(story, 2)


# --- the renders --------------------------------------------------------------------------------------


def test_story_adapter_default_has_no_csa_and_an_unchanged_fingerprint(tmp_path, tiny_cache):
    from storyadapter.render_story import consistent_pass, plan_for
    from storyadapter.spec import from_config

    story_path = write_story(tmp_path / "s.txt", TOM_LISA)
    story = load_story(story_path)
    from storyadapter.launch import compose_config

    default = compose_config([f"story.path={story_path}", "model=tiny", "render=tiny", f"output_dir={tmp_path}"])
    assert default.method.name == "story_adapter" and consistent_pass(from_config(default), story) is None
    assert "method" not in rundir.fingerprint(default, story)
    assert plan_for(from_config(default), story, tmp_path).iterations == 2
    sd = config(story_path, tmp_path, tiny_cache, "storydiffusion")
    assert plan_for(from_config(sd), story, tmp_path).iterations == 0  # one pass: iter_00 only
    assert rundir.fingerprint(sd, story)["method"]["name"] == "storydiffusion"


def test_nc_frame_equals_text_only_and_csa_changes_character_frames(tmp_path, tiny_cache):
    story = write_story(tmp_path / "s.txt", TOM_LISA)
    consistent = frame_pixels(worker_for(story, tmp_path / "a", tiny_cache, "storydiffusion", "method.freeu.enabled=false"),
                              [NC, TOM_READS, BOTH])  # CSA alone: FreeU (on by default) changes every frame
    text_only = frame_pixels(worker_for(story, tmp_path / "b", tiny_cache, "story_adapter"), [NC, TOM_READS, BOTH])
    assert np.array_equal(consistent[NC], text_only[NC])
    assert not np.array_equal(consistent[TOM_READS], text_only[TOM_READS])
    assert not np.array_equal(consistent[BOTH], text_only[BOTH])


def test_idle_csa_leaves_grca_iterations_bitwise_unchanged(tmp_path, tiny_cache):
    """Hybrid iterations >= 1 must render exactly as story_adapter's: CSA processors idle = diffusers' own."""
    story = write_story(tmp_path / "s.txt", TOM_LISA)
    bank = np.random.default_rng(0).normal(size=(len(TOM_LISA) - 3, 32)).astype(np.float32)
    out = {}
    for method in ("hybrid", "story_adapter"):
        w = worker_for(story, tmp_path / method, tiny_cache, method)
        w.begin_iteration(1, bank, 0.4)
        r = w.render_batch(1, [BOTH])
        out[method] = np.asarray(Image.open(tmp_path / method / r.frames[0].image_path))
    assert np.array_equal(out["hybrid"], out["story_adapter"])


def test_a_frame_sees_only_the_banks_of_the_characters_it_names(tmp_path, tiny_cache):
    """Changing Lisa's identity frame leaves Tom-only frames alone and changes the frame with both."""
    first = write_story(tmp_path / "a.txt", TOM_LISA)
    changed = list(TOM_LISA)
    changed[4] = "[Lisa] paints a green fence #1"
    second = write_story(tmp_path / "b.txt", changed)
    frames = [0, BOTH, TOM_READS]
    a = frame_pixels(worker_for(first, tmp_path / "a", tiny_cache, "storydiffusion"), frames)
    b = frame_pixels(worker_for(second, tmp_path / "b", tiny_cache, "storydiffusion"), frames)
    assert np.array_equal(a[0], b[0])  # Tom's identity frame
    assert np.array_equal(a[TOM_READS], b[TOM_READS])
    assert not np.array_equal(a[BOTH], b[BOTH])


def test_three_characters_each_frame_reads_all_it_names(tmp_path, tiny_cache):
    lines = [
        "[Ann] A woman with a green hat.", "[Bo] A man with a white beard.", "[Cy] A child with a kite.", "",
        "[Ann] waters flowers", "[Bo] fixes a bicycle", "[Cy] flies a kite",
        "[Ann], [Bo] and [Cy] have a picnic", "[Ann] and [Bo] walk by the river",
    ]
    first = write_story(tmp_path / "a.txt", lines)
    lines[6] = "[Cy] jumps into a puddle"
    second = write_story(tmp_path / "b.txt", lines)
    wa = worker_for(first, tmp_path / "a", tiny_cache, "storydiffusion")
    a = frame_pixels(wa, [3, 4])
    b = frame_pixels(worker_for(second, tmp_path / "b", tiny_cache, "storydiffusion"), [3, 4])
    assert wa.identity_renders == 3 * 2  # each character's batch once: its frame + one synthesized
    assert set(wa.renderer.csa.banks) == {"Ann", "Bo", "Cy"}
    assert not np.array_equal(a[3], b[3])  # the picnic names Cy
    assert np.array_equal(a[4], b[4])  # the walk does not


# --- ID banks between workers --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_packed_bank_unpacks_to_the_same_bits(dtype):
    bank = csa.IdBank("Tom")
    g = torch.Generator().manual_seed(0)
    bank.tokens[(1, "up_blocks.0.attn1")] = torch.randn(2, 5, 8, generator=g).to(dtype)
    bank.tokens[(2, "up_blocks.1.attn1")] = torch.randn(2, 3, 4, generator=g).to(dtype)
    before, size = {k: t.clone() for k, t in bank.tokens.items()}, bank.nbytes()
    packed = bank.pack()
    assert packed.nbytes == size and not bank.tokens  # moved, not copied
    packed.data.setflags(write=False)  # as Ray hands it over from the object store
    back = csa.IdBank.unpack(packed)
    assert back.character == "Tom" and set(back.tokens) == set(before)
    for key, t in before.items():
        assert back.tokens[key].dtype == dtype and torch.equal(back.tokens[key], t)


def test_a_bank_of_mixed_dtypes_is_refused_rather_than_packed_wrong():
    bank = csa.IdBank("Tom")
    bank.tokens[(1, "a")] = torch.zeros(2, 3, 4, dtype=torch.float16)
    bank.tokens[(1, "b")] = torch.zeros(2, 3, 4, dtype=torch.float32)
    with pytest.raises(ValueError, match="mixes dtypes"):
        bank.pack()


def test_a_character_with_only_synthesized_identity_frames_writes_a_bank_and_shows_nothing(tmp_path, tiny_cache):
    story = write_story(tmp_path / "s.txt", ["[Tom] A boy with a red cap.", "[Ghost] A pale ghost in a sheet.", "",
                                             "[Tom] walks to school", "[Tom] and [Ghost] meet in the attic"])
    worker = worker_for(story, tmp_path / "out", tiny_cache, "storydiffusion")
    worker.begin_iteration(0, None, 0.0)
    ghost = worker.write_identity(0, "Ghost", share=True)
    assert ghost.batch.frames == [] and ghost.bank.nbytes > 0 and worker.identity_renders == 2


def test_a_bank_written_by_another_worker_gives_the_pixels_of_one_written_here(tmp_path, tiny_cache):
    """The shared-bank path (write once, fetch elsewhere) and the fallback (fetch fails: write here) agree."""
    story = write_story(tmp_path / "s.txt", TOM_LISA)
    writer = worker_for(story, tmp_path / "w", tiny_cache, "storydiffusion")
    writer.begin_iteration(0, None, 0.0)
    tom, lisa = (writer.write_identity(0, c, share=True) for c in ("Tom", "Lisa"))
    assert [r.frame for r in tom.batch.frames] == [0, 4] and [r.frame for r in lisa.batch.frames] == [1]
    assert writer.identity_renders == 4 and not writer.renderer.csa.banks  # share=True: the packed copy only
    readers = [BOTH, TOM_READS]

    def pixels(worker, banks):
        worker.begin_iteration(0, None, 0.0)
        batch = worker.render_batch(0, readers, banks)
        return [np.asarray(Image.open(Path(worker.spec.out_dir) / r.image_path)) for r in batch.frames]

    fetched = worker_for(story, tmp_path / "f", tiny_cache, "storydiffusion")
    shared = pixels(fetched, {"Tom": lambda: tom.bank, "Lisa": lambda: lisa.bank})
    assert (fetched.banks_fetched, fetched.identity_renders) == (2, 0)

    def lost():
        from storyadapter.engine.protocol import BankUnavailable

        raise BankUnavailable("ObjectLostError")

    local = worker_for(story, tmp_path / "l", tiny_cache, "storydiffusion")
    written_here = pixels(local, {"Tom": lost})  # Tom's fetch fails, Lisa has no bank on offer
    assert (local.banks_fetched, local.identity_renders) == (0, 4)
    for a, b in zip(shared, written_here):
        assert np.array_equal(a, b)
    # the identity frames a write phase shows are the ones a worker rendering them in place shows
    shown = np.asarray(Image.open(tmp_path / "w" / tom.batch.frames[1].image_path))
    assert np.array_equal(shown, frame_pixels(local, [4])[4])


def test_a_photo_reaches_only_the_frames_and_write_phase_of_its_character(tmp_path, tiny_cache):
    """In a CSA pass, Tom's photo changes Tom's identity and reading frames; Ana's (her bank included) stay."""
    from .helpers import EXAMPLES

    (tmp_path / "tom.png").write_bytes((EXAMPLES / "tom.png").read_bytes())
    story = write_story(tmp_path / "s.txt", [
        "[Tom] a boy with a red cap (photo: tom.png)", "[Ana] a girl with a blue scarf", "",
        "[Tom] walks to school", "[Ana] reads a book", "[Tom] eats an apple", "[Ana] paints a fence",
        "[Ana] sings a song", "[Tom] runs home", "[NC] an empty street",
    ])
    tom, ana = [0, 2, 5], [1, 3, 4]  # id_length=2: 0, 2 and 1, 3 are identity frames; 5 and 4 read the banks

    def pass_at(scale, out):
        worker = worker_for(story, tmp_path / out, tiny_cache, "storydiffusion")
        worker.begin_iteration(0, None, scale)
        batch = worker.render_batch(0, list(range(7)))
        return {r.frame: np.asarray(Image.open(tmp_path / out / r.image_path)) for r in batch.frames}

    with_photo, without = pass_at(0.3, "photo"), pass_at(0.0, "none")
    assert all(not np.array_equal(with_photo[f], without[f]) for f in tom)
    assert all(np.array_equal(with_photo[f], without[f]) for f in ana + [6])


def test_the_write_phase_decodes_its_frames_one_at_a_time(tmp_path, tiny_cache):
    """The write batch is fixed at id_length frames: decoding them together would be its GPU memory peak."""
    story = write_story(tmp_path / "s.txt", TOM_LISA)
    worker = worker_for(story, tmp_path / "out", tiny_cache, "storydiffusion", "render.batch_size=2")
    decoded = []
    real = worker.renderer.backbone.decode
    worker.renderer.backbone.decode = lambda latents: decoded.append(latents.shape[0]) or real(latents)
    worker.begin_iteration(0, None, 0.0)
    worker.write_identity(0, "Tom")
    worker.write_identity(0, "Lisa")
    assert decoded == [1, 1, 1, 1]  # id_length=2, each frame alone
    decoded.clear()
    worker.render_batch(0, [BOTH, NC])  # a read batch decodes as one, as every iteration does
    assert decoded == [2]
