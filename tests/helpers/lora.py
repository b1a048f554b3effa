"""A LoRA for the tiny model, made in the test (test_checkpoints.py, test_swift.py)."""

from __future__ import annotations

from pathlib import Path

import torch


def build_lora(folder: Path, std: float = 0.5, seed: int = 0) -> Path:
    """A rank-4 LoRA on every attention projection of the tiny UNet, trained by nobody: random B, so it matters."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    torch.manual_seed(seed)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for name, param in pipe.unet.named_parameters():
        if "lora_B" in name:  # peft starts B at zero (a no-op LoRA); a random B makes it change the output
            torch.nn.init.normal_(param, std=std)
    out = folder.parent / f"lora-{seed}"
    StableDiffusionXLPipeline.save_lora_weights(out, unet_lora_layers=get_peft_model_state_dict(pipe.unet))
    return out / "pytorch_lora_weights.safetensors"
