"""SDXL base 1.0's and IP-Adapter SDXL's architecture, as the constructor arguments of their components.

Torch-free constants: `sdxl_random` builds the full-size random model from them and `sdxl_config` writes them as
the diffusers config folder single-file checkpoints are loaded around.
"""

from __future__ import annotations

from .clip_vocab import VOCAB_SIZE

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json
UNET_CONFIG = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)
# text_encoder (CLIP ViT-L/14) and text_encoder_2 (OpenCLIP ViT-bigG/14) text towers
TEXT_CONFIG = dict(vocab_size=VOCAB_SIZE, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
TEXT_1 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768, hidden_act="quick_gelu")
TEXT_2 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              projection_dim=1280, hidden_act="gelu")
# vae/config.json
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.13025,
    force_upcast=True,
)
# h94/IP-Adapter sdxl_models/image_encoder/config.json (OpenCLIP ViT-bigG/14 vision tower)
IMAGE_CONFIG = dict(hidden_size=1664, intermediate_size=8192, num_hidden_layers=48, num_attention_heads=16,
                    patch_size=14, image_size=224, projection_dim=1280, hidden_act="gelu", layer_norm_eps=1e-5)
IP_TOKENS = 4
# scheduler/scheduler_config.json, as DDIM (what Story-Adapter samples with)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
                        prediction_type="epsilon")
