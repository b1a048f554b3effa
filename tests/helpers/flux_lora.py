"""A LoRA for model=flux-tiny, made in the test (test_flux_config.py), through diffusers' FLUX LoRA saving."""

from __future__ import annotations

from pathlib import Path

import torch


def build_flux_lora(folder: Path, out: Path, std: float = 0.5, seed: int = 0) -> Path:
    """A rank-4 LoRA on the tiny transformer's attention projections (double- and single-stream), random B."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer")
    torch.manual_seed(seed)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"]))
    for name, param in transformer.named_parameters():
        if "lora_B" in name:  # peft starts B at zero (a no-op LoRA); a random B makes it change the output
            torch.nn.init.normal_(param, std=std)
    FluxPipeline.save_lora_weights(out, transformer_lora_layers=get_peft_model_state_dict(transformer))
    return out / "pytorch_lora_weights.safetensors"
