"""SDXL prompt encoding that accepts prompts longer than CLIP's 77 tokens.

Long prompts are split into windows of 75 tokens, each wrapped in BOS/EOS and padded to 77 like a
normal prompt, encoded separately and concatenated along the sequence axis (the UNet's
cross-attention takes any length). The pooled embedding comes from the first window. A prompt of
at most 75 tokens gives exactly what `StableDiffusionXLPipeline.encode_prompt` gives.
"""

from __future__ import annotations

import torch

from .base import TextEmbedding

WINDOW = 75  # 77 minus BOS and EOS


def count_windows(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False, truncation=False).input_ids
    return max(1, -(-len(ids) // WINDOW))


def _window_ids(tokenizer, text: str, windows: int) -> torch.Tensor:
    ids = tokenizer(text, add_special_tokens=False, truncation=False).input_ids
    rows = []
    for w in range(windows):
        chunk = ids[w * WINDOW : (w + 1) * WINDOW]
        row = [tokenizer.bos_token_id, *chunk, tokenizer.eos_token_id]
        rows.append(row + [tokenizer.pad_token_id] * (WINDOW + 2 - len(row)))
    return torch.tensor(rows, dtype=torch.long)


@torch.no_grad()
def _encode_one(pipe, text: str, windows: int) -> tuple[torch.Tensor, torch.Tensor]:
    hidden, pooled = [], None
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = _window_ids(tokenizer, text, windows).to(encoder.device)
        out = encoder(ids, output_hidden_states=True)
        # SDXL conditions on the penultimate layer of both encoders and the pooled output of the second.
        hidden.append(out.hidden_states[-2].reshape(1, -1, out.hidden_states[-2].shape[-1]))
        pooled = out[0][:1]
    return torch.cat(hidden, dim=-1), pooled


def encode(pipe, prompt: str, negative: str, windows: int) -> TextEmbedding:
    tokens, pooled = _encode_one(pipe, prompt, windows)
    if negative.strip() == "" and pipe.config.force_zeros_for_empty_prompt:
        neg_tokens, neg_pooled = torch.zeros_like(tokens), torch.zeros_like(pooled)
    else:
        neg_tokens, neg_pooled = _encode_one(pipe, negative, windows)
    return TextEmbedding(tokens, pooled, neg_tokens, neg_pooled)


def story_windows(pipe, texts: list[str]) -> int:
    """Windows used for every frame of a story, so a frame's conditioning never depends on its batch."""
    return max(count_windows(tok, t) for t in texts for tok in (pipe.tokenizer, pipe.tokenizer_2))
