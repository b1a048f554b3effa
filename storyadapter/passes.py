"""Which settings each iteration renders with, and the denoiser evaluations that plan costs.

Iterations 0 .. L-1 only feed the next reference bank, so with render.draft.* they are drafts; the last one is
what a person sees and renders with render.* (unless render.draft.final). Torch- and Ray-free: the driver,
the benchmarks and the tests count the same plan the workers render.
"""

from __future__ import annotations


def drafting(render) -> bool:
    """Whether render.draft.* sets anything (else every iteration renders with render.*, as before drafts)."""
    return any(getattr(render.draft, k) is not None for k in ("steps", "scheduler", "guidance_scale", "height", "width", "lora", "vae"))


def is_draft(render, iteration: int, last: int) -> bool:
    """Whether `iteration` of a run whose last iteration is `last` renders with render.draft.*."""
    return drafting(render) and (render.draft.final or iteration < last)


def branches(settings) -> int:
    """Denoiser passes per step and frame: two with classifier-free guidance, one at a scale of 1 or less."""
    return 2 if settings.guidance_scale > 1.0 else 1


def refine_steps(steps: int, strength: float) -> int:
    """Denoising steps a warm-started refinement runs (render.refine_strength): the last int(strength x steps) of
    its pass's `steps`, as diffusers' img2img `get_timesteps` counts them."""
    return min(int(steps * strength), steps)


def steps_of(settings, iteration: int) -> int:
    """Denoising steps of `iteration` at its pass's `settings`: a refinement (iteration >= 1) with
    render.refine_strength runs only its last steps; iteration 0 always starts from noise."""
    if iteration >= 1 and settings.refine_strength is not None:
        return refine_steps(settings.steps, settings.refine_strength)
    return settings.steps


def unet_evaluations(render, frames: int, last: int, first: int = 0) -> int:
    """Frames through the denoiser (one per guidance branch and step) for iterations `first` .. `last`."""
    total = 0
    for it in range(first, last + 1):
        s = render.for_pass(is_draft(render, it, last))
        total += frames * steps_of(s, it) * branches(s)
    return total


def frame_costs(render) -> tuple[int, int]:
    """Denoiser evaluations per frame of a draft and of a last pass (the ETA scales one kind's rate by them); with
    render.refine_strength, a refinement's (most iterations are refinements)."""
    draft, last = render.for_pass(drafting(render)), render.for_pass(drafting(render) and render.draft.final)
    return steps_of(draft, 1) * branches(draft), steps_of(last, 1) * branches(last)
