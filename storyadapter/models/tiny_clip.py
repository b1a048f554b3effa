"""A random-weight tiny CLIP saved like a hub checkpoint, so metrics and tests run offline on CPU.

Its numbers mean nothing semantically; it exists so the evaluation code path (load with
`from_pretrained`, tokenize with the real BPE vocabulary, preprocess, embed) is exercised for real.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import UserError
from .clip_vocab import VOCAB_SIZE, write_tokenizer_files

# Files whose presence means a previous build finished (the directory is renamed into place last).
_COMPLETE = ("config.json", "model.safetensors", "vocab.json", "merges.txt", "preprocessor_config.json")
IMAGE_SIZE = 32


def is_complete(directory: Path) -> bool:
    return all((Path(directory) / name).is_file() for name in _COMPLETE)


def build_tiny_clip(directory: Path, seed: int = 0) -> Path:
    """Write a tiny CLIPModel + CLIPTokenizer + CLIPImageProcessor to `directory`; deterministic in `seed`."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    directory = Path(directory)
    if is_complete(directory):
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent builders never see (or leave) a half-written model.
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        config = CLIPConfig(
            text_config=dict(
                vocab_size=VOCAB_SIZE,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=77,
                bos_token_id=VOCAB_SIZE - 2,
                eos_token_id=VOCAB_SIZE - 1,
                pad_token_id=VOCAB_SIZE - 1,
            ),
            vision_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=IMAGE_SIZE,
                patch_size=8,
            ),
            projection_dim=32,
        )
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
        model.save_pretrained(tmp)
        write_tokenizer_files(tmp)
        CLIPImageProcessor(
            size={"shortest_edge": IMAGE_SIZE},
            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        ).save_pretrained(tmp)
        try:
            os.rename(tmp, directory)
        except OSError:
            # Someone else finished first (target exists and is non-empty): theirs is equivalent.
            if not is_complete(directory):
                raise UserError(f"{directory}: exists but is not a complete tiny CLIP; remove it to rebuild") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory
