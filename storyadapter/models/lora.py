"""LoRA weights on the SDXL pipeline: loaded with diffusers' LoRA loader (peft), mixed at their scales, fused.

Fusing folds each LoRA into the weights it adapts and drops peft's wrapper layers, so rendering (and the GRCA
attention processors) see plain layers and pay nothing per step. It happens once per worker, at load.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import UserError


@dataclass(frozen=True)
class LoraWeights:
    path: str  # a .safetensors file (diffusers/peft or Kohya key layout)
    scale: float = 1.0


def _key(index: int) -> str:
    return f"model.loras[{index}].path"


def check(path: str, index: int) -> None:
    """Before any worker starts: the file is there, is safetensors and holds LoRA weights."""
    from .safetensors_header import tensor_shapes

    keys = tensor_shapes(path, f"{_key(index)}={path}")
    if not any("lora" in k.lower() for k in keys):
        raise UserError(f"{_key(index)}={path}: holds no LoRA weights (no lora_A/lora_B/lora_up/lora_down tensors)")


@lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def digest(path: str) -> str:
    """sha256 of the file's bytes: a LoRA's identity for resume, whatever its name or folder."""
    file = Path(path).expanduser()
    try:
        stat = file.stat()
    except OSError as exc:
        raise UserError(f"model.loras: {path}: {exc.strerror}") from None
    return _digest(str(file.resolve()), stat.st_size, stat.st_mtime_ns)


def apply(pipe, loras: tuple[LoraWeights, ...]) -> None:
    """Load every LoRA, mix them at their scales and fuse them into the pipeline's weights."""
    if not loras:
        return
    names = []
    for index, lora in enumerate(loras):
        name = f"lora_{index}"
        try:
            pipe.load_lora_weights(str(Path(lora.path).expanduser()), adapter_name=name)
        except (ValueError, RuntimeError, KeyError, OSError) as exc:  # no matching layer, wrong shapes, bad keys
            raise UserError(f"{_key(index)}={lora.path}: does not fit this model ({exc})") from None
        if not any(name in adapters for adapters in pipe.get_list_adapters().values()):
            raise UserError(f"{_key(index)}={lora.path}: matches no layer of this model's UNet or text encoders")
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[lora.scale for lora in loras])
    pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
    pipe.unload_lora_weights()  # keeps the fused weights, removes peft's layers
