"""Write a diffusers SDXL folder as one original-layout (Stability "sgm") .safetensors file, the form community
checkpoints come in: `model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE), `conditioner.embedders.0.*`
(CLIP ViT-L, Hugging Face names) and `conditioner.embedders.1.model.*` (OpenCLIP bigG names, fused q/k/v).

Written from the layout's definition, as the inverse of the names diffusers' single-file loader reads; tests
build a tiny checkpoint with it, and loading it back must give the folder's pixels exactly.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
               "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
               "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(rest: str) -> str:
    layer, _, param = rest.partition(".")
    return f"{_RESNET.get(layer, layer)}.{param}"


def unet_key(key: str, layers_per_block: int, up_has_attention: list[bool]) -> str:
    n = layers_per_block + 1  # LDM numbers down blocks' layers with room for the downsampler, up blocks' with one more
    module, _, param = key.rpartition(".")
    if module in _UNET_FIXED:
        return f"{_UNET_FIXED[module]}.{param}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = block * n + layer + 1
        return f"input_blocks.{index}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m[1]) + 1) * n}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = block * (layers_per_block + 1) + layer
        return f"output_blocks.{index}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        block = int(m[1])
        position = 2 if up_has_attention[block] else 1
        return f"output_blocks.{block * (layers_per_block + 1) + layers_per_block}.{position}.conv.{m[2]}"
    raise KeyError(f"no LDM name for UNet key {key}")


def vae_key(key: str, n_up: int) -> tuple[str, bool]:
    """(LDM name, whether the tensor is a 1x1 conv there)."""
    side, _, rest = key.partition(".")
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", rest):
        direction, block, layer, tail = m[1], int(m[2]), m[3], m[4].replace("conv_shortcut", "nin_shortcut")
        block = block if direction == "down" else n_up - 1 - block  # LDM counts decoder levels from the bottom
        return f"{side}.{direction}.{block}.block.{layer}.{tail}", False
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", rest):
        return f"{side}.down.{m[1]}.downsample.conv.{m[2]}", False
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", rest):
        return f"{side}.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}", False
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.*)", rest):
        return f"{side}.mid.block_{int(m[1]) + 1}.{m[2]}", False
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.*)\.(weight|bias)", rest):
        return f"{side}.mid.attn_1.{_VAE_ATTENTION[m[1]]}.{m[2]}", m[2] == "weight" and m[1] != "group_norm"
    return key.replace("conv_norm_out", "norm_out"), False


def open_clip_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModelWithProjection weights under OpenCLIP's names (fused attention in-projection)."""
    out = {}
    prefix = "text_model."
    for key, value in state.items():
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif key == f"{prefix}embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key == f"{prefix}embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key.startswith(f"{prefix}final_layer_norm."):
            out[key.replace(f"{prefix}final_layer_norm.", "ln_final.")] = value
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.*)", key):
            layer, rest = m[1], m[2]
            if m2 := re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest):
                if m2[1] == "q":  # fuse q, k, v once, when q comes by
                    parts = [state[f"{prefix}encoder.layers.{layer}.self_attn.{c}_proj.{m2[2]}"] for c in "qkv"]
                    out[f"transformer.resblocks.{layer}.attn.in_proj_{m2[2]}"] = torch.cat(parts)
                continue
            rest = (rest.replace("self_attn.out_proj", "attn.out_proj").replace("layer_norm1", "ln_1")
                    .replace("layer_norm2", "ln_2").replace("mlp.fc1", "mlp.c_fc").replace("mlp.fc2", "mlp.c_proj"))
            out[f"transformer.resblocks.{layer}.{rest}"] = value
        else:
            raise KeyError(f"no OpenCLIP name for text encoder key {key}")
    return out


def export(folder: Path, path: Path, dtype: torch.dtype | None = None) -> Path:
    """The SDXL pipeline in diffusers `folder` as one original-layout checkpoint at `path`."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file

    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    unet, vae = pipe.unet, pipe.vae
    state: dict[str, torch.Tensor] = {}
    up_attention = ["CrossAttn" in t for t in unet.config.up_block_types]
    for key, value in unet.state_dict().items():
        state["model.diffusion_model." + unet_key(key, unet.config.layers_per_block, up_attention)] = value
    for key, value in vae.state_dict().items():
        name, conv = vae_key(key, len(vae.config.up_block_types))
        state["first_stage_model." + name] = value[:, :, None, None] if conv else value
    for key, value in pipe.text_encoder.state_dict().items():
        name = key if key.startswith("text_model.") else f"text_model.{key}"  # transformers >= 5.6 drops the wrapper
        state["conditioner.embedders.0.transformer." + name] = value
    for key, value in open_clip_state(pipe.text_encoder_2.state_dict()).items():
        state["conditioner.embedders.1.model." + key] = value
    state = {k: (v.to(dtype) if dtype else v).contiguous() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def config_only(folder: Path, target: Path) -> Path:
    """A copy of a diffusers folder with its configs and tokenizers but no weights."""
    import shutil

    shutil.copytree(folder, target, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return target
