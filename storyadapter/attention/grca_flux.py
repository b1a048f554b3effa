"""Global Reference Cross-Attention on FLUX's double-stream blocks (XLabs IP-Adapter layout).

FLUX's IP-Adapter (diffusers' `FluxIPAdapterAttnProcessor`) adds to each double-stream block's image stream

    ip = scale * softmax(Q_img K_ip^T / sqrt(d)) V_ip

where Q_img are the image tokens' queries after the layer's RMS norm and before the rotary embedding, and K_ip/V_ip
come from the adapter's image tokens; the block adds `ip` to its image stream after the feed-forward. GRCA makes the
adapter's tokens those of all N references of the previous iteration (4 per reference, 4N in all) in ONE softmax,
exactly what diffusers computes when one adapter is fed the N embeddings as its images (ip_adapter_image_embeds of
shape (1, N, D)). The references are the same for every frame and step of an iteration, so K_ip/V_ip are projected
once per iteration (`set_references`).

The batch is laid out as in grca.py: [unconditional; conditional] with true CFG (render.guidance_scale > 1, two
branches), else the conditional frames alone (FLUX.1-dev's distilled guidance: one pass). The unconditional branch
sees the tokens of an all-zero embedding, as on SDXL. Per-frame weights (references.py) add `ref_bias` to the
conditional branch's logits and multiply its term by `ref_gate`, as on SDXL. The two SDPA layouts of grca.py
(`joint`) are the same here: each branch attends in its own call, so render.reference_sdpa changes nothing on FLUX.

With no references (scale 0, iteration 0) the layer is diffusers' plain `FluxAttnProcessor`, so pixels are
exactly those of `FluxPipeline` without an adapter.
"""

from __future__ import annotations

import torch
from torch import nn


class FluxGlobalReferenceAttnProcessor:
    """A double-stream block's joint attention, plus one softmax over all reference tokens for its image stream.

    Op for op diffusers' `FluxIPAdapterAttnProcessor` (for the reference term) and `FluxAttnProcessor` (without
    references), with the adapter's keys and values computed once per iteration instead of on every call.
    Not an nn.Module, so the adapter's layers it holds are not the transformer's submodules: model.offload's hooks
    move the transformer between host and GPU, while these stay where the backbone put them.
    """

    def __init__(self, to_k_ip: nn.Linear, to_v_ip: nn.Linear, heads: int, joint: bool = False):
        from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

        self.to_k_ip = to_k_ip
        self.to_v_ip = to_v_ip
        self.heads = heads
        self.joint = joint  # no effect on FLUX (module docstring)
        self.scale = 0.0
        self.branches = 1  # [unconditional; conditional] halves (true CFG) or 1, conditional only
        self._plain = FluxAttnProcessor()
        self._ref: tuple[torch.Tensor, ...] | None = None  # (k_cond, v_cond, k_uncond, v_uncond), each (1, T, heads, d)
        self.ref_bias: torch.Tensor | None = None  # (batch, 1, 1, 4N) logits added on the conditional branch
        self.ref_gate: torch.Tensor | None = None  # (branches * batch, 1, 1, 1) per-frame multiplier of the term

    @torch.no_grad()
    def set_references(self, cond_tokens: torch.Tensor | None, uncond_tokens: torch.Tensor | None):
        """Project reference tokens (1, T, C) to keys/values once; None clears them."""
        if cond_tokens is None:
            self._ref = None
            return
        self._ref = tuple(proj(tokens).unflatten(-1, (self.heads, -1))
                          for tokens in (cond_tokens, uncond_tokens) for proj in (self.to_k_ip, self.to_v_ip))

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if self.scale == 0.0 or self._ref is None or encoder_hidden_states is None:
            return self._plain(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections, apply_rotary_emb

        # diffusers' FluxIPAdapterAttnProcessor, the joint text+image attention
        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query.unflatten(-1, (attn.heads, -1)))
        key = attn.norm_k(key.unflatten(-1, (attn.heads, -1)))
        value = value.unflatten(-1, (attn.heads, -1))
        ip_query = query  # the image tokens' queries, before the rotary embedding
        encoder_query = attn.norm_added_q(encoder_query.unflatten(-1, (attn.heads, -1)))
        encoder_key = attn.norm_added_k(encoder_key.unflatten(-1, (attn.heads, -1)))
        encoder_value = encoder_value.unflatten(-1, (attn.heads, -1))
        query = torch.cat([encoder_query, query], dim=1)
        key = torch.cat([encoder_key, key], dim=1)
        value = torch.cat([encoder_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        out = out.flatten(2, 3).to(query.dtype)
        encoder_hidden_states, hidden_states = out.split_with_sizes(
            [encoder_hidden_states.shape[1], out.shape[1] - encoder_hidden_states.shape[1]], dim=1)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states, self._reference_term(ip_query, hidden_states)

    def _reference_term(self, ip_query: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """scale * gate * softmax(Q K_ref^T / sqrt(d) + bias) V_ref, per branch of the batch."""
        k_cond, v_cond, k_uncond, v_uncond = self._ref
        if self.branches == 1:
            ref = _attend(ip_query, k_cond, v_cond, self.ref_bias)
        else:
            half = ip_query.shape[0] // 2
            ref = torch.cat([_attend(ip_query[:half], k_uncond, v_uncond, None),
                             _attend(ip_query[half:], k_cond, v_cond, self.ref_bias)])
        ref = ref.reshape(ip_query.shape[0], -1, ip_query.shape[2] * ip_query.shape[3]).to(ip_query.dtype)
        # diffusers sums its adapters' terms into zeros; 0 + x is x exactly, so that step is left out.
        scale = self.scale if self.ref_gate is None else self.scale * self.ref_gate[:, :, 0].to(ref.dtype)
        return scale * ref


def _attend(query, key, value, bias):
    """(B, S, heads, d) queries against one shared (1, T, heads, d) key/value set, broadcast over the batch;
    `bias`: None or additive logits (B, 1, 1, T)."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    batch = query.shape[0]
    key, value = (t.to(query.dtype).expand(batch, -1, -1, -1) for t in (key, value))
    mask = None if bias is None else bias.to(query.dtype)
    return dispatch_attention_fn(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)
