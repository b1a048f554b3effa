"""Global Reference Cross-Attention (Story-Adapter, Eq. 3-4).

Every frame attends to the image tokens of *all* reference frames in one joint softmax:

    out = softmax(Q K_txt^T / sqrt(d)) V_txt + scale * softmax(Q K_ref^T / sqrt(d)) V_ref

where K_ref/V_ref come from the 4*N IP-Adapter tokens of the N references. Those tokens are the
same for every frame and every denoising step of one iteration, so their keys and values are
computed once per iteration (`set_references`) and reused.

The reference term runs as two SDPA calls per layer (`split`: unconditional and conditional halves of the
CFG batch, K/V broadcast over each half) or one (`joint`: both halves in one call; the unconditional half's
4 tokens are tiled to the conditional half's 4N, which leaves its softmax unchanged up to rounding, and
each K/V is repeated over its half of the batch). `joint` saves a kernel launch and the concatenation of the
halves but does up to twice the reference-attention FLOPs; which wins depends on the device and on N.

Optional per-frame weights (references.py), set per batch and only on the conditional branch:

    softmax(Q K_ref^T / sqrt(d) + bias_f) V_ref,   multiplied by scale * gate_f

`bias_f` raises the logits of references that show frame f's characters; `gate_f` (0 or 1) switches the
reference branch of a frame off. The unconditional branch needs no bias: its references are N identical
copies of one all-zero embedding, and any weighting of identical copies gives the same average.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .processors import CrossAttentionProcessor, split_heads, text_attention


def _attend(query, key, value, bias=None):
    """Attention of a batch of queries to one shared set of keys/values (batch 1, broadcast).

    `bias`: None, or additive logits (batch, 1, 1, keys) broadcast over heads and queries.
    """
    batch = query.shape[0]
    key, value = (t.to(query.dtype).expand(batch, -1, -1, -1) for t in (key, value))
    if bias is None:
        return F.scaled_dot_product_attention(query, key, value)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=bias.to(query.dtype))


class GlobalReferenceAttnProcessor(CrossAttentionProcessor):
    """Cross-attention processor: text attention plus one softmax over all reference tokens.

    Holds the IP-Adapter's `to_k_ip`/`to_v_ip` projections for its layer. The batch is laid out as
    diffusers does for classifier-free guidance: the first half unconditional, the second conditional.
    """

    def __init__(self, to_k_ip: nn.Linear, to_v_ip: nn.Linear, heads: int, joint: bool = False):
        super().__init__()
        self.to_k_ip = to_k_ip
        self.to_v_ip = to_v_ip
        self.heads = heads
        self.joint = joint  # one SDPA call for both CFG halves (see the module docstring)
        self.scale = 0.0
        self.branches = 2  # the batch: [unconditional; conditional] halves (guidance) or 1, conditional only
        self._ref: tuple[torch.Tensor, ...] | None = None  # split: (k_cond, v_cond, k_uncond, v_uncond); joint: (k, v)
        self.ref_bias: torch.Tensor | None = None  # (batch, 1, 1, 4N) logits added on the conditional branch
        self.ref_gate: torch.Tensor | None = None  # (2 * batch, 1, 1, 1) per-frame multiplier of the branch

    @torch.no_grad()
    def set_references(self, cond_tokens: torch.Tensor | None, uncond_tokens: torch.Tensor | None):
        """Project reference tokens (1, T, C) to keys/values once; None clears them."""
        if cond_tokens is None:
            self._ref = None
            return
        k_cond, v_cond, k_uncond, v_uncond = (
            split_heads(proj(tokens), self.heads)
            for tokens in (cond_tokens, uncond_tokens)
            for proj in (self.to_k_ip, self.to_v_ip)
        )
        if not self.joint:
            self._ref = (k_cond, v_cond, k_uncond, v_uncond)
            return
        copies = k_cond.shape[2] // k_uncond.shape[2]  # N: cond has 4N tokens, uncond 4
        self._ref = tuple(
            torch.cat([uncond.repeat(1, 1, copies, 1), cond])  # (2, heads, 4N, d): batch 0 uncond, 1 cond
            for cond, uncond in ((k_cond, k_uncond), (v_cond, v_uncond))
        )

    def attend(self, attn, query, context):
        out = text_attention(attn, query, context)
        if self.scale != 0.0 and self._ref is not None:  # scale 0 stays bitwise equal to text-only SDXL
            half = query.shape[0] // 2
            if self.branches == 1:  # no guidance: the whole batch is conditional
                k_cond, v_cond = (t[-1:] for t in self._ref) if self.joint else self._ref[:2]
                ref = _attend(query, k_cond, v_cond, self.ref_bias)
            elif self.joint:
                key, value = (t.to(query.dtype).repeat_interleave(half, dim=0) for t in self._ref)
                bias = None if self.ref_bias is None else torch.cat([torch.zeros_like(self.ref_bias), self.ref_bias])
                ref = F.scaled_dot_product_attention(query, key, value, attn_mask=None if bias is None else bias.to(query.dtype))
            else:
                k_cond, v_cond, k_uncond, v_uncond = self._ref
                ref = torch.cat([_attend(query[:half], k_uncond, v_uncond), _attend(query[half:], k_cond, v_cond, self.ref_bias)])
            out = out + (self.scale if self.ref_gate is None else self.scale * self.ref_gate.to(ref.dtype)) * ref
        return out


def install(backbone, joint: bool = False) -> dict[str, GlobalReferenceAttnProcessor]:
    """Put a GRCA processor on each of the backbone's IP-Adapter cross-attention layers; returns them by layer name.

    `joint`: the reference term as one SDPA call for both guidance halves (render.reference_sdpa=joint).
    """
    processor = backbone.reference_processor_class() or GlobalReferenceAttnProcessor  # FLUX: grca_flux.py's
    processors = {name: processor(layer.to_k, layer.to_v, layer.heads, joint)
                  for name, layer in backbone.reference_layers().items()}
    backbone.set_attention_processors(processors)
    return processors
