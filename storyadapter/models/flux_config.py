"""FLUX.1-dev's and the XLabs FLUX IP-Adapter v2's architecture, as the constructor arguments of their components.

Torch-free constants (the FLUX analogue of sdxl_arch.py): `flux_random` builds the full-size random model from
them, and bench/model_flops.py and bench/flux_memory.py count its FLOPs and bytes on the meta device.
Where each number comes from is said beside it; all are public configs.
"""

from __future__ import annotations

from .clip_vocab import VOCAB_SIZE

# black-forest-labs/FLUX.1-dev transformer/config.json, the same numbers as black-forest-labs/flux
# src/flux/util.py configs["flux-dev"] (depth 19, depth_single_blocks 38, hidden 3072 = 24 heads x 128,
# context_in_dim 4096, vec_in_dim 768, axes_dim [16, 56, 56], guidance_embed True). 11.9 B parameters.
TRANSFORMER_CONFIG = dict(
    patch_size=1,
    in_channels=64,  # 16 latent channels x a 2x2 patch, packed by FluxPipeline._pack_latents
    num_layers=19,  # double-stream (MM-DiT) blocks: where the IP-Adapter attends
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,  # T5-XXL's d_model
    pooled_projection_dim=768,  # CLIP ViT-L/14's pooled text embedding
    guidance_embeds=True,  # FLUX.1-dev is guidance-distilled: the guidance scale is an input, one pass per step
    axes_dims_rope=(16, 56, 56),
)

# FLUX.1-dev text_encoder: openai/clip-vit-large-patch14's text tower (config.json there), 77 tokens, pooled
# output only. Token ids as in sdxl_arch (the shipped CLIP vocabulary, clip_vocab.py).
CLIP_TEXT_CONFIG = dict(vocab_size=VOCAB_SIZE, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                        pad_token_id=1, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu")
CLIP_MAX_TOKENS = 77

# FLUX.1-dev text_encoder_2: google/t5-v1_1-xxl's encoder (config.json there; black-forest-labs/flux util.load_t5),
# T5EncoderModel. 4.76 B parameters.
T5_CONFIG = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                 relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
                 layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                 tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
T5_MAX_TOKENS = 512  # FluxPipeline's max_sequence_length default for FLUX.1-dev (load_t5(max_length=512))

# FLUX.1-dev vae/config.json: black-forest-labs/flux AutoEncoderParams (ch 128, ch_mult [1, 2, 4, 4],
# num_res_blocks 2, z_channels 16, scale_factor 0.3611, shift_factor 0.1159); no quant convs.
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    force_upcast=True,
    use_quant_conv=False,
    use_post_quant_conv=False,
    mid_block_add_attention=True,
)

# FLUX.1-dev scheduler/scheduler_config.json: flow-matching Euler with the resolution-dependent shift
# (mu from base_shift 0.5 at 256 image tokens to max_shift 1.15 at 4096, i.e. at 1024²; black-forest-labs/flux
# sampling.get_schedule uses the same numbers).
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
STEPS = 28  # diffusers FluxPipeline's num_inference_steps default (render=flux's too)
GUIDANCE = 3.5  # FluxPipeline's guidance_scale default (the distilled guidance embedding)

# XLabs-AI/flux-ip-adapter-v2 (ip_adapter.safetensors): XLabs-AI/x-flux src/flux/xflux_pipeline.py set_ip builds
# ImageProjModel(4096, 768, 4) (4 tokens of 4096 channels from CLIP's 768-d image embedding) and an
# IPDoubleStreamBlockProcessor(4096, 3072) per double block (k and v projections 4096 -> 3072, with bias).
# diffusers' FluxTransformer2DLoadersMixin takes the same: 4 tokens unless proj is 16 x 4096 rows, and
# FluxIPAdapterAttnProcessor(hidden_size=inner_dim 3072, cross_attention_dim=joint_attention_dim 4096) on the
# 19 transformer_blocks only (single blocks keep their processor).
IP_TOKENS = 4
IP_CROSS_DIM = TRANSFORMER_CONFIG["joint_attention_dim"]
IP_HIDDEN = TRANSFORMER_CONFIG["num_attention_heads"] * TRANSFORMER_CONFIG["attention_head_dim"]
IP_LAYERS = TRANSFORMER_CONFIG["num_layers"]

# The adapter's image encoder: openai/clip-vit-large-patch14's vision tower + projection (XLabs' image_encoder_path,
# CLIPVisionModelWithProjection), 224 px, 768-d image embedding.
IMAGE_CONFIG = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    patch_size=14, image_size=224, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5)
