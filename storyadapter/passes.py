"""Which settings each iteration renders with, and the denoiser evaluations that plan costs.

Iterations 0 .. L-1 only feed the next reference bank, so with render.draft.* they are drafts; the last one is
what a person sees and renders with render.* (unless render.draft.final). Torch- and Ray-free: the driver,
the benchmarks and the tests count the same plan the workers render.
"""

from __future__ import annotations


def drafting(render) -> bool:
    """Whether render.draft.* sets anything (else every iteration renders with render.*, as before drafts)."""
    return any(getattr(render.draft, k) is not None for k in ("steps", "scheduler", "guidance_scale", "height", "width", "lora"))


def is_draft(render, iteration: int, last: int) -> bool:
    """Whether `iteration` of a run whose last iteration is `last` renders with render.draft.*."""
    return drafting(render) and (render.draft.final or iteration < last)


def branches(settings) -> int:
    """Denoiser passes per step and frame: two with classifier-free guidance, one at a scale of 1 or less."""
    return 2 if settings.guidance_scale > 1.0 else 1


def unet_evaluations(render, frames: int, last: int, first: int = 0) -> int:
    """Frames through the denoiser (one per guidance branch and step) for iterations `first` .. `last`."""
    total = 0
    for it in range(first, last + 1):
        s = render.for_pass(is_draft(render, it, last))
        total += frames * s.steps * branches(s)
    return total


def frame_costs(render) -> tuple[int, int]:
    """Denoiser evaluations per frame of a draft and of a last pass (the ETA scales one kind's rate by them)."""
    draft, last = render.for_pass(drafting(render)), render.for_pass(drafting(render) and render.draft.final)
    return draft.steps * branches(draft), last.steps * branches(last)
