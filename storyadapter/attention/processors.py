"""diffusers' attention plumbing, written once for every mechanism in this folder (grca.py, csa.py).

A processor of diffusers' `Attention` does the same work around its one interesting line: norms, the q/k/v
projections split into heads, scaled dot-product attention, heads merged, the output projection, residual and
rescale. Here that work is op for op `AttnProcessor2_0`'s, so a mechanism whose extra term is off computes
exactly what diffusers does. A mechanism writes only what its queries attend to:
  * `CrossAttentionProcessor.attend` (GRCA): queries of the whole batch against keys and values of its choosing,
    `text_attention` being diffusers' own;
  * `attend_to` (CSA): one frame's queries against a context of its choosing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(batch, tokens, heads * d) -> (batch, heads, tokens, d)."""
    batch, tokens, inner = x.shape
    return x.view(batch, tokens, heads, inner // heads).transpose(1, 2)


def output(attn, out: torch.Tensor, residual: torch.Tensor, dtype: torch.dtype, spatial: tuple[int, ...] | None = None):
    """(batch, heads, tokens, d) attention output -> the layer's output: heads merged, output projection,
    back to (batch, channels, height, width) for a `spatial` input, residual, rescale."""
    batch = out.shape[0]
    hidden_states = out.transpose(1, 2).reshape(batch, -1, out.shape[1] * out.shape[-1]).to(dtype)
    hidden_states = attn.to_out[0](hidden_states)
    hidden_states = attn.to_out[1](hidden_states)
    if spatial is not None:
        hidden_states = hidden_states.transpose(-1, -2).reshape(spatial)
    if attn.residual_connection:
        hidden_states = hidden_states + residual
    return hidden_states / attn.rescale_output_factor


def context_attention(attn, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Split-head queries against keys and values projected from `context` (B, T, C) by the layer's own to_k/to_v."""
    key, value = split_heads(attn.to_k(context), attn.heads), split_heads(attn.to_v(context), attn.heads)
    return F.scaled_dot_product_attention(query, key, value)


def text_attention(attn, query: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Cross-attention to the encoder states `text`, normed first where the layer norms them (`norm_cross`)."""
    context = attn.norm_encoder_hidden_states(text) if attn.norm_cross else text
    return context_attention(attn, query, context)


def attend_to(attn, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """The layer's output for queries from `x` and keys/values from `context` (both already normed, (B, T, C))."""
    query = split_heads(attn.to_q(x), attn.heads)
    return output(attn, context_attention(attn, query, context), x, query.dtype)


class CrossAttentionProcessor(nn.Module):
    """diffusers' cross-attention plumbing (norms, head split, output projection, residual) around `attend`.

    Subclasses decide what the queries attend to; this wrapper matches `AttnProcessor2_0` op for op.
    """

    def attend(self, attn, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """(batch, heads, tokens, head_dim) queries and the raw encoder states -> attention output, same shape."""
        raise NotImplementedError

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
        if attention_mask is not None:
            raise NotImplementedError("attention masks are not used by SDXL cross-attention")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial = None
        if hidden_states.ndim == 4:
            spatial = hidden_states.shape
            batch, channels, height, width = spatial
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = split_heads(attn.to_q(hidden_states), attn.heads)
        return output(attn, self.attend(attn, query, encoder_hidden_states), residual, query.dtype, spatial)
