"""The methods (`method=`): their names, how many refinements each renders, and the settings of consistent
self-attention (method=storydiffusion|hybrid). Torch-free, and the one definition of each: the config schema, the
launcher and the web UI's queue read them from here.

The driver plans the identity frames from CSASettings (story/identity.py) and the workers' attention processors
(attention/csa.py) apply them; neither side needs the other's imports to read them.
"""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("story_adapter", "storydiffusion", "hybrid")  # README, "Methods"; docs/methods.md


def refinements(method: str, iterations: int) -> int:
    """Refinement iterations after iteration 0 that `method` renders for render.iterations=`iterations`:
    storydiffusion is its one consistent pass (iter_00), nothing after it."""
    return 0 if method == "storydiffusion" else int(iterations)


@dataclass(frozen=True)
class CSASettings:
    id_length: int = 4
    sa32: float = 0.5
    sa64: float = 0.5
    plain_steps: int = 1
    early_steps: int = 20
    early_rate: float = 0.7
    late_rate: float = 0.9

    def rate(self, step: int) -> float:
        """Probability that a layer call at this denoising step uses CSA."""
        if step < self.plain_steps:
            return 0.0
        return self.early_rate if step < self.early_steps else self.late_rate


@dataclass(frozen=True)
class FreeUSettings:
    """FreeU's factors as diffusers' `enable_freeu(s1, s2, b1, b2)` takes them (config.FreeUConfig explains them)."""

    s1: float = 0.6
    s2: float = 0.4
    b1: float = 1.1
    b2: float = 1.2


def freeu_in(method: str, iteration: int) -> bool:
    """Whether method.freeu (when enabled) applies to `iteration`. FreeU comes with StoryDiffusion's pass: in
    storydiffusion and hybrid it serves the consistent pass (iteration 0) only, so hybrid's refinements render as
    story_adapter's; story_adapter has no such pass, and enabled by hand it serves every iteration."""
    return method == "story_adapter" or iteration == 0
