"""Identity frames for consistent self-attention: which frames build each character's ID bank.

A character's identity frames are the first `id_length` frames that name only that character. A
character with fewer gets prompts synthesized from its description (and the story's style, applied like
any frame's), e.g. "Ana, a tall chef with curly red hair, close-up portrait, facing the camera".
Those are rendered for the bank only and never shown in the story. Each character's plan depends on
nothing but its own frames and description, so changing one character never moves another's pixels.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from . import schedule
from ..errors import UserError
from ..methods import CSASettings
from .model import Story
from .styles import get_style

# Views for synthesized identity prompts: varied enough that the bank is not one picture repeated.
VIEWS = (
    "close-up portrait, facing the camera",
    "full body, standing, front view",
    "half body, three-quarter view",
    "side view, walking",
    "smiling, looking to the left",
    "full body, sitting",
)


@dataclass(frozen=True)
class IdentityFrame:
    prompt: str  # unstyled
    frame: int | None  # story frame index, or None when synthesized
    seed_key: str  # names this frame's noise independently of the other characters


@dataclass(frozen=True)
class IdentityPlan:
    character: str
    frames: tuple[IdentityFrame, ...]


def derived_seed(seed: int, key: str) -> int:
    """A seed for one named random stream (a character's masks, a frame's gates, a synthesized frame's noise)."""
    return (int(seed) * 1_000_003 + zlib.crc32(key.encode("utf-8"))) % (2**63)


def plan_identities(story: Story, id_length: int) -> dict[str, IdentityPlan]:
    """Identity frames of every character that some frame names, in the story's character order."""
    named = {c for f in story.frames for c in f.characters}
    order = [c for c in story.characters if c in named] + sorted(named - set(story.characters))
    plans = {}
    for name in order:
        solo = [f for f in story.frames if f.characters == (name,)][:id_length]
        frames = [IdentityFrame(f.prompt, f.index, f"frame:{f.index}") for f in solo]
        description = story.characters.get(name, "").strip().rstrip(" .;,")
        if len(frames) < id_length:
            if not frames and not description:
                raise UserError(f"{story.source}: character {name!r} has no frame of its own and no description, "
                                "so there is nothing to build its identity frames from (method=storydiffusion|hybrid)")
            about = f"{name}, {description}" if description else frames[0].prompt
            for k in range(id_length - len(frames)):
                frames.append(IdentityFrame(f"{about}, {VIEWS[k % len(VIEWS)]}", None, f"identity:{name}:{k}"))
        plans[name] = IdentityPlan(name, tuple(frames))
    return plans


@dataclass(frozen=True)
class IdentityBatch:
    """One character's write phase as a worker renders it: styled prompts, starting noise, mask/gate seed.

    The noise is one of two kinds. seed_policy=shared, as upstream: the batch starts from ONE draw of
    len(prompts) latents from one generator seeded with `batch_seed` (upstream writes the identity images in one
    pipeline call with one generator, so each gets its own slice of one draw). per_frame: frame i starts from
    `seeds[i]` alone.
    """

    character: str
    prompts: tuple[tuple[str, str], ...]  # (prompt, negative) after the style
    frames: tuple[int | None, ...]  # story frame shown from this batch, None for a synthesized one
    seeds: tuple[int, ...]  # per frame, under per_frame; empty under shared
    draw_seed: int
    batch_seed: int | None = None  # under shared: the seed of the batch's one draw


@dataclass(frozen=True)
class ConsistentPass:
    """Iteration 0 by consistent self-attention (method=storydiffusion|hybrid), picklable for the workers."""

    settings: CSASettings
    identities: tuple[IdentityBatch, ...]
    characters: tuple[tuple[str, ...], ...]  # per story frame: whose banks it reads
    draw_seeds: tuple[int, ...]  # per story frame: its gate draws

    def owner_of(self, frame: int) -> IdentityBatch | None:
        return next((b for b in self.identities if frame in b.frames), None)

    def owned(self, character: str) -> IdentityBatch:
        """`character`'s write batch."""
        return next(b for b in self.identities if b.character == character)


def consistent_pass(story: Story, settings: CSASettings, seed: int, seed_policy: str) -> ConsistentPass:
    """Everything a worker needs for the CSA pass; every actor derives the same banks from it."""
    style = get_style(story.style).apply  # synthesized prompts get the story's style like any frame

    shared = seed_policy == "shared"
    schedule.frame_seed(seed, seed_policy, 0)  # refuses an unknown policy here, not in a worker

    def noise(f: IdentityFrame) -> int:
        # Story frames keep their own noise (their own seed, when the story gives one); synthesized ones get noise
        # of their own under per_frame.
        if f.frame is not None:
            return schedule.frame_seed(seed, seed_policy, f.frame, story.frames[f.frame].seed)
        return schedule.frame_seed(seed, seed_policy, 0) if shared else derived_seed(seed, f.seed_key)

    def one_draw(plan) -> bool:
        # shared: the batch starts from one draw, as upstream; a frame with its own seed in the story (a reroll)
        # makes each of its batch's frames start from its own seed instead.
        return shared and not any(f.frame is not None and story.frames[f.frame].seed is not None for f in plan.frames)

    # shared: upstream seeds one generator with the seed for each character's batch, so every character's batch
    # is the same draw (gradio_app_sdxl_specific_id_low_vram.py; docs/methods.md cites the lines).
    batches = tuple(
        IdentityBatch(
            character=name,
            prompts=tuple(style(f.prompt) for f in plan.frames),
            frames=tuple(f.frame for f in plan.frames),
            seeds=() if one_draw(plan) else tuple(noise(f) for f in plan.frames),
            draw_seed=derived_seed(seed, f"write:{name}"),
            batch_seed=schedule.frame_seed(seed, seed_policy, 0) if one_draw(plan) else None,
        )
        for name, plan in plan_identities(story, settings.id_length).items()
    )
    return ConsistentPass(
        settings=settings,
        identities=batches,
        characters=tuple(f.characters for f in story.frames),
        draw_seeds=tuple(derived_seed(seed, f"read:{f.index}") for f in story.frames),
    )

