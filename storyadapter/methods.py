"""The settings of consistent self-attention (method=storydiffusion|hybrid), torch-free.

The driver plans the identity frames from them (story/identity.py) and the workers' attention processors
(attention/csa.py) apply them; neither side needs the other's imports to read them.
"""

from __future__ import annotations

from dataclasses import dataclass


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
