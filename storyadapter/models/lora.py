"""LoRA weights on the SDXL pipeline: loaded with diffusers' LoRA loader (peft), mixed at their scales, fused.

Fusing folds each LoRA into the weights it adapts and drops peft's wrapper layers, so rendering (and the GRCA
attention processors) see plain layers and pay nothing per step. It happens once per worker, at load.

Two rules keep a LoRA from changing anything but the weights it adapts:
- A LoRA at scale 0 is not loaded at all: it leaves the pipeline exactly as it was, whatever peft does with it.
- peft freezes every base weight when it injects an adapter (requires_grad=False), and torch's matmul picks its
  kernel by that flag even under no_grad (it folds a batched matmul into one mm only when the weight requires
  grad), so a frozen pipeline runs some projections as bmm where the plain one runs mm: other summation orders,
  frames off by a pixel level on some CPUs. The flags are put back as they were after fusing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError


@dataclass(frozen=True)
class LoraWeights:
    path: str  # a .safetensors file (diffusers/peft or Kohya key layout)
    scale: float = 1.0


def _key(index: int) -> str:
    return f"model.loras[{index}].path"


# Layer names that only one family's denoiser has, in every LoRA layout (diffusers/peft, Kohya, XLabs, BFL):
# a UNet's blocks for SDXL; the double- and single-stream blocks for FLUX. (`transformer_blocks` alone is in both.)
_FAMILY_MARKERS = {
    "sdxl": ("down_blocks", "up_blocks", "mid_block", "input_blocks", "output_blocks", "middle_block"),
    "flux": ("double_blocks", "single_blocks", "single_transformer_blocks"),
}
FAMILY_NAMES = {"sdxl": "an SDXL", "flux": "a FLUX"}


def family_of(keys) -> str | None:
    """The model family a LoRA's tensor names were trained on (sdxl | flux), or None when they do not say (a LoRA
    of the text encoders only, say)."""
    found = [family for family, markers in _FAMILY_MARKERS.items()
             if any(marker in k for k in keys for marker in markers)]
    if not found and any(k.startswith(("transformer.", "lora_transformer_")) for k in keys):
        found = ["flux"]  # diffusers' FLUX LoRAs name the denoiser `transformer`, SDXL's `unet`
    return found[0] if len(found) == 1 else None


def check(path: str, index: int, key: str | None = None, family: str | None = None) -> None:
    """Before any worker starts: the file is there, is safetensors and holds LoRA weights (of `family`'s layers,
    when given: an SDXL LoRA on FLUX, or the reverse, would match no layer)."""
    from .safetensors_header import tensor_shapes

    key = key or _key(index)
    keys = tensor_shapes(path, f"{key}={path}")
    if not any("lora" in k.lower() for k in keys):
        raise UserError(f"{key}={path}: holds no LoRA weights (no lora_A/lora_B/lora_up/lora_down tensors)")
    trained_on = family_of(keys)
    if family is not None and trained_on is not None and trained_on != family:
        raise UserError(f"{key}={path}: is {FAMILY_NAMES[trained_on]} LoRA (its layer names), and this model is "
                        f"{FAMILY_NAMES[family]} model (model.family={family})")


DRAFT_ADAPTER = "draft"


def load_draft(pipe, path: str, scale: float, key: str = "render.draft.lora") -> None:
    """Load a LoRA as a switchable adapter of the UNet (not fused), switched off: `switch_draft` turns it on for
    draft iterations. The text encoders stay as they are: a frame's text is encoded once for every iteration."""
    flags = _requires_grad(pipe)
    try:
        pipe.load_lora_weights(str(Path(path).expanduser()), adapter_name=DRAFT_ADAPTER)
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        raise UserError(f"{key}={path}: does not fit this model ({exc})") from None
    adapted = [part for part, adapters in pipe.get_list_adapters().items() if DRAFT_ADAPTER in adapters]
    if adapted != ["unet"]:
        raise UserError(f"{key}={path}: " + ("matches no layer of this model's UNet" if not adapted else
                        f"adapts {', '.join(a for a in adapted if a != 'unet')}; a draft LoRA may adapt the UNet only"))
    pipe.set_adapters([DRAFT_ADAPTER], adapter_weights=[scale])
    _restore_requires_grad(pipe, flags)  # peft froze every weight: see the module docstring
    switch_draft(pipe, False)


def switch_draft(pipe, on: bool) -> None:
    if on:
        pipe.enable_lora()
    else:
        pipe.disable_lora()


def apply(pipe, loras: tuple[LoraWeights, ...]) -> None:
    """Load every LoRA, mix them at their scales and fuse them into the pipeline's weights."""
    active = [(index, lora) for index, lora in enumerate(loras) if lora.scale != 0]
    if not active:
        return
    flags = _requires_grad(pipe)
    names = []
    for index, lora in active:
        name = f"lora_{index}"
        try:
            pipe.load_lora_weights(str(Path(lora.path).expanduser()), adapter_name=name)
        except (ValueError, RuntimeError, KeyError, OSError) as exc:  # no matching layer, wrong shapes, bad keys
            raise UserError(f"{_key(index)}={lora.path}: does not fit this model ({exc})") from None
        if not any(name in adapters for adapters in pipe.get_list_adapters().values()):
            raise UserError(f"{_key(index)}={lora.path}: matches no layer of this model's UNet or text encoders")
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[lora.scale for _, lora in active])
    pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
    pipe.unload_lora_weights()  # keeps the fused weights, removes peft's layers
    _restore_requires_grad(pipe, flags)


def _components(pipe):
    return [(name, module) for name, module in pipe.components.items() if hasattr(module, "named_parameters")]


def _requires_grad(pipe) -> dict[tuple[str, str], bool]:
    return {(name, key): param.requires_grad
            for name, module in _components(pipe) for key, param in module.named_parameters()}


def _restore_requires_grad(pipe, flags: dict[tuple[str, str], bool]) -> None:
    for name, module in _components(pipe):
        for key, param in module.named_parameters():
            if (name, key) in flags:
                param.requires_grad_(flags[(name, key)])
