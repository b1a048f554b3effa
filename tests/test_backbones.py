"""The backbone seam (backbones/): the renderer runs on any model family through the interface alone, and the
SDXL backbone names the layers GRCA and CSA take over."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from storyadapter.attention import csa
from storyadapter.backbones.base import Backbone, TextEmbedding
from storyadapter.methods import CSASettings
from storyadapter.worker.renderer import RenderSettings, StoryRenderer, initial_noise

SETTINGS = RenderSettings(steps=3, height=32, width=32, guidance_scale=4.0, reference_size=16)


class ToyBackbone(Backbone):
    """A model family in a few lines: a renderer that reached past the interface (a UNet, a VAE) fails here."""

    def __init__(self):
        self.encoded: list[list[tuple[int, int]]] = []
        self.installed: dict = {}

    device = property(lambda self: torch.device("cpu"))
    dtype = property(lambda self: torch.float64)
    embedding_dim = property(lambda self: 3)

    def text_windows(self, texts):
        return 1

    def encode_text(self, prompt, negative, windows):
        p, n = torch.full((1, 1, 3), float(len(prompt))), torch.full((1, 1, 3), float(len(negative)))
        return TextEmbedding(p, p[:, 0], n, n[:, 0])

    def timesteps(self, steps, height, width):
        return torch.arange(steps, 0, -1)

    def latent_shape(self, height, width):
        return (1, 3, height // 8, width // 8)

    def initial_latents(self, noise):
        return noise.to(self.dtype)

    def conditioning(self, texts, height, width, guided=True):
        return torch.cat([e.negative_tokens for e in texts] + [e.tokens for e in texts]).to(self.dtype)

    def predict_noise(self, latents, t, conditioning):
        uncond, cond = conditioning.view(2, -1, 3, 1, 1)
        return toy_noise(latents, t, uncond), toy_noise(latents, t, cond)

    def step(self, noise, t, latents, generators=None):
        return latents - 0.1 * noise

    def decode(self, latents):
        return [toy_image(x) for x in latents]

    def encode_images(self, images):
        self.encoded.append([im.size for im in images])
        return np.stack([np.asarray(im, np.float32).mean(axis=(0, 1)) for im in images])

    def image_tokens(self, embeddings):
        return embeddings[:, None, :]

    def reference_layers(self):
        return {}

    def self_attention_layers(self):
        return {}

    def set_attention_processors(self, processors):
        self.installed.update(processors)


def toy_noise(latents, t, text):
    return 0.5 * latents + 0.01 * float(t) * text


def toy_image(latent):
    return Image.fromarray(((latent.clamp(-3, 3) + 3) * 42).round().byte().permute(1, 2, 0).numpy())


def test_the_renderer_runs_the_algorithm_on_any_backbone():
    """Seeds, classifier-free guidance (unconditional branch first) and the scheduler loop, through the interface."""
    toy = ToyBackbone()
    r = StoryRenderer(toy, SETTINGS)
    texts = [r.encode_text("a kite", "blur"), r.encode_text("a boat on a lake", "")]
    images = r.render(texts, [5, 6])

    for text, seed, image in zip(texts, [5, 6], images):
        latents = initial_noise(seed, (1, 3, 4, 4)).double()
        for t in range(3, 0, -1):
            uncond = toy_noise(latents, t, text.negative_tokens.view(1, 3, 1, 1).double())
            cond = toy_noise(latents, t, text.tokens.view(1, 3, 1, 1).double())
            latents = latents - 0.1 * (uncond + 4.0 * (cond - uncond))
        assert np.array_equal(np.asarray(image), np.asarray(toy_image(latents[0])))

    embeddings = r.embed_images(images)
    assert embeddings.shape == (2, 3) and toy.encoded == [[(16, 16), (16, 16)]]  # at render.reference_size, one pass
    r.set_references(embeddings, 0.5)  # a family without IP-Adapter layers: GRCA has nothing to install


def test_consistent_self_attention_needs_self_attention_layers():
    with pytest.raises(RuntimeError, match="no self-attention layers"):
        StoryRenderer(ToyBackbone(), SETTINGS, CSASettings())


def test_sdxl_backbone_names_the_layers_grca_and_csa_take_over(tiny_source):
    from storyadapter.models.loading import load_backbone

    backbone = load_backbone(tiny_source, torch.device("cpu"), torch.float32)
    unet = backbone.pipe.unet
    cross = {name.removesuffix(".processor") for name in unet.attn_processors if name.endswith("attn2.processor")}
    assert set(backbone.reference_layers()) == cross  # the tiny IP-Adapter covers every cross-attention layer
    assert all(layer.heads == unet.get_submodule(name).heads for name, layer in backbone.reference_layers().items())

    ranks = backbone.self_attention_layers()
    assert set(ranks) == {name.removesuffix(".processor") for name in unet.attn_processors
                          if name.startswith("up_blocks.") and name.endswith("attn1.processor")}
    coarsest = min(int(name.split(".")[1]) for name in ranks)
    assert {name for name, rank in ranks.items() if rank == 0} == {n for n in ranks if int(n.split(".")[1]) == coarsest}

    r = StoryRenderer(backbone, RenderSettings(), CSASettings())
    processors = unet.attn_processors
    assert all(processors[f"{name}.processor"] is p for name, p in r.grca.items())
    assert {processors[f"{name}.processor"].resolution for name in ranks} <= {"sa32", "sa64"}
    assert all(processors[f"{name}.processor"].resolution == ("sa32" if rank == 0 else "sa64") for name, rank in ranks.items())
    with pytest.raises(KeyError, match="no attention layer named up_blocks.9"):
        backbone.set_attention_processors({"up_blocks.9.attn1": csa.ConsistentSelfAttnProcessor(r.csa, "x", "sa32")})
