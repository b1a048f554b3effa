"""model=flux-tiny: random weights with FLUX.1-dev's architecture in miniature, built offline and saved like the hub.

Three folders in the hub repos' layouts, so loading goes through the same `FluxPipeline.from_pretrained` +
`load_ip_adapter` path as real weights (models/flux_loading.py):
  * `flux/`: a diffusers FLUX pipeline (black-forest-labs/FLUX.1-dev's layout): a FluxTransformer2DModel with
    double- and single-stream blocks and the guidance embedding (dev is guidance-distilled), CLIP's text encoder
    with the real CLIP vocabulary (clip_vocab.py), a T5 encoder with a T5 tokenizer made offline (t5_vocab.py), a
    16-channel VAE with FLUX's scaling and shift, and FLUX.1-dev's flow-matching Euler scheduler config;
  * `ip-adapter/ip_adapter.safetensors`: XLabs-AI/flux-ip-adapter-v2's key names (`ip_adapter_proj_model.*`,
    `double_blocks.N.processor.ip_adapter_double_stream_{k,v}_proj.*`), so diffusers' XLabs converter runs;
  * `clip-vision/`: the image encoder, a CLIPVisionModelWithProjection (openai/clip-vit-large-patch14's class).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from .build_once import build_once
from .clip_vocab import VOCAB_SIZE as CLIP_VOCAB_SIZE, write_tokenizer_files as write_clip_tokenizer
from .tiny import default_cache_root
from . import t5_vocab

log = logging.getLogger(__name__)

LAYOUT_VERSION = "flux-tiny-v1"  # bump when the architecture below changes, so stale caches are rebuilt

CLIP_HIDDEN = 32  # CLIP's pooled vector -> the transformer's pooled projection (768 in FLUX)
T5_DIM = 32  # T5's width = the transformer's joint attention dim (4096 in FLUX)
HEADS, HEAD_DIM = 2, 8  # 24 x 128 in FLUX
ROPE_AXES = (2, 2, 4)  # sums to HEAD_DIM, as (16, 56, 56) sums to 128
LATENT_CHANNELS = 16
IMAGE_EMBED_DIM = 32  # CLIP ViT-L/14's projection: 768
IP_TOKENS = 4  # diffusers' converter reads 4 tokens per image unless the projection has 16 x 4096 rows

# FLUX.1-dev's scheduler/scheduler_config.json (flow matching, resolution-dependent shift).
DEV_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                     base_image_seq_len=256, max_image_seq_len=4096)
# FLUX.1-dev's vae/config.json
DEV_VAE_SCALING, DEV_VAE_SHIFT = 0.3611, 0.1159


def flux_tiny_dir(root: Path | None = None) -> Path:
    return Path(root or default_cache_root()) / LAYOUT_VERSION


def _transformer():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(patch_size=1, in_channels=LATENT_CHANNELS * 4, num_layers=2, num_single_layers=2,
                                  attention_head_dim=HEAD_DIM, num_attention_heads=HEADS, joint_attention_dim=T5_DIM,
                                  pooled_projection_dim=CLIP_HIDDEN, guidance_embeds=True, axes_dims_rope=ROPE_AXES)


def _clip_text():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=CLIP_VOCAB_SIZE, hidden_size=CLIP_HIDDEN, max_position_embeddings=77,
                                        num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                        hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=1))


def _t5():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=t5_vocab.vocab_size(), d_model=T5_DIM, d_kv=8, d_ff=64, num_layers=2,
                                   num_heads=4, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                                   dense_act_fn="gelu_new", is_gated_act=True, pad_token_id=0, eos_token_id=1))


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16, 16, 16),
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         latent_channels=LATENT_CHANNELS, layers_per_block=1, norm_num_groups=8, sample_size=64,
                         scaling_factor=DEV_VAE_SCALING, shift_factor=DEV_VAE_SHIFT,
                         use_quant_conv=False, use_post_quant_conv=False)


def _image_encoder():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(
        CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         image_size=32, patch_size=8, projection_dim=IMAGE_EMBED_DIM, hidden_act="quick_gelu"))


def xlabs_ip_adapter_state(double_blocks: int, inner_dim: int, joint_dim: int, embed_dim: int,
                           tokens: int = IP_TOKENS) -> dict[str, torch.Tensor]:
    """Random IP-Adapter weights under XLabs' key names: the image projection (CLIP embedding -> `tokens` tokens
    of the joint attention width) and, per double-stream block, the image tokens' key and value projections."""
    state = {
        "ip_adapter_proj_model.proj.weight": torch.randn(tokens * joint_dim, embed_dim) * 0.1,
        "ip_adapter_proj_model.proj.bias": torch.zeros(tokens * joint_dim),
        "ip_adapter_proj_model.norm.weight": torch.ones(joint_dim),
        "ip_adapter_proj_model.norm.bias": torch.zeros(joint_dim),
    }
    for block in range(double_blocks):
        for kv in ("k", "v"):
            prefix = f"double_blocks.{block}.processor.ip_adapter_double_stream_{kv}_proj"
            state[f"{prefix}.weight"] = torch.randn(inner_dim, joint_dim) * 0.3
            state[f"{prefix}.bias"] = torch.randn(inner_dim) * 0.1
    return state


def build(directory: Path, seed: int = 0) -> Path:
    """Build and save the tiny FLUX pipeline, IP-Adapter and image encoder under `directory` (idempotent, safe if
    run concurrently)."""
    from ..logs import quiet_libraries

    quiet_libraries()
    return build_once(directory, LAYOUT_VERSION, lambda staging: _write_model(staging, Path(directory), seed))


def _write_model(staging: Path, directory: Path, seed: int) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPTokenizer, T5TokenizerFast

    log.info("building tiny FLUX-architecture model in %s", directory)
    torch.manual_seed(seed)
    clip_dir = write_clip_tokenizer(staging / "clip-tokenizer-files")
    t5_dir = t5_vocab.write_tokenizer_files(staging / "t5-tokenizer-files")
    transformer = _transformer()
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**DEV_SCHEDULER), vae=_vae(),
                        text_encoder=_clip_text(), tokenizer=CLIPTokenizer.from_pretrained(clip_dir),
                        text_encoder_2=_t5(), tokenizer_2=T5TokenizerFast.from_pretrained(t5_dir),
                        transformer=transformer)
    pipe.save_pretrained(staging / "flux")
    ip_dir = staging / "ip-adapter"
    ip_dir.mkdir()
    save_file(xlabs_ip_adapter_state(len(transformer.transformer_blocks), transformer.inner_dim, T5_DIM, IMAGE_EMBED_DIM),
              ip_dir / "ip_adapter.safetensors")
    _image_encoder().save_pretrained(staging / "clip-vision")
    CLIPImageProcessor(size=32, crop_size=32).save_pretrained(staging / "clip-vision")
    from .tiny_clip import build_tiny_clip

    build_tiny_clip(staging / "eval_clip", seed=seed)
    shutil.rmtree(clip_dir)
    shutil.rmtree(t5_dir)
