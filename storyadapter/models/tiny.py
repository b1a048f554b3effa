"""A random-weight pipeline with SDXL's architecture, built offline and saved like real weights.

Saved in the same layout as the hub repos (a diffusers SDXL folder, and an IP-Adapter folder with
`sdxl_models/ip-adapter_sdxl.safetensors` + `sdxl_models/image_encoder`), so loading goes through the
exact `from_pretrained` + `load_ip_adapter` path that real weights use.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

from .build_once import build_once
from .clip_vocab import VOCAB_SIZE, write_tokenizer_files

log = logging.getLogger(__name__)

LAYOUT_VERSION = "tiny-v2"  # bump when the architecture below changes, so stale caches are rebuilt

# Tiny dims that keep every SDXL mechanism: two text encoders (hidden states concatenated),
# pooled text + time ids ("text_time" addition embedding), a VAE with 8x downsampling,
# cross-attention transformer blocks, and a projected CLIP vision encoder for IP-Adapter.
# The two text encoders differ in width, as in SDXL (768 vs 1280): diffusers' single-file loader tells them apart
# by their widths, so equal ones would load a checkpoint's first encoder into the second.
TE1_HIDDEN, TE2_HIDDEN, TE2_PROJ = 32, 48, 32
CROSS_DIM = TE1_HIDDEN + TE2_HIDDEN
TIME_EMBED = 8
IMAGE_EMBED_DIM = 32
IP_TOKENS = 4


def default_cache_root() -> Path:
    return Path(os.environ.get("STORYADAPTER_CACHE", Path.home() / ".cache" / "storyadapter"))


def tiny_dir(root: Path | None = None) -> Path:
    return Path(root or default_cache_root()) / LAYOUT_VERSION


def _text_encoders():
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    common = dict(vocab_size=VOCAB_SIZE, max_position_embeddings=77, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
    te1 = CLIPTextModel(CLIPTextConfig(hidden_size=TE1_HIDDEN, hidden_act="quick_gelu", **common))
    te2 = CLIPTextModelWithProjection(
        CLIPTextConfig(hidden_size=TE2_HIDDEN, projection_dim=TE2_PROJ, hidden_act="gelu", **common)
    )
    return te1, te2


def _unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 4, 4),
        cross_attention_dim=CROSS_DIM,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=6 * TIME_EMBED + TE2_PROJ,
        norm_num_groups=8,
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.13025,
    )


def _image_encoder():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(
        CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         image_size=32, patch_size=8, projection_dim=IMAGE_EMBED_DIM, hidden_act="gelu")
    )


def _ip_adapter_state(unet) -> dict[str, torch.Tensor]:
    """IP-Adapter weights in the original checkpoint's key layout (what load_ip_adapter expects)."""
    state = {
        "image_proj.proj.weight": torch.randn(IP_TOKENS * CROSS_DIM, IMAGE_EMBED_DIM) * 0.1,
        "image_proj.proj.bias": torch.zeros(IP_TOKENS * CROSS_DIM),
        "image_proj.norm.weight": torch.ones(CROSS_DIM),
        "image_proj.norm.bias": torch.zeros(CROSS_DIM),
    }
    # The checkpoint numbers every attention processor; cross-attention ones are the odd ids.
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        hidden = _hidden_size(unet, name)
        state[f"ip_adapter.{key_id}.to_k_ip.weight"] = torch.randn(hidden, CROSS_DIM) * 0.1
        state[f"ip_adapter.{key_id}.to_v_ip.weight"] = torch.randn(hidden, CROSS_DIM) * 0.1
        key_id += 2
    return state


def _hidden_size(unet, name: str) -> int:
    channels = unet.config.block_out_channels
    if name.startswith("mid_block"):
        return channels[-1]
    block = int(name.split(".")[1])
    return list(reversed(channels))[block] if name.startswith("up_blocks") else channels[block]


def build(directory: Path, seed: int = 0) -> Path:
    """Build and save the tiny pipeline + IP-Adapter under `directory` (idempotent, safe if run concurrently)."""
    from ..logs import quiet_libraries

    quiet_libraries()
    return build_once(directory, LAYOUT_VERSION, lambda staging: _write_model(staging, Path(directory), seed))


def _write_model(staging: Path, directory: Path, seed: int) -> None:
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPTokenizer

    log.info("building tiny SDXL-architecture model in %s", directory)
    torch.manual_seed(seed)
    tok_dir = write_tokenizer_files(staging / "tokenizer-files")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    # SDXL's second tokenizer pads with "!" (id 0), unlike the first; keep that difference.
    tokenizer_2 = CLIPTokenizer.from_pretrained(tok_dir, pad_token="!")
    te1, te2 = _text_encoders()
    unet = _unet()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=_vae(), text_encoder=te1, text_encoder_2=te2, tokenizer=tokenizer,
                                     tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.save_pretrained(staging / "sdxl")
    ip_dir = staging / "ip-adapter" / "sdxl_models"
    ip_dir.mkdir(parents=True)
    save_file(_ip_adapter_state(unet), ip_dir / "ip-adapter_sdxl.safetensors")
    _image_encoder().save_pretrained(ip_dir / "image_encoder")
    CLIPImageProcessor(size=32, crop_size=32).save_pretrained(ip_dir / "image_encoder")
    from .tiny_clip import build_tiny_clip

    build_tiny_clip(staging / "eval_clip", seed=seed)
    shutil.rmtree(tok_dir)


# A random AutoencoderTiny (TAESDXL's layout, narrower) for render.draft.vae in tests: its own cache folder, so the
# tiny model's cache and pixels stay as they are.
DRAFT_VAE_VERSION = "tiny-taesd-v1"


def draft_vae_dir(root: Path | None = None) -> Path:
    return Path(root or default_cache_root()) / DRAFT_VAE_VERSION


def build_draft_vae(directory: Path, seed: int = 0) -> Path:
    """Build and save the tiny AutoencoderTiny under `directory` (a diffusers folder; idempotent)."""

    def fill(staging: Path) -> None:
        from diffusers import AutoencoderTiny

        with torch.random.fork_rng():  # seeded without touching the caller's global generator
            torch.manual_seed(seed)
            vae = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                                  num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))
        vae.save_pretrained(staging)

    return build_once(directory, DRAFT_VAE_VERSION, fill)
