"""model=flux-random has FLUX.1-dev's and the XLabs FLUX IP-Adapter v2's exact sizes; checked on the meta device
(no memory: 12 B parameters are never materialized here)."""

from __future__ import annotations

import pytest
import torch

from storyadapter.models import flux_random

# Parameter counts of the released checkpoints (black-forest-labs/FLUX.1-dev, openai/clip-vit-large-patch14).
FLUX = {
    "transformer": 11_901_408_320,  # flux1-dev.safetensors, "12B"
    "text_encoder": 123_060_480,  # CLIP ViT-L/14 text tower
    "text_encoder_2": 4_762_310_656,  # T5 v1.1 XXL encoder
    "vae": 83_819_683,
    "image_encoder": 303_966_208,  # CLIP ViT-L/14 vision tower + projection
}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def pipe():
    return flux_random.build_pipeline("meta", torch.bfloat16)


def test_components_have_flux_dev_parameter_counts_on_meta(pipe):
    ip_processors = [p for p in pipe.transformer.attn_processors.values() if isinstance(p, torch.nn.Module)]
    adapter = sum(_count(p) for p in ip_processors) + _count(pipe.transformer.encoder_hid_proj)
    for name, expected in FLUX.items():
        module = getattr(pipe, name)
        # the adapter's projections live inside the transformer once loaded: count the transformer without them
        counted = _count(module) - (adapter if name == "transformer" else 0)
        assert counted == pytest.approx(expected, rel=0.001), name
        assert all(p.is_meta and p.dtype == torch.bfloat16 for p in module.parameters()), name

    cfg = pipe.transformer.config
    assert (cfg.num_layers, cfg.num_single_layers, cfg.num_attention_heads, cfg.attention_head_dim) == (19, 38, 24, 128)
    assert cfg.guidance_embeds and cfg.joint_attention_dim == 4096 and cfg.pooled_projection_dim == 768
    assert pipe.vae.config.latent_channels == 16 and pipe.vae.config.shift_factor == 0.1159
    assert pipe.scheduler.config.use_dynamic_shifting and pipe.scheduler.config.max_shift == 1.15

    # XLabs IP-Adapter v2: 4 tokens of 4096 from CLIP's 768-d embedding; biased k/v 4096 -> 3072 in the 19 double blocks only.
    assert len(ip_processors) == 19
    assert all(name.startswith("transformer_blocks.") for name, p in pipe.transformer.attn_processors.items()
               if isinstance(p, torch.nn.Module))
    assert ip_processors[0].to_k_ip[0].weight.shape == (3072, 4096) and ip_processors[0].to_v_ip[0].bias.shape == (3072,)
    projection = pipe.transformer.encoder_hid_proj.image_projection_layers[0]
    assert projection.num_image_text_embeds == 4 and projection.image_embeds.weight.shape == (4 * 4096, 768)
    assert adapter == 490_874_880
    assert pipe.image_encoder.config.projection_dim == 768 and pipe.image_encoder.config.image_size == 224


def test_source_is_the_marker_the_loader_dispatches_on():
    src = flux_random.source()
    assert src.pretrained == "random:flux" and src.ip_adapter == "random:flux"


def test_model_flux_random_is_accepted_with_render_flux_and_refused_as_sdxl_in_one_line():
    from storyadapter.errors import UserError
    from storyadapter.launch import validate_overrides

    base = ["story.path=s.txt", "output_dir=o", "model=flux-random"]
    validate_overrides([*base, "render=flux"])
    with pytest.raises(UserError, match=r"^model.family=sdxl: model.kind=flux-random builds FLUX's shapes"):
        validate_overrides([*base, "render=flux", "model.family=sdxl"])


def test_model_flux_random_loads_through_the_flux_backbone_on_meta():
    from storyadapter.models.loading import load_backbone
    from storyadapter.render_story import resolve_model
    from storyadapter.spec import ModelSpec

    source, eval_clip = resolve_model(ModelSpec(name="flux-random", kind="flux-random", family="flux",
                                                pretrained="", ip_adapter="", dtype="bfloat16"))
    assert (source.pretrained, source.family, eval_clip) == ("random:flux", "flux", None)
    backbone = load_backbone(source, torch.device("meta"), torch.bfloat16)
    assert len(backbone._reference_layers) == 19 and backbone.dtype == torch.bfloat16
    # What the backbone's encode_text runs (before it moves the result to the host, which meta tensors cannot do).
    tokens, pooled, _ = backbone.pipe.encode_prompt(prompt="a lighthouse keeper in a yellow coat", prompt_2=None,
                                                    device=torch.device("meta"), max_sequence_length=512)
    assert tokens.shape == (1, 512, 4096) and pooled.shape == (1, 768)  # T5's 512 tokens, CLIP's pooled vector
